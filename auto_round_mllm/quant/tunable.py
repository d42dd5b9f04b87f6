"""A Linear whose weight is fake-quantized with learnable SignRound parameters.

SignRound tunes, per block, a rounding offset ``v`` (one per weight, in code units) and per-group
multipliers on the weight range (``min_scale`` / ``max_scale``, clipping). :class:`TunableLinear` holds
those parameters around an untouched ``nn.Linear``; :func:`wrap_linears` / :func:`unwrap_linears` swap it
in and out of a block, and :meth:`TunableLinear.finalize` freezes the result into integer codes that
dequantize to exactly what the tuned block computed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.quant.clip_search import best_clip_ratios
from auto_round_mllm.quant.kernel import QdqFunction, qdq
from auto_round_mllm.quant.ops import (
    from_codes,
    from_groups,
    group_range,
    qparams_from_range,
    to_codes,
    to_groups,
)


@dataclass
class QuantizedWeight:
    """The exportable result for one Linear: codes plus per-group scale and zero point.

    ``group_size`` is the effective length (never -1) so consumers need no knowledge of in_features.
    """

    codes: Tensor  # uint8 [out, in]
    scale: Tensor  # scale dtype [out, G]
    zp: Tensor  # int32 [out, G]
    bits: int
    group_size: int
    sym: bool
    bias: Tensor | None = None

    @property
    def out_features(self) -> int:
        return int(self.codes.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.codes.shape[1])

    def to(self, device: torch.device | str) -> QuantizedWeight:
        """A copy on ``device`` (tuned on an accelerator, kept on the host until export)."""
        return dataclasses.replace(
            self,
            codes=self.codes.to(device),
            scale=self.scale.to(device),
            zp=self.zp.to(device),
            bias=None if self.bias is None else self.bias.to(device),
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight ``[out, in]`` these codes stand for (bit-exact with the tuned fake-quant in fp32)."""
        groups = to_groups(self.codes, self.group_size)
        weight = from_codes(groups, self.scale.reshape(-1), self.zp.reshape(-1))
        return from_groups(weight, self.out_features).to(dtype)


class TunableLinear(nn.Module):
    """Fake-quantized stand-in for an ``nn.Linear`` during SignRound tuning.

    The fp32 grouped weight is computed once: re-grouping on every step would cost a copy per forward,
    and the original weight must not change while tuning anyway (its ``requires_grad`` is turned off).
    """

    def __init__(
        self,
        layer: nn.Linear,
        scheme: QuantScheme,
        *,
        enable_minmax_tuning: bool = True,
        scale_dtype: torch.dtype = torch.float16,
        kernel: QdqFunction = qdq,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.kernel = kernel
        """Computes the fake-quantized weight: :func:`qdq` itself or a :class:`QdqKernel` compiling it."""
        self.scheme = scheme
        self.bits = scheme.bits
        self.sym = scheme.sym
        self.group_size = scheme.group_size_for(layer.in_features)
        self.scale_dtype = scale_dtype
        self.enable_minmax_tuning = enable_minmax_tuning
        self.weight_requires_grad = layer.weight.requires_grad
        layer.weight.requires_grad_(False)

        groups = self.weight_groups
        wmin, wmax = group_range(groups)
        self.register_buffer("wmin", wmin, persistent=False)
        self.register_buffer("wmax", wmax, persistent=False)
        rows, device = groups.shape[0], groups.device
        self.v = nn.Parameter(torch.zeros_like(groups))
        ones = torch.ones(rows, dtype=torch.float32, device=device)
        if enable_minmax_tuning:
            self.min_scale = nn.Parameter(ones.clone())
            self.max_scale = nn.Parameter(ones.clone())
        else:  # buffers: still moved by .to(), but no optimizer can ever see them
            self.register_buffer("min_scale", ones.clone(), persistent=False)
            self.register_buffer("max_scale", ones.clone(), persistent=False)

    @property
    def weight_groups(self) -> Tensor:
        """The untouched weight viewed as ``[groups, gs]`` in its own dtype: no fp32 copy is kept
        (for a bf16 block it would be two more bytes per weight for the whole tuning); the
        quantizer widens it to fp32 where it computes, which is exact."""
        return to_groups(self.layer.weight.detach(), self.group_size)

    @property
    def out_features(self) -> int:
        return self.layer.out_features

    @property
    def in_features(self) -> int:
        return self.layer.in_features

    def _qparams(self) -> tuple[Tensor, Tensor]:
        return qparams_from_range(
            self.wmin,
            self.wmax,
            self.bits,
            self.sym,
            self.min_scale,
            self.max_scale,
            scale_dtype=self.scale_dtype,
        )

    @torch.no_grad()
    def clamp_multipliers(self) -> None:
        """Clamp the stored clipping multipliers to [0, 1] in place, as auto-round does before
        every forward. The quantizer clamps inside the graph too, but a multiplier a sign step
        left at 1.02 would get a zero gradient there and stay frozen for the rest of the block;
        clamped back to 1 it gets a gradient again and can come back down."""
        if self.enable_minmax_tuning:
            self.min_scale.clamp_(0, 1)
            self.max_scale.clamp_(0, 1)

    def qdq_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Fake-quantized weight ``[out, in]`` (computed in fp32, returned in ``dtype``),
        differentiable w.r.t. v and the min/max scales."""
        self.clamp_multipliers()
        return self.kernel(
            self.weight_groups,
            self.wmin,
            self.wmax,
            self.v,
            self.min_scale,
            self.max_scale,
            bits=self.bits,
            sym=self.sym,
            scale_dtype=self.scale_dtype,
            out_features=self.out_features,
            dtype=dtype,
        )

    def forward(self, x: Tensor) -> Tensor:
        # Under autocast the matmul runs in the autocast dtype whatever x is: writing the weight
        # straight in that dtype saves autocast a copy of it (and the backward a wider gradient).
        # The values are the same: autocast would round the fp32 weight to that dtype anyway.
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        bias = self.layer.bias
        return F.linear(x, self.qdq_weight(dtype), bias.to(dtype) if bias is not None else None)

    def round_parameters(self) -> list[nn.Parameter]:
        return [self.v]

    def minmax_parameters(self) -> list[nn.Parameter]:
        if not self.enable_minmax_tuning:
            return []
        return [self.min_scale, self.max_scale]

    def snapshot(self) -> dict[str, Tensor]:
        """Detached copies of the tunables as the next forward uses them (multipliers clamped, on
        the copies: the stored ones may be saved for a backward still to come), for keeping the
        best-loss state during tuning."""
        return {
            "v": self.v.detach().clone(),
            "min_scale": self.min_scale.detach().clamp(0, 1),
            "max_scale": self.max_scale.detach().clamp(0, 1),
        }

    @torch.no_grad()
    def start_from_best_clipping(self, input_mean_square: Tensor | None = None) -> None:
        """Set both clipping multipliers to :func:`best_clip_ratios` (weighted by the input's
        mean square per column when given) instead of 1."""
        if not self.enable_minmax_tuning:
            return
        weights = None
        if input_mean_square is not None:
            weights = input_mean_square.to(self.wmin.device).reshape(-1, self.group_size)
        ratios = best_clip_ratios(
            self.weight_groups,
            self.wmin,
            self.wmax,
            bits=self.bits,
            sym=self.sym,
            scale_dtype=self.scale_dtype,
            column_weights=weights,
        )
        self.min_scale.copy_(ratios)
        self.max_scale.copy_(ratios)

    @torch.no_grad()
    def restore(self, snapshot: dict[str, Tensor]) -> None:
        """Load tunables from :meth:`snapshot` in place (optimizers keep pointing at the same tensors)."""
        for name, value in snapshot.items():
            getattr(self, name).copy_(value)

    @torch.no_grad()
    def finalize(self) -> QuantizedWeight:
        """Freeze the current parameters into codes; ``finalize().dequantize() == qdq_weight()`` exactly."""
        self.clamp_multipliers()
        scale, zp = self._qparams()
        codes = to_codes(self.weight_groups.float(), scale, zp, self.bits, self.v)
        groups_per_row = self.in_features // self.group_size
        bias = self.layer.bias
        return QuantizedWeight(
            codes=from_groups(codes, self.out_features),
            scale=scale.reshape(self.out_features, groups_per_row).clone(),
            zp=zp.to(torch.int32).reshape(self.out_features, groups_per_row),
            bits=self.bits,
            group_size=self.group_size,
            sym=self.sym,
            bias=bias.detach().clone() if bias is not None else None,
        )


def _iter_linears(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Linear]]:
    """Linear descendants by dotted name, not descending into already wrapped layers."""
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, TunableLinear):
            continue
        if isinstance(child, nn.Linear):
            yield full, child
        else:
            yield from _iter_linears(child, full)


def _replace(block: nn.Module, name: str, module: nn.Module) -> None:
    """``setattr`` on the parent of a dotted name (works for Sequential/ModuleList indices too)."""
    parent_name, _, child_name = name.rpartition(".")
    parent = block.get_submodule(parent_name) if parent_name else block
    setattr(parent, child_name, module)


def wrap_linears(
    block: nn.Module, scheme_for: Callable[[str], QuantScheme | None], **kw: object
) -> dict[str, TunableLinear]:
    """Swap every Linear in ``block`` that ``scheme_for(name)`` assigns a scheme with a TunableLinear.

    Names are relative to ``block`` (e.g. ``"self_attn.q_proj"``); ``kw`` goes to TunableLinear.
    """
    wrapped: dict[str, TunableLinear] = {}
    for name, linear in list(_iter_linears(block)):
        scheme = scheme_for(name)
        if scheme is None:
            continue
        tunable = TunableLinear(linear, scheme, **kw)  # type: ignore[arg-type]
        _replace(block, name, tunable)
        wrapped[name] = tunable
    return wrapped


@torch.no_grad()
def unwrap_linears(
    block: nn.Module, wrapped: dict[str, TunableLinear], write_back: bool = True
) -> dict[str, QuantizedWeight]:
    """Finalize each wrapped layer and put the original Linear back in ``block``.

    With ``write_back`` the original weight is overwritten by its dequantized value (in its own dtype), so
    later blocks calibrate on the quantized model's activations.
    """
    results: dict[str, QuantizedWeight] = {}
    for name, tunable in wrapped.items():
        quantized = tunable.finalize()
        layer = tunable.layer
        if write_back:
            layer.weight.copy_(quantized.dequantize(layer.weight.dtype))
        layer.weight.requires_grad_(tunable.weight_requires_grad)
        _replace(block, name, layer)
        results[name] = quantized
    return results
