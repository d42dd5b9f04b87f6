"""Tensor layouts of a quantized Linear on disk, each as a pack/unpack inverse pair.

GPTQ (used by ``auto_gptq`` and auto-round's ``auto_round:auto_gptq`` / native packings):
``qweight`` int32 ``[in*bits/32, out]`` packed along the input dimension, ``qzeros`` int32
``[groups, out*bits/32]`` packed along the output dimension (stored zero = real zero - offset: 1 for
the v1 convention, 0 for v2 / auto-round native), ``scales`` fp16 ``[groups, out]``.

AWQ GEMM (``auto_awq``, ``auto_round:auto_awq``; 4-bit): ``qweight`` int32 ``[in, out/8]`` and
``qzeros`` int32 ``[groups, out/8]``, both packed along the output dimension with AWQ's column
interleave (column ``AWQ_ORDER[i]`` of each 8 sits in nibble ``i``), exact zeros, fp16 ``scales``.

compressed-tensors ``pack-quantized`` (``llm_compressor``; 0.20.0's ``pack_to_int32``): ``weight_packed``
int32 ``[out, ceil(in*bits/32)]``, each row one dense little-endian bitstream of ``code + 2**(bits-1)``
for the signed code, i.e. our unsigned code; ``weight_zero_point`` (asymmetric only) int32
``[ceil(out*bits/32), groups]``, the zero points packed the same way along the output dimension;
``weight_scale`` fp16 ``[out, groups]`` (``groups`` 1 per channel); ``weight_shape`` int64 ``[out, in]``.
A symmetric layer has no zero point: its codes are centred on ``2**(bits-1)``.
"""

from __future__ import annotations

import torch
from torch import nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.quant.packing import (
    chunk_shape,
    pack_cols,
    pack_dense,
    pack_rows,
    unpack_cols,
    unpack_dense,
    unpack_rows,
)
from auto_round_mllm.quant.tunable import QuantizedWeight

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_INVERSE = tuple(AWQ_ORDER.index(i) for i in range(8))


def _bias(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The bias in the layer's own dtype, as every unquantized tensor is written: narrowed to fp16
    a bf16 model's bias can overflow (|b| > 65504) or lose its small values, and loaders cast it
    to the dtype they run in anyway."""
    return {} if qw.bias is None else {"bias": qw.bias}


def pack_gptq(qw: QuantizedWeight, *, zero_offset: int) -> dict[str, torch.Tensor]:
    """GPTQ tensors of one layer. ``zero_offset`` is 1 for the v1 "zero minus one" convention."""
    return {
        "qweight": pack_rows(qw.codes.to(torch.int32).t().contiguous(), qw.bits),
        "qzeros": pack_cols((qw.zp.t() - zero_offset).contiguous(), qw.bits),
        "scales": qw.scale.t().contiguous().to(torch.float16),
        **_bias(qw),
    }


def unpack_gptq(
    tensors: dict[str, torch.Tensor], *, bits: int, zero_offset: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes ``[out, in]``, real zeros ``[out, groups]``, scales ``[out, groups]``)."""
    codes = unpack_rows(tensors["qweight"], bits).t()
    zeros = (unpack_cols(tensors["qzeros"], bits) + zero_offset).t()
    return codes, zeros, tensors["scales"].t()


def gptq_g_idx(qw: QuantizedWeight) -> torch.Tensor:
    """The trivial group index GPTQ loaders expect (no act-order)."""
    return (torch.arange(qw.in_features, dtype=torch.int32) // qw.group_size).to(torch.int32)


def _awq_interleave(values: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    rows, cols = values.shape
    return values.reshape(rows, cols // 8, 8)[:, :, list(order)].reshape(rows, cols)


def pack_awq(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    if qw.bits != 4:
        raise ValueError("the AWQ layout stores 4-bit codes only")
    return {
        "qweight": pack_cols(_awq_interleave(qw.codes.to(torch.int32).t().contiguous(), AWQ_ORDER), 4),
        "qzeros": pack_cols(_awq_interleave(qw.zp.t().contiguous(), AWQ_ORDER), 4),
        "scales": qw.scale.t().contiguous().to(torch.float16),
        **_bias(qw),
    }


def unpack_awq(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    codes = _awq_interleave(unpack_cols(tensors["qweight"], 4), AWQ_INVERSE).t()
    zeros = _awq_interleave(unpack_cols(tensors["qzeros"], 4), AWQ_INVERSE).t()
    return codes, zeros, tensors["scales"].t()


def pack_compressed_tensors(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """compressed-tensors ``pack-quantized`` tensors of one layer (see the module docstring)."""
    tensors = {
        "weight_packed": pack_dense(qw.codes.to(torch.int32), qw.bits),
        "weight_scale": qw.scale.contiguous().to(torch.float16),
        "weight_shape": torch.tensor([qw.out_features, qw.in_features], dtype=torch.int64),
    }
    if not qw.sym:
        tensors["weight_zero_point"] = (
            pack_dense(qw.zp.to(torch.int32).t().contiguous(), qw.bits).t().contiguous()
        )
    return {**tensors, **_bias(qw)}


def unpack_compressed_tensors(
    tensors: dict[str, torch.Tensor], *, bits: int, shape: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes ``[out, in]``, real zeros ``[out, groups]``, scales ``[out, groups]``); ``shape``
    (``[out, in]``) saves reading ``weight_shape``."""
    out, inp = shape or (int(v) for v in tensors["weight_shape"])
    scales = tensors["weight_scale"]
    codes = unpack_dense(tensors["weight_packed"], bits, inp)
    if "weight_zero_point" in tensors:
        zeros = unpack_dense(tensors["weight_zero_point"].t(), bits, out).t()
    else:
        zeros = torch.full(tuple(scales.shape), 2 ** (bits - 1), dtype=torch.int32, device=scales.device)
    return codes, zeros, scales


def unpack(
    kind: str,
    tensors: dict[str, torch.Tensor],
    *,
    bits: int,
    zero_offset: int = 0,
    shape: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes ``[out, in]``, real zeros ``[out, groups]``, scales ``[out, groups]``) of one layer in
    layout ``kind`` (``"gptq"``, ``"awq"`` or ``"compressed_tensors"``)."""
    if kind == "awq":
        return unpack_awq(tensors)
    if kind == "compressed_tensors":
        return unpack_compressed_tensors(tensors, bits=bits, shape=shape)
    return unpack_gptq(tensors, bits=bits, zero_offset=zero_offset)


def dequantize(
    codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_index: torch.Tensor | None = None
) -> torch.Tensor:
    """``[out, in]`` fp32 weight: ``scale * (code - zero)`` with the group of each input column,
    contiguous groups unless ``group_index`` (GPTQ's ``g_idx``) says otherwise."""
    if group_index is None:
        group_size = codes.shape[1] // scales.shape[1]
        index = torch.arange(codes.shape[1], device=codes.device) // group_size
    else:
        index = group_index.to(device=codes.device, dtype=torch.long)
    return scales.float()[:, index] * (codes.float() - zeros.float()[:, index])


def gptq_layer_problem(layer: nn.Linear, scheme: QuantScheme) -> str | None:
    """GPTQ packing needs whole int32 words along both dimensions."""
    values, _ = chunk_shape(scheme.bits)
    if layer.in_features % values:
        return f"in_features {layer.in_features} is not a multiple of {values} ({scheme.bits}-bit packing)"
    if layer.out_features % values:
        return f"out_features {layer.out_features} is not a multiple of {values} ({scheme.bits}-bit packing)"
    return None


def awq_layer_problem(layer: nn.Linear, scheme: QuantScheme) -> str | None:
    if scheme.bits != 4:
        return f"the AWQ packing stores 4-bit layers only, not {scheme.bits}-bit"
    if layer.out_features % 8:
        return f"out_features {layer.out_features} is not a multiple of 8 (AWQ packing)"
    return None


def marlin_problem(qw: QuantizedWeight) -> str | None:
    """Why vLLM's Marlin kernels cannot take this layer (they need sym 4/8-bit, out % 64, in % 128)."""
    if not qw.sym or qw.bits not in (4, 8):
        return f"{'asymmetric' if not qw.sym else f'{qw.bits}-bit'} weights"
    if qw.group_size not in (32, 64, 128, qw.in_features):
        return f"group size {qw.group_size}"
    if qw.out_features % 64:
        return f"out_features {qw.out_features} is not a multiple of 64"
    if qw.in_features % 128:
        return f"in_features {qw.in_features} is not a multiple of 128"
    return None
