"""One narrow logging interface: the Tracker protocol, with MLflow and in-memory backends.

MLflow layout: one experiment per sweep name; a parent run per sweep (tag ``kind=sweep``), a child
run per trial (tags ``mlflow.parentRunId``, ``trial_hash``, ``sweep``, ``status``). A retried or
resumed trial reattaches to its run, and a (metric, step) pair already stored is never written
twice, so histories have no gaps and no duplicates. Metrics go out in ``log_batch`` calls of at
most 1000 points, buffered and retried when the store is briefly unreachable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

STATUSES = ("running", "finished", "diverged", "failed", "interrupted")
_MLFLOW_STATUS = {
    "finished": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED",
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
    def finish(self, status: str) -> None: ...


@dataclass
class MemoryTracker:
    """Keeps everything in memory; for tests and benchmarks."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    artifacts: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "running"
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

    def finish(self, status: str) -> None:
        self.status = status

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric in step order."""
        return sorted(self.metrics[key].items())


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite in the project folder (never the file store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def mlflow_client(uri: str | None = None) -> Any:
    """An MlflowClient for ``uri`` (quiet: no alembic chatter on a new SQLite store)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    # set after the import, which configures mlflow's loggers at INFO
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

    return MlflowClient(tracking_uri=uri or default_tracking_uri())


def get_or_create_experiment(client: Any, name: str) -> str:
    """Experiment id for a sweep name (artifacts beside a local SQLite store)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        location = (root / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def find_runs(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run matching a filter (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _with_retry(what: str, fn: Any, *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """Call ``fn``, retrying with backoff (~35 s in all) when the tracking store is briefly
    unreachable; a request the store rejects on its merits is raised at once."""
    delay = 0.5
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # the store's client raises many types; all transient ones retried
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

    @classmethod
    def attach(
        cls,
        client: Any,
        experiment_id: str,
        trial_hash: str,
        run_name: str,
        tags: dict[str, str],
    ) -> MLflowTracker:
        """The run of ``trial_hash`` in the experiment, created if it does not exist yet.

        Retried as a whole (find, then create): a create whose reply was lost is found by the
        next attempt instead of being made twice.
        """

        def find_or_create() -> str:
            runs = find_runs(client, experiment_id, f"tags.trial_hash = '{trial_hash}'")
            if runs:
                run_id: str = runs[0].info.run_id
                if runs[0].info.status != "RUNNING":
                    client.update_run(run_id, status="RUNNING")
                return run_id
            all_tags = {**tags, "trial_hash": trial_hash, "status": "running"}
            return client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id

        return cls(client, _with_retry("attach run", find_or_create))

    def _stored_points(self) -> set[tuple[str, int]]:
        def read() -> set[tuple[str, int]]:
            run = self.client.get_run(self.run_id)
            seen: set[tuple[str, int]] = set()
            for key in run.data.metrics:
                for m in self.client.get_metric_history(self.run_id, key):
                    seen.add((key, m.step))
            return seen

        return _with_retry("read run", read)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        stored = _with_retry("read run", self.client.get_run, self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in stored]
        for i in range(0, len(new), MAX_PARAMS):
            _with_retry("log params", self.client.log_batch, self.run_id, params=new[i : i + 100])

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
                _with_retry("log metrics", self.client.log_batch, self.run_id, metrics=batch)
            except Exception as e:
                log.warning("MLflow unreachable (%s); %d points kept", e, len(self._pending))
                return
            del self._pending[: len(batch)]

    def log_artifact(self, name: str, text: str) -> None:
        _with_retry("log artifact", self.client.log_text, self.run_id, text, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        _with_retry("set tags", self.client.log_batch, self.run_id, tags=items)

    def finish(self, status: str) -> None:
        """Flush everything (retrying hard), tag the harness status, end the MLflow run."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        for _ in range(30):
            self.flush()
            if not self._pending:
                break
            time.sleep(2.0)
        if self._pending:
            raise RuntimeError(f"MLflow unreachable: {len(self._pending)} points not written")
        self.set_tags({"status": status})
        if status in _MLFLOW_STATUS:
            _with_retry("end run", self.client.set_terminated, self.run_id, _MLFLOW_STATUS[status])


@contextlib.contextmanager
def _scoped_env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_store(uri: str | None = None) -> None:
    """Fail fast, in one line, when the tracking store cannot be written (before any launch).

    A SQLite store's folder must take a new file (tried, not inferred from permission bits,
    which root ignores). A server gets one quick request; its short timeout and no-retry
    apply to that request only, so the sweep's own requests keep MLflow's patient retries and
    ride out a server restart.
    """
    from harness.config import ConfigError

    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise ConfigError(
                f"MLFLOW_TRACKING_URI ({uri}): folder {folder} is not writable ({e.strerror})"
            ) from None
        return
    try:
        with _scoped_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5"):
            mlflow_client(uri).search_experiments(max_results=1)
    except Exception as e:
        reason = str(e).splitlines()[0][:200]
        raise ConfigError(f"MLFLOW_TRACKING_URI ({uri}): store unreachable: {reason}") from None
