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
) -> dict[str, LayerDecision]:
    """A decision for every Linear inside the chosen blocks, keyed by full module name."""
    modules = dict(model.named_modules())
    decisions: dict[str, LayerDecision] = {}
    for block_name in block_names:
        for rel_name, layer in modules[block_name].named_modules():
            if not isinstance(layer, nn.Linear):
                continue
            name = f"{block_name}.{rel_name}"
            reason = None
            if matches_any(name, keep_patterns):
                reason = "kept in 16 bit by --fp_layers or the model family"
            elif not scheme.fits(layer.in_features):
                reason = (
                    f"in_features {layer.in_features} is not a multiple of group_size {scheme.group_size}"
                )
            else:
                reason = next((r for r in (check(layer, scheme) for check in checks) if r), None)
            decisions[name] = LayerDecision(
                name=name,
                block=block_name,
                in_features=layer.in_features,
                out_features=layer.out_features,
                scheme=None if reason else scheme,
                reason=reason,
            )
    return decisions


def scheme_lookup(
    decisions: dict[str, LayerDecision], block_name: str
) -> Callable[[str], QuantScheme | None]:
    """``scheme_for(relative_name)`` for :func:`wrap_linears` inside one block."""

    def scheme_for(rel_name: str) -> QuantScheme | None:
        decision = decisions.get(f"{block_name}.{rel_name}")
        return decision.scheme if decision else None

    return scheme_for


def check_something_quantizes(decisions: dict[str, LayerDecision], scheme: QuantScheme) -> None:
    """A run that would quantize no layer is a mistake in the flags, not a success to report."""
    if any(d.quantized for d in decisions.values()):
        return
    if not decisions:
        raise UserError("the chosen blocks hold no Linear layer", fix="check --to_quant_block_names")
    first = next(iter(decisions.values()))
    if "group_size" in (first.reason or ""):
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
