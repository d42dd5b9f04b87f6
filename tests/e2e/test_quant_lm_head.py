"""--quant_lm_head: lm_head is tuned after the blocks on the quantized model's final hidden states,
packed in the checkpoint, and read back by our loaders and PyPI auto-round's; a tied lm_head is
refused unless --untie_embeddings gives it its own weight."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.e2e.runs import run, tune_export
from tests.e2e.test_group_size_fallback import same_logits


@pytest.mark.parametrize("fmt", ["auto_round", "auto_gptq"])
def test_lm_head_is_tuned_packed_and_read_back(tiny_llama, tmp_path, fmt):
    _, tuned, folder = tune_export(tiny_llama, tmp_path, fmt, iters=4, quant_lm_head=True)
    assert tuned.qweights["lm_head"].bits == 4
    head = tuned.blocks[-1]
    assert head.name == "lm_head" and head.steps == 4
    assert head.final_loss < head.rtn_loss  # tuned on its own inputs, against the fp logits
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    if fmt == "auto_gptq":
        assert config["lm_head"] is True
    else:
        assert config["extra_config"]["lm_head"] == {
            "bits": 4,
            "group_size": 128,
            "sym": True,
            "data_type": "int",
        }
    with safe_open(folder / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "lm_head.qweight" in names and "lm_head.weight" not in names
    expected = same_logits(tuned, folder, packed_layers=29)
    if fmt == "auto_round":
        import auto_round  # noqa: F401  (PyPI auto-round's loader builds a quantized lm_head too)
        from torch import nn
        from transformers import AutoModelForCausalLM

        peer = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
        assert type(peer.lm_head) is not nn.Linear
        nn.Module.float(peer)
        ids = torch.randint(3, 1900, (2, 24), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(peer(input_ids=ids).logits, expected, atol=1e-4, rtol=0)


@pytest.fixture
def tied_llama(tiny_llama, tmp_path):
    model = tmp_path / "tied"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (model / "config.json").write_text(json.dumps(config))
    tensors = load_file(model / "model.safetensors")
    tensors.pop("lm_head.weight")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    return model


def test_a_tied_lm_head_is_refused_before_loading(tied_llama, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--model", str(tied_llama), "--quant_lm_head", "--iters", "0", "--output_dir", str(out)]
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "lm_head shares its weight with the input embeddings" in err and "--untie_embeddings" in err
    assert "Loading weights" not in err and not out.exists()


def test_untied_embeddings_stay_whole_and_lm_head_is_packed(tied_llama, tmp_path):
    embedding = load_file(tied_llama / "model.safetensors")["model.embed_tokens.weight"]
    _, tuned, folder = tune_export(
        tied_llama, tmp_path, "auto_round", quant_lm_head=True, untie_embeddings=True
    )
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    written = load_file(folder / "model.safetensors")
    assert torch.equal(written["model.embed_tokens.weight"], embedding)
    assert "lm_head.qweight" in written
    same_logits(tuned, folder, packed_layers=29)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quant_lm_head", "--format", "auto_awq"], "--quant_lm_head with --format auto_awq: its loaders"),
        (["--quant_lm_head", "--schemes", "W2A16,W4A16", "--bits", "3"], "--quant_lm_head with --schemes"),
        (["--untie_embeddings"], "--quant_lm_head is not given"),
    ],
)
def test_combinations_that_cannot_work_are_refused(tiny_llama, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert run(["--model", str(tiny_llama), *flags, "--output_dir", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("fmt", ["auto_round", "auto_gptq"])
def test_layer_config_gives_lm_head_its_own_scheme(tiny_llama, tmp_path, fmt):
    _, tuned, folder = tune_export(
        tiny_llama, tmp_path, fmt, iters=0, quant_lm_head=True, layer_config='{"lm_head": "W8A16"}'
    )
    assert tuned.qweights["lm_head"].bits == 8 and tuned.qweights["model.layers.0.mlp.up_proj"].bits == 4
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    if fmt == "auto_round":
        assert config["extra_config"]["lm_head"]["bits"] == 8
    else:
        assert config["lm_head"] is True and config["dynamic"][r"+:lm_head$"]["bits"] == 8
    same_logits(tuned, folder, packed_layers=29)


def test_a_vision_language_models_lm_head(tiny_qwen2_vl, tmp_path):
    """The decoder's final norm is found under the language model (model.language_model.norm)."""
    _, tuned, folder = tune_export(  # image conversations of several lengths: batched by shape
        tiny_qwen2_vl, tmp_path, "auto_round", iters=2, quant_lm_head=True, dataset="embedded-images:4"
    )
    assert tuned.qweights["lm_head"].bits == 4 and tuned.blocks[-1].name == "lm_head"
    assert tuned.blocks[-1].rtn_loss is not None
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert "lm_head" in config["extra_config"]


def test_the_command_shows_lm_head_as_one_more_entry(tiny_llama, tmp_path, capsys):
    args = ["--model", str(tiny_llama), "--quant_lm_head", "--iters", "1", "--nsamples", "2", "--seqlen", "32",
            "--batch_size", "2", "--output_dir", str(tmp_path / "out"), "--device", "cpu"]  # fmt: skip
    assert run(args) == 0
    captured = capsys.readouterr()
    assert "block 5/5 lm_head" in captured.err
    assert "│ lm_head │    1/1 │" in captured.out and "model.layers, lm_head (5 tuned)" in captured.out
