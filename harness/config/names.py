"""Names that become folder and file names: sweeps, MLflow experiments.

A sweep's name is its MLflow experiment, its results folder (``results/<name>/``), its cache
files and its lock; ``harness train --experiment`` names an experiment whose artifacts go to
``mlartifacts/<name>/``. Any experiment in a shared store can be named anything, so every name
from the command line or from the store passes :func:`check_name` before it becomes a path.
"""

from __future__ import annotations

import re

from harness.config.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = ("must be 1-64 letters, digits, '_', '.', '-' (no spaces), starting with a letter "
             "or digit")


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is safe as one path component (no ``/``, no ``..``, no leading dot)."""
    return NAME.fullmatch(name) is not None


def check_name(name: str, key: str) -> str:
    """``name``, or a one-line ConfigError naming ``key`` and the rule."""
    if not is_valid_name(name):
        raise ConfigError(f"{key} ({name!r}): {NAME_RULE}")
    return name
