"""Fused dequantize-and-multiply for packed Linears, written in Triton.

The torch path materializes the whole fp weight on every call, which costs a full-size write and
read per layer per token. This kernel reads the packed int32 words straight from the checkpoint
layout (GPTQ 2/4/8-bit with either zero convention, AWQ GEMM 4-bit), unpacks a tile in registers
and feeds it to ``tl.dot``, so only the packed bytes cross memory. No repacking at load time: the
buffers transformers loaded are the ones the kernel reads.

Triton compiles for CUDA (and ROCm) devices. With ``TRITON_INTERPRET=1`` the same kernel runs on
CPU tensors through Triton's interpreter, which is how the test suite checks it on a machine
without a GPU. 3-bit GPTQ codes straddle word boundaries and act-order (non-trivial ``g_idx``)
reorders the input columns; both stay on the torch path.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch

KERNEL_BITS = (2, 4, 8)


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_runs_on(device: torch.device) -> bool:
    """Whether the kernel can run for tensors on ``device`` in this process."""
    if not triton_installed():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreter_enabled()


def supports_layout(kind: str, bits: int) -> bool:
    return (kind == "awq" and bits == 4) or (kind == "gptq" and bits in KERNEL_BITS)


@functools.cache
def _kernel(interpret: bool) -> Any:
    """Build the jitted kernel on first use. Cached per interpreter flag because Triton decides
    at decoration time whether a function is compiled or interpreted."""
    del interpret  # only part of the cache key
    import triton
    import triton.language as tl

    @triton.jit
    def packed_matmul(
        a_ptr,
        qweight_ptr,
        qzeros_ptr,
        scales_ptr,
        out_ptr,
        M,
        N,
        K,
        group_size,
        stride_am,
        stride_ak,
        stride_om,
        stride_on,
        BITS: tl.constexpr,
        AWQ: tl.constexpr,
        ZERO_OFFSET: tl.constexpr,
        IEEE_FP32: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        per_word: tl.constexpr = 32 // BITS
        code_mask: tl.constexpr = (1 << BITS) - 1
        if AWQ:
            # AWQ interleave: column j of each 8 sits in nibble (j // 2) + 4 * (j % 2)
            col = offs_n % 8
            n_shift = ((col // 2) + (col % 2) * 4) * 4
            n_word = offs_n // 8
            words_per_row = N // 8
        else:
            n_shift = (offs_n % per_word) * BITS
            n_word = offs_n // per_word
            words_per_row = N // per_word
        acc = tl.full(
            (BLOCK_M, BLOCK_N), 0.0, tl.float32
        )  # builtin, unlike tl.zeros: interpretable even if triton loaded first
        for k_start in range(0, K, BLOCK_K):
            offs_k = k_start + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            mask_kn = mask_k[:, None] & mask_n[None, :]
            a = tl.load(
                a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                mask=mask_m[:, None] & mask_k[None, :],
                other=0.0,
            )
            group = offs_k // group_size
            if AWQ:
                words = tl.load(qweight_ptr + offs_k[:, None] * words_per_row + n_word[None, :], mask=mask_kn)
                codes = (words >> n_shift[None, :]) & code_mask
            else:
                words = tl.load(
                    qweight_ptr + (offs_k // per_word)[:, None] * N + offs_n[None, :], mask=mask_kn
                )
                codes = (words >> ((offs_k % per_word) * BITS)[:, None]) & code_mask
            zero_words = tl.load(qzeros_ptr + group[:, None] * words_per_row + n_word[None, :], mask=mask_kn)
            zeros = ((zero_words >> n_shift[None, :]) & code_mask) + ZERO_OFFSET
            scales = tl.load(scales_ptr + group[:, None] * N + offs_n[None, :], mask=mask_kn, other=0.0)
            weight = (codes - zeros).to(tl.float32) * scales.to(tl.float32)
            if IEEE_FP32:
                acc += tl.dot(a.to(tl.float32), weight, input_precision="ieee")
            else:
                acc += tl.dot(a, weight.to(a.dtype))
        tl.store(
            out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
            acc.to(out_ptr.dtype.element_ty),
            mask=mask_m[:, None] & mask_n[None, :],
        )

    return packed_matmul


def _dot_in_fp32(dtype: torch.dtype) -> bool:
    """fp32 inputs keep exact fp32 products (no TF32). Triton's interpreter computes bf16 dots
    wrongly (numpy has no bf16), so there bf16 inputs are multiplied in fp32 as well."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreter_enabled())


def _blocks(rows: int) -> tuple[int, int, int]:
    """Tile sizes: decode-sized inputs (a handful of rows) get the smallest M tile ``tl.dot`` takes."""
    return (16 if rows <= 16 else 64), 64, 32


def packed_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    kind: str,
    bits: int,
    group_size: int,
    zero_offset: int,
) -> torch.Tensor:
    """``x @ dequantize(packed).T + bias`` without materializing the weight."""
    import triton

    if not supports_layout(kind, bits):
        raise ValueError(
            f"the Triton kernel reads GPTQ {KERNEL_BITS}-bit and AWQ 4-bit, not {kind} {bits}-bit"
        )
    in_features = qweight.shape[0] * (32 // bits) if kind == "gptq" else qweight.shape[0]
    out_features = scales.shape[1]
    a = x.reshape(-1, in_features)
    rows = a.shape[0]
    out = torch.empty(rows, out_features, device=x.device, dtype=x.dtype)
    block_m, block_n, block_k = _blocks(rows)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(out_features, block_n))
    _kernel(interpreter_enabled())[grid](
        a,
        qweight,
        qzeros,
        scales,
        out,
        rows,
        out_features,
        in_features,
        in_features if group_size == -1 else group_size,
        a.stride(0),
        a.stride(1),
        out.stride(0),
        out.stride(1),
        BITS=bits,
        AWQ=kind == "awq",
        ZERO_OFFSET=zero_offset,
        IEEE_FP32=_dot_in_fp32(x.dtype),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    if bias is not None:
        out += bias.to(out.dtype)
    return out.reshape(*x.shape[:-1], out_features)
