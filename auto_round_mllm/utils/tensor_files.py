"""Sharded safetensors written one tensor at a time.

``safetensors.save_file`` needs every tensor of a shard in memory at once; a streamed export of a
70B model must not. A safetensors file is an 8-byte header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw bytes; everything the header needs is known
from dtypes and shapes alone, so the header is written first and each tensor is materialized,
written and dropped in turn. The layout (tensors ordered by dtype, widest first, then by name;
compact JSON padded with spaces to 8 bytes) is the one ``save_file`` writes, so both give the
same bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

# safetensors' dtype names, in the order of its Rust ``Dtype`` enum (the data section is sorted
# by that order, descending).
DTYPE_ORDER: tuple[tuple[str, torch.dtype], ...] = (
    ("BOOL", torch.bool),
    ("U8", torch.uint8),
    ("I8", torch.int8),
    ("F8_E5M2", torch.float8_e5m2),
    ("F8_E4M3", torch.float8_e4m3fn),
    ("I16", torch.int16),
    ("U16", torch.uint16),
    ("F16", torch.float16),
    ("BF16", torch.bfloat16),
    ("I32", torch.int32),
    ("U32", torch.uint32),
    ("F32", torch.float32),
    ("F64", torch.float64),
    ("I64", torch.int64),
    ("U64", torch.uint64),
)
DTYPE_NAME = {dtype: name for name, dtype in DTYPE_ORDER}
DTYPE_RANK = {dtype: rank for rank, (_, dtype) in enumerate(DTYPE_ORDER)}


@dataclass(frozen=True)
class LazyTensor:
    """A tensor known by dtype and shape, read or computed only when it is written."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def materialize(self) -> torch.Tensor:
        tensor = self.load()
        if tensor.dtype != self.dtype or tuple(tensor.shape) != self.shape:
            raise RuntimeError(
                f"a lazy tensor promised {self.dtype}{list(self.shape)} and gave "
                f"{tensor.dtype}{list(tensor.shape)}"
            )
        return tensor


TensorLike = torch.Tensor | LazyTensor


def _meta(value: TensorLike) -> tuple[torch.dtype, tuple[int, ...], int]:
    if isinstance(value, LazyTensor):
        return value.dtype, value.shape, value.nbytes
    return value.dtype, tuple(value.shape), value.numel() * value.element_size()


def _materialize(value: TensorLike) -> torch.Tensor:
    return value.materialize() if isinstance(value, LazyTensor) else value


def plan_shards(tensors: Mapping[str, TensorLike], limit: int) -> list[list[str]]:
    """Names in sorted order, cut greedily into shards of at most ``limit`` bytes (a tensor larger
    than the limit gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        nbytes = _meta(tensors[name])[2]
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_file(
    tensors: Mapping[str, TensorLike], path: Path, *, metadata: dict[str, str] | None = None
) -> int:
    """Write one safetensors file, holding one tensor in memory at a time; returns its data size."""
    for name, value in tensors.items():
        if _meta(value)[0] not in DTYPE_NAME:
            raise TypeError(f"{name}: safetensors cannot store {_meta(value)[0]}")
    order = sorted(tensors, key=lambda n: (-DTYPE_RANK[_meta(tensors[n])[0]], n))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name in order:
        dtype, shape, nbytes = _meta(tensors[name])
        header[name] = {
            "dtype": DTYPE_NAME[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name in order:
            tensor = _materialize(tensors[name]).detach().to("cpu").contiguous()
            if tensor.numel():
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            del tensor
    return offset


def write_sharded(
    tensors: Mapping[str, TensorLike], folder: Path, *, limit: int
) -> tuple[list[str], dict[str, str], int]:
    """Shard and write; returns (file names, tensor -> file, total bytes). One file is
    ``model.safetensors``; several are ``model-0000i-of-0000n.safetensors``."""
    shards = plan_shards(tensors, limit)
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    total = 0
    for file_name, members in zip(names, shards, strict=True):
        total += write_file({n: tensors[n] for n in members}, folder / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(members, file_name))
    return names, weight_map, total
