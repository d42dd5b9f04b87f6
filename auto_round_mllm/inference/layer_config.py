"""One packed layer's own bits, group size and symmetry, as a checkpoint's config gives them.

A config states one scheme for the model and per-layer exceptions on top: auto-round's
``extra_config`` (keyed by module name, or by a regular expression, as auto-round and vLLM read it)
and GPTQModel's ``dynamic`` (``+:regex`` overrides, ``-:regex`` exclusions, as GPTQModel and vLLM
read it). compressed-tensors has no model scheme: each of its ``config_groups`` targets layers by
exact name, ``re:`` regular expression or class name (``Linear``), the most specific match wins
(as compressed-tensors picks), and ``ignore`` keeps layers in 16 bit. Our exporters write
exceptions for layers whose width the group size does not divide (and for per-layer schemes);
every reader of our checkpoints looks them up here.
"""

from __future__ import annotations

import re
from typing import Any

SCHEME_KEYS = ("bits", "group_size", "sym")
REGEX_CHARACTERS = set("*+?^$()[]{}|\\")
COMPRESSED_TENSORS = "compressed-tensors"
CLASS_TARGET = "Linear"
"""The class-name target that covers every Linear (readers here ask about Linears only)."""


def layer_scheme(quant_config: dict[str, Any], name: str) -> dict[str, Any]:
    """``{"bits", "group_size", "sym"}`` of layer ``name``: the config's own, with the layer's
    exception (if any) over them."""
    if quant_config.get("quant_method") == COMPRESSED_TENSORS:
        return _group_scheme(quant_config, name)
    scheme = {
        "bits": int(quant_config["bits"]),
        "group_size": int(quant_config["group_size"]),
        "sym": bool(quant_config.get("sym", True)),
    }
    method = quant_config.get("quant_method")
    if method == "auto-round":
        entry = _extra_config_entry(quant_config.get("extra_config") or {}, name)
    elif method == "gptq":
        entry = _dynamic_entry(quant_config.get("dynamic") or {}, name)
    else:
        entry = {}
    for key in SCHEME_KEYS:
        if key in entry:
            scheme[key] = bool(entry[key]) if key == "sym" else int(entry[key])
    return scheme


def excluded(quant_config: dict[str, Any], name: str) -> bool:
    """Whether the config keeps layer ``name`` in 16 bit: ``bits`` 16 in ``extra_config``, or a
    GPTQModel ``-:regex`` rule; in compressed-tensors' ``ignore``, or in no config group's targets."""
    if quant_config.get("quant_method") == COMPRESSED_TENSORS:
        ignored = any(_names(target, name) for target in quant_config.get("ignore") or [])
        return ignored or _config_group(quant_config, name) is None
    if quant_config.get("quant_method") == "gptq":
        return any(
            key.startswith("-:") and re.match(key[2:], name) for key in (quant_config.get("dynamic") or {})
        )
    entry = _extra_config_entry(quant_config.get("extra_config") or {}, name)
    return int(entry.get("bits", 16 if entry.get("data_type") == "float" else 0) or 0) >= 16


def _extra_config_entry(extra: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    if name in extra:
        return extra[name]
    for pattern, entry in extra.items():
        if set(pattern) & REGEX_CHARACTERS and re.search(pattern, name):
            return entry
    return {}


def _dynamic_entry(dynamic: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    for key, entry in dynamic.items():
        if key.startswith("-:"):
            continue
        pattern = key[2:] if key.startswith("+:") else key
        if re.match(pattern, name):
            return entry
    return {}


def _names(target: str, name: str) -> bool:
    """A compressed-tensors target or ``ignore`` entry that names ``name``: exactly, or as a
    ``re:`` regular expression matched from the start."""
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name


def _config_group(quant_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The config group of Linear ``name``: an exact name before a regular expression before the
    class name, as compressed-tensors orders its matches."""
    groups = list((quant_config.get("config_groups") or {}).values())
    tests = (
        lambda target: not target.startswith("re:") and target == name,
        lambda target: target.startswith("re:") and _names(target, name),
        lambda target: target == CLASS_TARGET,
    )
    for test in tests:
        for group in groups:
            if any(test(target) for target in group.get("targets") or []):
                return group
    return None


def _group_scheme(quant_config: dict[str, Any], name: str) -> dict[str, Any]:
    group = _config_group(quant_config, name)
    if group is None:
        raise ValueError(f"no config group of the compressed-tensors config targets {name!r}")
    weights = group["weights"]
    channel = weights.get("strategy") == "channel" or not weights.get("group_size")
    return {
        "bits": int(weights["num_bits"]),
        "group_size": -1 if channel else int(weights["group_size"]),
        "sym": bool(weights.get("symmetric", True)),
    }
