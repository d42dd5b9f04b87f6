"""One place looks up a packed layer's scheme: compressed-tensors' config groups are matched as the
library matches them (an exact name before a ``re:`` expression before the class name ``Linear``),
and its ``ignore`` list, or no matching group, keeps a layer in 16 bit."""

import pytest

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.export.compressed_tensors import weight_args
from auto_round_mllm.inference.layer_config import excluded, layer_scheme


def group(targets, bits, group_size=128, sym=True):
    return {"targets": targets, "weights": weight_args(QuantScheme(bits, group_size, sym))}


CONFIG = {
    "quant_method": "compressed-tensors",
    "config_groups": {
        "group_0": group(["Linear"], 4),
        "group_1": group([r"re:.*\.mlp\.down_proj$"], 8, -1, sym=False),
        "group_2": group(["model.layers.1.mlp.down_proj"], 2, 32),
    },
    "ignore": ["lm_head", r"re:visual\..*"],
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.0.self_attn.q_proj", {"bits": 4, "group_size": 128, "sym": True}),  # the class
        ("model.layers.0.mlp.down_proj", {"bits": 8, "group_size": -1, "sym": False}),  # a regex wins
        ("model.layers.1.mlp.down_proj", {"bits": 2, "group_size": 32, "sym": True}),  # the name wins
    ],
)
def test_the_most_specific_target_gives_the_scheme(name, expected):
    assert layer_scheme(CONFIG, name) == expected
    assert not excluded(CONFIG, name)


def test_ignored_and_untargeted_layers_stay_in_16_bit():
    assert excluded(CONFIG, "lm_head") and excluded(CONFIG, "visual.blocks.0.attn.qkv")
    named_only = {**CONFIG, "config_groups": {"group_0": group(["model.layers.0.mlp.up_proj"], 4)}}
    assert not excluded(named_only, "model.layers.0.mlp.up_proj")
    assert excluded(named_only, "model.layers.0.mlp.gate_proj")
    with pytest.raises(ValueError, match=r"targets 'model\.layers\.0\.mlp\.gate_proj'"):
        layer_scheme(named_only, "model.layers.0.mlp.gate_proj")
