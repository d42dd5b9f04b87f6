"""Capture the inputs of the first block to tune, by running the model until it reaches it.

A forward pre-hook on the block records its positional and keyword arguments (attention mask,
position ids, position embeddings, rope variants) and raises :class:`StopForward`, so the rest of
the model never runs. Each sample is captured on its own (batch size 1), which keeps image
samples of different sizes apart and makes the batch dimension of every argument unambiguous.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.tuning.block_inputs import BlockInputs, move

# Keyword arguments that belong to generation, not to calibration.
DROPPED_KWARGS = ("past_key_value", "past_key_values", "output_attentions")


class StopForward(Exception):
    """Raised by the capture hook once the block's inputs are recorded."""


def capture_block_inputs(
    model: nn.Module,
    block: nn.Module,
    samples: list[dict[str, torch.Tensor]],
    *,
    device: torch.device,
    cache: CachePlacement,
    skip_unreached: bool = False,
) -> BlockInputs:
    """``skip_unreached``: samples whose forward never calls the block (text samples, for a vision
    block) are left out instead of being an error."""
    captures: list[tuple[torch.Tensor, tuple, dict[str, Any]]] = []
    masks: list[torch.Tensor | None] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        for key in DROPPED_KWARGS:
            kwargs.pop(key, None)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captures.append((cache.store(hidden.detach()), cache.place(rest), cache.place(kwargs)))
        raise StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for sample in samples:
                inputs = move(sample, device)
                try:
                    model(**inputs, use_cache=False)
                except StopForward:
                    masks.append(loss_mask(sample.get("attention_mask"), captures[-1][0], cache.device))
                    continue
                if not skip_unreached:
                    raise RuntimeError(
                        f"the model's forward never reached block {type(block).__name__}; "
                        "the block list does not belong to the forward path of this model"
                    )
    finally:
        handle.remove()
    if not captures:
        raise ValueError(f"no calibration sample reached {type(block).__name__} (vision blocks need images)")
    return BlockInputs.from_captures(captures, masks)


def loss_mask(
    attention_mask: torch.Tensor | None, hidden: torch.Tensor, device: torch.device
) -> torch.Tensor | None:
    """The sample's padding mask as loss weights, when it has padding and lines up with the block's
    sequence positions (it does for decoder-only VLMs: image tokens sit in the text sequence)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        return None
    return attention_mask.to(device=device, dtype=torch.float32)
