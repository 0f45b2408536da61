"""Bad input: mutated sweep files and trials too big for the machine.

``harness submit --dry-run`` on any file either prints the trial table or exits 2 with one line
that names the file and the problem; it never raises, never prints a traceback and never touches
MLflow. Trials whose memory estimate (harness.memory) exceeds the machine are refused up front,
with the figures.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sweeptools import trial_dict

from harness.cli import main
from harness.config import ConfigError, TrialConfig, load_sweep
from harness.memory import GIB, check_memory, checkpoint_bytes, estimate_bytes, estimate_parts
from harness.preflight import check_sweep

VALID: dict[str, Any] = {
    "name": "fuzz",
    "base": trial_dict(16),
    "grid": {"model.moe.n_routed_experts": [4, 8]},
    "seeds": [0],
    "resources": {"cpu": 1},
    "max_concurrent": 2,
}


def _leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if prefix == "" and k == "grid":
            continue
        path = f"{prefix}{k}"
        out.extend(_leaves(v, f"{path}.") if isinstance(v, dict) else [path])
    return out


PATHS = [*_leaves(VALID), "base", "base.model", "base.train", "grid", "seeds", "zip",
         "profiles", "profile", "colour", "base.model.colour", "base.optim.lrr",
         "base.train.micro_batch_tokens", "base.model.attention.kind", "base.data.path",
         "base.data.corpus", "resources.gpu", "analysis.kind", "description"]
AXES = ["model.d_model", "model.moe.top_k", "optim.lr", "optim.name", "train.tokens",
        "train.seq_len", "train.seed", "model.nope", "data.synthetic_vocab", "bad axis", "model"]
SPECIAL = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 10**30, 10**400, 1e308, -1e-300]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 5000), st.integers(-(2**80), 2**80),
    st.sampled_from(SPECIAL), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-3, 300), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(-3, 3), max_size=2),
)
SNIPPETS = [b":", b"[", b"{", b"}", b"\t", b"&x ", b"*x", b"- ", b"'", b'"', b"%YAML 1.1\n",
            b"\n  ", b"!!python/name:os.system ", b"!!int x ", b"!!timestamp 2001-13-45 ",
            b"? ", b"|", b">", b"#", b"\x00", b"\xff\xfe", b"\xc3("]


def _set(spec: dict[str, Any], path: str, value: Any, delete: bool) -> None:
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if delete:
        node.pop(leaf, None)
    else:
        node[leaf] = value


@st.composite
def sweep_files(draw: st.DrawFn) -> bytes:
    """A valid sweep, mutated: keys set to odd values or deleted, axes added, text corrupted."""
    spec = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["set", "set", "delete", "axis"]))
        if op == "axis":
            if not isinstance(spec.get("grid"), dict):
                spec["grid"] = {}
            spec["grid"][draw(st.sampled_from(AXES))] = draw(
                st.one_of(st.lists(VALUES, max_size=3), VALUES))
        else:
            _set(spec, draw(st.sampled_from(PATHS)), draw(VALUES), op == "delete")
    text = yaml.safe_dump(spec).encode()
    how = draw(st.sampled_from(["none", "none", "truncate", "snippet", "bytes"]))
    pos = draw(st.integers(0, len(text)))
    if how == "truncate":
        text = text[:pos]
    elif how == "snippet":
        text = text[:pos] + draw(st.sampled_from(SNIPPETS)) + text[pos:]
    elif how == "bytes":
        text = text[:pos] + draw(st.binary(min_size=1, max_size=4)) + text[pos:]
    return text


def dry_run(folder: Path, text: bytes) -> tuple[int, str, str]:
    """``harness submit FILE --dry-run`` in this process: (exit status, stdout, stderr)."""
    path = folder / "sweep.yaml"
    path.write_bytes(text)
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(["submit", str(path), "--dry-run"])
        except SystemExit as e:
            code = e.code
    return int(code or 0), out.getvalue(), err.getvalue()


def check_outcome(folder: Path, text: bytes) -> tuple[int, str]:
    code, out, err = dry_run(folder, text)
    assert "Traceback" not in out + err
    assert code in (0, 2), (code, err)
    if code == 0:
        assert " trials, " in out and err == "", err
    else:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"harness: error: {folder / 'sweep.yaml'}: "), lines[0]
        assert len(lines[0]) > len(f"harness: error: {folder / 'sweep.yaml'}: ") + 5
    assert not (folder / "mlflow.db").exists() and not (folder / ".harness").exists()
    return code, (out if code == 0 else err)


@pytest.fixture
def folder(project: Path) -> Path:
    return project


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=sweep_files())
@example(text=yaml.safe_dump(VALID).encode())
def test_dry_run_accepts_or_names_the_problem_in_one_line(folder: Path, text: bytes) -> None:
    code, _ = check_outcome(folder, text)
    event(f"exit {code}")


NASTY = {
    "valid": (yaml.safe_dump(VALID), 0, " trials, "),
    "tagged int": ("name: !!int abc\n", 2, "invalid YAML"),
    "bad timestamp": ("name: !!timestamp 2001-13-45\n", 2, "month must be in 1..12"),
    "self reference": ("a: &a [*a]\nname: t\n", 2, "a: unknown key"),
    "recursive base": ("name: t\nbase: &b {model: *b}\n", 2, "base.model.model: unknown key"),
    "huge tokens": ("name: t\nbase: {train: {tokens: " + "9" * 400 + "}}\n", 2,
                    "base.train.tokens: 999999999999... is out of range"),
    "huge width": ("name: t\nbase: {model: {d_model: 1000000000000}}\n", 2, "needs ~"),
    "negative size": ("name: t\nbase: {model: {n_layers: -2}}\n", 2, "base.model.n_layers"),
    "grid explosion": ("name: t\ngrid: {" + ", ".join(
        f"{a}: [{', '.join(str(v) for v in range(1, 11))}]"
        for a in ("model.d_model", "optim.lr", "train.seq_len", "model.n_layers", "train.tokens")
    ) + "}\n", 2, "gives 100000 trials; at most 10000"),
    "not utf-8": (b"name: \xff\xfe\n", 2, "not UTF-8"),
    "control char in a value": ('name: t\ngrid: {model.d_model: ["a\\x1eb"]}\n', 2,
                                "model.d_model=a\\x1eb"),
    "line break in a key": ('name: t\n"bad\\nkey": 1\n', 2, "bad\\nkey: unknown key"),
    "list at top": ("- 1\n- 2\n", 2, "top level must be a mapping"),
    "empty": ("", 2, "top level must be a mapping"),
}


@pytest.mark.parametrize("case", list(NASTY))
def test_known_nasty_files(folder: Path, case: str) -> None:
    text, want, needle = NASTY[case]
    code, msg = check_outcome(folder, text if isinstance(text, bytes) else text.encode())
    assert code == want and needle in msg, msg


# --- memory estimate ---------------------------------------------------------------------------


def trial(**over: Any) -> TrialConfig:
    raw = trial_dict(16)
    for section, values in over.items():
        raw[section] = {**raw[section], **values}
    return TrialConfig.model_validate(raw)


def test_estimate_terms_follow_the_documented_formula() -> None:
    adamw = trial()
    P = adamw.model.param_counts().total
    parts = estimate_parts(adamw)
    assert parts["state"] == 4 * (P + P + 2 * P)  # weights, grads, exp_avg + exp_avg_sq
    assert checkpoint_bytes(adamw) == 4 * 3 * P
    muon = trial(optim={"name": "muon"})
    assert estimate_parts(muon)["state"] < parts["state"]  # one momentum for hidden matrices
    assert parts["data"] == 4 * (100_000 + 2048) + 48 * 32 * 4
    double = trial(train={"batch_tokens": 1024})
    ratio = estimate_parts(double)["activations"] / parts["activations"]
    assert 1.9 < ratio <= 2.0  # linear in micro-batch tokens (the max-logit term is T^2 * B)
    micro = trial(train={"batch_tokens": 1024, "micro_batch_tokens": 512})
    assert estimate_parts(micro)["activations"] == parts["activations"]
    assert estimate_bytes(adamw) == sum(parts.values())


def test_check_memory_names_the_trial_and_the_figures() -> None:
    small = trial()
    check_memory(small, "trial base", capacity_bytes=GIB)  # a few MiB: fits
    big = trial(model={"d_model": 4096, "vocab_size": 65536},
                train={"tokens": 65536, "batch_tokens": 65536, "seq_len": 512})
    with pytest.raises(ConfigError) as e:
        check_memory(big, "trial model.d_model=4096", capacity_bytes=8 * GIB)
    msg = str(e.value)
    need = estimate_bytes(big) / GIB
    assert msg.startswith(f"trial model.d_model=4096: needs ~{need:.1f} GiB (state ")
    assert "machine has 8.0 GiB" in msg and "\n" not in msg


def test_sweep_with_a_trial_too_big_is_refused_before_launch(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_MEMORY_GIB", "2")
    spec = {**VALID, "grid": {"model.d_model": [32, 2048]},
            "base": {**VALID["base"], "model": {**VALID["base"]["model"], "vocab_size": 65536}}}
    path = folder / "big.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"trial model\.d_model=2048: needs ~[\d.]+ GiB .*"
                                          r"machine has 2\.0 GiB \(HARNESS_MEMORY_GIB\)"):
        check_sweep(load_sweep(path))
    spec["grid"] = {"model.d_model": [32, 64]}
    path.write_text(yaml.safe_dump(spec))
    check_sweep(sweep := load_sweep(path))
    assert len(sweep.expand()) == 2


MEASURE = """
import json, resource, sys
import torch
from harness.config import TrialConfig
from harness.data import load_data
from harness.train import Trainer

def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                if l.startswith("VmRSS"))

trial = TrialConfig.model_validate_json(sys.argv[1])
torch.set_num_threads(1)
data = load_data(trial.data, sys.argv[2])
base = rss()
trainer = Trainer(trial, data, torch.device("cpu"))
trainer.train_step()
trainer.train_step()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base))
"""


@pytest.mark.reliability_slow
def test_estimate_is_within_a_factor_two_of_a_measured_train_step(tmp_path: Path) -> None:
    t = trial(model={"d_model": 64, "vocab_size": 8192}, train={"batch_tokens": 2048,
                                                               "seq_len": 256})
    out = subprocess.run([sys.executable, "-c", MEASURE, t.model_dump_json(), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    parts = estimate_parts(t)
    estimate = parts["state"] + parts["activations"]  # data is loaded before the baseline
    assert 0.5 < measured / estimate < 2.0, (measured / 2**20, estimate / 2**20)
