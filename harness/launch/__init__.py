"""Sweeps on Ray Tune: the driver (:mod:`.driver`), the driver-side MLflow callback
(:mod:`.callback`), the trial side of the Ray boundary (:mod:`.worker`) and Ray's set-up
(:mod:`.ray_setup`)."""

from harness.launch.driver import SubmitSummary, submit

__all__ = ["SubmitSummary", "submit"]
