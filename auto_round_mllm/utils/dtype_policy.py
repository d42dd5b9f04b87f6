"""The dtype policy in one place: which dtype a model is loaded, tuned and written in.

``--model_dtype`` names it; under ``auto`` a 16-bit checkpoint keeps its dtype and an fp32 one is
cast to bf16 wherever bf16 is fast (auto-round's rule). The load asks for that dtype from the
start, so an fp32 checkpoint tuned in bf16 is never held in memory in fp32.
"""

from __future__ import annotations

from typing import Any

import torch

from auto_round_mllm.utils.device import DTYPE_NAMES, DTYPES, supports_bf16, torch_dtype


def checkpoint_dtype(config: dict[str, Any]) -> torch.dtype | None:
    """The dtype config.json names (``dtype``, or ``torch_dtype`` before transformers 5), at the
    top or in the text config of a vision-language model; None when it names none."""
    for section in (config, config.get("text_config") or {}):
        name = section.get("dtype") or section.get("torch_dtype")
        if isinstance(name, str) and name in DTYPES:
            return DTYPES[name]
    return None


def tuning_dtype(device: torch.device, checkpoint_dtype: torch.dtype, *, amp: bool) -> torch.dtype:
    """The dtype ``--model_dtype auto`` tunes and exports in.

    A 16-bit checkpoint keeps its dtype. An fp32 checkpoint is cast to bf16 wherever bf16 is
    fast, as auto-round does (:func:`choose_precision` then autocasts in it): under CPU autocast
    alone only the matmuls ran in bf16 while the norms, residual stream and cached block inputs
    stayed fp32, which cost 9-12% per step on CPU, twice the cache memory, and was less steady at
    2 bits (docs/benchmarks.md, W2G64 seed by seed).
    ``--disable_amp`` or a device without fast bf16 keeps fp32."""
    if not amp or checkpoint_dtype != torch.float32 or not supports_bf16(device):
        return checkpoint_dtype
    return torch.bfloat16


def model_dtype_for(requested: str, device: torch.device, stored: torch.dtype, *, amp: bool) -> torch.dtype:
    """The dtype the model is tuned and exported in: ``requested`` (``--model_dtype``), or under
    ``auto`` the checkpoint's, with fp32 cast to bf16 where AMP autocasts to bf16 (:func:`tuning_dtype`)."""
    if requested != "auto":
        return torch_dtype(requested)
    return tuning_dtype(device, stored, amp=amp)


def load_dtype_name(requested: str, device: torch.device, config: dict[str, Any], *, amp: bool) -> str:
    """The dtype name to load the checkpoint in (``auto``: as stored), so that an fp32 checkpoint
    tuned in bf16 is never held in memory in fp32 (twice the RSS of the model while it loads)."""
    stored = checkpoint_dtype(config)
    if requested != "auto" or stored is None:
        return requested
    wanted = model_dtype_for(requested, device, stored, amp=amp)
    return DTYPE_NAMES[wanted] if wanted != stored and wanted in DTYPE_NAMES else "auto"


def parameter_dtype(model: torch.nn.Module) -> torch.dtype:
    """The model's dtype as transformers reports it: its first floating-point parameter's."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point parameters only: buffers such as rotary ``inv_freq`` stay in fp32, as
    ``from_pretrained(dtype=...)`` leaves them. The config follows, so the exported config.json
    names the dtype its tensors are written in."""
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    config = getattr(model, "config", None)
    if config is None:
        return
    config.dtype = dtype
    for key in getattr(config, "sub_configs", {}):
        if (sub := getattr(config, key, None)) is not None and hasattr(sub, "dtype"):
            sub.dtype = dtype
