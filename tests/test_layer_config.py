"""--layer_config: auto-round's forms and matching rule, and what a checkpoint cannot carry."""

import json

import pytest

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.errors import UserError
from auto_round_mllm.flags import job_from_flags
from auto_round_mllm.layer_config import entry_scheme, matching_entry, parse_layer_config

W4 = QuantScheme(4, 128)


def test_json_a_file_and_auto_rounds_unquoted_form_give_the_same_mapping(tmp_path):
    expected = {"mlp.down_proj": {"bits": 8}, "o_proj": {"scheme": "W8A16"}}
    text = '{"mlp.down_proj": {"bits": 8}, "o_proj": "W8A16"}'
    path = tmp_path / "layers.json"
    path.write_text(text)
    assert parse_layer_config(text) == expected
    assert parse_layer_config(f"'{text}'") == expected  # quoted once more by a shell script
    assert parse_layer_config(str(path)) == expected
    assert parse_layer_config("{mlp.down_proj:{bits:8},o_proj:W8A16}") == expected
    assert parse_layer_config({"mlp.down_proj": {"bits": 8}, "o_proj": "W8A16"}) == expected
    assert parse_layer_config(r'{"layers\.\d+\.mlp": {"bits": 8}}') == {r"layers\.\d+\.mlp": {"bits": 8}}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"q_proj": {"bitz": 8}}', "unknown keys: bitz"),
        ('{"q_proj": {"scheme": "W5A16"}}', "unknown scheme 'W5A16'"),
        ("{q_proj:", "neither JSON nor a JSON file"),
        ("[1, 2]", "must be a mapping"),
    ],
)
def test_malformed_configs_name_the_problem(value, message):
    with pytest.raises(UserError, match=message):
        parse_layer_config(value)


def test_entries_resolve_over_the_jobs_scheme():
    assert entry_scheme("k", {"bits": 8}, W4) == QuantScheme(8, 128)
    assert entry_scheme("k", {"scheme": "W2A16G64"}, W4) == QuantScheme(2, 64)
    assert entry_scheme("k", {"scheme": "W8A16", "group_size": 32}, W4) == QuantScheme(8, 32)
    assert entry_scheme("k", {"bits": 16}, W4) is None
    assert entry_scheme("k", {"bits": 8}, QuantScheme(4, 128, sym=False)) == QuantScheme(8, 128, sym=False)
    with pytest.raises(UserError, match="one zero-point convention holds for all layers"):
        entry_scheme("k", {"sym": False}, W4)
    with pytest.raises(UserError, match="bits=5 is not supported"):
        entry_scheme("k", {"bits": 5}, W4)


def test_an_exact_name_wins_then_the_last_matching_pattern():
    config = parse_layer_config(
        {"mlp": {"bits": 8}, r"layers\.1\..*down": {"bits": 2}, "model.layers.0.mlp.down_proj": {"bits": 3}}
    )
    assert matching_entry("model.layers.0.mlp.down_proj", config) == "model.layers.0.mlp.down_proj"
    assert matching_entry("model.layers.1.mlp.down_proj", config) == r"layers\.1\..*down"
    assert matching_entry("model.layers.1.mlp.up_proj", config) == "mlp"
    assert matching_entry("model.layers.1.self_attn.q_proj", config) is None
    # a literal key is a substring, its dots literal: "layers.1" does not match "layers_1"
    assert matching_entry("model.layers_1.x", parse_layer_config({"layers.1": {"bits": 8}})) is None


def test_the_flag_and_the_keyword_reach_the_job():
    job = job_from_flags(model="m", layer_config='{"down_proj": {"bits": 8}}')
    assert job.layer_config == {"down_proj": {"bits": 8}}
    assert json.loads(json.dumps(job.to_dict()))["layer_config"] == {"down_proj": {"bits": 8}}
