"""The one module that knows how the harness lays out its MLflow store.

Layout (see docs/design.md):

- one **experiment** per sweep name; beside a local SQLite store its artifacts go to
  ``mlartifacts/<name>/``;
- one **parent run** per sweep: tag ``kind=sweep``, tag ``status`` (``running`` while a submit
  drives it, then ``finished`` or ``incomplete``), the resolved :class:`SweepConfig` as the
  artifact ``sweep.json`` (the *sweep record*, what ``harness resume`` and ``make plots`` read);
- one **trial run** per trial: tags ``trial_hash`` (its identity), ``sweep``, ``arm``,
  ``status`` (a :class:`TrialStatus`) and ``mlflow.parentRunId``; params: every config field
  under its dotted key plus the derived values of :func:`trial_params`, logged once by the trial
  and read back by ``analysis.collect`` (never recomputed there); artifacts ``trial.yaml``,
  ``data.json``, ``max_logits.csv``, ``summary.json``.

Every MLflow search the harness makes is written here. MLflow is imported only when a store is
opened, so trial-side code that imports :func:`trial_params` runs without it.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import (
    ConfigError,
    NotFoundError,
    SweepConfig,
    TrialConfig,
    check_name,
    is_valid_name,
)
from harness.config.names import NAME_RULE
from harness.locks import exclusive
from harness.tracking import MAX_PARAMS, MLflowTracker, TrialStatus, with_retry

log = logging.getLogger(__name__)

SWEEP_RECORD = "sweep.json"
"""Artifact of the parent run holding the resolved sweep."""
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
"""The experiment tag MLflow 3's UI reads to open an experiment on its training runs view."""
RESULTS_DIR = "results"
"""Artifact folder of the parent run for the figures, tables and report section of a sweep."""
UI_PATH = "/#/experiments?workflowType=machine_learning"
"""The experiment list of the MLflow UI on the model-training view (not the GenAI welcome)."""
_PARENTS = "tags.kind = 'sweep'"


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite in the project folder (never the file store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def mlflow_client(uri: str | None = None) -> Any:
    """An MlflowClient for ``uri`` (quiet: no alembic chatter on a new SQLite store).

    A SQLite store is created and migrated on first use; two commands doing that at once race
    in MLflow's schema set-up (``alembic ... CommandError``, ``table _alembic_tmp_metrics already
    exists``) and can leave it half-migrated. So the first use happens here, under a lock file
    beside the database, and every other command waits for it.
    """
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    # set after the import, which configures mlflow's loggers at INFO. The store's own logger
    # prints a traceback for every failed statement (a full disk, a locked database) before
    # the exception reaches the harness, which says what happened in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

    uri = uri or default_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri.removeprefix("sqlite:///"))
    with exclusive(db.with_name(db.name + ".lock"), wait=True):
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # the schema is created and migrated
        except Exception as e:  # sqlalchemy / alembic raise many types
            damage = next((s for s in _DAMAGED if s in str(e)), None)
            if damage is None:
                raise
            raise ConfigError(
                f"MLFLOW_TRACKING_URI ({uri}): the store is damaged ({damage}); restore "
                f"{db.name} from a backup, or move it aside to start an empty store") from None
    return client


_DAMAGED = ("file is not a database", "database disk image is malformed",
            "no such table", "Can't locate revision")
"""What SQLite and alembic say of a truncated, overwritten or half-migrated store."""


def store_exists(uri: str | None = None) -> bool:
    """False for a SQLite store whose file is missing (opening it would create an empty one)."""
    uri = uri or default_tracking_uri()
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


# -- what a trial run logs ------------------------------------------------------------------------
def data_sha(fingerprint: dict[str, Any]) -> str:
    """12-hex id of a corpus fingerprint (``harness.data.TokenData.fingerprint``)."""
    blob = json.dumps(fingerprint, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def trial_params(trial: TrialConfig, fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    """The params a trial run logs: every config field (dotted) plus the derived values the
    analysis groups by and the UI's compare views plot against, computed here once."""
    pc = trial.model.param_counts()
    params: dict[str, Any] = {
        **trial.flat(),
        "arm": trial.optim.arm,
        "params_total": pc.total,
        "params_active": pc.active,
        "params_active_non_embedding": pc.active_non_embedding,
        "sparsity": trial.model.sparsity,
        "steps": trial.train.steps,
        "flops_per_token": trial.model.flops_per_token(trial.train.seq_len),
    }
    if fingerprint is not None:
        params["data_sha"] = data_sha(fingerprint)
    return params


DERIVED = ("arm", "params_total", "params_active", "params_active_non_embedding", "sparsity",
           "steps", "flops_per_token")
"""Keys of :func:`trial_params` beyond the config's own fields (``data_sha`` aside)."""


def decode_param(text: str) -> Any:
    """MLflow params are strings; turn ``64``, ``0.02``, ``None``, ``[0.9, 0.95]`` back."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError):
            continue
    return text


# -- the store ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRun:
    """Where a sweep's runs go: its experiment and its parent run."""

    experiment_id: str
    parent_id: str


class Store:
    """The harness's view of one MLflow tracking store (``uri``, default
    :func:`default_tracking_uri`)."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or default_tracking_uri()
        self.client = mlflow_client(self.uri)

    # experiments and sweeps ------------------------------------------------------------------
    def experiment_id(self, name: str) -> str | None:
        """The id of experiment ``name``, or None when there is none."""
        exp = self.client.get_experiment_by_name(name)
        return None if exp is None else str(exp.experiment_id)

    def ensure_experiment(self, name: str) -> str:
        """Experiment id for ``name``, created (or restored from deletion) when needed, and
        marked as model training so the MLflow UI opens it on its runs, not the GenAI view."""
        check_name(name, "experiment")
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if exp.tags.get(EXPERIMENT_KIND) is None:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            return str(exp.experiment_id)
        location = None
        if self.uri.startswith("sqlite:///"):
            root = Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts"
            location = (root / name).as_uri()
        tags = {EXPERIMENT_KIND: MODEL_TRAINING}
        return str(self.client.create_experiment(name, artifact_location=location, tags=tags))

    def _search(self, experiment_id: str, filter_string: str) -> list[Any]:
        """Every run matching a filter (all pages)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def sweeps(self) -> list[tuple[str, Any]]:
        """``(name, parent run)`` of every experiment that holds a harness sweep (experiments
        whose names are not safe as folder names are left out, with a warning)."""
        out = []
        for exp in self.client.search_experiments():
            if not is_valid_name(exp.name):
                log.warning("skipping MLflow experiment %r: its name %s", exp.name, NAME_RULE)
                continue
            parents = self._search(exp.experiment_id, _PARENTS)
            if parents:
                out.append((exp.name, parents[0]))
        return out

    def sweep_names(self) -> list[str]:
        """Names of the experiments that hold a harness sweep."""
        return [name for name, _ in self.sweeps()]

    def parent(self, name: str) -> Any | None:
        """The parent run of sweep ``name``, or None."""
        exp_id = self.experiment_id(name)
        parents = self._search(exp_id, _PARENTS) if exp_id is not None else []
        return parents[0] if parents else None

    def open_sweep(self, sweep: SweepConfig) -> SweepRun:
        """The sweep's experiment and parent run (created once; later submits reattach), with
        the sweep record written and the parent tagged ``running``."""
        exp_id = self.ensure_experiment(sweep.name)
        parents = self._search(exp_id, _PARENTS)
        if parents:
            run_id = parents[0].info.run_id
        else:
            tags = {"kind": "sweep", "sweep": sweep.name, "mlflow.note.content": sweep.description}
            run_id = self.client.create_run(exp_id, tags=tags, run_name=sweep.name).info.run_id
        self.client.log_text(run_id, sweep.model_dump_json(indent=1), SWEEP_RECORD)
        self.client.set_tag(run_id, "status", "running")
        return SweepRun(exp_id, run_id)

    def close_sweep(self, parent_id: str, complete: bool) -> None:
        """Tag the parent ``finished`` (every trial done) or ``incomplete`` and end it."""
        self.client.set_tag(parent_id, "status", "finished" if complete else "incomplete")
        self.client.set_terminated(parent_id, "FINISHED" if complete else "KILLED")

    def read_sweep_record(self, name: str) -> str | None:
        """The text of the sweep's ``sweep.json``, or None when it has no parent run."""
        parent = self.parent(name)
        if parent is None:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(parent.info.run_id, SWEEP_RECORD, tmp)
            return Path(path).read_text()

    def stored_sweep(self, name: str) -> SweepConfig:
        """The resolved sweep a parent run was submitted with (``harness resume``)."""
        text = self.read_sweep_record(name)
        if text is None:
            raise NotFoundError(f"sweep '{name}' not found in MLflow: submit it first")
        return SweepConfig.model_validate(json.loads(text))

    # trials ----------------------------------------------------------------------------------
    def trial_runs(self, name: str) -> list[Any]:
        """Every run of sweep (experiment) ``name`` except the sweep's parent run."""
        exp_id = self.experiment_id(name)
        if exp_id is None:
            raise NotFoundError(f"no MLflow experiment named '{name}'")
        return [r for r in self._search(exp_id, "") if r.data.tags.get("kind") != "sweep"]

    def finished(self, name: str) -> dict[str, Any]:
        """The sweep's finished or diverged trial runs (never rerun), by trial hash."""
        if self.experiment_id(name) is None:
            return {}
        return {
            r.data.tags["trial_hash"]: r for r in self.trial_runs(name)
            if "trial_hash" in r.data.tags and _is_done(r)
        }

    def open_trial(self, experiment_id: str, trial_hash: str, run_name: str,
                   tags: dict[str, str]) -> MLflowTracker:
        """A tracker on the run of ``trial_hash`` in the experiment, created if it does not
        exist yet. Retried as a whole (find, then create): a create whose reply was lost is
        found by the next attempt instead of being made twice."""

        def find_or_create() -> str:
            runs = self._search(experiment_id, f"tags.trial_hash = '{trial_hash}'")
            if runs:
                run_id: str = runs[0].info.run_id
                if runs[0].info.status != "RUNNING":
                    self.client.update_run(run_id, status="RUNNING")
                return run_id
            all_tags = {**tags, "trial_hash": trial_hash, "status": TrialStatus.RUNNING.value}
            run = self.client.create_run(experiment_id, tags=all_tags, run_name=run_name)
            return str(run.info.run_id)

        return MLflowTracker(self.client, with_retry("attach run", find_or_create))

    def history(self, run_id: str, keys: list[str]) -> dict[str, dict[int, float]]:
        """``{metric: {step: value}}`` of a run's metrics among ``keys``."""
        return {
            key: {m.step: m.value for m in self.client.get_metric_history(run_id, key)}
            for key in keys
        }

    def log_results(self, name: str, files: list[Path], section: str) -> None:
        """A study's files and report section (``report.md``) as artifacts of the sweep's
        parent run, under ``results/``."""
        parent = self.parent(name)
        if parent is None:
            return
        run_id = parent.info.run_id
        for path in files:
            self.client.log_artifact(run_id, str(path), RESULTS_DIR)
        self.client.log_text(run_id, section, f"{RESULTS_DIR}/report.md")

    def log_at_step(self, run_id: str, step: int, metrics: dict[str, float],
                    params: dict[str, Any]) -> None:
        """Log ``metrics`` at ``step`` and ``params`` to an existing (finished) run in one batch;
        its status stays as it is. MLflow params are write-once: each must be new or unchanged."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )

    def log_missing_params(self, run: Any, params: dict[str, Any]) -> int:
        """Log the params ``run`` lacks (MLflow params are write-once); return how many."""
        from mlflow.entities import Param

        missing = [Param(k, str(v)) for k, v in params.items() if k not in run.data.params]
        for i in range(0, len(missing), MAX_PARAMS):
            self.client.log_batch(run.info.run_id, params=missing[i : i + MAX_PARAMS])
        return len(missing)


def _is_done(run: Any) -> bool:
    status = TrialStatus.parse(run.data.tags.get("status"))
    return status is not None and status.done


def run_status(run: Any) -> str:
    """A trial run's status tag as shown to users (``?`` when it has none)."""
    return run.data.tags.get("status", "?")


# -- before anything is launched ------------------------------------------------------------------
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
