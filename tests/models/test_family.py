import pytest
from torch import nn

from auto_round_mllm.errors import UserError
from auto_round_mllm.models.family import (
    FAMILIES,
    GENERIC,
    discover_block_lists,
    family_for_model_type,
    matches_any,
    select_blocks,
)


class Fake(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = nn.Module()
        self.visual.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])


def test_registered_families():
    assert family_for_model_type("qwen2_vl").name == "qwen2_vl"
    assert family_for_model_type("llava").name == "llava"
    assert family_for_model_type("llama").name == "causal_lm"
    assert family_for_model_type("something_new") is GENERIC
    assert {"qwen2_vl", "llava"} <= set(FAMILIES.names())


def test_generic_discovery_picks_the_text_decoder():
    model = Fake()
    assert discover_block_lists(model) == ["visual.blocks", "decoder.layers"]
    assert select_blocks(model, GENERIC, ()) == ["decoder.layers.0", "decoder.layers.1", "decoder.layers.2"]


def test_to_quant_block_names_regex():
    model = Fake()
    assert select_blocks(model, GENERIC, ("layers\\.[12]",)) == ["decoder.layers.1", "decoder.layers.2"]
    with pytest.raises(UserError, match="matches no block"):
        select_blocks(model, GENERIC, ("nothing",))


def test_layer_patterns():
    assert matches_any("model.layers.0.mlp.down_proj", ("down_proj",))
    assert matches_any("model.layers.10.mlp.up_proj", ("re:layers\\.1\\d\\.",))
    assert not matches_any("model.layers.1.mlp.up_proj", ("re:layers\\.1\\d\\.", "down"))
