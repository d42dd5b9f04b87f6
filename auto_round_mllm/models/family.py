"""Model families as data: where the blocks are, what must stay in 16 bit, how to calibrate.

A new family is one :func:`register_family` call. Module paths are the transformers 5 *model*
names (``model.language_model.layers``); the exporter maps them back to the checkpoint's names.
Unregistered models fall back to :func:`discover_block_lists`, which finds block lists by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from auto_round_mllm.errors import UserError
from auto_round_mllm.registry import Registry

VISION_WORDS = ("vision", "visual", "image", "img", "audio", "speech")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]
    text_blocks: tuple[str, ...]
    """Candidate paths of the text decoder's block list; the first that exists is used."""
    vision_blocks: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ("lm_head",)
    """Layer name patterns kept in 16 bit (substring, or ``re:`` regex)."""
    template: str = "default"
    processor: str = "hf"
    text_only_calibration: bool = True


FAMILIES: Registry[ModelFamily] = Registry("model family")


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    return FAMILIES.add(family.name, family, replace=replace)


GENERIC = ModelFamily(name="generic", model_types=(), text_blocks=())


def family_for_model_type(model_type: str) -> ModelFamily:
    for _, family in FAMILIES.items():
        if model_type in family.model_types:
            return family
    return GENERIC


def matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    """auto-round's layer-name rule: a plain pattern matches as a substring, ``re:`` as a regex."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.search(pattern[3:], name):
                return True
        elif pattern and pattern in name:
            return True
    return False


def discover_block_lists(model: nn.Module) -> list[str]:
    """Every ``ModuleList`` reached first on its branch of the module tree (auto-round's rule)."""
    found: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            path = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, nn.ModuleList) and len(child) > 0:
                found.append(path)
            else:
                walk(child, path)

    walk(model, "")
    return found


def is_vision_path(path: str) -> bool:
    return any(word in path.lower() for word in VISION_WORDS)


def text_block_list(model: nn.Module, family: ModelFamily) -> str:
    """The path of the text decoder's block list for this model."""
    modules = dict(model.named_modules())
    for path in family.text_blocks:
        if isinstance(modules.get(path), nn.ModuleList):
            return path
    candidates = [path for path in discover_block_lists(model) if not is_vision_path(path)]
    if not candidates:
        raise UserError(
            f"no text decoder blocks found in {type(model).__name__}",
            fix="pass --to_quant_block_names with the block list path (e.g. model.language_model.layers)",
        )
    # The text decoder is the longest non-vision block list.
    return max(candidates, key=lambda path: len(modules[path]))


def vision_block_lists(model: nn.Module, family: ModelFamily) -> list[str]:
    """The vision tower's block lists in forward order: every registered path that exists (mllama
    has a local and a global encoder), else the discovered lists whose path names vision."""
    modules = dict(model.named_modules())
    found = [path for path in family.vision_blocks if isinstance(modules.get(path), nn.ModuleList)]
    if found or family.vision_blocks:
        return found
    return [path for path in discover_block_lists(model) if is_vision_path(path) and "audio" not in path]


def select_blocks(model: nn.Module, family: ModelFamily, to_quant_block_names: tuple[str, ...]) -> list[str]:
    """Names of the blocks to tune, in order. Patterns are regex-searched in block names."""
    modules = dict(model.named_modules())
    if not to_quant_block_names:
        group = text_block_list(model, family)
        return [f"{group}.{i}" for i in range(len(modules[group]))]
    all_blocks = [f"{group}.{i}" for group in discover_block_lists(model) for i in range(len(modules[group]))]
    chosen = [name for name in all_blocks if any(re.search(p, name) for p in to_quant_block_names)]
    if not chosen:
        raise UserError(
            f"--to_quant_block_names {','.join(to_quant_block_names)} matches no block",
            fix=f"block lists in this model: {', '.join(discover_block_lists(model))}",
        )
    return chosen
