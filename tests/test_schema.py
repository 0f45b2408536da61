"""The YAML reference is generated from the models, committed, current and complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import TrialConfig, load_sweep
from harness.schema import Row, sweep_sections, trial_sections, yaml_reference

ROOT = Path(__file__).resolve().parent.parent
HARNESS = str(Path(sys.executable).parent / "harness")

# Fields whose model has no description yet. A new field must come with one (its unit too);
# add `Field(description=...)` to any of these and drop it from the list.
UNDESCRIBED = {
    "description", "seeds", "profiles",
    "model.tie_embeddings", "model.attention.kind", "model.moe.score_func",
    "optim.name", "optim.betas", "optim.eps", "optim.nesterov",
    "data.corpus", "data.tokenizer", "train.schedule", "train.device",
}


def _rows(sections: list) -> dict[str, Row]:
    return {row.key: row for sec in sections for row in sec.rows}


def test_committed_reference_is_current() -> None:
    committed = (ROOT / "docs" / "yaml-reference.md").read_text()
    assert committed == yaml_reference(), "docs/yaml-reference.md is stale: run `make docs`"


def test_cli_prints_the_reference() -> None:
    out = subprocess.run([HARNESS, "schema"], capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout == yaml_reference()


def test_every_trial_key_is_documented_once() -> None:
    rows = _rows(trial_sections())
    leaves = {k for k, r in rows.items() if "below" not in r.description}
    assert leaves == set(TrialConfig().flat())
    keys = [r.key for sec in trial_sections() for r in sec.rows]
    assert len(keys) == len(set(keys))


def test_defaults_round_trip_to_the_models_defaults() -> None:
    rows = _rows(trial_sections())
    for key, value in TrialConfig().flat().items():
        text = rows[key].default.strip("`")
        try:
            shown = json.loads(text)
        except json.JSONDecodeError:
            shown = text
        assert shown == value, key


def test_types_bounds_and_required_keys_are_shown() -> None:
    sweep = _rows(sweep_sections())
    trial = _rows(trial_sections())
    assert sweep["name"].default == "required"
    assert sweep["seeds"].type == "list of int, at least 1 item"
    assert sweep["resources.gpu"].type == "float, >= 0"
    assert trial["train.tokens"].type == "int, > 0"
    assert trial["train.schedule"].type == "one of `wsd`, `cosine`, `constant`"
    assert trial["optim.qk_clip_tau"].type == "float or null, > 0"
    assert trial["data.synthetic_vocab"].type == "int, >= 2, <= 65536"
    assert "tokens" in trial["train.eval_every"].description


def test_new_fields_come_with_a_description() -> None:
    rows = _rows([*sweep_sections(), *trial_sections()])
    missing = {k for k, r in rows.items() if not r.description}
    assert missing <= UNDESCRIBED, (
        f"give these fields Field(description=...) with their unit: {sorted(missing - UNDESCRIBED)}"
    )


@pytest.mark.parametrize("sweep", sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml")))
def test_readme_lists_every_shipped_study(sweep: str) -> None:
    assert f"sweeps/{sweep}.yaml" in (ROOT / "README.md").read_text(), (
        f"README.md: add sweeps/{sweep}.yaml to the list of studies"
    )


def test_readme_sweep_example_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    full = [b for b in blocks if "\nbase:" in b]
    assert full, "README.md: no complete sweep YAML example"
    for i, block in enumerate(full):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(block)
        assert load_sweep(path).expand()
