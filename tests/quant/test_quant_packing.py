"""Packing must be a bit-exact inverse pair and match the GPTQ word layout kernels expect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auto_round_mllm.quant.packing import (
    chunk_shape,
    pack_cols,
    pack_dense,
    pack_rows,
    unpack_cols,
    unpack_dense,
    unpack_rows,
)

BITS = (2, 3, 4, 8)


def _random_codes(rows: int, cols: int, bits: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, (rows, cols), generator=gen, dtype=torch.int32)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("chunks", [1, 2, 5])
@pytest.mark.parametrize("cols", [1, 7, 64])
def test_rows_round_trip(bits: int, chunks: int, cols: int) -> None:
    values, words = chunk_shape(bits)
    codes = _random_codes(values * chunks, cols, bits, seed=bits * 100 + chunks * 10 + cols)
    packed = pack_rows(codes, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (codes.shape[0] * bits // 32, cols)
    assert packed.shape[0] == chunks * words
    assert torch.equal(unpack_rows(packed, bits), codes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_cols_round_trip(bits: int, rows: int) -> None:
    values, _ = chunk_shape(bits)
    codes = _random_codes(rows, values * 3, bits, seed=bits + rows)
    packed = pack_cols(codes, bits)
    assert packed.shape == (rows, values * 3 * bits // 32)
    assert packed.is_contiguous()
    assert torch.equal(unpack_cols(packed, bits), codes)
    assert torch.equal(packed, pack_rows(codes.t().contiguous(), bits).t())


@pytest.mark.parametrize("bits", BITS)
def test_extreme_values_round_trip(bits: int) -> None:
    values, _ = chunk_shape(bits)
    codes = torch.full((values * 2, 4), 2**bits - 1, dtype=torch.int32)
    codes[values:] = 0
    packed = pack_rows(codes, bits)
    assert (packed[: packed.shape[0] // 2] == -1).all()  # all ones -> 0xFFFFFFFF -> -1
    assert (packed[packed.shape[0] // 2 :] == 0).all()
    assert torch.equal(unpack_rows(packed, bits), codes)


@pytest.mark.parametrize(
    ("bits", "value", "word"),
    [(4, 7, 0x77777777), (8, 127, 0x7F7F7F7F), (2, 1, 0x55555555), (4, 8, 0x88888888), (8, 128, 0x80808080)],
)
def test_known_constants(bits: int, value: int, word: int) -> None:
    values, _ = chunk_shape(bits)
    packed = pack_cols(torch.full((2, values), value, dtype=torch.int32), bits)
    expected = word - 2**32 if word >= 2**31 else word
    assert packed.tolist() == [[expected], [expected]]


def test_zero_point_seven_is_2004318071() -> None:
    assert pack_cols(torch.full((1, 8), 7, dtype=torch.uint8), 4).item() == 2004318071


def test_4bit_nibble_order() -> None:
    codes = torch.arange(8, dtype=torch.int32)[:, None]
    assert pack_rows(codes, 4).item() == 0x76543210


def test_3bit_straddle_layout() -> None:
    """Hand-built words: value 10 = 0b101 and 21 = 0b110 straddle, everything else distinctive."""
    vals = [0] * 32
    vals[0], vals[9], vals[10], vals[11], vals[20], vals[21], vals[22], vals[31] = 1, 7, 5, 3, 6, 6, 2, 4
    word0 = 1 | (7 << 27) | ((5 & 0b11) << 30)  # values 0..9 in bits 0..29, low 2 bits of value 10
    word1 = (5 >> 2) | (3 << 1) | (6 << 28) | ((6 & 0b1) << 31)  # top bit of 10, values 11..20, low bit of 21
    word2 = (6 >> 1) | (2 << 2) | (4 << 29)  # top 2 bits of 21, values 22..31 in bits 2..31
    expected = [w - 2**32 if w >= 2**31 else w for w in (word0, word1, word2)]
    codes = torch.tensor(vals, dtype=torch.int32)[:, None]
    packed = pack_rows(codes, 3)
    assert packed[:, 0].tolist() == expected
    assert torch.equal(unpack_rows(packed, 3), codes)


def test_unpack_rows_trims() -> None:
    codes = _random_codes(16, 3, 4)
    assert torch.equal(unpack_rows(pack_rows(codes, 4), 4, rows=10), codes[:10])
    with pytest.raises(ValueError):
        unpack_rows(pack_rows(codes, 4), 4, rows=17)


@pytest.mark.parametrize("bits", BITS)
def test_out_of_range_raises(bits: int) -> None:
    values, _ = chunk_shape(bits)
    too_big = torch.zeros(values, 2, dtype=torch.int32)
    too_big[0, 0] = 2**bits
    with pytest.raises(ValueError):
        pack_rows(too_big, bits)
    negative = torch.zeros(values, 2, dtype=torch.int32)
    negative[1, 1] = -1
    with pytest.raises(ValueError):
        pack_rows(negative, bits)


def test_bad_shapes_and_bits_raise() -> None:
    with pytest.raises(ValueError):
        pack_rows(torch.zeros(12, 2, dtype=torch.int32), 3)  # 3-bit chunks are 32 values
    with pytest.raises(ValueError):
        pack_rows(torch.zeros(6, 2, dtype=torch.int32), 4)
    with pytest.raises(ValueError):
        pack_rows(torch.zeros(8, 2, dtype=torch.int32), 5)
    with pytest.raises(ValueError):
        pack_rows(torch.zeros(8, 2), 4)  # float codes
    with pytest.raises(ValueError):
        unpack_rows(torch.zeros(4, 2, dtype=torch.int32), 3)


def _gptq_reference_pack_3bit(codes: np.ndarray) -> np.ndarray:
    """GPTQ's original loop (``QuantLinear.pack``), transcribed with uint32 wrap-around."""
    intweight = codes.astype(np.uint32)
    qweight = np.zeros((codes.shape[0] // 32 * 3, codes.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        for j in range(i, i + 10):
            qweight[row] |= intweight[j] << (3 * (j - i))
        i += 10
        qweight[row] |= intweight[i] << 30
        row += 1
        qweight[row] |= (intweight[i] >> 2) & 1
        i += 1
        for j in range(i, i + 10):
            qweight[row] |= intweight[j] << (3 * (j - i) + 1)
        i += 10
        qweight[row] |= intweight[i] << 31
        row += 1
        qweight[row] |= (intweight[i] >> 1) & 0x3
        i += 1
        for j in range(i, i + 10):
            qweight[row] |= intweight[j] << (3 * (j - i) + 2)
        i += 10
        row += 1
    return qweight.view(np.int32)


def test_3bit_matches_gptq_reference_loop() -> None:
    codes = _random_codes(96, 5, 3, seed=3)
    expected = torch.from_numpy(_gptq_reference_pack_3bit(codes.numpy()))
    assert torch.equal(pack_rows(codes, 3), expected)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("cols", [1, 5, 31, 32, 33, 40, 72, 100])
def test_dense_packing_takes_any_width(bits: int, cols: int) -> None:
    """compressed-tensors' layout: ceil(cols * bits / 32) words per row, the tail padded with zeros."""
    codes = _random_codes(6, cols, bits, seed=bits * 1000 + cols)
    packed = pack_dense(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (6, -(-cols * bits // 32))
    assert packed.stride() == (packed.shape[1], 1)  # row-major even with one word per row
    assert torch.equal(unpack_dense(packed, bits, cols), codes)
    values, _ = chunk_shape(bits)
    if cols % values == 0:  # whole chunks: the GPTQ bitstream along dim 1, word for word
        assert torch.equal(packed, pack_cols(codes, bits))
    used = cols * bits % 32
    if used:  # the last word's unused high bits are zero
        assert ((packed[:, -1].long() & 0xFFFFFFFF) >> used == 0).all()


def test_dense_3bit_layout_straddles_words() -> None:
    """Value 10 of a row sits in bits 30-32 of the stream: two in word 0, one in word 1."""
    codes = torch.zeros(1, 40, dtype=torch.int32)
    codes[0, 10] = 7
    assert pack_dense(codes, 3).tolist() == [[-(2**30), 1, 0, 0]]  # 0xC0000000, 0x1; 40 * 3 bits: 4 words
    codes = torch.arange(8, dtype=torch.int32).reshape(1, 8)
    assert pack_dense(codes, 4).tolist() == [[0x76543210]]  # value j in nibble j, LSB first


def test_dense_unpack_checks_the_width() -> None:
    with pytest.raises(ValueError, match="does not hold 40 3-bit values"):
        unpack_dense(torch.zeros(2, 3, dtype=torch.int32), 3, 40)
