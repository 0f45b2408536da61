"""``harness bench``: speed of the MoE layer, train step, Muon, tracking and Ray scheduling.

``run_bench(device, quick, out_dir)`` runs every case and writes ``bench.json`` and ``bench.md``.
Modules: ``timing`` (interleaved repeats, summaries, machine), ``moe_layer``, ``train_step``,
``muon_step``, ``tracking_cost``, ``scheduling`` (the five cases), ``hf`` (our weights in HF
transformers modules), ``profiling``, ``report`` and ``findings`` (goals, Markdown), ``run``.
"""

from harness.bench.run import run_bench

__all__ = ["run_bench"]
