"""Mixed bits: the measured errors rank schemes sensibly, and the allocation meets the budget with
the least total error."""

import itertools

import pytest
import torch

from auto_round_mllm.config import MixedBits, QuantScheme
from auto_round_mllm.errors import UserError
from auto_round_mllm.tuning.mixed_bits import LayerOptions, Option, allocate, quantization_error

W2, W4, W8 = QuantScheme(2, 64), QuantScheme(4, 64), QuantScheme(8, 64)


def layer(name, weights, errors):
    return LayerOptions(
        name, weights, tuple(Option(s, e, float(s.bits)) for s, e in zip((W2, W4, W8), errors, strict=True))
    )


def brute_force(layers, avg_bits):
    best = None
    total = sum(layer.weights for layer in layers)
    for combo in itertools.product(*(layer.options for layer in layers)):
        cost = sum(o.bits * layer.weights for o, layer in zip(combo, layers, strict=True))
        if cost <= avg_bits * total + 1e-9:
            error = sum(o.error for o in combo)
            if best is None or error < best[0]:
                best = (error, combo)
    return best


@pytest.mark.parametrize("avg_bits", [2.0, 3.0, 4.0, 5.0, 8.0])
def test_the_allocation_is_the_best_mix_within_the_budget(avg_bits):
    layers = [
        layer("a", 100, (50.0, 5.0, 0.5)),  # sensitive: gains most from bits
        layer("b", 100, (8.0, 2.0, 0.2)),
        layer("c", 200, (4.0, 1.0, 0.1)),
        layer("d", 100, (30.0, 3.0, 0.3)),
    ]
    chosen = allocate(layers, avg_bits)
    cost = sum(chosen[layer.name].bits * layer.weights for layer in layers)
    assert cost <= avg_bits * 500 + 1e-9
    error = sum(option.error for option in chosen.values())
    assert error == pytest.approx(brute_force(layers, avg_bits)[0])


def test_a_budget_below_the_cheapest_mix_is_refused():
    with pytest.raises(UserError, match=r"--avg_bits 1\.5 is below what the cheapest schemes cost"):
        allocate([layer("a", 10, (1.0, 0.5, 0.1))], 1.5)


def test_scales_and_zero_points_count_unless_ignored():
    assert MixedBits(("W2A16", "W4A16"), 3.0).bits_per_weight(QuantScheme(2, 128), 256) == 2 + 16 / 128
    asym = QuantScheme(4, 64, sym=False)
    assert MixedBits(("W2A16", "W4A16"), 3.0).bits_per_weight(asym, 256) == 4 + 20 / 64
    assert MixedBits(("W2A16", "W4A16"), 3.0, ignore_scale_zp_bits=True).bits_per_weight(asym, 256) == 4.0


def test_the_error_falls_with_bits_and_follows_the_inputs_scale():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 128, generator=gen)
    errors = [quantization_error(weight, s, None, torch.float16) for s in (W2, W4, W8)]
    assert errors[0] > errors[1] > errors[2] > 0
    loud = torch.full((128,), 100.0)
    assert quantization_error(weight, W4, loud, torch.float16) == pytest.approx(100 * errors[1], rel=1e-4)


def test_fused_and_shared_layers_form_one_unit_per_block():
    from auto_round_mllm.models.layer_plan import LayerDecision
    from auto_round_mllm.pipeline.mixed import shared_units

    leaves = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj"]  # fmt: skip
    names = [f"model.layers.{b}.{leaf}" for b in range(2) for leaf in leaves]
    decisions = {n: LayerDecision(n, ".".join(n.split(".")[:3]), 64, 64, W4) for n in names}
    units = shared_units(names, decisions, (("o_proj", "down_proj"),))
    as_sets = {frozenset(unit) for unit in units}
    for b in range(2):
        p = f"model.layers.{b}."
        assert frozenset({p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"}) in as_sets
        assert frozenset({p + "mlp.gate_proj", p + "mlp.up_proj"}) in as_sets
        assert frozenset({p + "self_attn.o_proj", p + "mlp.down_proj"}) in as_sets
    assert len(units) == 6 and sorted(n for unit in units for n in unit) == sorted(names)
