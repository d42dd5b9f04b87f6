"""AutoRound's weight-quantizer math: grouping, scale/zero-point, fake quantization and integer codes.

Everything here is a pure function of its tensor arguments so that the tuning loop, the exporters and the
tests all see the same numbers. The semantics follow auto-round exactly (including its "full-range
symmetric" scheme whose scale may be negative), because a checkpoint is only loadable by auto-round's
kernels if its codes, scales and zero points mean the same thing there.

Layout convention: a weight ``[out, in]`` is viewed as ``R = out * G`` rows of ``gs`` columns, where row
``n * G + k`` holds columns ``k * gs .. k * gs + gs - 1`` of output channel ``n``. Scales and zero points
are per row, i.e. shape ``[R]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from auto_round_mllm.config import group_length


def round_ste(x: Tensor) -> Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through estimator).

    SignRound learns a rounding offset ``v``; without the STE the gradient of ``round`` is zero
    almost everywhere and ``v`` would never move. ``(r - x) + x`` equals ``r`` exactly in floating point,
    so the forward value is the true rounding.
    """
    return (x.round() - x).detach() + x


def to_groups(weight: Tensor, group_size: int) -> Tensor:
    """View ``[out, in]`` as ``[out * G, gs]`` so every quantization group is one row.

    Per-row reductions (min/max) then give per-group statistics without any indexing.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    gs = group_length(in_features, group_size)
    if gs <= 0 or in_features % gs != 0:
        raise ValueError(f"in_features={in_features} is not divisible by group_size={group_size}")
    return weight.reshape(out_features * (in_features // gs), gs)


def from_groups(groups: Tensor, out_features: int) -> Tensor:
    """Inverse of :func:`to_groups`: ``[out * G, gs]`` back to ``[out, in]``."""
    if groups.dim() != 2 or groups.shape[0] % out_features != 0:
        raise ValueError(f"cannot split groups of shape {tuple(groups.shape)} into {out_features} rows")
    return groups.reshape(out_features, -1)


def scale_eps(scale_dtype: torch.dtype) -> float:
    """Smallest scale magnitude; 1e-5 keeps half-precision scales away from subnormals."""
    return 1e-8 if scale_dtype == torch.float32 else 1e-5


def _unit_or(t: Tensor | None, like: Tensor) -> Tensor:
    """A learned min/max multiplier clamped to [0, 1], or ones when the caller does not tune it
    (the one place the clipping multipliers are clamped)."""
    if t is None:
        return torch.ones(like.shape[0], dtype=torch.float32, device=like.device)
    return t.clamp(0, 1)


def group_range(groups: Tensor) -> tuple[Tensor, Tensor]:
    """Per-group ``(wmin, wmax)`` widened to include zero; constant while tuning, so computed once."""
    groups = groups.float()
    return groups.amin(dim=-1).clamp(max=0), groups.amax(dim=-1).clamp(min=0)


def qparams(
    groups: Tensor,
    bits: int,
    sym: bool,
    min_scale: Tensor | None = None,
    max_scale: Tensor | None = None,
    scale_dtype: torch.dtype = torch.float16,
) -> tuple[Tensor, Tensor]:
    """Per-group ``(scale, zero_point)`` as auto-round computes them.

    The range always includes zero (``wmin <= 0 <= wmax``) and is shrunk by the learned ``min_scale`` /
    ``max_scale`` multipliers, which is how SignRound tunes clipping. Returns ``scale`` in ``scale_dtype``
    (the dtype it will be stored in, so tuning sees the stored rounding) and ``zp`` as fp32.
    """
    wmin, wmax = group_range(groups)
    return qparams_from_range(wmin, wmax, bits, sym, min_scale, max_scale, scale_dtype)


def qparams_from_range(
    wmin: Tensor,
    wmax: Tensor,
    bits: int,
    sym: bool,
    min_scale: Tensor | None = None,
    max_scale: Tensor | None = None,
    scale_dtype: torch.dtype = torch.float16,
) -> tuple[Tensor, Tensor]:
    """:func:`qparams` for a precomputed :func:`group_range`."""
    wmin = wmin * _unit_or(min_scale, wmin)
    wmax = wmax * _unit_or(max_scale, wmax)
    eps = scale_eps(scale_dtype)
    if sym:
        return _sym_qparams(wmin, wmax, bits, eps, scale_dtype)
    return _asym_qparams(wmin, wmax, bits, eps, scale_dtype)


def _sym_qparams(
    wmin: Tensor, wmax: Tensor, bits: int, eps: float, scale_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Full-range symmetric: the dominant side maps exactly to code 0 (``-maxq``).

    A negative scale when the positive side dominates (or ties) lets that side use code 0, so all
    ``2**bits`` codes are reachable instead of ``2**bits - 1``.
    """
    maxq = 2 ** (bits - 1)
    wmin_abs = -wmin
    max_v = torch.where(wmax < wmin_abs, wmin_abs, -wmax)
    scale = (max_v / maxq).to(scale_dtype)
    scale = torch.where(scale < 0, scale.clamp(max=-eps), scale.clamp(min=eps))
    zp = torch.full_like(wmax, float(maxq), dtype=torch.float32)
    return scale, zp


def _asym_qparams(
    wmin: Tensor, wmax: Tensor, bits: int, eps: float, scale_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Min-max affine: zero point chosen so that ``0.0`` is exactly representable."""
    maxq = 2**bits - 1
    scale = ((wmax - wmin) / maxq).to(scale_dtype).clamp(min=eps)
    zp = round_ste(-wmin / scale.float()).clamp(0, maxq)
    return scale, zp


def _quantize(groups: Tensor, scale: Tensor, zp: Tensor, bits: int, v: Tensor | None) -> Tensor:
    """Integer codes as fp32 (differentiable via STE). Shared by fake_quant and to_codes so they agree."""
    s = scale.float()[:, None]
    x = groups / s
    if v is not None:
        x = x + v
    return torch.clamp(round_ste(x) + zp.float()[:, None], 0, 2**bits - 1)


def _dequantize(q: Tensor, scale: Tensor, zp: Tensor) -> Tensor:
    """``s * (q - zp)`` in fp32; the single place that defines what a code means."""
    return scale.float()[:, None] * (q - zp.float()[:, None])


def fake_quant(groups: Tensor, scale: Tensor, zp: Tensor, bits: int, v: Tensor | None = None) -> Tensor:
    """Quantize then dequantize in fp32, keeping gradients to ``v`` and to the min/max multipliers.

    ``v`` is SignRound's learned rounding offset, added before rounding. The value is exactly
    :func:`_dequantize` of :func:`_quantize`; the gradients are theirs too (straight-through
    rounding, clamp masking), but computed by :class:`FakeQuantFunction`, which saves no
    weight-sized intermediate for the backward pass and recomputes them instead: autograd would
    keep four fp32 copies of every weight of the block alive between forward and backward.
    """
    if v is None:
        v = torch.zeros((), dtype=torch.float32, device=groups.device)
    return FakeQuantFunction.apply(groups, scale, zp, v, bits)


class FakeQuantFunction(torch.autograd.Function):
    """``s * (clamp(round(g / s + v) + zp, 0, maxq) - zp)`` with a hand-written backward.

    Both passes work in place on one fp32 buffer the size of the weight (plus a bool mask in the
    backward), so tuning a block never holds more than a few weight-sized temporaries of its
    largest layer. The forward value is bit-identical to :func:`_quantize` + :func:`_dequantize`
    (``round_ste``'s ``(round(x) - x) + x`` is exactly ``round(x)`` at these magnitudes).
    """

    @staticmethod
    def forward(ctx, groups: Tensor, scale: Tensor, zp: Tensor, v: Tensor, bits: int) -> Tensor:  # type: ignore[override]
        ctx.bits = bits
        ctx.save_for_backward(groups, scale, zp, v)  # groups in the weight's own dtype: no copy
        s = scale.float()[:, None]
        z = zp.float()[:, None]
        out = torch.div(groups, s)  # fp32, whatever the weight's dtype
        out.add_(v).round_().add_(z).clamp_(0, 2**bits - 1)
        return out.sub_(z).mul_(s)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        groups, scale, zp, v = ctx.saved_tensors
        maxq = 2**ctx.bits - 1
        s = scale.float()[:, None]
        z = zp.float()[:, None]
        q = torch.div(groups, s).add_(v).round_().add_(z)
        inside = (q >= 0) & (q <= maxq)
        q.clamp_(0, maxq).sub_(z)  # q - zp, as the forward used it
        grad = grad.float()  # a copy for a bf16 gradient, or the incoming fp32 tensor: not modified
        grad_scale = grad_zp = None
        if ctx.needs_input_grad[1]:
            direct = q.mul_(grad).sum(dim=1)  # out = s * (q - zp): d out / d s, directly
        del q
        grad_x = grad * s  # d out / d q, then masked: straight-through rounding, zero where clamped
        if ctx.needs_input_grad[2]:
            unmasked = grad_x.sum(dim=1)
        grad_x.mul_(inside)
        del inside
        if ctx.needs_input_grad[1]:
            # ... and through q, via x = g / s
            through_x = torch.mul(grad_x, groups).sum(dim=1) / -(s[:, 0] * s[:, 0])
            grad_scale = (direct + through_x).to(scale.dtype)
        if ctx.needs_input_grad[2]:
            grad_zp = (grad_x.sum(dim=1) - unmasked).to(zp.dtype)  # s * (inside - 1)
        grad_v = None
        if ctx.needs_input_grad[3]:
            grad_v = grad_x if v.dim() else grad_x.sum()
        return None, grad_scale, grad_zp, grad_v, None


@torch.no_grad()
def to_codes(groups: Tensor, scale: Tensor, zp: Tensor, bits: int, v: Tensor | None = None) -> Tensor:
    """The integer codes (uint8) that :func:`fake_quant` would dequantize; used for export."""
    return _quantize(groups, scale, zp, bits, v).to(torch.uint8)


def from_codes(codes: Tensor, scale: Tensor, zp: Tensor) -> Tensor:
    """Dequantize stored codes; bit-exact with :func:`fake_quant` for the same parameters."""
    return _dequantize(codes.float(), scale, zp)


def sqnr_db(reference: Tensor, approx: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (``inf`` when ``approx`` is exact)."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(signal / noise)
