"""A sweep's finished trials, carried to another machine as their records.

A finished trial's record (``result.json``, :mod:`harness.record`) holds everything its run
logged, and a trial that finds its record replays it instead of training
(:func:`harness.train.run_trial`; a record trained on other data is refused there). So a sweep's
progress moves between machines as records: :func:`save_records` copies the records of the
sweep's finished trials out of a storage folder into one file per trial (``<hash>.json``, small
enough to commit), and :func:`restore_records` puts them back into another storage's checkpoint
folders, where the next submit replays them into its MLflow store and trains only the rest.
Checkpoints of unfinished trials and prefix checkpoints do not travel (megabytes each): those
trials start over, and a branch whose trunk was replayed trains its shared prefix itself.

``python -m harness.carry save|restore|drop SWEEP.yaml FOLDER [--storage DIR]``;
``tools/studies.sh`` saves and restores ``results/records/<sweep>/`` this way.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from harness.checkpoint import DamagedFileError
from harness.config import HarnessError, SweepConfig, load_sweep
from harness.preflight import default_storage
from harness.record import RESULT, parse_record, write_record

log = logging.getLogger(__name__)


def _hashes(sweep: SweepConfig) -> list[str]:
    return [t.hash for t in sweep.expand()]


def _records(hashes: list[str], storage: Path) -> dict[str, Path]:
    """Trial hash -> its ``result.json`` under ``storage``, for the finished ones of ``hashes``."""
    found = {h: storage / "checkpoints" / h / RESULT for h in hashes}
    return {h: p for h, p in found.items() if p.exists()}


def _copy_checked(src: Path, dest: Path) -> bool:
    """Copy one record, after checking it reads whole; a damaged one is left behind (False)."""
    try:
        record = parse_record(src)
    except DamagedFileError as e:
        log.warning("%s not carried: %s", src, e.reason)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_record(record, dest.parent, dest.name)
    return True


def save_records(sweep: SweepConfig, storage: Path, dest: Path) -> int:
    """Copy the records of ``sweep``'s finished trials under ``storage`` to ``dest/<hash>.json``
    (existing copies are replaced); return how many were copied."""
    return sum(_copy_checked(src, dest / f"{h}.json")
               for h, src in sorted(_records(_hashes(sweep), storage).items()))


def restore_records(sweep: SweepConfig, src: Path, storage: Path) -> int:
    """Put each ``src/<hash>.json`` of one of ``sweep``'s trials back as that trial's record
    under ``storage``, where it has none; return how many were restored. Files of trials the
    sweep no longer has (an axis changed since they were saved) are passed over."""
    folder = storage / "checkpoints"
    wanted = set(_hashes(sweep))
    restored = 0
    for path in sorted(src.glob("*.json")):
        target = folder / path.stem / RESULT
        if path.stem in wanted and not target.exists():
            restored += _copy_checked(path, target)
    return restored


def complete(sweep: SweepConfig, storage: Path) -> bool:
    """Whether every trial of ``sweep`` has its record under ``storage``."""
    hashes = _hashes(sweep)
    return len(_records(hashes, storage)) == len(hashes)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.carry",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["save", "restore", "drop"],
                   help="save: storage -> FOLDER; restore: FOLDER -> storage; drop: remove FOLDER "
                        "once every trial of the sweep has its record in the storage")
    p.add_argument("sweep", type=Path, help="the sweep YAML")
    p.add_argument("folder", type=Path, help="where the records are carried (one file a trial)")
    p.add_argument("--profile", default=None, help="the sweep's profile, as submitted")
    p.add_argument("--storage", type=Path, default=None,
                   help="checkpoint storage (default: HARNESS_STORAGE or ./.harness)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line of the module docstring; a bad sweep file is a one-line error, exit 2."""
    args = _parser().parse_args(argv)
    storage = (args.storage or default_storage()).resolve()
    try:
        sweep = load_sweep(args.sweep, args.profile)
    except HarnessError as e:
        print(f"harness.carry: error: {e}", file=sys.stderr)
        return 2
    n = len(sweep.expand())
    if args.action == "save":
        print(f"{sweep.name}: {save_records(sweep, storage, args.folder)} of {n} trials' records "
              f"saved to {args.folder}")
    elif args.action == "restore":
        print(f"{sweep.name}: {restore_records(sweep, args.folder, storage)} of {n} trials' "
              f"records restored from {args.folder}")
    elif complete(sweep, storage) and args.folder.exists():
        shutil.rmtree(args.folder)
        print(f"{sweep.name}: all {n} trials finished; {args.folder} removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
