"""Round-to-nearest: the learnable parameters stay at their initial values (V = 0, clip = 1)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from auto_round_mllm.config import TuningConfig
from auto_round_mllm.quant.tunable import TunableLinear
from auto_round_mllm.tuning.base import TuneContext, TuneOutcome, register_tuner


@dataclass
class RTNTuner:
    config: TuningConfig
    name: str = "rtn"
    needs_data: bool = False

    def tune_block(
        self, block: nn.Module, wrapped: dict[str, TunableLinear], ctx: TuneContext | None
    ) -> TuneOutcome:
        return TuneOutcome()

    def input_recorder(self, wrapped: dict[str, TunableLinear]) -> None:
        return None  # nothing to learn from the calibration inputs


register_tuner("rtn")(RTNTuner)
