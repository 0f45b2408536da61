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
from typing import Any

from harness.config import ConfigError, SweepConfig, TrialConfig
from harness.memory import check_memory, checkpoint_bytes
from harness.prefix import SharePlan
from harness.store import default_tracking_uri


def check_sweep(sweep: SweepConfig, source: str | None = None) -> None:
    """Every trial of the sweep fits this machine's memory (:mod:`harness.memory`); the error
    names the trial by its axis values, after ``source`` (the sweep file) when given."""
    check_workers(sweep)
    for label, trial in sweep.labelled_trials():
        check_trial(trial, f"{source}: {label}" if source else label)


def check_trial(trial: TrialConfig, where: str) -> None:
    """One trial fits this machine's memory; ``where`` names it in the error."""
    check_memory(trial, where)


def check_data(trials: list[TrialConfig], load: bool = True) -> dict[str, str]:
    """Check once per distinct data config that it can feed its trials, naming the key in a
    one-line ConfigError: the path is a folder whose files match, and (``load``: reading and
    tokenizing into the cache, as the trials would) the validation stream holds a window of
    ``seq_len + 1`` tokens and the training stream more than one. Returns each trial's data id
    (``data_sha``, what its run logs) by trial hash when ``load``, else {} (``--dry-run``: only
    what costs nothing is checked)."""
    by_data: dict[str, list[TrialConfig]] = {}
    for t in trials:
        by_data.setdefault(t.data.model_dump_json(), []).append(t)
    ids: dict[str, str] = {}
    for group in by_data.values():
        cfg = group[0].data
        where = f"data.path ({cfg.path})" if cfg.path else f"data.corpus ({cfg.corpus})"
        _check_path(cfg.corpus, cfg.path, cfg.glob, where)
        if load:
            sha = _check_streams(group, where)
            ids.update((t.hash, sha) for t in group)
    return ids


def _check_path(corpus: str, path: str | None, glob: str, where: str) -> None:
    if corpus not in ("text", "tokens") or path is None:
        return
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{where}: not a folder ({root.resolve()})")
    pattern = glob if corpus == "text" else "*.bin"
    files = [p for p in root.glob(pattern) if p.is_file()]
    if not files:
        key = f"data.glob ({glob!r})" if corpus == "text" else "data.path"
        raise ConfigError(f"{key}: no {pattern} files under {root}")
    if sum(p.stat().st_size for p in files) == 0:
        raise ConfigError(f"{where}: its {len(files)} files are empty")


def _check_streams(group: list[TrialConfig], where: str) -> str:
    """Load the group's data; its streams must fit the longest seq_len; returns its data id."""
    from harness.data import load_data
    from harness.store import data_sha

    try:
        data = load_data(group[0].data)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
    need = max(t.train.seq_len for t in group) + 1
    for stream, n, share in (("validation", len(data.val), "data.val_fraction"),
                             ("test", len(data.test), "data.test_fraction"),
                             ("training", len(data.train), None)):
        if n < need:
            more = f"more data, a larger {share}" if share else "more data"
            raise ConfigError(f"{where}: the {stream} stream has {n} tokens, fewer than "
                              f"train.seq_len + 1 ({need}); give {more} or a shorter seq_len")
    return data_sha(data.fingerprint)


def check_replays(done: dict[str, Any], ids: dict[str, str], names: dict[str, str]) -> None:
    """A finished trial is never rerun, so its result must be about today's data: refuse when
    its run logged another data id than its data gives now (files rewritten under the same
    names, another Python's standard library)."""
    for trial_hash, run in done.items():
        logged, now = run.data.params.get("data_sha"), ids.get(trial_hash)
        if logged is not None and now is not None and logged != now:
            raise ConfigError(
                f"trial {names.get(trial_hash, trial_hash)}: finished on data {logged}, but its "
                f"data now gives {now}; its result would be replayed for other data: submit "
                "under a new sweep name to train on the new data")


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


def check_storage(storage: Path, trials: list[TrialConfig], plan: SharePlan | None = None
                  ) -> None:
    """Fail fast, in one line, when ``storage`` cannot take the sweep's checkpoints.

    The folder must take a new file (tried, since root ignores permission bits) and have room
    for two checkpoints per trial to run (``ckpt.pt`` and the ``ckpt.prev.pt`` kept in case it is
    damaged) plus the one being written (sizes from harness.memory), and for each trial's final
    weights (``final.pt``, fp32, kept after it finishes for ``harness rescore``), and for the
    prefix checkpoints ``plan`` has them save (:mod:`harness.prefix`).
    """
    try:
        storage.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=storage):
            pass
    except OSError as e:
        raise ConfigError(f"HARNESS_STORAGE ({storage}): not writable ({e.strerror})") from None
    sizes = [checkpoint_bytes(t) for t in trials]
    need = 2 * sum(sizes) + max(sizes, default=0) + sum(final_weights_bytes(t) for t in trials)
    if plan is not None:
        writers = [(plan.shares.get(t.hash), size) for t, size in zip(trials, sizes, strict=True)]
        need += sum(size * len(share.saves) for share, size in writers
                    if share is not None and share.trunk is None)  # branches write none
    free = shutil.disk_usage(storage).free
    if free < need:
        raise ConfigError(
            f"HARNESS_STORAGE ({storage}): {free / 2**20:.2f} MiB free, the checkpoints of "
            f"{len(trials)} trials need ~{need / 2**20:.2f} MiB"
        )


def final_weights_bytes(trial: TrialConfig) -> int:
    """Bytes of a finished trial's ``final.pt``: fp32 weights, plus 64 KiB for the archive's
    framing, the config and the router biases."""
    return 4 * trial.model.param_counts().total + 65536


def check_resources(sweep: SweepConfig, workers: int = 1) -> None:
    """A trial that no node can ever host would wait forever: fail now, naming the key.
    ``workers``: the most ``train.workers`` of a trial to run (resources are per worker)."""
    import ray

    have = ray.cluster_resources()
    res = sweep.resources
    for key, want in (("cpu", res.cpu), ("gpu", res.gpu)):
        total = want * workers
        if total > have.get(key.upper(), 0.0):
            times = f" x train.workers {workers} = {total:g}" if workers > 1 else ""
            raise ConfigError(
                f"resources.{key} ({want:g}{times}) exceeds what the Ray cluster has "
                f"({have.get(key.upper(), 0.0):g}); use --address with a bigger cluster or "
                "another --profile"
            )


def check_workers(sweep: SweepConfig) -> None:
    """A multi-worker trial on CUDA needs whole GPUs per worker (nccl: one rank per GPU)."""
    gpu = sweep.resources.gpu
    wide = [t for t in sweep.expand() if t.train.workers > 1]
    if wide and gpu and gpu != int(gpu):
        raise ConfigError(
            f"resources.gpu ({gpu:g}): a trial of train.workers {wide[0].train.workers} needs a "
            "whole number of GPUs per worker (nccl runs one rank per GPU)")


