"""A Linear that keeps its weight packed (GPTQ or AWQ layout) and dequantizes it when called.

This is the plain torch path: it runs on the CPU and on any GPU, reads every layout we write, and
holds 2-8 bits per weight in memory instead of 16. It trades speed for reach; engines with fused
kernels (vLLM's Marlin, ExLlama, AWQ GEMM) are the fast path for serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from auto_round_mllm.export.layouts import dequantize, unpack_awq, unpack_gptq


@dataclass(frozen=True)
class PackedLayout:
    """How a checkpoint stores its quantized Linears."""

    kind: str  # "gptq" or "awq"
    bits: int
    group_size: int
    zero_offset: int = 0
    has_g_idx: bool = False


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, *, layout: PackedLayout, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.layout = in_features, out_features, layout
        group_size = in_features if layout.group_size == -1 else layout.group_size
        groups = in_features // group_size
        bits = layout.bits
        if layout.kind == "awq":
            self.register_buffer("qweight", torch.zeros(in_features, out_features // 8, dtype=torch.int32))
            self.register_buffer("qzeros", torch.zeros(groups, out_features // 8, dtype=torch.int32))
        else:
            self.register_buffer(
                "qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32)
            )
            self.register_buffer("qzeros", torch.zeros(groups, out_features * bits // 32, dtype=torch.int32))
            if layout.has_g_idx:
                self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(groups, out_features, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16) if bias else None)

    def dequantized_weight(self) -> torch.Tensor:
        """``[out, in]`` fp32 weight from the packed buffers."""
        packed = {"qweight": self.qweight, "qzeros": self.qzeros, "scales": self.scales}
        if self.layout.kind == "awq":
            codes, zeros, scales = unpack_awq(packed)
        else:
            codes, zeros, scales = unpack_gptq(
                packed, bits=self.layout.bits, zero_offset=self.layout.zero_offset
            )
        return dequantize(codes, zeros, scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight().to(device=x.device, dtype=x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.layout}"
