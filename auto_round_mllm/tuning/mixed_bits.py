"""Mixed bits (auto-round's AutoScheme): which scheme each layer takes to meet an average budget.

Sensitivity is measured, not guessed. For every candidate scheme of a layer, the layer's weight is
quantized the way SignRound starts it (round-to-nearest from the clipping search) and each weight's
squared error is weighed:

- by default by its diagonal Fisher information under the model's own predictions
  (pipeline/fisher.py): ``error = sum_ij F_ij (w_ij - q(w)_ij)^2``, twice the KL the layer alone
  adds to the model's output, to second order; it sees how an error grows through the blocks after
  the layer;
- with ``--mixed_sensitivity local`` by its input column's mean square, the squared error the layer
  adds to its own output per token if its input columns were uncorrelated (llama.cpp's imatrix).

The allocation then minimises the sum of these errors over all layers subject to the average bits
per weight (scales and zero points included unless told otherwise): a Lagrangian search for the
price of a bit, each layer taking its cheapest-in-error-plus-price scheme, then the budget left
filled by the upgrades that buy the most error per bit. SignRound then tunes every layer at its
scheme; the errors it starts from rank the layers, they do not predict the tuned error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.errors import UserError
from auto_round_mllm.quant.clip_search import CHUNK_ROWS, best_clip_ratios
from auto_round_mllm.quant.ops import fake_quant, group_range, qparams_from_range, to_groups


@dataclass(frozen=True)
class Option:
    scheme: QuantScheme
    error: float
    bits: float
    """Bits per weight, scales and zero points included unless the budget ignores them."""


@dataclass(frozen=True)
class LayerOptions:
    name: str
    weights: int
    options: tuple[Option, ...]


@torch.no_grad()
def rounded_start(
    weight: Tensor, scheme: QuantScheme, input_mean_square: Tensor | None, scale_dtype: torch.dtype
) -> Tensor:
    """``weight`` rounded the way SignRound starts it at ``scheme`` (round-to-nearest from the
    clipping search, which weighs by the input columns as the tuning does), in fp32."""
    in_features = weight.shape[1]
    group_size = scheme.group_size_for(in_features)
    groups = to_groups(weight.detach(), group_size)
    wmin, wmax = group_range(groups)
    columns = None
    if input_mean_square is not None:
        columns = input_mean_square.to(weight.device, torch.float32).reshape(-1, group_size)
    ratios = best_clip_ratios(
        groups, wmin, wmax, bits=scheme.bits, sym=scheme.sym, scale_dtype=scale_dtype, column_weights=columns
    )
    scale, zp = qparams_from_range(
        wmin, wmax, scheme.bits, scheme.sym, ratios, ratios, scale_dtype=scale_dtype
    )
    out = torch.empty(groups.shape, dtype=torch.float32, device=weight.device)
    for start in range(0, groups.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        out[rows] = fake_quant(groups[rows].float(), scale[rows], zp[rows], scheme.bits)
    return out.reshape(weight.shape)


@torch.no_grad()
def quantization_error(
    weight: Tensor,
    scheme: QuantScheme,
    input_mean_square: Tensor | None,
    scale_dtype: torch.dtype,
    *,
    element_weights: Tensor | None = None,
) -> float:
    """The weighted squared error of :func:`rounded_start`: each weight's squared error times
    ``element_weights`` (its Fisher information, pipeline/fisher.py) when given, else times its
    input column's mean square."""
    squared = (rounded_start(weight, scheme, input_mean_square, scale_dtype) - weight.float()).pow_(2)
    if element_weights is not None:
        squared.mul_(element_weights.to(squared.device, torch.float32))
    elif input_mean_square is not None:
        squared.mul_(input_mean_square.to(squared.device, torch.float32))
    return float(squared.sum())


def allocate(layers: list[LayerOptions], avg_bits: float) -> dict[str, Option]:
    """The option of each layer with the least total error whose weighted average bits stay within
    ``avg_bits``. Refuses a budget below the cheapest choice of every layer."""
    if not layers:
        return {}
    total_weights = sum(layer.weights for layer in layers)
    budget = avg_bits * total_weights
    cheapest = {layer.name: min(layer.options, key=lambda o: (o.bits, o.error)) for layer in layers}
    floor = sum(cheapest[layer.name].bits * layer.weights for layer in layers)
    if floor > budget * (1 + 1e-9):
        raise UserError(
            f"--avg_bits {avg_bits:g} is below what the cheapest schemes cost ({floor / total_weights:.3f} bits "
            "per weight with scales)",
            fix="raise --avg_bits, add a narrower scheme to --schemes, or pass --ignore_scale_zp_bits",
        )

    def pick(price: float) -> dict[str, Option]:
        return {
            layer.name: min(layer.options, key=lambda o: (o.error + price * o.bits * layer.weights, o.bits))
            for layer in layers
        }

    def cost(choice: dict[str, Option]) -> float:
        return sum(choice[layer.name].bits * layer.weights for layer in layers)

    low, high = 0.0, 1.0
    while cost(pick(high)) > budget and high < 1e30:
        high *= 4.0
    for _ in range(100):  # the cheapest price of a bit whose choice fits the budget
        middle = (low + high) / 2
        low, high = (middle, high) if cost(pick(middle)) > budget else (low, middle)
    choice = pick(high) if cost(pick(high)) <= budget else dict(cheapest)
    return fill_budget(layers, choice, budget - cost(choice))


def fill_budget(layers: list[LayerOptions], choice: dict[str, Option], left: float) -> dict[str, Option]:
    """Spend what the price search left on the upgrades with the most error saved per bit."""
    while True:
        best: tuple[float, str, Option] | None = None
        for layer in layers:
            current = choice[layer.name]
            for option in layer.options:
                extra = (option.bits - current.bits) * layer.weights
                saved = current.error - option.error
                if 0 < extra <= left and saved > 0 and (best is None or saved / extra > best[0]):
                    best = (saved / extra, layer.name, option)
        if best is None:
            return choice
        _, name, option = best
        weights = next(layer.weights for layer in layers if layer.name == name)
        left -= (option.bits - choice[name].bits) * weights
        choice[name] = option
