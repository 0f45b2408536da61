"""Data parallel without Ray: 2 gloo processes (torch.multiprocessing) run the trainer's
collectives, sharded Newton-Schulz and whole trials, checked against one process.

Tolerances: the two ranks sum their halves of each gradient before the all-reduce adds them, so
gradients differ from one process in float32 rounding (~1e-7 relative); over a few dozen steps
that stays below 1e-5 in the loss. What is not rounded (expert loads are counts, max logits are
maxima, Newton-Schulz work is gathered bit for bit) must match exactly or to the same 1e-5.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from sweeptools import HARNESS, trial_dict

from harness.config import ConfigError, TrialConfig, load_trial
from harness.distributed import World
from harness.optim import newton_schulz, newton_schulz_sharded
from harness.tracking import MemoryTracker, read_jsonl
from harness.train import run_trial

SIZE = 2


def _spawned(rank: int, store: str, out: str, job: str, arg: Any) -> None:
    torch.set_num_threads(1)
    world = World.over_file(store, rank, SIZE)
    result = JOBS[job](world, arg)
    Path(out, f"{rank}.pkl").write_bytes(pickle.dumps(result))
    # Both ranks reach a barrier before either tears gloo down: a rank that destroyed the group
    # while its peer was still in a collective aborted at exit (SIGABRT) under CI load. A rank
    # that raised ends its process instead, and mp.spawn stops the other.
    world.leave()


def on_ranks(tmp_path: Path, job: str, arg: Any = None) -> list[Any]:
    """Run ``JOBS[job](world, arg)`` on 2 gloo ranks; each rank's result."""
    store = Path(tempfile.mkdtemp(dir=tmp_path)) / "store"
    mp.spawn(_spawned, args=(str(store), str(tmp_path), job, arg), nprocs=SIZE, join=True)
    return [pickle.loads(Path(tmp_path, f"{r}.pkl").read_bytes()) for r in range(SIZE)]


def _collectives(world: World, _: Any) -> dict[str, Any]:
    loads = torch.tensor([[1.0, 2.0, 3.0]]) * (world.rank + 1)  # (L_moe, E)
    logits = torch.tensor([[0.5, 4.0]]) if world.main else torch.tensor([[2.0, 1.0]])  # (L, H)
    with world.main_first():
        order = Path(os.environ["ORDER_FILE"])
        order.write_text(order.read_text() + str(world.rank) if order.exists() else
                         str(world.rank))
    return {"loads": world.all_sum(loads), "logits": world.all_max(logits),
            "share": list(world.share(8)), "from_main": world.from_main(world.rank)}


def _sharded_ns(world: World, shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(0)
    G = torch.randn(*shape)  # the same on every rank
    return newton_schulz_sharded(G, world.rank, world.size)


def _trial(world: World, arg: tuple[dict[str, Any], str]) -> dict[str, Any]:
    trial, cache = TrialConfig.model_validate(arg[0]), arg[1]
    tracker = MemoryTracker()
    run_trial(trial, tracker, None, cache_dir=cache, world=world)
    return {"history": {k: tracker.history(k) for k in tracker.metrics},
            "biases": _biases(tracker)}


def _biases(tracker: MemoryTracker) -> list[float]:
    return [v for _, v in tracker.history("moe/bias_range/L1")]


JOBS = {"collectives": _collectives, "sharded_ns": _sharded_ns, "trial": _trial}


def test_collectives_sum_loads_max_logits_and_let_rank_zero_go_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDER_FILE", str(tmp_path / "order"))
    r0, r1 = on_ranks(tmp_path, "collectives")
    for r in (r0, r1):
        assert torch.equal(r["loads"], torch.tensor([[3.0, 6.0, 9.0]]))
        assert torch.equal(r["logits"], torch.tensor([[2.0, 4.0]]))
        assert r["from_main"] == 0
    assert (r0["share"], r1["share"]) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert (tmp_path / "order").read_text() == "01"


@pytest.mark.parametrize("shape", [(5, 16, 24), (3, 2, 12, 8), (1, 8, 8)])
def test_sharded_newton_schulz_equals_the_whole_batch(tmp_path: Path,
                                                      shape: tuple[int, ...]) -> None:
    """Odd counts pad with zero matrices; a lone matrix is done by rank 0 and gathered."""
    torch.manual_seed(0)
    want = newton_schulz(torch.randn(*shape))
    for got in on_ranks(tmp_path, "sharded_ns", shape):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def clipping_muon_trial(workers: int, steps: int = 24) -> dict[str, Any]:
    """A tiny MoE under MuonClip with a tau low enough that heads are clipped, 4 micro-batches
    a step (2 per rank at 2 workers)."""
    t = trial_dict(steps, micro_batch_tokens=128, workers=workers, log_every=1,
                   eval_every=2048)
    t["optim"] = {"name": "muon", "lr": 2e-2, "qk_clip_tau": 0.06}
    return t


def test_two_ranks_train_the_one_rank_curve(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    one = MemoryTracker()
    run_trial(TrialConfig.model_validate(clipping_muon_trial(1)), one, None, cache_dir=cache)
    r0, r1 = on_ranks(tmp_path, "trial", (clipping_muon_trial(2), cache))
    assert r0["history"].keys() == r1["history"].keys()
    clipped = [v for _, v in one.history("attn/heads_clipped")]
    assert sum(clipped) > 0, "the test needs QK-Clip to act"
    for key in ("train/loss", "val/loss", "test/loss", "grad_norm", "moe/bias_range/L1",
                "attn/max_logit", "moe/imbalance"):
        want = one.history(key)
        for r in (r0, r1):
            got = r["history"][key]
            assert [s for s, _ in got] == [s for s, _ in want], key
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5), key
    for key in ("attn/heads_clipped/L0", "attn/heads_clipped/L1", "moe/dead_experts"):
        assert r0["history"][key] == one.history(key), key  # counts: exactly


def test_workers_must_split_the_batch_evenly(tmp_path: Path) -> None:
    bad = trial_dict(8, micro_batch_tokens=256, workers=4)  # 512 / (4 x 256)
    path = tmp_path / "t.yaml"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"train.*workers x micro_batch_tokens \(4 x 256\)"):
        load_trial(path)


def test_one_worker_keeps_the_hash_it_had() -> None:
    """``train.workers: 1`` is left out of the hash, so stores of older runs still match."""
    import hashlib

    trial = TrialConfig.model_validate(trial_dict(8))
    dump = trial.model_dump(mode="json")
    del dump["train"]["workers"]
    old = hashlib.sha256(json.dumps(dump, sort_keys=True, separators=(",", ":")).encode())
    assert trial.hash == old.hexdigest()[:12]
    two = TrialConfig.model_validate(trial_dict(8, micro_batch_tokens=256, workers=2))
    assert two.hash != trial.hash


def test_run_trial_refuses_a_world_of_the_wrong_size() -> None:
    trial = TrialConfig.model_validate(trial_dict(8, micro_batch_tokens=256, workers=2))
    with pytest.raises(RuntimeError, match=r"train\.workers is 2 but 1 processes"):
        run_trial(trial, MemoryTracker(), None)


def test_harness_train_runs_two_workers_under_torchrun(tmp_path: Path) -> None:
    """A lone machine without Ray: ``torchrun -m harness train`` with train.workers 2 logs
    rank 0's curve, the one-process curve; without torchrun it is a one-line error."""
    trial = clipping_muon_trial(2, steps=8)
    path = tmp_path / "two.yaml"
    path.write_text(json.dumps(trial))
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache"),
           "HARNESS_STORAGE": str(tmp_path / ".harness")}
    alone = subprocess.run([HARNESS, "train", str(path), "--jsonl", str(tmp_path / "x.jsonl")],
                           capture_output=True, text=True, env=env, timeout=120)
    assert alone.returncode == 2, alone.stderr[-2000:]
    assert "train.workers is 2 but 1 process(es) run it" in alone.stderr
    torchrun = Path(sys.executable).parent / "torchrun"
    out = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2",  # rendezvous on a free port
         "-m", "harness", "train", str(path), "--jsonl", str(tmp_path / "two.jsonl")],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    logged = read_jsonl(tmp_path / "two.jsonl")
    one = MemoryTracker()
    run_trial(TrialConfig.model_validate(clipping_muon_trial(1, steps=8)), one, None,
              cache_dir=tmp_path / "cache")
    got = [v for _, v in logged.history("test/loss")]
    assert got == pytest.approx([v for _, v in one.history("test/loss")], rel=1e-5)
