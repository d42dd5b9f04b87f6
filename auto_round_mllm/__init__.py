"""auto-round-mllm: sign-gradient weight quantization for multimodal LLMs.

Heavy modules (torch, transformers) load on first use, so ``auto-round-mllm --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "AutoRoundMLLM": "auto_round_mllm.api",
    "quantize": "auto_round_mllm.api",
    "QuantResult": "auto_round_mllm.api",
    "QuantJob": "auto_round_mllm.config",
    "QuantScheme": "auto_round_mllm.config",
    "TuningConfig": "auto_round_mllm.config",
    "PRESETS": "auto_round_mllm.config",
    "UserError": "auto_round_mllm.errors",
    "load_dequantized": "auto_round_mllm.inference.dequantize",
}

__all__ = [
    "PRESETS",
    "AutoRoundMLLM",
    "QuantJob",
    "QuantResult",
    "QuantScheme",
    "TuningConfig",
    "UserError",
    "__version__",
    "load_dequantized",
    "quantize",
]

if TYPE_CHECKING:
    from auto_round_mllm.api import AutoRoundMLLM, QuantResult, quantize
    from auto_round_mllm.config import PRESETS, QuantJob, QuantScheme, TuningConfig
    from auto_round_mllm.errors import UserError
    from auto_round_mllm.inference.dequantize import load_dequantized


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'auto_round_mllm' has no attribute {name!r}")
