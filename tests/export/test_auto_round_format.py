"""The auto_round exporter against its contract: config keys, tensor names and layouts, and
logits of the reloaded checkpoint equal to the fake-quantized model's."""

import json

import pytest
import torch
from safetensors import safe_open

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.export.naming import source_tensor_names
from auto_round_mllm.inference.dequantize import load_dequantized, read_tensors
from auto_round_mllm.quant.packing import unpack_cols
from tests.conftest import quantize_tiny

SCHEMES = {
    "w4g128-sym": QuantScheme(4, 128, True),
    "w2g64-asym": QuantScheme(2, 64, False),
    "w3g128-sym": QuantScheme(3, 128, True),
    "w8g-1-asym": QuantScheme(8, -1, False),
}
TEXT_BLOCKS = {"qwen2_vl": "model.language_model.layers", "llava": "model.language_model.layers"}


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("scheme_name", list(SCHEMES))
def test_reloaded_checkpoint_reproduces_fake_quant_logits(family, scheme_name, tiny_models, tmp_path):
    source = tiny_models[family]
    scheme = SCHEMES[scheme_name]
    tuned, folder = quantize_tiny(source, tmp_path, scheme=scheme)
    model = tuned.loaded.model
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    reloaded = load_dequantized(folder, dtype=model.dtype)
    assert torch.equal(logits(model, ids), logits(reloaded, ids))

    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config == json.loads((folder / "quantization_config.json").read_text())
    assert config["quant_method"] == "auto-round"
    assert config["packing_format"] == ("auto_round:auto_gptq" if scheme.sym else "auto_round")
    assert (config["bits"], config["group_size"], config["sym"], config["data_type"]) == (
        scheme.bits,
        scheme.group_size,
        scheme.sym,
        "int",
    )
    assert config["iters"] == 2 and config["nsamples"] == 4 and config["seqlen"] == 32


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_tensor_names_follow_the_source_checkpoint(family, tiny_models, tmp_path):
    source = tiny_models[family]
    tuned, folder = quantize_tiny(source, tmp_path, iters=0)
    source_names = source_tensor_names(source)
    written = set(read_tensors(folder))
    plain = {n for n in written if not n.endswith((".qweight", ".qzeros", ".scales"))}
    quantized_modules = {n.removesuffix(".qweight") for n in written if n.endswith(".qweight")}
    assert plain <= source_names
    assert {f"{m}.weight" for m in quantized_modules} <= source_names
    assert len(quantized_modules) == len(tuned.qweights) == 4 * 7
    # nothing of the vision tower, projector, embeddings or lm_head is quantized
    assert not any("vision" in m or "visual" in m or "projector" in m for m in quantized_modules)
    assert source_names == plain | {f"{m}.weight" for m in quantized_modules}

    blocks = json.loads((folder / "config.json").read_text())["quantization_config"]["block_name_to_quantize"]
    checkpoint_prefix = next(iter(quantized_modules)).split(".layers.")[0] + ".layers"
    assert blocks.split(",") == list(dict.fromkeys([checkpoint_prefix, TEXT_BLOCKS[family]]))


def test_gptq_v1_tensors_for_symmetric_4bit(tiny_qwen2_vl, tmp_path):
    _tuned, folder = quantize_tiny(tiny_qwen2_vl, tmp_path, iters=0)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        qweight = handle.get_tensor("model.layers.0.mlp.down_proj.qweight")
        qzeros = handle.get_tensor("model.layers.0.mlp.down_proj.qzeros")
        scales = handle.get_tensor("model.layers.0.mlp.down_proj.scales")
        bias = handle.get_tensor("model.layers.0.self_attn.q_proj.bias")
    # down_proj: in 768, out 256, group 128
    assert qweight.dtype == torch.int32 and qweight.shape == (768 * 4 // 32, 256)
    assert qzeros.dtype == torch.int32 and qzeros.shape == (768 // 128, 256 * 4 // 32)
    assert scales.dtype == torch.float16 and scales.shape == (768 // 128, 256)
    with safe_open(str(tiny_qwen2_vl / "model.safetensors"), framework="pt") as handle:
        source_bias = handle.get_tensor("model.layers.0.self_attn.q_proj.bias")
    assert bias.dtype == source_bias.dtype  # in the layer's own dtype: never narrowed
    assert (qzeros == 0x77777777).all()  # real zero 8 stored minus one
    assert torch.equal(unpack_cols(qzeros, 4), torch.full((6, 256), 7, dtype=torch.int32))
    assert (scales < 0).any() and (scales > 0).any()  # full-range symmetric picks the sign per group


def test_processing_files_are_copied(tiny_qwen2_vl, tmp_path):
    _, folder = quantize_tiny(tiny_qwen2_vl, tmp_path, iters=0)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "generation_config.json",
    ):
        assert (folder / name).read_bytes() == (tiny_qwen2_vl / name).read_bytes()
    assert (folder / "quantization_report.json").is_file()
    assert not list(tmp_path.glob("**/.*tmp-*"))  # the staging folder is gone
