"""A starting point for SignRound's clipping: the per-group range shrink that best reproduces the
layer's output under round-to-nearest.

auto-round starts every group's min/max multipliers at 1 (no clipping). With a learning rate of
1/iters decayed linearly to zero, a multiplier can travel about 0.5 in total, one sign step at a
time; at 2 bits, where the best clip is often 0.6-0.8 of the range, much of the budget goes into
getting there instead of refining it. This search starts each group at the ratio ``r`` (applied to
both multipliers) that minimises the activation-weighted error of round-to-nearest, ``sum_j
E[x_j^2] (w_j - qdq_r(w_j))^2`` over the group's columns ``j``: the output error the layer would
add on the calibration inputs, if the input columns were uncorrelated (the same importance weighting
as llama.cpp's imatrix and auto-round's own RTN search). The ratio 1 is always a candidate, so the
start is never worse than auto-round's by this measure.
"""

from __future__ import annotations

import torch
from torch import Tensor

from auto_round_mllm.quant.ops import fake_quant, qparams_from_range

RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))
"""Candidate multipliers, 1.0 down to 0.5 (below half the range, tuning never wins anything back).
Steps of 0.05 are as fine as the start needs to be: the sign steps then move each multiplier by up
to 0.5 in steps of lr. Each candidate costs about ten passes over the layer's weights."""

CHUNK_ROWS = 8192
"""Groups evaluated at once: bounds the search's scratch memory to a few MB per candidate."""


@torch.no_grad()
def best_clip_ratios(
    groups: Tensor,
    wmin: Tensor,
    wmax: Tensor,
    *,
    bits: int,
    sym: bool,
    scale_dtype: torch.dtype,
    column_weights: Tensor | None = None,
    ratios: tuple[float, ...] = RATIOS,
) -> Tensor:
    """Per group (row of ``groups``), the ratio among ``ratios`` with the lowest weighted RTN error.

    ``column_weights`` is the input's mean square per column as ``[groups per row, gs]`` (row
    ``n * G + k`` of ``groups`` covers columns ``k * gs ...``); without it every column counts the
    same. Ties keep the larger ratio.
    """
    best_ratio = torch.ones(groups.shape[0], dtype=torch.float32, device=groups.device)
    for start in range(0, groups.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        chunk = groups[rows].float()
        weights = None
        if column_weights is not None:
            index = torch.arange(start, start + chunk.shape[0], device=groups.device)
            weights = column_weights[index % column_weights.shape[0]].float()
        best_error = torch.full((chunk.shape[0],), float("inf"), device=groups.device)
        for ratio in sorted(ratios, reverse=True):
            multiplier = torch.full_like(best_error, ratio)
            scale, zp = qparams_from_range(
                wmin[rows], wmax[rows], bits, sym, multiplier, multiplier, scale_dtype=scale_dtype
            )
            squared = (fake_quant(chunk, scale, zp, bits) - chunk).pow_(2)
            if weights is not None:
                squared.mul_(weights)
            error = squared.sum(dim=1)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_ratio[rows] = torch.where(better, torch.full_like(error, ratio), best_ratio[rows])
    return best_ratio
