"""Where a trial runs and what it ran with: device choice, peak FLOP/s, reproducibility tags."""

from __future__ import annotations

import importlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks (vendor datasheets), for MFU on CUDA.
_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def importable(module: str) -> bool:
    """Whether ``module`` imports here: Ray and MLflow are needed by sweeps and the MLflow
    tracker only, so a lone GPU box can train and bench without them."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def pick_device(choice: str) -> torch.device:
    """``auto`` takes CUDA when present; asking for CUDA without one is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is visible")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def device_peak_flops(device: torch.device) -> float | None:
    """bf16 peak FLOP/s of a known CUDA device; None on CPU or an unknown GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in _PEAK_BF16.items() if key in name), None)


def git_sha() -> str:
    """Commit of the harness source tree, or ``unknown`` outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def environment_tags(device: torch.device) -> dict[str, str]:
    """Git SHA, package versions, device and threads: enough to reproduce a run."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": package_version("ray"),
        "mlflow": package_version("mlflow"),
        "device": device.type,
        "device_name": name or platform.machine(),
        "threads": str(torch.get_num_threads()),
    }
