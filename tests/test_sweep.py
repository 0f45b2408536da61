"""Sweep files: loading, expansion, hashing, profiles, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import ConfigError, TrialConfig, load_sweep

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))

BASE = {
    "name": "t",
    "base": {
        "model": {"d_model": 32, "n_layers": 2, "moe": {"n_routed_experts": 4, "top_k": 2}},
        "train": {"tokens": 8192, "batch_tokens": 1024, "seq_len": 64},
    },
    "grid": {"model.moe.n_routed_experts": [4, 8], "optim.name": ["adamw", "muon"]},
    "seeds": [0, 1],
}


def write(tmp_path: Path, data: object, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_shipped_sweep_expands_for_every_profile(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    for profile in [None, *raw.get("profiles", {})]:
        sweep = load_sweep(path, profile)
        trials = sweep.expand()
        assert trials, f"{path.name} [{profile}] expands to no trials"
        assert len({t.hash for t in trials}) == len(trials)


def test_expand_is_the_cartesian_product_times_seeds(tmp_path: Path) -> None:
    trials = load_sweep(write(tmp_path, BASE)).expand()
    assert len(trials) == 2 * 2 * 2
    combos = {(t.model.moe.n_routed_experts, t.optim.name, t.train.seed) for t in trials}
    assert len(combos) == 8


def test_zip_axes_move_together(tmp_path: Path) -> None:
    data = {**BASE, "grid": {}, "seeds": [0],
            "zip": {"model.d_model": [32, 64], "train.tokens": [8192, 16384]}}
    trials = load_sweep(write(tmp_path, data)).expand()
    assert [(t.model.d_model, t.train.tokens) for t in trials] == [(32, 8192), (64, 16384)]


def test_hash_is_stable_and_content_based(tmp_path: Path) -> None:
    a = load_sweep(write(tmp_path, BASE)).expand()
    b = load_sweep(write(tmp_path, BASE, "again.yaml")).expand()
    assert [t.hash for t in a] == [t.hash for t in b]
    t = a[0]
    same = TrialConfig.model_validate(t.model_dump(mode="json"))
    assert same.hash == t.hash
    changed = TrialConfig.model_validate({**t.model_dump(), "optim": {"lr": 0.123}})
    assert changed.hash != t.hash


def test_yaml_float_exponents_are_numbers(tmp_path: Path) -> None:
    data = yaml.safe_dump(BASE).replace("tokens: 8192", "tokens: 8.192e3")
    trials = load_sweep(write(tmp_path, data)).expand()
    assert trials[0].train.tokens == 8192


def test_profile_overrides_base_and_resources(tmp_path: Path) -> None:
    data = {**BASE, "profiles": {"big": {"base": {"model": {"d_model": 64}},
                                         "resources": {"gpu": 0.5}}}}
    sweep = load_sweep(write(tmp_path, data), "big")
    assert sweep.resources.gpu == 0.5
    assert all(t.model.d_model == 64 for t in sweep.expand())
    assert all(t.model.n_layers == 2 for t in sweep.expand())


BAD = [
    ({**BASE, "colour": 1}, "colour: unknown key"),
    ({**BASE, "base": {**BASE["base"], "optim": {"lrr": 1}}}, "base.optim.lrr: unknown key"),
    ({**BASE, "base": {**BASE["base"], "model": {"d_model": "wide"}}}, "base.model.d_model"),
    ({**BASE, "grid": {"model.moe.top_k": [2, 9]}}, "top_k (9) must be <= n_routed_experts (4)"),
    ({**BASE, "grid": {"model.moe.n_routed_experts": []}}, "axis has no values"),
    ({**BASE, "zip": {"model.d_model": [32, 64], "train.tokens": [8192]}}, "equal lengths"),
    ({**BASE, "grid": {"model.nope": [1]}}, "nope: unknown key"),
    ({**BASE, "name": "has space"}, "name:"),
]


@pytest.mark.parametrize(("data", "needle"), BAD, ids=[b[1][:30] for b in BAD])
def test_bad_sweeps_raise_one_line_naming_the_key(tmp_path: Path, data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_sweep(write(tmp_path, data))
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg


def test_unknown_profile_lists_known_ones(tmp_path: Path) -> None:
    data = {**BASE, "profiles": {"gpu": {"resources": {"gpu": 1}}}}
    with pytest.raises(ConfigError, match=r"profiles\.tpu: unknown profile \(known: gpu\)"):
        load_sweep(write(tmp_path, data), "tpu")


def test_python_object_tags_are_rejected(tmp_path: Path) -> None:
    text = "name: t\nbase: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_sweep(write(tmp_path, text))


def test_non_utf8_and_broken_yaml(tmp_path: Path) -> None:
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_sweep(p)
    with pytest.raises(ConfigError, match=r"line \d+: invalid YAML"):
        load_sweep(write(tmp_path, "name: t\ngrid: [1, 2\n"))


def test_cli_dry_run_prints_table_and_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    main(["submit", str(write(tmp_path, BASE)), "--dry-run"])
    out = capsys.readouterr().out
    assert "8 trials" in out and "E8-muon-s1" in out
    with pytest.raises(SystemExit) as e:
        main(["submit", str(write(tmp_path, {**BASE, "colour": 1})), "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "colour: unknown key" in err[0]
    assert not (tmp_path / "mlflow.db").exists()


# --- messages that name the key as written, and the nearest valid one --------------------------

TYPOS = [
    ({**BASE, "grid": {"optim.nam": ["adamw"]}},
     "grid.optim.nam: unknown key (did you mean optim.name?) (trial optim.nam=adamw, "),
    ({**BASE, "grid": {}, "zip": {"optim.lrr": [1e-3, 2e-3]}},
     "zip.optim.lrr: unknown key (did you mean optim.lr?)"),
    ({**BASE, "grid": {"model.moee.top_k": [2]}},
     "grid.model.moee.top_k: unknown key (did you mean model.moe.top_k?)"),
    ({**BASE, "base": {**BASE["base"], "optim": {"nam": "adamw"}}},
     "base.optim.nam: unknown key (did you mean base.optim.name?)"),
    ({**BASE, "nmae": "t"}, "nmae: unknown key (did you mean name?)"),
    ({**BASE, "resources": {"gpus": 1}},
     "resources.gpus: unknown key (did you mean resources.gpu?)"),
    ({**BASE, "profiles": {"p": {"grdi": {}}}},
     "profiles.p.grdi: unknown key (did you mean profiles.p.grid?)"),
    ({**BASE, "profiles": {"p": {"base": {"optim": {"lrr": 1}}}}},
     "profiles.p.base.optim.lrr: unknown key (did you mean profiles.p.base.optim.lr?)"),
    ({**BASE, "profiles": {"p": {"grid": {"optim.nam": ["muon"]}}}},
     "profiles.p.grid.optim.nam: unknown key (did you mean optim.name?)"),
    ({**BASE, "grid": {}, "base": {**BASE["base"], "optim": {"name": "muonclip"}}},
     "base.optim.name: 'muonclip' is not an optimizer: MuonClip is name: muon with "
     "qk_clip_tau: 100 (K2)"),
    ({**BASE, "grid": {"optim.name": ["adamw", "adamw+clip"]}},
     "grid.optim.name: 'adamw+clip' is not an optimizer: AdamW with QK-Clip is name: adamw "
     "with qk_clip_tau: 100"),
    ({**BASE, "colour": 1}, "colour: unknown key"),
]


@pytest.mark.parametrize(("data", "needle"), TYPOS, ids=[t[1][:32] for t in TYPOS])
def test_typos_name_the_key_as_written_and_the_nearest_valid_one(
    tmp_path: Path, data: dict, needle: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_sweep(write(tmp_path, data))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 's.yaml'}: {needle}"), msg
    assert "\n" not in msg


def test_an_unused_profile_is_validated_too(tmp_path: Path) -> None:
    data = {**BASE, "profiles": {"ok": {"seeds": [0]},
                                 "bad": {"grid": {"model.moe.top_k": [2, 9]}}}}
    path = write(tmp_path, data)
    for profile in (None, "ok"):
        with pytest.raises(ConfigError, match=r"profiles\.bad\.base\.model\.moe: top_k \(9\)"):
            load_sweep(path, profile)


def test_bad_keys_exit_2_in_one_line_from_the_command(project: Path) -> None:
    from sweeptools import harness

    cases = {"grid": ({**BASE, "grid": {"optim.nam": ["adamw"]}},
                      "grid.optim.nam: unknown key (did you mean optim.name?)"),
             "muonclip": ({**BASE, "grid": {"optim.name": ["muonclip"]}},
                          "'muonclip' is not an optimizer: MuonClip is name: muon with "
                          "qk_clip_tau: 100 (K2)")}
    for name, (data, needle) in cases.items():
        out = harness("submit", str(write(project, data, f"{name}.yaml")), "--dry-run",
                      check=False, timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert lines[0].startswith(f"harness: error: {project / name}.yaml: ")
        assert needle in lines[0], lines[0]
    assert not (project / "mlflow.db").exists()
