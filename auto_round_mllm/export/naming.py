"""Map transformers 5 module names back to the names the source checkpoint used.

transformers 5 renames some modules between checkpoint and model (a LLaVA checkpoint's
``language_model.model.layers.0`` is the model's ``model.language_model.layers.0``). Every loader
that reads the original checkpoint applies its own renaming, so a quantized checkpoint must use
the checkpoint's names, in its tensors and in ``block_name_to_quantize`` alike. We reverse
transformers' renaming rules and, when the source checkpoint is at hand, check the result against
its real tensor names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from torch import nn

log = logging.getLogger(__name__)


def _reverse_renamings(model: nn.Module) -> list:
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import PrefixChange, WeightRenaming
    except ImportError:  # older transformers: model names are checkpoint names
        return []
    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None:
        conversions = [
            c
            for c in get_model_conversion_mapping(model, add_legacy=False)
            if not isinstance(c, PrefixChange)
        ]
    reversed_ = [c.reverse_transform() for c in list(conversions)[::-1]]
    return [r for r in reversed_ if isinstance(r, WeightRenaming)]


def source_tensor_names(source_dir: Path | None) -> set[str]:
    """Tensor names of the source checkpoint (from the index or the safetensors headers)."""
    if source_dir is None:
        return set()
    index = source_dir / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    from safetensors import safe_open

    names: set[str] = set()
    for path in sorted(source_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names.update(handle.keys())
    return names


def checkpoint_namer(model: nn.Module, source_dir: Path | None) -> Callable[[str], str]:
    """A function from a model tensor name (``...q_proj.weight``) to its checkpoint name."""
    from transformers.core_model_loading import apply_renamings

    renamings = _reverse_renamings(model)
    known = source_tensor_names(source_dir)

    def name_for(model_name: str) -> str:
        candidate = apply_renamings(model_name, renamings) if renamings else model_name
        if known and candidate not in known and model_name in known:
            return model_name  # the source already used transformers 5 names
        return candidate

    return name_for


def module_checkpoint_name(name_for: Callable[[str], str], module_name: str) -> str:
    """Checkpoint name of a module (not a tensor): map a tensor under it, strip the suffix."""
    return name_for(f"{module_name}.weight").removesuffix(".weight")
