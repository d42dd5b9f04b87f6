"""``--enable_norm_bias_tuning``: the block's norm weights and Linear biases move with the rounding.

auto-round's meaning: each norm weight (and, here as there, each Linear bias in the block) gets a
tunable offset ``v`` in ``[-0.5, 0.5]`` steps of its tensor's 4-bit range, ``w' = w + v * s`` with
``s = (max(w) - min(w)) / 15``, moved by the same signed steps as the rounding offsets, kept at the
best step like them. The tuned values stay in 16 bit: norms and biases are stored unquantized in
every format we write (auto-round also rounds biases to 4 bits; no loader reads them so, and the
checkpoint must be the tuned model).

The offsets are parametrizations (``torch.nn.utils.parametrize``): every module reads its tuned
weight through its own attribute, whatever its forward does (Gemma's ``1 + weight`` included), and
removing them leaves the tuned value in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from auto_round_mllm.quant.tunable import TunableLinear

MIN_STEP = 1e-5
"""auto-round's floor of the range step (its ``q_scale_thresh``): a constant tensor still moves."""


class Offset(nn.Module):
    """``original + clamp(v, -0.5, 0.5) * step``, in the original's dtype (the tuner clamps ``v``
    in place after each step, so that a value stepped past the bound keeps its gradient; the clamp
    here only guards a ``v`` set by hand)."""

    def __init__(self, original: torch.Tensor) -> None:
        super().__init__()
        detached = original.detach().float()
        span = float(detached.max() - detached.min()) if detached.numel() else 0.0
        self.step = max(span / 15.0, MIN_STEP)
        self.v = nn.Parameter(torch.zeros_like(detached))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original + (self.v.clamp(-0.5, 0.5) * self.step).to(original.dtype)


def is_norm(module: nn.Module) -> bool:
    """auto-round's test: the class name says norm, and it has a 1-D weight."""
    weight = getattr(module, "weight", None)
    return "norm" in type(module).__name__.lower() and isinstance(weight, nn.Parameter) and weight.dim() == 1


@dataclass
class NormBiasOffsets:
    """The offsets attached to one block (or unit), by the full name of the tensor they tune."""

    attached: dict[str, tuple[nn.Module, str, Offset]] = field(default_factory=dict)

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The tuner steps these and clamps them in place to [-0.5, 0.5] (``TuneContext.extra``)."""
        return [offset.v for _, _, offset in self.attached.values()]

    def finish(self) -> dict[str, torch.Tensor]:
        """Remove the offsets, leaving the tuned values in the modules; returns them by full name
        (on the CPU) for the checkpoint and the resume folder."""
        tuned = {}
        for name, (module, attribute, _) in self.attached.items():
            parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)
            tuned[name] = getattr(module, attribute).detach().to("cpu").clone()
        self.attached.clear()
        return tuned


def attach_offsets(block: nn.Module, prefix: str) -> NormBiasOffsets:
    """An offset on every norm weight and every Linear bias inside ``block`` (wrapped Linears
    included: their inner Linear's bias); ``prefix`` makes the names full."""
    offsets = NormBiasOffsets()
    wrapped = {rel for rel, module in block.named_modules() if isinstance(module, TunableLinear)}
    for rel, module in block.named_modules():
        targets = []
        if is_norm(module):
            targets.append("weight")
        if isinstance(module, nn.Linear) and module.bias is not None:
            targets.append("bias")
        for attribute in targets:
            original = getattr(module, attribute)
            offset = Offset(original).to(original.device)
            parametrize.register_parametrization(module, attribute, offset, unsafe=True)
            module.parametrizations[attribute].original.requires_grad_(False)
            owner = rel.removesuffix(".layer") if rel.removesuffix(".layer") in wrapped else rel
            name = ".".join(part for part in (prefix, owner, attribute) if part)
            offsets.attached[name] = (module, attribute, offset)
    return offsets
