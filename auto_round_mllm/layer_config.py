"""``--layer_config``: per-layer schemes, as auto-round reads them.

A mapping from a layer name or pattern to a preset name (``"W8A16"``) or a dict of ``bits``,
``group_size``, ``sym``, ``data_type`` and ``scheme`` (a preset the other keys override); ``bits:
16`` keeps the layer in 16 bit. Keys follow auto-round's matching rule: a key naming a module
exactly applies to it; any other key is a pattern, searched in the module name, a plain one as a
substring and one with regex tokens (``.*``, ``^``, ``$``, ``|``, brackets ...) as that regex.
An exact name wins over patterns; among patterns, the last one listed that matches wins (auto-round
expands them in order, each over the previous).

On the command line the mapping is JSON text, a JSON file's path, or auto-round's shell-friendly
form without quotes (``{mlp.down_proj:{bits:8}}``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from auto_round_mllm.config import PRESETS, QuantScheme
from auto_round_mllm.errors import UserError

ENTRY_KEYS = ("bits", "group_size", "sym", "data_type", "scheme")
EXAMPLE = """'{"mlp.down_proj": {"bits": 8}, "self_attn.o_proj": "W8A16"}'"""
REGEX_TOKENS = (".*", "^", "$", "|", "(", ")", "[", "]", "?", "+")


def parse_layer_config(value: str | dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The normalized mapping (every entry a dict of :data:`ENTRY_KEYS`) from any form a user gives."""
    if value is None or value == "" or value == {}:
        return {}
    raw = value if isinstance(value, dict) else _parse_text(str(value))
    if not isinstance(raw, dict):
        raise UserError(
            f"--layer_config must be a mapping of layer names, not {type(raw).__name__}", fix=EXAMPLE
        )
    return {str(key): _entry(str(key), item) for key, item in raw.items()}


def _parse_text(text: str) -> Any:
    stripped = text.strip()
    if stripped and not stripped.startswith(("{", "'", '"')) and Path(stripped).is_file():
        stripped = Path(stripped).read_text().strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        stripped = stripped[1:-1]
    for attempt in (stripped, _escape_backslashes(stripped)):
        try:
            return json.loads(attempt)
        except ValueError:
            pass
    try:
        return _Unquoted(stripped).parse()
    except ValueError as error:
        raise UserError(
            f"--layer_config is neither JSON nor a JSON file ({error})", fix=f"e.g. {EXAMPLE}"
        ) from None


def _escape_backslashes(text: str) -> str:
    """Shell-friendly regexes (``"layers\\.\\d+"`` typed as ``layers\\.\\d+``) made valid JSON."""
    return re.sub(r'\\(?![\\"/bfnrtu])', r"\\\\", text)


class _Unquoted:
    """auto-round's fallback syntax: ``{key:{bits:8,sym:true},other:W8A16}`` without quotes."""

    def __init__(self, text: str) -> None:
        self.tokens = re.findall(r"[{}:,]|[^\s{}:,]+", text)
        self.pos = 0

    def parse(self) -> Any:
        value = self._value()
        if self.pos != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.pos]!r}")
        return value

    def _take(self, expected: str | None = None) -> str:
        if self.pos >= len(self.tokens):
            raise ValueError("unexpected end")
        token = self.tokens[self.pos]
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, got {token!r}")
        self.pos += 1
        return token

    def _value(self) -> Any:
        if self.pos < len(self.tokens) and self.tokens[self.pos] == "{":
            self._take("{")
            out: dict[str, Any] = {}
            while self.tokens[self.pos : self.pos + 1] != ["}"]:
                key = _scalar(self._take())
                self._take(":")
                out[str(key)] = self._value()
                if self.tokens[self.pos : self.pos + 1] == [","]:
                    self._take(",")
            self._take("}")
            return out
        return _scalar(self._take())


def _scalar(token: str) -> Any:
    token = token.strip().strip("'\"")
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return token


def _entry(key: str, item: Any) -> dict[str, Any]:
    if isinstance(item, str):
        item = {"scheme": item}
    if not isinstance(item, dict):
        raise UserError(
            f"--layer_config entry {key!r} is {item!r}", fix='give a preset name or a dict, e.g. {"bits": 8}'
        )
    unknown = sorted(set(item) - set(ENTRY_KEYS))
    if unknown:
        raise UserError(
            f"--layer_config entry {key!r} has unknown keys: {', '.join(unknown)}",
            fix=f"use {', '.join(ENTRY_KEYS)}",
        )
    if "scheme" in item and str(item["scheme"]).upper() not in PRESETS:
        raise UserError(
            f"--layer_config entry {key!r}: unknown scheme {item['scheme']!r}",
            fix=f"use one of: {', '.join(PRESETS)}",
        )
    return dict(item)


def entry_scheme(key: str, entry: dict[str, Any], default: QuantScheme) -> QuantScheme | None:
    """The scheme an entry gives a layer over ``default``; None for 16 bit. Refuses what a
    checkpoint cannot carry per layer: another data type, and a symmetry other than the job's
    (a GPTQ checkpoint's zero-point convention is one for all layers)."""
    base = PRESETS[str(entry["scheme"]).upper()] if "scheme" in entry else default
    if "scheme" in entry:  # a preset sets bits and group size; the job's symmetry stays
        base = dataclasses.replace(base, sym=default.sym)
    if int(entry.get("bits", base.bits)) >= 16:
        return None
    sym = entry.get("sym", default.sym)
    if bool(sym) != default.sym:
        raise UserError(
            f"--layer_config entry {key!r} asks for {'symmetric' if sym else 'asymmetric'} weights in a "
            f"{'symmetric' if default.sym else 'asymmetric'} run: one zero-point convention holds for all layers",
            fix="drop its sym key, or change --asym for the whole run",
        )
    overrides = {k: entry[k] for k in ("bits", "group_size", "data_type") if k in entry}
    try:
        return dataclasses.replace(
            base, **{k: int(v) if k != "data_type" else v for k, v in overrides.items()}
        )
    except (TypeError, ValueError):
        raise UserError(
            f"--layer_config entry {key!r} has a value that is not a number: {entry}", fix=f"e.g. {EXAMPLE}"
        ) from None


def to_standard_regex(pattern: str) -> str:
    """auto-round's rule: a pattern with regex tokens is a regex; any other is a literal substring."""
    if any(token in pattern for token in REGEX_TOKENS):
        return pattern
    return re.escape(pattern)


def matching_entry(name: str, layer_config: dict[str, dict[str, Any]]) -> str | None:
    """The key of ``layer_config`` that decides layer ``name``: its exact name, else the last
    pattern that matches it; None if none does."""
    if name in layer_config:
        return name
    found = None
    for key in layer_config:
        if re.search(to_standard_regex(key), name):
            found = key
    return found


def check_layer_config(layer_config: dict[str, dict[str, Any]], default: QuantScheme) -> None:
    """Every entry resolves against the job's scheme (run before any weight is read)."""
    for key, entry in layer_config.items():
        try:
            re.compile(to_standard_regex(key))
        except re.error as error:
            raise UserError(
                f"--layer_config key {key!r} is not a valid pattern ({error})", fix="escape it"
            ) from None
        entry_scheme(key, entry, default)
