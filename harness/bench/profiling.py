"""Where the time goes: the top operators of one call under ``torch.profiler``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def top_ops(fn: Callable[[], object], device: torch.device, rows: int = 12) -> dict[str, Any]:
    """Profile one call of ``fn`` (already warm); the ``rows`` operators with most self time.

    Returns ``{"total_ms": ..., "ops": [{"name", "self_ms", "share", "calls"}, ...]}``, self time
    on the CPU (or on the GPU for CUDA, where kernels are asynchronous).
    """
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total_us = sum(getattr(e, attr) for e in events) or 1.0
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:rows]
    return {
        "total_ms": total_us / 1e3,
        "ops": [
            {"name": e.key, "self_ms": getattr(e, attr) / 1e3,
             "share": getattr(e, attr) / total_us, "calls": e.count}
            for e in top
        ],
    }
