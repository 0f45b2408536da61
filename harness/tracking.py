"""One narrow logging interface: the Tracker protocol, with MLflow, JSON-lines and in-memory
backends, and the statuses a trial can be in.

:class:`MLflowTracker` writes one trial to one MLflow run that :mod:`harness.store` found or
created (the store owns the layout: experiments, parent runs, which run is whose). A (metric,
step) pair already stored is never written twice, so a retried or resumed trial leaves histories
with no gaps and no duplicates. Metrics go out in ``log_batch`` calls of at most 1000 points,
buffered and retried when the store is briefly unreachable. Nothing here imports MLflow until an
MLflow tracker is used, so a trial runs where MLflow is not installed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from harness.config import HarnessError

log = logging.getLogger(__name__)


class StoreFullError(HarnessError):
    """The tracking store's disk is full: not transient, so nothing is retried."""


class RunDeletedError(HarnessError):
    """The trial's MLflow run was deleted (in the UI, say) while the trial was writing to it."""


_FULL = ("database or disk is full", "No space left on device", "disk I/O error")


class TrialStatus(StrEnum):
    """Where a trial stands; stored as the run's ``status`` tag (the enum's value)."""

    PENDING = "pending"  # driver side only: not started in this submit
    RUNNING = "running"
    FINISHED = "finished"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def done(self) -> bool:
        """Finished or diverged: a result, never run again."""
        return self in (TrialStatus.FINISHED, TrialStatus.DIVERGED)

    @property
    def mlflow_status(self) -> str | None:
        """The MLflow run status that ends a run in this state (None: the run goes on)."""
        return _MLFLOW_STATUS.get(self)

    @classmethod
    def parse(cls, text: str | None) -> TrialStatus | None:
        """The status a tag holds, or None for a missing or unknown one."""
        try:
            return cls(text)
        except ValueError:
            return None


_MLFLOW_STATUS = {
    TrialStatus.FINISHED: "FINISHED", TrialStatus.DIVERGED: "FINISHED",
    TrialStatus.FAILED: "FAILED", TrialStatus.INTERRUPTED: "KILLED",
}
# MLflow error codes that retrying cannot fix (a bad request, not an unreachable store).
_PERMANENT = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")
MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call
MAX_PARAMS = 100  # ... and on params per call


class Tracker(Protocol):
    """What a trial logs through. Steps are optimizer steps."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, name: str, text: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def finish(self, status: TrialStatus) -> None: ...


@dataclass
class MemoryTracker:
    """Keeps everything in memory; for tests and benchmarks."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    artifacts: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    status: TrialStatus = TrialStatus.RUNNING
    writes: int = 0  # (metric, step) points written, duplicates included

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.metrics[key][step] = float(value)
            self.writes += 1

    def log_artifact(self, name: str, text: str) -> None:
        self.artifacts[name] = text

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def finish(self, status: TrialStatus) -> None:
        self.status = TrialStatus(status)

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric in step order."""
        return sorted(self.metrics[key].items())


def with_retry(what: str, fn: Any, *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """Call ``fn``, retrying with backoff (~35 s in all) when the tracking store is briefly
    unreachable; a request the store rejects on its merits is raised at once."""
    delay = 0.5
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # the store's client raises many types; all transient ones retried
            full = next((s for s in _FULL if s in str(e)), None)
            if full is not None:
                raise StoreFullError(f"the MLflow store cannot take more data ({full}): free "
                                     "space, then resume the sweep; nothing is lost") from None
            if attempt == attempts - 1 or getattr(e, "error_code", None) in _PERMANENT:
                raise
            log.warning("MLflow %s failed (%s); retrying in %.1fs", what, type(e).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


class MLflowTracker:
    """Logs one trial to one MLflow run, reattaching to it when it already exists."""

    def __init__(self, client: Any, run_id: str, flush_every: float = 2.0) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._seen = self._stored_points()

    def _stored_points(self) -> set[tuple[str, int]]:
        def read() -> set[tuple[str, int]]:
            run = self.client.get_run(self.run_id)
            seen: set[tuple[str, int]] = set()
            for key in run.data.metrics:
                for m in self.client.get_metric_history(self.run_id, key):
                    seen.add((key, m.step))
            return seen

        return with_retry("read run", read)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        stored = with_retry("read run", self.client.get_run, self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in stored]
        for i in range(0, len(new), MAX_PARAMS):
            batch = new[i : i + MAX_PARAMS]
            with_retry("log params", self.client.log_batch, self.run_id, params=batch)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if (key, step) in self._seen:
                continue
            self._seen.add((key, step))
            self._pending.append(Metric(key, float(value), now, step))
        if time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write buffered metrics; on failure they stay buffered for the next flush."""
        self._last_flush = time.monotonic()
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            try:
                with_retry("log metrics", self.client.log_batch, self.run_id, metrics=batch)
            except StoreFullError:
                raise
            except Exception as e:
                if self.deleted():
                    raise RunDeletedError(f"MLflow run {self.run_id} was deleted") from None
                log.warning("MLflow unreachable (%s); %d points kept", e, len(self._pending))
                return
            del self._pending[: len(batch)]

    def deleted(self) -> bool:
        """Whether the run is gone or deleted (a reachable store that refuses its writes)."""
        try:
            run = self.client.get_run(self.run_id)
        except Exception as e:  # RESOURCE_DOES_NOT_EXIST once the run is purged
            return getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"
        return bool(run.info.lifecycle_stage == "deleted")

    def log_artifact(self, name: str, text: str) -> None:
        with_retry("log artifact", self.client.log_text, self.run_id, text, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retry("set tags", self.client.log_batch, self.run_id, tags=items)

    def finish(self, status: TrialStatus) -> None:
        """Flush everything (retrying hard), tag the harness status, end the MLflow run."""
        if TrialStatus.parse(status) is None:
            raise ValueError(f"status must be one of {[s.value for s in TrialStatus]}, "
                             f"got {status!r}")
        status = TrialStatus(status)
        for _ in range(30):
            self.flush()
            if not self._pending:
                break
            time.sleep(2.0)
        if self._pending:
            raise RuntimeError(f"MLflow unreachable: {len(self._pending)} points not written")
        self.set_tags({"status": status.value})
        if status.mlflow_status is not None:
            with_retry("end run", self.client.set_terminated, self.run_id, status.mlflow_status)


class JsonlTracker:
    """Logs one trial to a JSON-lines file, for a machine without MLflow (a lone GPU box).

    One object per line, written and flushed as it comes, so a crash loses at most the line being
    written: ``{"params": {...}}``, ``{"step": N, "metrics": {...}}``, ``{"tags": {...}}``,
    ``{"artifact": name, "text": ...}``, ``{"status": ...}``. Reopening the file (a resumed trial)
    reads what is there first, and, like :class:`MLflowTracker`, never writes a (metric, step)
    point twice. :func:`read_jsonl` reads a file back as a :class:`MemoryTracker`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        self._seen = {(k, s) for k, points in parse_jsonl(text).metrics.items() for s in points}
        path.parent.mkdir(parents=True, exist_ok=True)
        cut = bool(text) and not text.endswith("\n")
        self._file = path.open("a", encoding="utf-8")
        if cut:  # end the line a crash cut short, so the next one starts on its own
            self._write_raw("\n")

    def _write_raw(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    def _write(self, obj: dict[str, Any]) -> None:
        self._write_raw(json.dumps(obj, sort_keys=True) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        self._write({"params": {k: str(v) for k, v in params.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        new = {k: float(v) for k, v in metrics.items() if (k, step) not in self._seen}
        if new:
            self._seen.update((k, step) for k in new)
            self._write({"step": step, "metrics": new})

    def log_artifact(self, name: str, text: str) -> None:
        self._write({"artifact": name, "text": text})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._write({"tags": {k: str(v) for k, v in tags.items()}})

    def finish(self, status: TrialStatus) -> None:
        self._write({"status": TrialStatus(status).value})
        os.fsync(self._file.fileno())
        self._file.close()


def read_jsonl(path: Path) -> MemoryTracker:
    """What a :class:`JsonlTracker` file holds (empty when there is no file)."""
    return parse_jsonl(path.read_text(encoding="utf-8") if path.exists() else "")


def parse_jsonl(text: str) -> MemoryTracker:
    """The run a :class:`JsonlTracker` file's text holds. A line cut short by a crash is
    skipped; the status is the last one written (running if none)."""
    out = MemoryTracker()
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short
        if "step" in obj:
            out.log_metrics(obj["metrics"], obj["step"])
        out.params.update(obj.get("params", {}))
        out.set_tags(obj.get("tags", {}))
        if "artifact" in obj:
            out.log_artifact(obj["artifact"], obj["text"])
        if "status" in obj:
            out.finish(obj["status"])
    return out
