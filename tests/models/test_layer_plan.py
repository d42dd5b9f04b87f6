from torch import nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.export.layouts import gptq_layer_problem
from auto_round_mllm.models.layer_plan import check_something_quantizes, one_scheme_check, plan_layers


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(256, 256)
        self.odd = nn.Linear(576, 256)  # 576 is not a multiple of 128, but of 64 (SmolLM2's width)
        self.odder = nn.Linear(200, 256)  # a multiple of 8 only
        self.narrow = nn.Linear(256, 20)  # 20 outputs cannot fill 4-bit qzeros words
        self.lm_like = nn.Linear(256, 256)


def test_every_linear_gets_a_decision_with_a_reason():
    model = nn.Module()
    model.layers = nn.ModuleList([Block()])
    decisions = plan_layers(
        model, ["layers.0"], QuantScheme(4, 128), keep_patterns=("lm_like",), checks=[gptq_layer_problem]
    )
    assert decisions["layers.0.q_proj"].quantized
    assert decisions["layers.0.q_proj"].scheme == QuantScheme(4, 128)
    odd = decisions["layers.0.odd"]
    assert odd.scheme == QuantScheme(4, 64) and odd.reason is None
    assert odd.note == "group_size 64: in_features 576 is not a multiple of group_size 128"
    assert "nor of 32" in decisions["layers.0.odder"].reason
    assert "out_features 20" in decisions["layers.0.narrow"].reason
    assert "--fp_layers" in decisions["layers.0.lm_like"].reason
    assert all(d.block == "layers.0" for d in decisions.values())


def plan(scheme=QuantScheme(4, 128), **options):
    model = nn.Module()
    model.layers = nn.ModuleList([Block()])
    return plan_layers(
        model, ["layers.0"], scheme, keep_patterns=(), checks=options.pop("checks", []), **options
    )


def test_the_fallback_is_the_largest_kernel_group_size_that_divides_the_width():
    assert QuantScheme(4, 128).fitted(576) == QuantScheme(4, 64)
    assert QuantScheme(2, 64, sym=False).fitted(96) == QuantScheme(2, 32, sym=False)
    assert QuantScheme(4, 256).fitted(384) == QuantScheme(4, 128)
    assert QuantScheme(4, 128).fitted(512) == QuantScheme(4, 128)  # it fits: unchanged
    assert QuantScheme(4, 32).fitted(48) is None  # never above the size asked for, never below 32
    assert QuantScheme(4, -1).fitted(200) == QuantScheme(4, -1)


def test_disable_group_size_fallback_keeps_those_layers_in_16_bit():
    odd = plan(group_size_fallback=False)["layers.0.odd"]
    assert odd.scheme is None and "(--disable_group_size_fallback)" in odd.reason


def test_a_format_with_one_group_size_for_all_layers_keeps_them_in_16_bit():
    odd = plan(checks=[one_scheme_check(QuantScheme(4, 128), ["auto_awq"])])["layers.0.odd"]
    assert odd.scheme is None
    assert odd.reason.endswith(
        "group_size 64 would fit, but auto_awq stores one scheme (bits, group size) for every layer"
    )


def test_a_group_size_that_fits_no_layer_is_still_refused_not_quietly_replaced():
    import pytest

    from auto_round_mllm.errors import UserError

    decisions = plan(QuantScheme(4, 4096))
    assert all(d.note for d in decisions.values() if d.quantized)
    with pytest.raises(UserError, match="group_size=4096 fits no layer"):
        check_something_quantizes(decisions, QuantScheme(4, 4096))
