"""Which Linear layers get quantized, with which scheme, and why the others stay in 16 bit.

Decided once, before any tuning, so a layer that no export format can store is never tuned and
every layer left in 16 bit is listed with its reason (auto-round skips such layers silently).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.errors import UserError
from auto_round_mllm.layer_config import entry_scheme, matching_entry
from auto_round_mllm.models.family import matches_any

LayerCheck = Callable[[nn.Linear, QuantScheme], "str | None"]


@dataclass(frozen=True)
class LayerDecision:
    name: str
    block: str
    in_features: int
    out_features: int
    scheme: QuantScheme | None
    reason: str | None = None
    """Why the layer stays in 16 bit (None when it is quantized)."""
    note: str | None = None
    """Why a quantized layer's scheme differs from the job's (--layer_config, a smaller group size)."""
    fell_back: bool = False
    """Whether its group size is a fallback for a width the requested one does not divide."""

    @property
    def quantized(self) -> bool:
        return self.scheme is not None


def plan_layers(
    model: nn.Module,
    block_names: list[str],
    scheme: QuantScheme,
    *,
    keep_patterns: tuple[str, ...],
    checks: list[LayerCheck],
    group_size_fallback: bool = True,
    layer_config: dict[str, dict[str, Any]] | None = None,
) -> dict[str, LayerDecision]:
    """A decision for every Linear inside the chosen blocks, keyed by full module name.

    ``layer_config`` (``--layer_config``) gives single layers their own scheme or keeps them in 16
    bit. A layer whose width its group size does not divide takes the largest smaller group size
    that does (:meth:`QuantScheme.fitted`) when ``group_size_fallback`` is set and every check
    accepts it (a format that stores one group size for all layers does not); else it stays in 16
    bit, as auto-round's loaders would need it to (auto-round pads such layers instead, into a
    checkpoint its own loader cannot read)."""
    modules = dict(model.named_modules())
    rules = LayerRules(scheme, keep_patterns, checks, group_size_fallback, layer_config or {})
    decisions: dict[str, LayerDecision] = {}
    for block_name in block_names:
        for rel_name, layer in modules[block_name].named_modules():
            if isinstance(layer, nn.Linear):
                name = f"{block_name}.{rel_name}"
                decisions[name] = rules.decide(name, block_name, layer)
    return decisions


@dataclass(frozen=True)
class LayerRules:
    """What decides a layer: the job's scheme, the 16-bit patterns, the formats' checks, the
    group-size fallback and ``--layer_config``."""

    scheme: QuantScheme
    keep_patterns: tuple[str, ...]
    checks: list[LayerCheck]
    group_size_fallback: bool
    layer_config: dict[str, dict[str, Any]]

    def decide(self, name: str, block: str, layer: nn.Linear) -> LayerDecision:
        def decision(chosen: QuantScheme | None, reason: str | None = None, note: str | None = None, **more):
            return LayerDecision(
                name, block, layer.in_features, layer.out_features, chosen, reason, note, **more
            )

        if matches_any(name, self.keep_patterns):
            return decision(None, "kept in 16 bit by --fp_layers or the model family")
        scheme, note = self.scheme, None
        key = matching_entry(name, self.layer_config)
        if key is not None:
            scheme = entry_scheme(key, self.layer_config[key], self.scheme)
            if scheme is None:
                return decision(None, f"kept in 16 bit by --layer_config {key!r}")
            if scheme != self.scheme:
                note = f"{scheme.label} by --layer_config {key!r}"
        if scheme.fits(layer.in_features):
            reason = self.problem(layer, scheme)
            return decision(None if reason else scheme, reason, None if reason else note)
        misfit = f"in_features {layer.in_features} is not a multiple of group_size {scheme.group_size}"
        fitted = scheme.fitted(layer.in_features)
        if fitted is None:
            return decision(None, f"{misfit}, nor of 32")
        if not self.group_size_fallback:
            return decision(None, f"{misfit} (--disable_group_size_fallback)")
        reason = self.problem(layer, fitted)
        if reason:
            return decision(None, f"{misfit}; group_size {fitted.group_size} would fit, but {reason}")
        fallback = f"group_size {fitted.group_size}: {misfit}"
        return decision(fitted, note=f"{note}; {fallback}" if note else fallback, fell_back=True)

    def problem(self, layer: nn.Linear, candidate: QuantScheme) -> str | None:
        return next((r for r in (check(layer, candidate) for check in self.checks) if r), None)


def one_scheme_check(default: QuantScheme, formats: list[str]) -> LayerCheck:
    """A check for formats whose config holds one scheme for every layer (AWQ): any other scheme
    (a smaller group size) is a layer they cannot store."""

    def check(layer: nn.Linear, scheme: QuantScheme) -> str | None:
        if scheme == default:
            return None
        return f"{' and '.join(formats)} store{'s' if len(formats) == 1 else ''} one scheme (bits, group size) for every layer"

    return check


def scheme_lookup(
    decisions: dict[str, LayerDecision], block_name: str
) -> Callable[[str], QuantScheme | None]:
    """``scheme_for(relative_name)`` for :func:`wrap_linears` inside one block."""

    def scheme_for(rel_name: str) -> QuantScheme | None:
        decision = decisions.get(f"{block_name}.{rel_name}")
        return decision.scheme if decision else None

    return scheme_for


def check_something_quantizes(decisions: dict[str, LayerDecision], scheme: QuantScheme) -> None:
    """A run that would quantize no layer, or whose group size divides no layer's width (every
    layer on a fallback size: a typo, not a few odd widths), is a mistake in the flags, not a
    success to report."""
    if not decisions:
        raise UserError("the chosen blocks hold no Linear layer", fix="check --to_quant_block_names")
    widths = sorted({d.in_features for d in decisions.values()})
    if not any(scheme.fits(width) for width in widths):
        raise UserError(
            f"group_size={scheme.group_size} fits no layer: no in_features "
            f"({', '.join(map(str, widths[:6]))}) is a multiple of it",
            fix="use a group_size that divides them (32, 64 or 128 usually do), or -1 for per-channel",
        )
    if any(d.quantized for d in decisions.values()):
        return
    first = next(iter(decisions.values()))
    raise UserError(
        f"no layer of the chosen blocks can be quantized (first: {first.name}: {first.reason})",
        fix="check --fp_layers, --layer_config, --format and the scheme",
    )
