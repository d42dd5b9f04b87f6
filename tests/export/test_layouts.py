"""Tensor layouts against their documented contracts, and pack/unpack as exact inverses."""

import pytest
import torch

from auto_round_mllm.export.layouts import (
    dequantize,
    marlin_problem,
    pack_awq,
    pack_compressed_tensors,
    pack_gptq,
    unpack,
    unpack_awq,
    unpack_compressed_tensors,
    unpack_gptq,
)
from auto_round_mllm.quant.tunable import QuantizedWeight


def random_qweight(bits, out=64, inp=128, group=32, sym=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    groups = inp // group
    zp = (
        torch.full((out, groups), 2 ** (bits - 1), dtype=torch.int32)
        if sym
        else torch.randint(0, 2**bits, (out, groups), generator=gen, dtype=torch.int32)
    )
    return QuantizedWeight(
        codes=torch.randint(0, 2**bits, (out, inp), generator=gen).to(torch.uint8),
        scale=(torch.rand(out, groups, generator=gen) - 0.5).to(torch.float16),
        zp=zp,
        bits=bits,
        group_size=group,
        sym=sym,
        bias=torch.randn(out, generator=gen),
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("offset", [0, 1])
def test_gptq_round_trip(bits, offset):
    qw = random_qweight(bits, sym=offset == 1)
    tensors = pack_gptq(qw, zero_offset=offset)
    codes, zeros, scales = unpack_gptq(tensors, bits=bits, zero_offset=offset)
    assert (
        torch.equal(codes, qw.codes.to(torch.int32))
        and torch.equal(zeros, qw.zp)
        and torch.equal(scales, qw.scale)
    )
    assert torch.equal(dequantize(codes, zeros, scales), qw.dequantize())
    assert tensors["qweight"].shape == (128 * bits // 32, 64) and tensors["scales"].dtype == torch.float16


def test_awq_round_trip_and_interleave():
    qw = random_qweight(4, sym=False)
    tensors = pack_awq(qw)
    assert tensors["qweight"].shape == (128, 64 // 8) and tensors["qzeros"].shape == (4, 64 // 8)
    codes, zeros, scales = unpack_awq(tensors)
    assert torch.equal(dequantize(codes, zeros, scales), qw.dequantize())
    # AutoAWQ's GEMM packing: nibble i of each word holds column (0, 2, 4, 6, 1, 3, 5, 7)[i]
    one = QuantizedWeight(
        codes=torch.arange(8, dtype=torch.uint8).repeat_interleave(32).reshape(8, 32),
        scale=torch.ones(8, 1, dtype=torch.float16),
        zp=torch.arange(8, dtype=torch.int32).reshape(8, 1),
        bits=4,
        group_size=32,
        sym=False,
    )
    packed = pack_awq(one)
    assert int(packed["qweight"][0, 0]) == 0x75316420
    assert int(packed["qzeros"][0, 0]) == 0x75316420
    with pytest.raises(ValueError):
        pack_awq(random_qweight(2))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_compressed_tensors_round_trip(bits, sym):
    qw = random_qweight(bits, out=40, inp=96, sym=sym)  # 40 * 3 bits: a zero-point column of 3.75 words
    tensors = pack_compressed_tensors(qw)
    assert tensors["weight_packed"].shape == (40, -(-96 * bits // 32))
    assert tensors["weight_scale"].shape == (40, 3) and tensors["weight_scale"].dtype == torch.float16
    assert tensors["weight_shape"].tolist() == [40, 96] and tensors["weight_shape"].dtype == torch.int64
    assert ("weight_zero_point" in tensors) == (not sym)  # a symmetric layer's zero is implied
    if not sym:
        assert tensors["weight_zero_point"].shape == (-(-40 * bits // 32), 3)
    codes, zeros, scales = unpack_compressed_tensors(tensors, bits=bits)
    assert torch.equal(codes, qw.codes.to(torch.int32)) and torch.equal(zeros, qw.zp)
    assert torch.equal(scales, qw.scale)
    assert torch.equal(dequantize(codes, zeros, scales), qw.dequantize())
    same = unpack("compressed_tensors", tensors, bits=bits, shape=(40, 96))
    assert all(torch.equal(a, b) for a, b in zip(same, (codes, zeros, scales), strict=True))


def test_marlin_constraints():
    assert marlin_problem(random_qweight(4, out=64, inp=128)) is None
    assert "asymmetric" in marlin_problem(random_qweight(4, sym=False))
    assert "2-bit" in marlin_problem(random_qweight(2))
    assert "out_features 96" in marlin_problem(random_qweight(4, out=96))
    assert "in_features 96" in marlin_problem(random_qweight(4, inp=96))


@pytest.mark.parametrize("pack", [lambda qw: pack_gptq(qw, zero_offset=0), pack_awq, pack_compressed_tensors])
def test_a_bf16_bias_is_written_in_bf16_not_narrowed_to_an_overflowing_fp16(pack):
    qw = random_qweight(4, sym=False)
    qw.bias = torch.tensor([1.0e5, -3.0e5, 1.0e-6] + [0.5] * 61, dtype=torch.bfloat16)
    written = pack(qw)["bias"]
    assert written.dtype == torch.bfloat16 and torch.equal(written, qw.bias)
    assert torch.isfinite(written).all()
