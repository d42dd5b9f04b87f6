"""Tuners choose quantization parameters; importing this package registers the built-in ones."""

from auto_round_mllm.tuning import rtn, signround
from auto_round_mllm.tuning.base import TUNERS, TuneContext, TuneOutcome, Tuner, register_tuner, tuner_for

__all__ = ["TUNERS", "TuneContext", "TuneOutcome", "Tuner", "register_tuner", "rtn", "signround", "tuner_for"]
