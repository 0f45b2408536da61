"""The shipped K2 study sweeps: each asks what its description says, and is sized as promised.

CPU (the top-level base/grid): at most ~2 hours on 2 cores with 2 trials at a time, enough
optimizer steps for the loss to move, WSD so final points are cooled down. GPU profile: CUDA,
GPU resources, 10M-1B active parameters, every trial within an 80 GB GPU by harness.memory's
estimate (the check `harness submit` makes on the GPU machine).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from harness.config import TrialConfig, load_sweep
from harness.memory import USABLE, estimate_bytes
from harness.prefix import plan_sharing

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ["sparsity", "heads", "dense_layers", "router_groups", "optimizers", "muonclip"]
GPU_BYTES = 80e9  # the smallest GPU the profiles promise to fit (H100 / A100 80 GB)
CPU_FLOP_BUDGET = 3.2e14
"""Training FLOPs one CPU sweep may train after prefix sharing: about 2 hours on 2 cores (a sweep
of 9.4e13 took ~35 minutes)."""


def trained_flops(ts: list[TrialConfig]) -> float:
    """Training FLOPs of ``ts`` with the budgets' shared prefixes trained once."""
    plan = plan_sharing(ts, None)
    return sum(t.model.flops_per_token(t.train.seq_len) * t.train.batch_tokens
               * (t.train.steps - plan.inherited.get(t.hash, 0)) for t in ts)


def trials(stem: str, profile: str | None = None) -> list[TrialConfig]:
    return load_sweep(ROOT / "sweeps" / f"{stem}.yaml", profile).expand()


@pytest.mark.parametrize("stem", STUDIES)
def test_study_file_shape(stem: str) -> None:
    path = ROOT / "sweeps" / f"{stem}.yaml"
    first = path.read_text().splitlines()[0]
    assert re.match(r"# cpu profile: \d+ trials, ~\d+ minutes on 2 cores \(measured .*tok/s", first)
    assert int(first.split()[3]) == len(trials(stem))
    sweep = load_sweep(path)
    assert sweep.name == stem
    assert len(sweep.description) > 200 and "K2" in sweep.description
    assert sweep.resources.cpu == 1 and sweep.resources.gpu == 0
    assert sweep.max_concurrent == 2
    assert "gpu" in sweep.profiles
    gpu = load_sweep(path, "gpu")
    assert gpu.resources.gpu > 0


@pytest.mark.parametrize("stem", STUDIES)
def test_cpu_profile_is_sized_for_two_cores(stem: str) -> None:
    ts = trials(stem)
    assert trained_flops(ts) <= CPU_FLOP_BUDGET
    for t in ts:
        assert t.train.device != "cuda"
        assert t.train.schedule == "wsd"
        assert t.train.steps >= 100, f"{stem}: {t.train.steps} steps"
        assert t.data.corpus == "stdlib"


@pytest.mark.parametrize("stem", STUDIES)
def test_gpu_profile_is_a_real_study(stem: str) -> None:
    for t in trials(stem, "gpu"):
        assert t.train.device == "cuda"
        assert 1e7 <= t.model.param_counts().active <= 1e9
        assert t.train.steps >= 100
        assert estimate_bytes(t) <= USABLE * GPU_BYTES, f"{stem}: trial {t.hash} exceeds 80 GB"


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_sparsity_holds_activated_params_fixed(profile: str | None) -> None:
    ts = trials("sparsity", profile)
    assert len({(t.model.moe.top_k, t.model.moe.n_shared) for t in ts}) == 1
    active = [t.model.param_counts().active for t in ts]
    assert max(active) / min(active) < 1.1  # only the router grows with E
    sparsities = {t.model.sparsity for t in ts}
    assert {1, 32} <= sparsities and len(sparsities) >= 3  # the CPU arms: 1, 8, 32
    if profile == "gpu":
        assert {1, 2, 4, 8, 16, 32, 48, 64} <= sparsities
    assert len({t.train.tokens for t in ts}) >= 3
    assert load_sweep(ROOT / "sweeps" / "sparsity.yaml").analysis.baseline == 1


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_heads_doubles_heads_at_equal_tokens(profile: str | None) -> None:
    ts = trials("heads", profile)
    heads = sorted({t.model.attention.n_heads for t in ts})
    layers = {t.model.n_layers for t in ts}
    assert heads == [next(iter(layers)), 2 * next(iter(layers))]
    tokens = defaultdict(set)
    for t in ts:
        tokens[t.model.attention.n_heads].add(t.train.tokens)
    assert tokens[heads[0]] == tokens[heads[1]] and len(tokens[heads[0]]) >= 3


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_dense_layers_have_equal_active_params(profile: str | None) -> None:
    ts = trials("dense_layers", profile)
    # the CPU profile cuts the k=0 arm (not K2's claim) to afford seeds; the GPU one keeps it
    assert {t.model.first_k_dense for t in ts} == ({1, 3} if profile is None else {0, 1, 3})
    assert all(t.model.n_layers >= 4 for t in ts)
    for t in ts:
        m = t.model
        assert m.dense_ffn_dim == (m.moe.top_k + m.moe.n_shared) * m.moe.expert_ffn_dim
    active = [t.model.param_counts().active for t in ts]
    assert max(active) / min(active) < 1.02  # routers only


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_router_groups_flat_vs_grouped(profile: str | None) -> None:
    ts = trials("router_groups", profile)
    arms = {(t.model.moe.n_groups, t.model.moe.topk_groups) for t in ts}
    assert (1, 1) in arms and len(arms) >= 2
    assert len({t.model.moe.n_groups for t in ts}) == len(arms)  # the arm column names them
    assert len({t.train.tokens for t in ts}) >= 3


TUNED = ("optim.lr", "optim.adamw_lr", "optim.router_lr")
"""The optimizers study's tuned lrs: Muon's, and the AdamW part's and router's of a Muon run."""


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_optimizers_tune_every_lr_each_arm_uses(profile: str | None) -> None:
    ts = trials("optimizers", profile)
    assert {t.optim.arm for t in ts} == {"adamw", "muon"}
    budgets = {t.train.tokens for t in ts}
    assert len(budgets) >= 3
    cells: dict[tuple[str, int], list[tuple[float | None, ...]]] = defaultdict(list)
    for t in ts:
        if t.train.seed == 0:
            cells[(t.optim.arm, t.train.tokens)].append(
                (t.optim.lr, t.optim.adamw_lr, t.optim.router_lr))
    assert len(cells) == 2 * len(budgets)
    for (arm, _), settings in cells.items():
        assert len({s[0] for s in settings}) >= 4  # each arm's own lr grid
        if arm != "muon":
            continue
        # coordinate-wise: each axis is tried below and above its centre (its most frequent
        # value) with the others at theirs
        centre = tuple(Counter(s[i] for s in settings).most_common(1)[0][0] for i in range(3))
        for i in range(3):
            others = centre[:i] + centre[i + 1:]
            line = sorted(s[i] for s in settings if s[:i] + s[i + 1:] == others)
            assert len(line) >= 3 and line[0] < centre[i] < line[-1], (i, line)
    spec = load_sweep(ROOT / "sweeps" / "optimizers.yaml").analysis
    assert (spec.arm, spec.baseline, spec.tuned) == ("arm", "adamw", TUNED)


def test_muonclip_has_off_k2_and_small_tau() -> None:
    ts = trials("muonclip")
    taus = {t.optim.qk_clip_tau for t in ts}
    assert None in taus and 100 in taus and any(x is not None and x < 100 for x in taus)
    assert all(t.optim.name == "muon" for t in ts)


def test_sparsity_control_is_the_sparsity_instrument_on_topic_data() -> None:
    """The control changes the data (topics), the expert counts, the budgets and the seeds,
    nothing else."""
    twin = trials("sparsity")[0]
    control = trials("sparsity_control")
    assert trained_flops(control) <= CPU_FLOP_BUDGET
    assert {t.model.sparsity for t in control} >= {1, 16}
    assert len({t.train.seed for t in control}) >= 3  # seed bootstrap estimable
    for t in control:
        assert t.data.corpus == "synthetic" and t.data.synthetic_topics > 1
        assert t.model.model_copy(update={"vocab_size": twin.model.vocab_size,
                                          "moe": twin.model.moe}) == twin.model
        assert t.model.moe.model_copy(update={"n_routed_experts": 2}) == twin.model.moe
        assert t.optim == twin.optim
        assert t.train.model_copy(update={"tokens": twin.train.tokens, "seed": 0}) == twin.train
    spec = load_sweep(ROOT / "sweeps" / "sparsity_control.yaml").analysis
    assert spec.kind == "sparsity" and spec.claim is not None and spec.claim.kind == "effect"


def test_routing_calibration_pins_what_it_calibrates() -> None:
    """The calibration grid names its bias steps, so changing the default keeps its runs."""
    ts = trials("routing")
    assert None not in {t.model.moe.bias_update_rate for t in ts}
    assert None in {t.optim.router_lr for t in ts}
    assert sum(t.total_flops for t in ts) <= CPU_FLOP_BUDGET
