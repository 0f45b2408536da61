"""Checks before a sweep or trial launches: whether each trial fits this machine, where it will
read and write, and whether it can.

Each failure is a one-line ConfigError (CLI exit status 2) raised before anything is written. The
CLI runs :func:`check_sweep` once, on the sweep's single expansion, for ``--dry-run`` and submit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from harness.config import ConfigError, SweepConfig, TrialConfig
from harness.memory import check_memory, checkpoint_bytes
from harness.store import default_tracking_uri


def check_sweep(sweep: SweepConfig, source: str | None = None) -> None:
    """Every trial of the sweep fits this machine's memory (:mod:`harness.memory`); the error
    names the trial by its axis values, after ``source`` (the sweep file) when given."""
    for label, trial in sweep.labelled_trials():
        check_trial(trial, f"{source}: {label}" if source else label)


def check_trial(trial: TrialConfig, where: str) -> None:
    """One trial fits this machine's memory; ``where`` names it in the error."""
    check_memory(trial, where)


def default_storage() -> Path:
    """``HARNESS_STORAGE`` or ``.harness/`` in the project folder (cwd)."""
    return Path(os.environ.get("HARNESS_STORAGE") or Path.cwd() / ".harness").resolve()


def paths_summary(
    trials: list[TrialConfig], uri: str | None = None, storage: Path | None = None
) -> str:
    """Every folder a submit of ``trials`` would read or write, resolved against the submit
    folder the way the trials will resolve them (``--dry-run`` prints it; nothing is written)."""
    from harness.data.cache import cache_root

    lines = [
        f"storage:   {storage or default_storage()}  (checkpoints, Ray state)",
        f"tracking:  {uri or default_tracking_uri()}",
        f"cache:     {cache_root().resolve()}",
    ]
    by_path: dict[str, list[int]] = {}
    for i, t in enumerate(trials):
        if t.data.path is not None:
            by_path.setdefault(t.data.path, []).append(i)
    for raw, idx in by_path.items():
        p = Path(raw).expanduser().resolve()
        missing = "" if p.is_dir() else "  MISSING"
        which = "all trials" if len(idx) == len(trials) else "trials " + ",".join(map(str, idx))
        lines.append(f"data.path: {raw} -> {p}{missing}  ({which}, read only)")
    return "\n".join(lines)


def check_storage(storage: Path, trials: list[TrialConfig]) -> None:
    """Fail fast, in one line, when ``storage`` cannot take the sweep's checkpoints.

    The folder must take a new file (tried, since root ignores permission bits) and have room
    for one checkpoint per trial to run plus the one being written (harness.memory).
    """
    try:
        storage.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=storage):
            pass
    except OSError as e:
        raise ConfigError(f"HARNESS_STORAGE ({storage}): not writable ({e.strerror})") from None
    sizes = [checkpoint_bytes(t) for t in trials]
    need = sum(sizes) + max(sizes, default=0)
    free = shutil.disk_usage(storage).free
    if free < need:
        raise ConfigError(
            f"HARNESS_STORAGE ({storage}): {free / 2**20:.2f} MiB free, the checkpoints of "
            f"{len(trials)} trials need ~{need / 2**20:.2f} MiB"
        )


def check_resources(sweep: SweepConfig) -> None:
    """A trial that no node can ever host would wait forever: fail now, naming the key."""
    import ray

    have = ray.cluster_resources()
    res = sweep.resources
    for key, want in (("cpu", res.cpu), ("gpu", res.gpu)):
        if want > have.get(key.upper(), 0.0):
            raise ConfigError(
                f"resources.{key} ({want:g}) exceeds what the Ray cluster has "
                f"({have.get(key.upper(), 0.0):g}); use --address with a bigger cluster or "
                "another --profile"
            )


