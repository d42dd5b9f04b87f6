"""auto-round's habit: after ``from auto_round_mllm import AutoRoundConfig``, a plain
``from_pretrained`` loads our checkpoints, when the auto-round package is absent; when it is
present, its own quantizer keeps the name."""

import pytest
import torch
import transformers.utils
from transformers import AutoModelForImageTextToText
from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

import auto_round_mllm
from auto_round_mllm.inference.dequantize import load_dequantized
from auto_round_mllm.inference.loader import PackedWeightQuantizer
from auto_round_mllm.inference.qlinear import QuantLinear
from tests.conftest import quantize_tiny


@pytest.fixture(scope="module")
def checkpoint(tiny_llava, tmp_path_factory):
    _, folder = quantize_tiny(tiny_llava, tmp_path_factory.mktemp("ckpt"), iters=1)
    return folder


def test_plain_from_pretrained_without_the_auto_round_package(checkpoint, monkeypatch):
    monkeypatch.setattr(transformers.utils, "is_auto_round_available", lambda: False)
    monkeypatch.setitem(AUTO_QUANTIZER_MAPPING, "auto-round", AUTO_QUANTIZER_MAPPING["auto-round"])
    assert auto_round_mllm.AutoRoundConfig is transformers.AutoRoundConfig
    assert AUTO_QUANTIZER_MAPPING["auto-round"] is PackedWeightQuantizer
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 28
    reference = load_dequantized(checkpoint, dtype=torch.float32)
    ids = torch.tensor([[5, 17, 42, 99, 7, 8, 300]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=0
        )


def test_an_installed_auto_round_keeps_its_quantizer(monkeypatch):
    monkeypatch.setattr(transformers.utils, "is_auto_round_available", lambda: True)
    before = AUTO_QUANTIZER_MAPPING["auto-round"]
    auto_round_mllm.AutoRoundConfig  # noqa: B018 - the import side effect is what is tested
    assert AUTO_QUANTIZER_MAPPING["auto-round"] is before


@pytest.mark.parametrize("blocks", [None, "model.layers", ["model.language_model.layers"]])
def test_gptq_configs_without_live_block_names_fall_back_to_the_text_decoder(blocks, tiny_qwen2_vl, tmp_path):
    """auto-round's GPTQ export leaves block_name_to_quantize out; older tools write checkpoint
    names or lists. All of them quantize the text decoder, which the loader then finds itself."""
    import json

    from auto_round_mllm import api
    from auto_round_mllm.flags import job_from_flags
    from auto_round_mllm.inference.loader import load_quantized
    from auto_round_mllm.models.loading import load_model

    job = job_from_flags(
        model=str(tiny_qwen2_vl), iters=0, group_size=64, format="auto_gptq", output_dir=str(tmp_path)
    )
    tuned = api.tune(job, load_model(job.model))
    folder = tmp_path / "ckpt"
    api.write_formats(tuned, job, {"auto_gptq": folder}, lambda facts: {})
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["block_name_to_quantize"] == "model.language_model.layers"
    reference = load_quantized(folder, dtype=torch.float32)
    if blocks is None:
        del config["quantization_config"]["block_name_to_quantize"]
    else:
        config["quantization_config"]["block_name_to_quantize"] = blocks
    (folder / "config.json").write_text(json.dumps(config))
    model = load_quantized(folder, dtype=torch.float32)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 28
    ids = torch.tensor([[5, 17, 42, 99, 7, 8, 300]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)
