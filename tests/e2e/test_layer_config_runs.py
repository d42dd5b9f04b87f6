"""--layer_config end to end: layers with their own bits and group size (or kept in 16 bit) are
written as per-layer exceptions that our loaders and PyPI auto-round's read back exactly."""

import json

import pytest
import torch

from tests.e2e.test_group_size_fallback import odd_llama, same_logits, tune_and_write  # noqa: F401

CONFIG = json.dumps(
    {
        "mlp.down_proj": {"bits": 8},  # in_features 512: group 128 fits
        r"layers\.1\.self_attn\.[qk]_proj": {"bits": 2, "group_size": 32},
        "model.layers.0.self_attn.v_proj": {"bits": 16},
    }
)


@pytest.mark.parametrize("fmt", ["auto_round", "auto_gptq"])
def test_each_layer_gets_its_own_scheme_and_every_reader_follows(odd_llama, tmp_path, fmt):  # noqa: F811
    tuned, folder, config = tune_and_write(odd_llama, tmp_path, fmt, layer_config=CONFIG)
    bits = {name: (qw.bits, qw.group_size) for name, qw in tuned.qweights.items()}
    assert bits["model.layers.0.mlp.down_proj"] == (8, 128)
    assert bits["model.layers.1.self_attn.q_proj"] == (2, 32)
    assert bits["model.layers.1.self_attn.k_proj"] == (2, 32)
    assert bits["model.layers.0.self_attn.q_proj"] == (4, 64)  # the job's scheme, on the fallback group
    assert "model.layers.0.self_attn.v_proj" not in bits
    assert tuned.decisions["model.layers.0.self_attn.v_proj"].reason == (
        "kept in 16 bit by --layer_config 'model.layers.0.self_attn.v_proj'"
    )
    assert tuned.decisions["model.layers.0.mlp.down_proj"].note == "w8g128 by --layer_config 'mlp.down_proj'"
    name = "model.layers.0.mlp.down_proj"
    if fmt == "auto_round":
        assert config["extra_config"][name]["bits"] == 8
    else:
        assert config["dynamic"][f"+:{name.replace('.', chr(92) + '.')}$"]["bits"] == 8
    expected = same_logits(tuned, folder, packed_layers=13)
    ids = torch.randint(3, 1900, (2, 24), generator=torch.Generator().manual_seed(0))  # same_logits' ids
    if fmt == "auto_round":  # PyPI auto-round's own loader, through transformers
        import auto_round  # noqa: F401
        from torch import nn
        from transformers import AutoModelForCausalLM

        peer, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.bfloat16, output_loading_info=True
        )
        nn.Module.float(peer)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        with torch.no_grad():
            torch.testing.assert_close(peer(input_ids=ids).logits, expected, atol=1e-4, rtol=0)


def test_a_layer_the_awq_packing_cannot_hold_stays_in_16_bit_with_the_reason(odd_llama, tmp_path):  # noqa: F811
    tuned, _, config = tune_and_write(
        odd_llama, tmp_path, "auto_round", asym=True, layer_config='{"down_proj": {"bits": 8}}'
    )
    assert config["packing_format"] == "auto_round:auto_awq"
    reason = tuned.decisions["model.layers.0.mlp.down_proj"].reason
    assert reason == "the AWQ packing stores 4-bit layers only, not 8-bit"


def test_a_symmetry_of_its_own_is_refused_before_loading(odd_llama, tmp_path, capsys):  # noqa: F811
    from tests.e2e.runs import run

    code = run(
        [
            "--model",
            str(odd_llama),
            "--layer_config",
            '{"q_proj": {"sym": false}}',
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "one zero-point convention holds for all layers" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
