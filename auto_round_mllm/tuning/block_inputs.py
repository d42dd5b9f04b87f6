"""Block inputs, kept per sample, batched on demand (the data a tuner reads; the pipeline fills it).

A decoder block is called as ``block(hidden_states, *args, **kwargs)``. The hidden states differ
per sample; most keyword arguments (position embeddings, rotary variants such as Qwen2-VL's
multimodal rope, cache positions) are identical across samples of one length and are stored once,
the way auto-round's newer releases do. Whatever differs (padding masks, image positions) is kept
per sample and concatenated along its batch dimension when a batch is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

POSITIONAL = "__positional_"


def _batch_dim(tensor: torch.Tensor) -> int | None:
    """The batch dimension of a per-sample tensor captured with batch size 1: its first size-1 dim.

    ``[1, L, D]`` -> 0, ``[1, 1, L, L]`` masks -> 0, multimodal rope ``[3, 1, L, D]`` -> 1. A tensor
    of two or more dims without a size-1 dim has the batch folded into its leading dim (mllama's
    ``cross_attention_states`` is ``[images x tiles, patches, hidden]``): 0. 1-D tensors such as
    ``cache_position`` have none.
    """
    for dim, size in enumerate(tensor.shape):
        if size == 1:
            return dim
    return 0 if tensor.dim() >= 2 else None


def _shareable(value: Any) -> bool:
    """Whether one copy can stand for every sample: folded-batch tensors cannot be expanded."""
    if isinstance(value, torch.Tensor):
        return value.dim() < 2 or 1 in value.shape
    if isinstance(value, (tuple, list)):
        return all(_shareable(v) for v in value)
    return True


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return a == b


def _signature(value: Any) -> Any:
    """What must agree between samples for their values to be concatenated."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return tuple(_signature(v) for v in value)
    return type(value).__name__


def _expand(value: Any, batch: int) -> Any:
    if isinstance(value, torch.Tensor):
        dim = _batch_dim(value)
        if dim is None or batch == 1 or value.shape[dim] != 1:
            return value
        shape = list(value.shape)
        shape[dim] = batch
        return value.expand(*shape)
    if isinstance(value, tuple):
        return tuple(_expand(v, batch) for v in value)
    if isinstance(value, list):
        return [_expand(v, batch) for v in value]
    return value


def _concat(values: Sequence[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        dim = _batch_dim(first)
        return first if dim is None else torch.cat(list(values), dim=dim)
    if isinstance(first, (tuple, list)):
        parts = [_concat([v[i] for v in values]) for i in range(len(first))]
        return type(first)(parts)
    return first


def move(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(move(v, device) for v in value)
    if isinstance(value, list):
        return [move(v, device) for v in value]
    if isinstance(value, dict):
        return {k: move(v, device) for k, v in value.items()}
    return value


@dataclass
class BlockInputs:
    """The inputs of one block for every calibration sample.

    ``masks`` holds, per sample, a ``[1, L]`` 0/1 tensor of the positions that count in the loss
    (padding excluded), or None when every position counts.
    """

    hidden: list[torch.Tensor]
    positional: int = 0
    """How many positional arguments follow the hidden states (stored as ``POSITIONAL<i>`` keys)."""
    shared: dict[str, Any] = field(default_factory=dict)
    per_sample: list[dict[str, Any]] = field(default_factory=list)
    masks: list[torch.Tensor | None] = field(default_factory=list)

    @classmethod
    def from_captures(
        cls,
        captures: list[tuple[torch.Tensor, tuple, dict[str, Any]]],
        masks: list[torch.Tensor | None] | None = None,
    ) -> BlockInputs:
        """Split captured (hidden, args, kwargs) into shared and per-sample parts."""
        if not captures:
            raise ValueError("no block inputs were captured")
        hidden = [c[0] for c in captures]
        # Extra positional arguments (CogVLM2's layers take token_type_ids positionally) may differ per
        # sample like keyword arguments do, so they are stored as numbered keywords.
        positional = len(captures[0][1])
        captures = [
            (h, (), {**{f"{POSITIONAL}{i}": a for i, a in enumerate(args)}, **kw}) for h, args, kw in captures
        ]
        keys = list(captures[0][2])
        shared: dict[str, Any] = {}
        varying: list[str] = []
        for key in keys:
            first = captures[0][2][key]
            if _shareable(first) and all(_equal(first, c[2].get(key)) for c in captures[1:]):
                shared[key] = first
            else:
                varying.append(key)
        per_sample = [{key: c[2][key] for key in varying} for c in captures]
        return cls(
            hidden=hidden,
            positional=positional,
            shared=shared,
            per_sample=per_sample,
            masks=masks or [None] * len(hidden),
        )

    def __len__(self) -> int:
        return len(self.hidden)

    def with_hidden(self, hidden: list[torch.Tensor]) -> BlockInputs:
        """Same keyword arguments, new hidden states: the inputs of the next block."""
        return BlockInputs(
            hidden=hidden,
            positional=self.positional,
            shared=self.shared,
            per_sample=self.per_sample,
            masks=self.masks,
        )

    def shape_buckets(self) -> list[list[int]]:
        """Sample indices grouped so that a batch can be built from any subset of a group: same
        hidden shape, and per-sample arguments of the same shapes (a padded sample's attention mask
        cannot be concatenated with an unpadded sample's ``None``)."""
        buckets: dict[tuple, list[int]] = {}
        for index, tensor in enumerate(self.hidden):
            kwargs = self.per_sample[index] if self.per_sample else {}
            key = (tuple(tensor.shape), tuple((name, _signature(kwargs[name])) for name in sorted(kwargs)))
            buckets.setdefault(key, []).append(index)
        return list(buckets.values())

    def batch(
        self, indices: Sequence[int], device: torch.device
    ) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
        """(hidden, args, kwargs) for a batch of same-shape samples, on ``device``."""
        hidden = torch.cat([self.hidden[i] for i in indices], dim=0).to(device, non_blocking=True)
        kwargs = {key: _expand(move(value, device), len(indices)) for key, value in self.shared.items()}
        if self.per_sample and self.per_sample[0]:
            for key in self.per_sample[0]:
                kwargs[key] = move(_concat([self.per_sample[i][key] for i in indices]), device)
        args = tuple(kwargs.pop(f"{POSITIONAL}{i}") for i in range(self.positional))
        return hidden, args, kwargs

    def loss_mask(self, indices: Sequence[int], device: torch.device) -> torch.Tensor | None:
        """``[B, L]`` loss weights for a batch, or None when no sample in it has padding."""
        chosen = [self.masks[i] if self.masks else None for i in indices]
        if all(mask is None for mask in chosen):
            return None
        full = [
            torch.ones(self.hidden[i].shape[:2], dtype=torch.float32) if mask is None else mask.float()
            for i, mask in zip(indices, chosen, strict=True)
        ]
        return torch.cat(full, dim=0).to(device, non_blocking=True)


def masked_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the positions ``mask`` keeps (all of them when it is None), in fp32.

    Padding positions compute garbage that must not steer the rounding; auto-round has no such
    mask for multimodal calibration.
    """
    if mask is None:
        return F.mse_loss(output.float(), target.float())
    squared = (output.float() - target.float()).pow(2) * mask.unsqueeze(-1)
    return squared.sum() / (mask.sum() * output.shape[-1]).clamp(min=1)


def run_block(
    block: torch.nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict[str, Any]
) -> torch.Tensor:
    """Call a decoder block and return its hidden states (blocks may return a tuple)."""
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out
