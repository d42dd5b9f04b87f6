"""auto-round-mllm: sign-gradient weight quantization for multimodal LLMs.

Heavy modules (torch, transformers) load on first use, so ``auto-round-mllm --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auto_round_mllm._version import __version__

_LAZY = {
    "AutoRoundMLLM": "auto_round_mllm.api",
    "AutoRound": "auto_round_mllm.api",
    "AutoScheme": "auto_round_mllm.config",
    "quantize": "auto_round_mllm.api",
    "QuantResult": "auto_round_mllm.report",
    "QuantJob": "auto_round_mllm.config",
    "QuantScheme": "auto_round_mllm.config",
    "TuningConfig": "auto_round_mllm.config",
    "PRESETS": "auto_round_mllm.config",
    "UserError": "auto_round_mllm.errors",
    "evaluate_tasks": "auto_round_mllm.evaluate.lm_eval_tasks",
    "load_dequantized": "auto_round_mllm.inference.dequantize",
    "load_quantized": "auto_round_mllm.inference.loader",
}

__all__ = [
    "PRESETS",
    "AutoRound",
    "AutoRoundConfig",
    "AutoRoundMLLM",
    "AutoScheme",
    "QuantJob",
    "QuantResult",
    "QuantScheme",
    "TuningConfig",
    "UserError",
    "__version__",
    "evaluate_tasks",
    "load_dequantized",
    "load_quantized",
    "quantize",
]

if TYPE_CHECKING:
    from auto_round_mllm.api import AutoRound, AutoRoundMLLM, quantize
    from auto_round_mllm.config import PRESETS, AutoScheme, QuantJob, QuantScheme, TuningConfig
    from auto_round_mllm.errors import UserError
    from auto_round_mllm.evaluate.lm_eval_tasks import evaluate_tasks
    from auto_round_mllm.inference.dequantize import load_dequantized
    from auto_round_mllm.inference.loader import load_quantized
    from auto_round_mllm.report import QuantResult


def __getattr__(name: str) -> Any:
    if name == "AutoRoundConfig":
        # auto-round's habit: importing AutoRoundConfig makes from_pretrained load its checkpoints.
        from transformers import AutoRoundConfig

        from auto_round_mllm.inference.loader import register_with_transformers

        register_with_transformers()
        return AutoRoundConfig
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'auto_round_mllm' has no attribute {name!r}")
