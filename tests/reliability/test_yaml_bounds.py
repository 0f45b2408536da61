"""YAML that passed ``--dry-run`` and blew up later is refused at load, fast and small.

Before: a 4 KB alias bomb ("billion laughs") in an unused profile loaded in milliseconds, then
took gigabytes when the sweep record was serialized at submit; a 400-deep list in an unused
profile failed there with ``PydanticSerializationError: Maximum serialization depth exceeded``;
a 3.9 MB file took about a minute and 1.3 GB to ``--dry-run``; an unused profile was never
validated. Now ``read_yaml`` bounds the size, the nodes with aliases expanded and the depth
(``harness.config.files.MAX_YAML_*``) from the event stream, before anything is built, and
``load_sweep`` validates every profile; each refusal is one line naming the file and the rule.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sweeptools import harness, trial_dict

from harness.config import ConfigError, files, load_sweep
from harness.config.files import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, check_shape

ROOT = Path(__file__).resolve().parents[2]
VALID = {"name": "bounds", "base": trial_dict(16), "grid": {"model.moe.n_routed_experts": [4, 8]}}
HEAD = yaml.safe_dump(VALID)


def bomb(levels: int = 9, fan: int = 10) -> str:
    """A valid sweep with a billion-laughs list in an unused profile: fan**levels leaves."""
    lines = ["profiles:", "  unused:", "    description: x", "    base:",
             "      l0: &l0 [" + ", ".join(["lol"] * fan) + "]"]
    lines += [f"      l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]"
              for i in range(1, levels)]
    return HEAD + "\n".join(lines) + "\n"


def deep_list(depth: int) -> str:
    return HEAD + "profiles:\n  unused:\n    description: " + "[" * depth + "]" * depth + "\n"


def deep_by_aliases(links: int) -> str:
    """Nesting built by aliases, in an unused profile: each anchor wraps the one before two
    levels deeper (a few lines, no deep brackets)."""
    lines = ["profiles:", "  unused:", "    base:", "      a0: &a0 [x]"]
    lines += [f"      a{i}: &a{i} [[*a{i - 1}]]" for i in range(1, links)]
    return HEAD + "\n".join(lines) + "\n"


def many_nodes(n: int) -> str:
    return HEAD + "profiles:\n  unused:\n    base:\n      junk: [" + ",".join(["0"] * n) + "]\n"


def big_file() -> str:
    """3.9 MB: an unused profile carrying a long list, as in the issue."""
    return HEAD + "profiles:\n  unused:\n    base:\n      junk: [" + ", ".join(
        str(i) for i in range(520_000)) + "]\n"


CASES = {
    "alias bomb in an unused profile": (bomb(), f"more than {MAX_YAML_NODES} YAML nodes with "
                                                "aliases expanded"),
    "400-deep list in an unused profile": (deep_list(400), f"nested deeper than {MAX_YAML_DEPTH}"),
    "depth built by aliases": (deep_by_aliases(20), f"nested deeper than {MAX_YAML_DEPTH}"),
    "150k plain nodes": (many_nodes(150_000), f"more than {MAX_YAML_NODES} YAML nodes"),
    "3.9 MB file": (big_file(), "MiB is too big for a config file (at most 1 MiB)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line_naming_the_file_and_the_rule(tmp_path: Path, case: str) -> None:
    text, needle = CASES[case]
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and needle in msg and "\n" not in msg, msg


def test_the_bounds_leave_room_for_real_files(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    # profiles.unused.base.x holds 28 nested lists: the innermost is 32 levels deep
    path.write_text(deep_list(MAX_YAML_DEPTH - 4).replace("description:", "base:\n      x:"))
    with pytest.raises(ConfigError, match=r"profiles\.unused\.base\.x: unknown key"):
        load_sweep(path)  # within the depth bound: validated, and the bad key named
    reused = HEAD + "profiles:\n  a: {base: &m {model: {d_model: 64}}}\n  b: {base: *m}\n"
    path.write_text(reused)
    assert load_sweep(path, "b").expand()[0].model.d_model == 64  # an alias used twice is fine
    for shipped in sorted((ROOT / "sweeps").glob("*.yaml")):
        assert shipped.stat().st_size < MAX_YAML_BYTES / 50
        load_sweep(shipped)


def test_aliases_count_the_size_and_depth_of_what_they_stand_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the sequence, the anchored list and its 3 scalars, then the alias: 1 + 4 + 4 = 9 nodes
    monkeypatch.setattr(files, "MAX_YAML_NODES", 9)
    check_shape("- &a [0, 0, 0]\n- *a\n")
    monkeypatch.setattr(files, "MAX_YAML_NODES", 8)
    with pytest.raises(ConfigError, match="line 2: more than 8 YAML nodes"):
        check_shape("- &a [0, 0, 0]\n- *a\n")
    # b's list (depth 2) holds *a, 3 levels high (list, list, scalar): 5 levels
    monkeypatch.setattr(files, "MAX_YAML_NODES", 100)
    monkeypatch.setattr(files, "MAX_YAML_DEPTH", 5)
    check_shape("a: &a [[x]]\nb: [*a]\n")
    monkeypatch.setattr(files, "MAX_YAML_DEPTH", 4)
    with pytest.raises(ConfigError, match="line 2: nested deeper than 4 levels"):
        check_shape("a: &a [[x]]\nb: [*a]\n")
    check_shape("a: &a [*a, *a, *a]\n")  # recursive: a cycle is built, not copies


def test_a_bad_unused_profile_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + "profiles:\n  gpu: {resources: {gpu: 1}}\n"
                    "  unused: {base: {optim: {nam: muon}}}\n")
    for profile in (None, "gpu"):
        with pytest.raises(ConfigError, match=r"s\.yaml: profiles\.unused\.base\.optim\.nam: "
                                              r"unknown key \(did you mean profiles\.unused\."
                                              r"base\.optim\.name\?\)"):
            load_sweep(path, profile)


MEASURE = """
import json, resource, sys, time
from harness.config import ConfigError, load_sweep

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

before = peak()
start, cpu = time.perf_counter(), time.process_time()
try:
    load_sweep(sys.argv[1])
    msg = None
except ConfigError as e:
    msg = str(e)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                  "grew_kib": peak() - before, "msg": msg}))
"""


def _limit_memory() -> None:
    # a regression must fail the test, not the machine
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("case", list(CASES))
def test_refusal_is_fast_and_small(tmp_path: Path, case: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(CASES[case][0])
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True,
                         text=True, timeout=120, preexec_fn=_limit_memory)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["msg"] and CASES[case][1] in got["msg"], got
    assert got["cpu"] < (1.0 if yaml.__with_libyaml__ else 10.0), got  # ~1 ms, 0.2 s for 100k
    assert got["seconds"] < 10.0, got  # wall time, on a loaded machine
    assert got["grew_kib"] < 64 * 1024, got  # peak RSS grows < 64 MiB (the file is read once)


def test_the_command_refuses_the_bomb_in_one_line(project: Path) -> None:
    path = project / "bomb.yaml"
    path.write_text(bomb())
    out = harness("submit", str(path), "--dry-run", check=False, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"harness: error: {path}: line "), lines[0]
    assert "aliases expanded" in lines[0]
    assert not (project / "mlflow.db").exists()
