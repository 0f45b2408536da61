"""Timing primitives of the benchmark: interleaved repeats, robust summaries, the machine.

Every timed case runs its variants in one process, round by round, alternating the order
(A B, B A, A B, ...) so that slow drift of a shared machine hits every variant alike. Ratios are
taken per round (A_i / B_i) and then summarised, which cancels drift that a ratio of two medians
measured minutes apart would keep. A summary is the median with the interquartile range and the
min-max spread.

On CPU the MoE-layer and train-step cases run at each of :func:`cpu_thread_counts`: the thread
count a sweep trial gets (:data:`TRIAL_THREADS`) and all cores.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from harness.env import environment_tags, package_version

TRIAL_THREADS = 1
"""torch threads of a sweep trial: ``max(1, int(resources.cpu))`` (``trainable`` in
``harness.launch``), and the shipped sweeps ask for ``cpu: 1``."""


@dataclass(frozen=True)
class Summary:
    """Median, quartiles and extremes of repeated measurements (seconds, or a ratio)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summary of ``values`` (at least one); quartiles by linear interpolation."""
        if not values:
            raise ValueError("Summary.of needs at least one value")
        xs = sorted(values)
        if len(xs) == 1:
            q1 = q3 = xs[0]
        else:
            q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        return cls(statistics.median(xs), q1, q3, xs[0], xs[-1], len(xs))

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


Timings = dict[str, list[float]]
"""Seconds per repeat of each named variant, in round order."""


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A no-op on CPU; ``torch.cuda.synchronize`` on CUDA (kernels are asynchronous)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    sync: Callable[[], None],
    between: Callable[[], None] | None = None,
    budget_s: float | None = None,
    min_repeats: int = 3,
    cpu_out: Timings | None = None,
) -> Timings:
    """Time each function ``repeats`` times after ``warmup`` untimed rounds, interleaved.

    Round r runs the variants in order when r is even and in reverse order when r is odd, so a
    linear drift over two rounds costs every variant the same. ``between`` runs untimed before
    every call (resetting state such as gradients). With ``budget_s``, rounds stop once the timed
    rounds have taken that long and at least ``min_repeats`` (or ``repeats``, if fewer) are done:
    a heavily shared machine gets fewer repeats, not an unbounded run. ``cpu_out``, when given,
    receives the process CPU seconds of each call (all threads, spin-waits included): on an
    oversubscribed machine it shows how much of a wall time was waiting rather than work.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            if between is not None:
                between()
            fns[name]()
            sync()
    out: Timings = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(repeats):
        over = budget_s is not None and time.perf_counter() - start > budget_s
        if over and r >= min(min_repeats, repeats):
            break
        for name in names if r % 2 == 0 else names[::-1]:
            if between is not None:
                between()
            sync()
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            sync()
            out[name].append(time.perf_counter() - t0)
            if cpu_out is not None:
                cpu_out.setdefault(name, []).append(time.process_time() - c0)
    return out


def paired_ratio(timings: Timings, num: str, den: str) -> Summary:
    """Summary over rounds of ``timings[num][i] / timings[den][i]`` (same-round pairs)."""
    return Summary.of([a / b for a, b in zip(timings[num], timings[den], strict=True)])


def summarise(timings: Timings) -> dict[str, dict[str, float | int]]:
    """``{variant: Summary.to_dict()}`` of every variant's seconds."""
    return {name: Summary.of(ts).to_dict() for name, ts in timings.items()}


def gemm_flops_per_s(n: int, device: torch.device, dtype: torch.dtype, reps: int = 3) -> float:
    """Best of ``reps`` timed ``n x n @ n x n`` products, in FLOP/s (2 n^3 FLOPs each)."""
    sync = synchronizer(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def all_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_thread_counts(device: torch.device, threads: int) -> tuple[int, ...]:
    """Thread counts of the MoE-layer and train-step cases: on CPU a sweep trial's
    (:data:`TRIAL_THREADS`) and ``threads`` (all cores by default), once each if equal; on CUDA
    ``threads`` only (the host threads barely matter to the kernels)."""
    if device.type == "cuda":
        return (threads,)
    return tuple(sorted({TRIAL_THREADS, threads}))


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: as they are); restore the count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, threads, versions, commit, GPU, load.

    Versions, commit and GPU name are :func:`harness.env.environment_tags` (the tags every trial
    logs); the bench adds the CPU's name, the core count, transformers and the platform.
    """
    tags = environment_tags(device)
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": tags["torch"],
        "transformers": package_version("transformers"),
        "ray": tags["ray"],
        "mlflow": tags["mlflow"],
        "python": tags["python"],
        "git_sha": tags["git_sha"],
        "platform": platform.platform(),
        "device": device.type,
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = tags["device_name"]
    return info
