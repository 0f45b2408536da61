"""Ray's environment and start-up for a submit: local Ray, or a running cluster by address."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def ray_env(address: str | None) -> str | None:
    """Resolve the cluster address and set Ray's environment; call before importing ray."""
    address = address or os.environ.get("RAY_ADDRESS")
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if address and "RAY_AUTH_MODE" not in os.environ and token.exists():
        # `ray start --head` enables token auth and writes this token; a driver joining with an
        # explicit address must opt in to send it.
        os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return address


TRAIN_ENV = {
    # Ray Train's controller takes each worker's report when it polls them (every 2 s by
    # default) and a worker blocks until then, so a multi-worker trial logging every few steps
    # would wait more than it trains; polling is one small RPC.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
                                                        "0.2"),
    # spot-preemption notices for Ray Train's own checkpoints, which trials do not use: a
    # retried trial resumes from its harness checkpoint
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
                                                          "0"),
}
"""Ray Train settings of multi-worker trials, for every Ray worker (an environment variable of
the same name on the submitting machine wins)."""


QUIET_LOGGERS = (
    # every report, whole (each metric twice on the console)
    "ray.train.v2._internal.execution.context",
    # asks the State API, which needs the dashboard that local Ray here runs without, every few
    # seconds of every multi-worker trial; its only job is cleaning up after a dead controller
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
)


def quiet_ray_train() -> None:
    """Ray worker set-up hook: Ray Train's per-report and State API chatter at ERROR only.
    Imports nothing (it runs in every Ray worker); the Train context logs under its file path."""
    import ray

    context = Path(ray.__file__).parent / "train" / "v2" / "_internal" / "execution" / "context.py"
    for name in (*QUIET_LOGGERS, str(context)):
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(address: str | None) -> None:
    """Embedded local Ray unless an address (or ``RAY_ADDRESS``) names a running cluster."""
    import ray

    if ray.is_initialized():
        return
    for quiet in ("ray.tune.analysis", "ray.tune.tune", "ray._private.authentication"):
        logging.getLogger(quiet).setLevel(logging.ERROR)
    ray.init(
        address=address or "local",  # None would join a `ray start` cluster found on the machine
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env={"env_vars": {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", **TRAIN_ENV},
                     "worker_process_setup_hook": "harness.launch.ray_setup.quiet_ray_train"},
    )
    term_as_interrupt()  # ray.init installs a SIGTERM handler that aborts with a stack dump


def trial_slots(cpu: float, gpu: float) -> int:
    """Trials of ``cpu`` CPUs and ``gpu`` GPUs the Ray cluster can run at once (at least 1)."""
    import ray

    have = ray.cluster_resources()
    fits = [have.get("CPU", 0.0) / cpu] + ([have.get("GPU", 0.0) / gpu] if gpu else [])
    return max(1, int(min(fits)))


def term_as_interrupt() -> None:
    """SIGTERM (``timeout``, systemd, Kubernetes, Slurm preemption) stops a sweep the way Ctrl-C
    does: Ray Tune ends the trials cleanly on SIGINT, so SIGTERM is turned into it."""

    def forward(signum: int, frame: Any) -> None:
        log.warning("SIGTERM: stopping the sweep as for Ctrl-C")
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, forward)
