"""A Linear that keeps its weight packed (GPTQ, AWQ or compressed-tensors layout) and computes with it.

Two paths. The Triton kernel (``triton_matmul``) unpacks tiles in registers and multiplies them
without ever holding the fp weight; it is used on CUDA devices for GPTQ 2/4/8-bit and AWQ 4-bit.
The plain torch path dequantizes the whole weight per call: it runs everywhere (CPU, any GPU),
reads every layout we write including 3-bit, compressed-tensors' ``pack-quantized`` and act-order
``g_idx``, and is the fallback when Triton is missing or its kernel fails to build. Serving engines
with Marlin/ExLlama kernels remain the fastest option; this layer is for loading and checking
checkpoints in plain transformers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from auto_round_mllm.export.layouts import dequantize, unpack
from auto_round_mllm.inference import triton_matmul

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class PackedLayout:
    """How a checkpoint stores its quantized Linears."""

    kind: str  # "gptq", "awq" or "compressed_tensors"
    bits: int
    group_size: int
    zero_offset: int = 0
    has_g_idx: bool = False
    sym: bool = True  # compressed-tensors stores zero points for asymmetric layers only


class QuantLinear(nn.Module):
    """``backend``: ``"auto"`` takes the Triton kernel where it runs (CUDA, or Triton's CPU
    interpreter) and the layout allows, else torch; ``"triton"`` insists (and says why it cannot);
    ``"torch"`` always dequantizes."""

    def __init__(
        self, in_features: int, out_features: int, *, layout: PackedLayout, bias: bool, backend: str = "auto"
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.layout = in_features, out_features, layout
        self.backend = check_backend(backend)
        self._contiguous_groups: bool | None = None  # known once g_idx has loaded
        group_size = in_features if layout.group_size == -1 else layout.group_size
        groups = in_features // group_size
        bits = layout.bits
        if layout.kind == "compressed_tensors":
            self._register_compressed_tensors(groups)
        elif layout.kind == "awq":
            self.register_buffer("qweight", torch.zeros(in_features, out_features // 8, dtype=torch.int32))
            self.register_buffer("qzeros", torch.zeros(groups, out_features // 8, dtype=torch.int32))
        else:
            self.register_buffer(
                "qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32)
            )
            self.register_buffer("qzeros", torch.zeros(groups, out_features * bits // 32, dtype=torch.int32))
            if layout.has_g_idx:
                self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32))
        if layout.kind != "compressed_tensors":
            self.register_buffer("scales", torch.zeros(groups, out_features, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16) if bias else None)

    def _register_compressed_tensors(self, groups: int) -> None:
        """compressed-tensors' ``pack-quantized`` buffers, named as the checkpoint names them."""
        out_features, bits = self.out_features, self.layout.bits
        words = -(-self.in_features * bits // 32)
        self.register_buffer("weight_packed", torch.zeros(out_features, words, dtype=torch.int32))
        self.register_buffer("weight_scale", torch.zeros(out_features, groups, dtype=torch.float16))
        self.register_buffer(
            "weight_shape", torch.tensor([out_features, self.in_features], dtype=torch.int64)
        )
        if not self.layout.sym:
            zero_words = -(-out_features * bits // 32)
            self.register_buffer("weight_zero_point", torch.zeros(zero_words, groups, dtype=torch.int32))

    def packed_tensors(self) -> dict[str, torch.Tensor]:
        """The packed buffers by their checkpoint suffix."""
        names = ("qweight", "qzeros", "scales")
        if self.layout.kind == "compressed_tensors":
            names = ("weight_packed", "weight_scale", "weight_zero_point")
        return {name: getattr(self, name) for name in names if getattr(self, name, None) is not None}

    def dequantized_weight(self) -> torch.Tensor:
        """``[out, in]`` fp32 weight from the packed buffers."""
        layout = self.layout
        codes, zeros, scales = unpack(
            layout.kind,
            self.packed_tensors(),
            bits=layout.bits,
            zero_offset=layout.zero_offset,
            shape=(self.out_features, self.in_features),
        )
        return dequantize(codes, zeros, scales, None if self.contiguous_groups() else self.g_idx)

    def contiguous_groups(self) -> bool:
        """Whether input column ``i`` belongs to group ``i // group_size`` (no act-order)."""
        if self._contiguous_groups is None:
            g_idx = getattr(self, "g_idx", None)
            if g_idx is None:
                self._contiguous_groups = True
            else:
                group_size = self.in_features if self.layout.group_size == -1 else self.layout.group_size
                expected = torch.arange(self.in_features, device=g_idx.device) // group_size
                self._contiguous_groups = bool(torch.equal(g_idx.long(), expected))
        return self._contiguous_groups

    def kernel_unusable_reason(self, x: torch.Tensor) -> str | None:
        layout = self.layout
        if not triton_matmul.triton_installed():
            return "triton is not installed"
        if not triton_matmul.kernel_runs_on(x.device):
            return f"the kernel runs on CUDA devices (or the CPU with TRITON_INTERPRET=1), not {x.device}"
        if not triton_matmul.supports_layout(layout.kind, layout.bits):
            return f"the kernel reads GPTQ 2/4/8-bit and AWQ 4-bit, not {layout.kind} {layout.bits}-bit"
        if not self.contiguous_groups():
            return "act-order g_idx reorders the input columns"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend != "torch":
            reason = self.kernel_unusable_reason(x)
            if reason is None:
                try:
                    return self._kernel_forward(x)
                except Exception as error:  # a kernel that fails to build must not stop inference
                    if self.backend == "triton":
                        raise
                    log.warning("Triton kernel failed (%s); using the torch path from now on", error)
                    self.backend = "torch"
            elif self.backend == "triton":
                raise RuntimeError(f"backend='triton' cannot run this layer: {reason}")
        weight = self.dequantized_weight().to(device=x.device, dtype=x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight, bias)

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        return triton_matmul.packed_linear(
            x,
            self.qweight,
            self.qzeros,
            self.scales,
            self.bias,
            kind=layout.kind,
            bits=layout.bits,
            group_size=layout.group_size,
            zero_offset=layout.zero_offset,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, {self.layout}, "
            f"backend={self.backend!r}"
        )


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown QuantLinear backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def set_backend(model: nn.Module, backend: str) -> int:
    """Switch every :class:`QuantLinear` of ``model``; returns how many there are."""
    check_backend(backend)
    layers = [module for module in model.modules() if isinstance(module, QuantLinear)]
    for layer in layers:
        layer.backend = backend
    return len(layers)
