"""The driver's progress line (harness.launch.callback): trials running, tokens, and an ETA from
the throughput measured since the first tokens arrived."""

from __future__ import annotations

from harness.launch.callback import Throughput, progress_line


def test_eta_counts_from_the_first_tokens_not_from_start_up() -> None:
    clock = Throughput()
    assert clock.eta(1000) is None  # no rate before two reports
    clock.observe(0, now=100.0)  # Ray took 100 s to start: not part of the rate
    assert clock.eta(1000) is None
    clock.observe(500, now=110.0)  # 50 tokens/s
    assert clock.eta(1000) == 20.0


def test_line_counts_running_trials_and_formats_the_eta() -> None:
    clock = Throughput()
    clock.observe(0, now=0.0)
    clock.observe(60_000, now=60.0)
    line = progress_line({}, 4, 240_000, clock)
    assert line == "0/4 done · 0 running · 0 failed · 0.00M/0.24M tokens · ETA 4m00s"
