"""Layers whose width the group size does not divide (SmolLM2's 576 at group 128) are quantized with
the largest of 128/64/32 that divides it, written as per-layer exceptions every reader follows:
our loaders, and auto-round's own through transformers. auto_awq, whose config holds one group
size, keeps them in 16 bit, and --disable_group_size_fallback restores that everywhere."""

import json

import pytest
import torch

from auto_round_mllm.inference.dequantize import load_dequantized
from auto_round_mllm.inference.loader import load_quantized
from auto_round_mllm.inference.qlinear import QuantLinear
from tests.conftest import fake_quant_fp32
from tests.e2e.runs import tune_export

NARROW = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")  # in_features 192
"""Every projection but down_proj (in_features 512) reads the 192-wide hidden state."""


@pytest.fixture(scope="module")
def odd_llama(tmp_path_factory):
    import make_tiny_models

    return make_tiny_models.make_tiny_llama_odd_width(tmp_path_factory.mktemp("odd-llama"))


def tune_and_write(model, out, fmt, **flags):
    _, tuned, folder = tune_export(model, out, fmt, **flags)
    return tuned, folder, json.loads((folder / "config.json").read_text())["quantization_config"]


def same_logits(tuned, folder, packed_layers=14):
    ids = torch.randint(3, 1900, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = fake_quant_fp32(tuned)(input_ids=ids).logits
        assert torch.equal(load_dequantized(folder, dtype=torch.float32)(input_ids=ids).logits, expected)
        packed = load_quantized(folder, dtype=torch.float32)
        assert sum(isinstance(m, QuantLinear) for m in packed.modules()) == packed_layers
        torch.testing.assert_close(packed(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    return expected


@pytest.mark.parametrize(
    ("fmt", "flags"),
    [
        ("auto_round", {}),  # symmetric: GPTQ packing
        ("auto_round", {"asym": True}),  # AWQ packing
        ("auto_round", {"asym": True, "bits": 2}),  # native packing
        ("auto_gptq", {}),
        ("gptq_v2", {"asym": True}),
    ],
    ids=["auto_round", "auto_round-awq-packing", "auto_round-native-w2", "auto_gptq", "auto_gptq-v2"],
)
def test_the_narrow_layers_take_group_64_and_every_reader_follows(odd_llama, tmp_path, fmt, flags):
    tuned, folder, config = tune_and_write(odd_llama, tmp_path, fmt, **flags)
    assert len(tuned.qweights) == 14  # all of them: none left in 16 bit
    for name, qw in tuned.qweights.items():
        assert qw.group_size == (64 if name.endswith(NARROW) else 128), name
        note = tuned.decisions[name].note
        assert (
            note == "group_size 64: in_features 192 is not a multiple of group_size 128"
        ) == name.endswith(NARROW)
    assert config["group_size"] == 128
    narrow = "model.layers.0.self_attn.q_proj"
    if fmt == "auto_round":
        assert config["extra_config"][narrow]["group_size"] == 64
        assert "model.layers.0.mlp.down_proj" not in config["extra_config"]
    else:
        assert config["dynamic"][f"+:{narrow.replace('.', chr(92) + '.')}$"]["group_size"] == 64
    same_logits(tuned, folder)


def test_auto_rounds_own_loader_reads_the_exceptions(odd_llama, tmp_path):
    import auto_round  # noqa: F401  (a test extra)
    from torch import nn
    from transformers import AutoModelForCausalLM

    tuned, folder, _ = tune_and_write(odd_llama, tmp_path, "auto_round")
    expected = same_logits(tuned, folder)
    peer, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, output_loading_info=True)
    nn.Module.float(peer)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.randint(3, 1900, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(peer(input_ids=ids).logits, expected, atol=1e-4, rtol=0)


def test_auto_awq_keeps_them_in_16_bit_with_the_reason(odd_llama, tmp_path):
    tuned, _, config = tune_and_write(odd_llama, tmp_path, "auto_awq")
    assert sorted(tuned.qweights) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    reason = tuned.decisions["model.layers.0.self_attn.q_proj"].reason
    assert reason.endswith(
        "group_size 64 would fit, but auto_awq stores one scheme (bits, group size) for every layer"
    )
    assert "model.layers.0.self_attn.q_proj" in config["modules_to_not_convert"]


def test_disable_group_size_fallback_keeps_todays_behaviour(odd_llama, tmp_path):
    tuned, _, config = tune_and_write(odd_llama, tmp_path, "auto_round", disable_group_size_fallback=True)
    assert sorted(tuned.qweights) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert config["extra_config"]["model.layers.0.self_attn.q_proj"] == {"bits": 16, "data_type": "float"}


def test_the_summary_and_the_report_list_them(odd_llama, tmp_path, capsys):
    from tests.e2e.runs import run

    args = ["--model", str(odd_llama), "--iters", "0", "--device", "cpu"]
    assert run([*args, "--output_dir", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "14 quantized (12 with a scheme of their own), 0 kept in 16 bit" in out
    assert "own scheme model.layers.1.mlp.up_proj: group_size 64: in_features 192" in " ".join(out.split())
    assert run([*args, "--output_dir", str(tmp_path / "j"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["own_schemes"]) == 12 and not report["skipped_layers"]
