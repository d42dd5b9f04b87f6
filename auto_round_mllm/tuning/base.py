"""The tuner protocol: how one block's quantization parameters are chosen.

The pipeline moves data and asks the tuner for nothing but ``tune_block``; a tuner declares with
``needs_data`` whether the pipeline must capture calibration activations at all (RTN does not).
Tuners never store anything; exporters do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from auto_round_mllm.config import TuningConfig
from auto_round_mllm.quant.tunable import TunableLinear
from auto_round_mllm.registry import Registry
from auto_round_mllm.tuning.block_inputs import BlockInputs
from auto_round_mllm.utils.device import Precision


@dataclass
class TuneContext:
    """What a tuner may read for one block: inputs of the quantized stream and fp targets."""

    inputs: BlockInputs
    targets: list[torch.Tensor]
    device: torch.device
    precision: Precision
    seed: int
    on_step: Callable[[int], None] | None = None
    """Called after every optimizer step (progress display)."""
    input_stats: dict[str, torch.Tensor] | None = None
    """What the tuner's :meth:`Tuner.input_recorder` gathered during the pipeline's RTN pass
    (SignRound: each wrapped layer's input mean square per column); None when it asked for nothing."""
    extra: list[torch.Tensor] = field(default_factory=list)
    """More parameters to tune with the rounding, kept at the best step like it, clamped to
    [-0.5, 0.5] (``--enable_norm_bias_tuning``'s offsets)."""


@dataclass
class TuneOutcome:
    first_loss: float | None = None
    """Loss of the first tuning step (auto-round's ``loss iter 0``)."""
    best_loss: float | None = None
    best_iter: int | None = None
    iters: int = 0


class InputRecorder(Protocol):
    """Hooks a tuner may ask the pipeline to keep open during its round-to-nearest pass."""

    def __enter__(self) -> InputRecorder: ...

    def __exit__(self, *exc: object) -> None: ...

    def batch(self, mask: torch.Tensor | None) -> None:
        """The loss mask of the batch about to run (None: no padding)."""
        ...

    def result(self) -> dict[str, torch.Tensor]: ...


class Tuner(Protocol):
    name: str
    needs_data: bool

    def tune_block(
        self, block: nn.Module, wrapped: dict[str, TunableLinear], ctx: TuneContext | None
    ) -> TuneOutcome:
        """Adjust the wrapped layers' learnable parameters in place."""
        ...

    def input_recorder(self, wrapped: dict[str, TunableLinear]) -> InputRecorder | None:
        """Statistics to record in the pipeline's RTN pass into ``TuneContext.input_stats``."""
        ...


TunerFactory = Callable[[TuningConfig], Tuner]
TUNERS: Registry[TunerFactory] = Registry("tuning method")


def register_tuner(name: str) -> Callable[[TunerFactory], TunerFactory]:
    return TUNERS.register(name)


def tuner_for(config: TuningConfig) -> Tuner:
    """SignRound for ``iters > 0``, round-to-nearest for ``iters == 0`` (auto-round's rule); with
    ``opt_rtn`` SignRound's start alone (the weighted clipping search, no steps)."""
    return TUNERS.get("signround" if config.iters > 0 or config.opt_rtn else "rtn")(config)
