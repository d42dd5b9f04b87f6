"""Pack integer codes into int32 words in the GPTQ layout (and back).

Values are laid out as a little-endian bitstream along the packed dimension: within a chunk, value ``j``
occupies bits ``[j * bits, (j + 1) * bits)`` of the chunk's words, least significant bit first. For 2/4/8
bits a chunk is ``32 // bits`` values in one word; for 3 bits it is 32 values in three words, with values
10 and 21 straddling word boundaries. This is what GPTQ/auto-round kernels read, so ``qweight`` (packed
along the input dimension) and ``qzeros`` (packed along the output dimension) are loadable unchanged.

Arithmetic is done in int64 so shifts never overflow, then reinterpreted as int32 with wrap-around
(``0xFFFFFFFF`` becomes ``-1``), which is how the words are stored in checkpoints.

The same bitstream packed along dim 1 of any length, the last word padded with zero bits
(:func:`pack_dense` / :func:`unpack_dense`), is compressed-tensors' ``pack-quantized`` layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

PACK_BITS = (2, 3, 4, 8)
_WORD_MASK = 0xFFFFFFFF


def chunk_shape(bits: int) -> tuple[int, int]:
    """``(values, words)`` per chunk: the smallest run of values that fills whole int32 words."""
    if bits not in PACK_BITS:
        raise ValueError(f"cannot pack {bits}-bit values; supported: {PACK_BITS}")
    if bits == 3:
        return 32, 3
    return 32 // bits, 1


def _to_int32(words: Tensor) -> Tensor:
    """Reinterpret unsigned 32-bit values held in int64 as two's-complement int32."""
    words = words & _WORD_MASK
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _check_codes(codes: Tensor, bits: int, values_per_chunk: int) -> None:
    """Reject inputs that would silently corrupt neighbouring values once packed."""
    if codes.dim() != 2:
        raise ValueError(f"expected 2-D codes, got shape {tuple(codes.shape)}")
    if codes.is_floating_point() or codes.is_complex():
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.shape[0] % values_per_chunk != 0:
        raise ValueError(
            f"{codes.shape[0]} rows cannot be packed at {bits} bits: need a multiple of {values_per_chunk}"
        )
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for {bits}-bit packing")


def _bit_slots(bits: int, values_per_chunk: int) -> list[tuple[int, int, int]]:
    """For each position in a chunk: (word index, shift within the word, bits that fit in that word)."""
    slots = []
    for j in range(values_per_chunk):
        offset = j * bits
        word, shift = divmod(offset, 32)
        slots.append((word, shift, min(bits, 32 - shift)))
    return slots


def pack_rows(codes: Tensor, bits: int) -> Tensor:
    """Pack ``[K, N]`` codes along dim 0 into int32 ``[K * bits // 32, N]``."""
    values, words = chunk_shape(bits)
    _check_codes(codes, bits, values)
    k, n = codes.shape
    chunks = codes.to(torch.int64).reshape(k // values, values, n)
    packed = torch.zeros(k // values, words, n, dtype=torch.int64, device=codes.device)
    for j, (word, shift, low_bits) in enumerate(_bit_slots(bits, values)):
        value = chunks[:, j]
        packed[:, word] |= (value << shift) & _WORD_MASK
        if low_bits < bits:  # the rest of the value spills into the next word's low bits
            packed[:, word + 1] |= value >> low_bits
    return _to_int32(packed.reshape(k // values * words, n))


def unpack_rows(packed: Tensor, bits: int, rows: int | None = None) -> Tensor:
    """Inverse of :func:`pack_rows`: int32 ``[P, N]`` to int32 codes ``[P * 32 // bits, N]``.

    ``rows`` trims the result, for callers that know the unpadded length.
    """
    values, words = chunk_shape(bits)
    if packed.dim() != 2 or packed.shape[0] % words != 0:
        raise ValueError(f"packed shape {tuple(packed.shape)} is not a whole number of {bits}-bit chunks")
    p, n = packed.shape
    chunks = (packed.to(torch.int64) & _WORD_MASK).reshape(p // words, words, n)
    mask = 2**bits - 1
    out = torch.empty(p // words, values, n, dtype=torch.int64, device=packed.device)
    for j, (word, shift, low_bits) in enumerate(_bit_slots(bits, values)):
        value = chunks[:, word] >> shift
        if low_bits < bits:
            value = value | (chunks[:, word + 1] << low_bits)
        out[:, j] = value & mask
    codes = out.reshape(p // words * values, n).to(torch.int32)
    if rows is not None:
        if rows > codes.shape[0] or rows < 0:
            raise ValueError(f"cannot take {rows} rows from {codes.shape[0]} unpacked rows")
        codes = codes[:rows]
    return codes


def pack_cols(codes: Tensor, bits: int) -> Tensor:
    """Pack ``[N, K]`` codes along dim 1 (the qzeros layout) into int32 ``[N, K * bits // 32]``."""
    return pack_rows(codes.t(), bits).t().contiguous()


def unpack_cols(packed: Tensor, bits: int, cols: int | None = None) -> Tensor:
    """Inverse of :func:`pack_cols`."""
    return unpack_rows(packed.t(), bits, cols).t().contiguous()


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_dense(codes: Tensor, bits: int) -> Tensor:
    """Pack ``[N, K]`` codes along dim 1, any ``K``, into int32 ``[N, ceil(K * bits / 32)]``: one dense
    bitstream per row (value ``j`` at bits ``[j * bits, (j + 1) * bits)``), the last word's unused
    bits zero. compressed-tensors' ``pack_to_int32`` writes exactly this."""
    values, _ = chunk_shape(bits)
    cols = codes.shape[1]
    padded = _ceil_to(cols, values)
    if padded != cols:  # whole chunks to pack; the words that hold only padding are dropped
        codes = torch.cat([codes, codes.new_zeros(codes.shape[0], padded - cols)], dim=1)
    packed = pack_cols(codes, bits)[:, : _ceil_to(cols * bits, 32) // 32]
    return packed.new_empty(packed.shape).copy_(packed)  # row-major strides, even for one word per row


def unpack_dense(packed: Tensor, bits: int, cols: int) -> Tensor:
    """Inverse of :func:`pack_dense`: int32 ``[N, W]`` to int32 codes ``[N, cols]``."""
    _, words = chunk_shape(bits)
    if packed.dim() != 2 or packed.shape[1] != _ceil_to(cols * bits, 32) // 32:
        raise ValueError(f"packed shape {tuple(packed.shape)} does not hold {cols} {bits}-bit values per row")
    padded = _ceil_to(packed.shape[1], words)
    if padded != packed.shape[1]:
        packed = torch.cat([packed, packed.new_zeros(packed.shape[0], padded - packed.shape[1])], dim=1)
    return unpack_cols(packed, bits, cols)
