"""Which Linear layers get quantized, with which scheme, and why the others stay in 16 bit.

Decided once, before any tuning, so a layer that no export format can store is never tuned and
every layer left in 16 bit is listed with its reason (auto-round skips such layers silently).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.errors import UserError
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
    """Why a quantized layer's scheme differs from the job's (a smaller group size)."""

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
) -> dict[str, LayerDecision]:
    """A decision for every Linear inside the chosen blocks, keyed by full module name.

    A layer whose width ``scheme.group_size`` does not divide takes the largest smaller group size
    that does (:meth:`QuantScheme.fitted`) when ``group_size_fallback`` is set and every check
    accepts it (a format that stores one group size for all layers does not); else it stays in 16
    bit, as auto-round's loaders would need it to (auto-round pads such layers instead, into a
    checkpoint its own loader cannot read)."""
    modules = dict(model.named_modules())
    decisions: dict[str, LayerDecision] = {}
    for block_name in block_names:
        for rel_name, layer in modules[block_name].named_modules():
            if isinstance(layer, nn.Linear):
                name = f"{block_name}.{rel_name}"
                decisions[name] = _decide(
                    name, block_name, layer, scheme, keep_patterns, checks, group_size_fallback
                )
    return decisions


def _decide(
    name: str,
    block: str,
    layer: nn.Linear,
    scheme: QuantScheme,
    keep_patterns: tuple[str, ...],
    checks: list[LayerCheck],
    group_size_fallback: bool,
) -> LayerDecision:
    def decision(chosen: QuantScheme | None, reason: str | None = None, note: str | None = None):
        return LayerDecision(name, block, layer.in_features, layer.out_features, chosen, reason, note)

    def problem(candidate: QuantScheme) -> str | None:
        return next((r for r in (check(layer, candidate) for check in checks) if r), None)

    if matches_any(name, keep_patterns):
        return decision(None, "kept in 16 bit by --fp_layers or the model family")
    if scheme.fits(layer.in_features):
        reason = problem(scheme)
        return decision(None if reason else scheme, reason)
    misfit = f"in_features {layer.in_features} is not a multiple of group_size {scheme.group_size}"
    fitted = scheme.fitted(layer.in_features)
    if fitted is None:
        return decision(None, f"{misfit}, nor of 32")
    if not group_size_fallback:
        return decision(None, f"{misfit} (--disable_group_size_fallback)")
    reason = problem(fitted)
    if reason:
        return decision(None, f"{misfit}; group_size {fitted.group_size} would fit, but {reason}")
    return decision(fitted, note=f"group_size {fitted.group_size}: {misfit}")


def one_scheme_check(default: QuantScheme, formats: list[str]) -> LayerCheck:
    """A check for formats whose config holds one scheme for every layer (AWQ): any other scheme
    (a smaller group size) is a layer they cannot store."""

    def check(layer: nn.Linear, scheme: QuantScheme) -> str | None:
        if scheme == default:
            return None
        return (
            f"{' and '.join(formats)} store{'s' if len(formats) == 1 else ''} one group size for every layer"
        )

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
    """A run that would quantize no layer, or none with the group size asked for (every layer on a
    fallback size: a typo, not a few odd widths), is a mistake in the flags, not a success to report."""
    if any(d.quantized and d.note is None for d in decisions.values()):
        return
    if not decisions:
        raise UserError("the chosen blocks hold no Linear layer", fix="check --to_quant_block_names")
    first = next(iter(decisions.values()))
    if any(d.quantized for d in decisions.values()) or "group_size" in (first.reason or ""):
        widths = sorted({d.in_features for d in decisions.values()})
        raise UserError(
            f"group_size={scheme.group_size} fits no layer: no in_features "
            f"({', '.join(map(str, widths[:6]))}) is a multiple of it",
            fix="use a group_size that divides them (32, 64 or 128 usually do), or -1 for per-channel",
        )
    raise UserError(
        f"no layer of the chosen blocks can be quantized (first: {first.name}: {first.reason})",
        fix="check --fp_layers, --format and the scheme",
    )
