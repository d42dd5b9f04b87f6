"""The step timer's arithmetic: only gaps between consecutive steps of one block count."""

from __future__ import annotations

import bench_step_vs_autoround as bench


def test_gaps_skip_the_jump_to_the_next_block():
    stamps = [(0, 1.0), (1, 1.5), (2, 2.25), (0, 10.0), (1, 10.5)]  # a new block restarts at step 0
    assert bench.consecutive_gaps(stamps) == [0.5, 0.75, 0.5]


def test_the_autoround_iteration_line_is_recognised():
    line = "2026-11-22 05:12:01 DEBUG quantizer.py L552: iter 17 loss: 1.234e-02 lr: 0.01"
    match = bench._ITER_LINE.search(line)
    assert match is not None and match.group(1) == "17"
