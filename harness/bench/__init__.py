"""``harness bench``: speed of the MoE layer, train step, Muon, tracking and Ray scheduling.

``run_bench(device, quick, out_dir)`` runs every case and writes ``bench.json`` and ``bench.md``.
Modules: ``timing`` (interleaved repeats, summaries, thread counts, machine), ``moe_layer``,
``train_step``, ``muon_step``, ``tracking_cost``, ``scheduling`` (the five cases), ``hf`` (our
weights in HF transformers modules, also used by ``tests/test_hf_parity.py``), ``profiling``,
``report`` (goals, Markdown), ``run``. What the cases measure and the analysis of each goal's
misses: ``docs/bench.md``.

``run_bench`` is imported on first use, so that ``harness.bench.hf`` and the other helpers load
without the cases' dependencies (Ray, MLflow, the trainer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.bench.run import run_bench

__all__ = ["run_bench"]


def __getattr__(name: str) -> Any:
    """``run_bench`` from :mod:`harness.bench.run`, imported when first asked for."""
    if name == "run_bench":
        from harness.bench.run import run_bench

        return run_bench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
