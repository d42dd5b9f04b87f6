"""Which class builds a checkpoint, its module tree without weights, and whether loaded weights fit it.

Shared by whole-model loading (:mod:`~auto_round_mllm.models.loading`), streaming
(:mod:`~auto_round_mllm.models.streaming`) and the quantized-checkpoint loaders, none of which
imports another for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from auto_round_mllm.errors import ModelNotFound, UserError

REMOTE_AUTO_CLASSES = (
    "AutoModelForImageTextToText",
    "AutoModelForVision2Seq",
    "AutoModelForCausalLM",
    "AutoModel",
)


def model_class_for(config: dict[str, Any], *, trust_remote_code: bool = False) -> Any:
    """The class that loads this checkpoint: transformers' own class named in ``architectures``,
    else (remote code) the first Auto class the checkpoint's ``auto_map`` declares."""
    import transformers

    arch = config["architectures"][0]
    cls = getattr(transformers, arch, None)
    auto_map = config.get("auto_map") or {}
    if cls is not None and not (trust_remote_code and auto_map):
        return cls
    if auto_map and not trust_remote_code:
        raise UserError(
            f"{arch} ships its own Python code, which runs only with --trust_remote_code",
            fix="pass --trust_remote_code if you trust the model's authors",
        )
    for name in REMOTE_AUTO_CLASSES:
        if name in auto_map:
            return getattr(transformers, name)
    raise UserError(
        f"architecture {arch} is not available in transformers {transformers.__version__}",
        fix="upgrade transformers, or pass --trust_remote_code if the model ships its own code",
    )


def model_skeleton(
    model_dir: Path, config: dict[str, Any], *, trust_remote_code: bool = False
) -> torch.nn.Module:
    """The model's module tree on the meta device: shapes and names, no memory, no weights read."""
    from transformers import AutoConfig, PreTrainedModel

    cls = model_class_for(config, trust_remote_code=trust_remote_code)
    hf_config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            return cls._from_config(hf_config)
        return cls.from_config(hf_config, trust_remote_code=trust_remote_code)


def check_loading_info(model_dir: Path, info: dict[str, Any]) -> None:
    """Refuse weights that do not fit the architecture: transformers would initialize the missing
    or mis-shaped tensors randomly and quantization would go on, silently, on a broken model."""
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        name, found, expected = mismatched[0]
        raise ModelNotFound(
            f"{len(mismatched)} weight(s) in {model_dir} have shapes that disagree with config.json "
            f"(first: {name} is {tuple(found)}, the config implies {tuple(expected)})",
            fix="use the config.json that came with these weights",
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelNotFound(
            f"{len(missing)} weight(s) the architecture needs are not in {model_dir} (first: {missing[0]})",
            fix="check that config.json's architectures/model_type match the weights, and that no shard is missing",
        )
