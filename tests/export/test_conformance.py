"""One conformance suite for every export format: write -> reload with our reader -> logits equal
the fake-quantized model's, for every bit width the format stores, on Qwen2-VL and LLaVA; schemes a
format cannot store are refused before any weight is loaded."""

import json

import pytest
import torch

from auto_round_mllm import api, preflight
from auto_round_mllm.errors import IncompatibleScheme
from auto_round_mllm.export import EXPORTERS
from auto_round_mllm.flags import job_from_flags
from auto_round_mllm.inference.dequantize import load_dequantized, read_tensors
from auto_round_mllm.inference.loader import load_quantized
from auto_round_mllm.inference.qlinear import QuantLinear
from auto_round_mllm.models.loading import load_model
from tests.conftest import fake_quant_fp32

SCHEMES = {  # (bits, group_size, asym)
    "w2g64": (2, 64, False),
    "w3g128": (3, 128, False),
    "w4g128": (4, 128, False),
    "w4g128-asym": (4, 128, True),
    "w8g-1-asym": (8, -1, True),
}
STORES = {
    "auto_round": set(SCHEMES),
    "auto_round:auto_gptq": {"w2g64", "w3g128", "w4g128"},
    "auto_round:auto_awq": {"w4g128", "w4g128-asym"},
    "auto_gptq": {"w2g64", "w3g128", "w4g128"},  # symmetric only: vLLM loads no gptq_v2
    "gptq_v2": set(SCHEMES),
    "auto_awq": {"w4g128", "w4g128-asym"},
    "llm_compressor": set(SCHEMES),
    "fake": set(SCHEMES),
}
PACKED_LOADER = {
    "auto_round",
    "auto_round:auto_gptq",
    "auto_round:auto_awq",
    "auto_gptq",
    "gptq_v2",
    "auto_awq",
    "llm_compressor",
}
PACKED_NAMES = {"llm_compressor": (".weight_packed", ".weight_scale")}
"""The tensor that marks a packed layer, and its scales, where they are not GPTQ's and AWQ's."""
CASES = [(fmt, scheme) for fmt in STORES for scheme in SCHEMES]


def job_for(model_dir, out, fmt, scheme):
    bits, group_size, asym = SCHEMES[scheme]
    return job_from_flags(
        model=str(model_dir), bits=bits, group_size=group_size, asym=asym, iters=2, nsamples=4, seqlen=32,
        batch_size=2, format=fmt, output_dir=str(out), device="cpu",
    )  # fmt: skip


def test_every_registered_format_is_covered():
    assert set(EXPORTERS.names()) == {name.replace("-", "_") for name in STORES}


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize(("fmt", "scheme"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_write_reload_same_logits(family, fmt, scheme, tiny_models, tmp_path):
    job = job_for(tiny_models[family], tmp_path, fmt, scheme)
    if scheme not in STORES[fmt]:
        with pytest.raises(IncompatibleScheme):
            preflight.check_job(job)
        return
    preflight.check_job(job)
    tuned = api.tune(job, load_model(job.model))
    folder = tmp_path / "ckpt"
    api.write_formats(tuned, job, {fmt: folder}, lambda facts: {"test": True})
    ids = torch.randint(3, 1900, (2, 24), generator=torch.Generator().manual_seed(0))
    if fmt == "fake":  # fake-quantized weights in the model dtype: the model itself, bit for bit
        reloaded = load_dequantized(folder, dtype=tuned.loaded.model.dtype)
        reference = tuned.loaded.model
    else:
        reloaded = load_dequantized(folder, dtype=torch.float32)
        reference = fake_quant_fp32(tuned)
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        assert torch.equal(expected, reloaded(input_ids=ids).logits)
    if fmt in PACKED_LOADER:  # and kept packed, with our QuantLinear
        packed = load_quantized(folder, dtype=torch.float32)
        assert sum(isinstance(m, QuantLinear) for m in packed.modules()) == 28
        with torch.no_grad():
            torch.testing.assert_close(packed(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    config = json.loads((folder / "config.json").read_text())
    tensors = read_tensors(folder)
    marker, _ = PACKED_NAMES.get(fmt, (".qweight", ".scales"))
    quantized = [n for n in tensors if n.endswith(marker)]
    if fmt == "fake":
        assert "quantization_config" not in config and not quantized
        return
    assert len(quantized) == 28
    assert not any("vision" in n or "visual" in n for n in quantized)
    check_contract(fmt, config["quantization_config"], tensors, job.scheme)


def check_contract(fmt, quant, tensors, scheme):
    if fmt.startswith("auto_round"):
        expected = {
            "auto_round": "auto_round:auto_gptq"
            if scheme.sym
            else ("auto_round:auto_awq" if scheme.bits == 4 else "auto_round"),
            "auto_round:auto_gptq": "auto_round:auto_gptq",
            "auto_round:auto_awq": "auto_round:auto_awq",
        }[fmt]
        assert quant["quant_method"] == "auto-round" and quant["packing_format"] == expected
    elif fmt in ("auto_gptq", "gptq_v2"):
        assert quant["quant_method"] == "gptq" and quant["desc_act"] is False and quant["lm_head"] is False
        assert quant["checkpoint_format"] == ("gptq" if fmt == "auto_gptq" else "gptq_v2")
        skipped = [rule for rule in quant["dynamic"] if rule.startswith("-:")]  # vLLM's skip rules
        assert any("visual" in rule or "vision_tower" in rule for rule in skipped)
        assert (quant["bits"], quant["group_size"], quant["sym"]) == (
            scheme.bits,
            scheme.group_size,
            scheme.sym,
        )
        assert quant["block_name_to_quantize"] == "model.language_model.layers"  # one string, live names
        assert "self_attn.q_proj" in quant["modules_in_block_to_quantize"][0]
        g_idx = next(t for n, t in tensors.items() if n.endswith(".g_idx"))
        assert g_idx.dtype == torch.int32 and int(g_idx[-1]) == (g_idx.numel() - 1) // (
            scheme.group_size if scheme.group_size > 0 else g_idx.numel()
        )
    elif fmt == "auto_awq":
        assert quant["quant_method"] == "awq" and quant["version"] == "gemm" and quant["zero_point"] is True
        not_converted = quant["modules_to_not_convert"]
        assert "lm_head" in not_converted and any("visual" in n or "vision_tower" in n for n in not_converted)
    elif fmt == "llm_compressor":
        assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "pack-quantized"
        (group,) = quant["config_groups"].values()
        weights = group["weights"]
        assert group["targets"] == ["Linear"] and weights["type"] == "int"
        assert (weights["num_bits"], weights["group_size"] or -1, weights["symmetric"]) == (
            scheme.bits,
            scheme.group_size,
            scheme.sym,
        )
        ignored = quant["ignore"]
        assert "lm_head" in ignored or "language_model.lm_head" in ignored
        assert any("visual" in n or "vision_tower" in n for n in ignored)
        zero_points = [n for n in tensors if n.endswith(".weight_zero_point")]
        assert len(zero_points) == (0 if scheme.sym else 28)
    _, scale_suffix = PACKED_NAMES.get(fmt, (".qweight", ".scales"))
    scales = next(t for n, t in tensors.items() if n.endswith(scale_suffix))
    assert scales.dtype == torch.float16


def test_gptq_v1_zeros_for_symmetric(tiny_qwen2_vl, tmp_path):
    job = job_for(tiny_qwen2_vl, tmp_path, "auto_gptq", "w4g128")
    tuned = api.tune(job, load_model(job.model))
    api.write_formats(tuned, job, {"auto_gptq": tmp_path / "g"}, lambda facts: {})
    qzeros = next(t for n, t in read_tensors(tmp_path / "g").items() if n.endswith(".qzeros"))
    assert (qzeros == 0x77777777).all()
    assert json.loads((tmp_path / "g" / "quantize_config.json").read_text())["quant_method"] == "gptq"
