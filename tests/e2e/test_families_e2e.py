"""Every registered family end to end on its tiny offline model: text-only calibration, image-text
calibration, export, and a reload whose logits equal the fake-quantized model's, then generation."""

import sys

import pytest
import torch

from auto_round_mllm import api
from auto_round_mllm.errors import UserError
from auto_round_mllm.flags import job_from_flags
from auto_round_mllm.inference.dequantize import load_dequantized
from auto_round_mllm.models.loading import load_model

REMOTE = {"phi3_v", "cogvlm2"}
TEXT_ONLY_MODELS = {"llama", "qwen2"}
NEEDS_IMAGES = {"mllama", "cogvlm2"}  # text-only calibration would leave layers without data
NO_IMAGE_PROCESSOR_HERE: set[str] = set()  # every family calibrates on images here
LINEARS_PER_LAYER = {"phi3_v": 4, "cogvlm2": 10}
VLM_FAMILIES = [
    "qwen2_vl", "llava", "qwen2_5_vl", "qwen3_vl", "llava_next", "mllama", "idefics3", "smolvlm",
    "gemma3", "mistral3", "phi3_v", "cogvlm2",
]  # fmt: skip
ALL_FAMILIES = [*VLM_FAMILIES, "llama", "qwen2"]


def quantize(family, model_dir, out, dataset, *, vision=False):
    job = job_from_flags(
        model=str(model_dir), iters=2, nsamples=4, seqlen=96, batch_size=2, dataset=dataset,
        output_dir=str(out), device="cpu", trust_remote_code=family in REMOTE, quant_nontext_module=vision,
    )  # fmt: skip
    loaded = load_model(job.model, trust_remote_code=job.trust_remote_code)
    tuned = api.tune(job, loaded)
    folder = out / "ckpt"
    api.write_formats(tuned, job, {"auto_round": folder}, lambda facts: {"test": True})
    return tuned, folder


def check_reload(family, tuned, folder):
    model = tuned.loaded.model
    assert len(tuned.qweights) == 4 * LINEARS_PER_LAYER.get(family, 7)
    reloaded = load_dequantized(folder, dtype=model.dtype, trust_remote_code=family in REMOTE)
    ids = torch.randint(3, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    out = reloaded.generate(input_ids=ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, 15)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_text_calibration(family, request, tmp_path):
    model_dir = request.getfixturevalue(f"tiny_{family}")
    if family in NEEDS_IMAGES:
        with pytest.raises(UserError, match="need images in calibration"):
            quantize(family, model_dir, tmp_path, "embedded-text")
        return
    tuned, folder = quantize(family, model_dir, tmp_path, "embedded-text")
    assert tuned.calibration.used == 4 and tuned.calibration.image_samples == 0
    assert all(block.final_loss is not None for block in tuned.blocks)
    check_reload(family, tuned, folder)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_image_text_calibration(family, request, tmp_path):
    model_dir = request.getfixturevalue(f"tiny_{family}")
    if family in NO_IMAGE_PROCESSOR_HERE:
        with pytest.raises(UserError, match="no usable sample"):
            quantize(family, model_dir, tmp_path, "embedded-images")
        return
    tuned, folder = quantize(family, model_dir, tmp_path, "embedded-images")
    assert tuned.calibration.image_samples == 4, tuned.calibration.notes
    check_reload(family, tuned, folder)


def quantize_vision(family, model_dir, out):
    return quantize(family, model_dir, out, "embedded-images", vision=True)


@pytest.mark.parametrize("family", [f for f in VLM_FAMILIES if f not in NO_IMAGE_PROCESSOR_HERE])
def test_quant_nontext_module(family, request, tmp_path):
    import json

    model_dir = request.getfixturevalue(f"tiny_{family}")
    tuned, folder = quantize_vision(family, model_dir, tmp_path)
    vision_groups = tuned.block_groups[:-1]
    assert vision_groups and all(any(w in g for w in ("vision", "visual")) for g in vision_groups)
    vision_layers = [name for name in tuned.qweights if name.startswith(tuple(vision_groups))]
    assert vision_layers, "no vision Linear was quantized"
    assert all(r.final_loss is not None for r in tuned.blocks)
    model = tuned.loaded.model
    reloaded = load_dequantized(folder, dtype=model.dtype, trust_remote_code=family in REMOTE)
    ids = torch.randint(3, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    blocks = json.loads((folder / "config.json").read_text())["quantization_config"]["block_name_to_quantize"]
    assert len(blocks.split(",")) >= 2


def test_quant_nontext_module_needs_a_readable_image_processor(tiny_llava, tmp_path, monkeypatch):
    """A model whose processor cannot be built (SmolVLM without num2words, say) cannot tune vision."""
    from auto_round_mllm.models import loading

    real = loading.load_model

    def without_processor(*args, **kwargs):
        loaded = real(*args, **kwargs)
        loaded.processor = loaded.image_processor = None
        return loaded

    monkeypatch.setattr(sys.modules[__name__], "load_model", without_processor)
    with pytest.raises(UserError, match=r"no usable sample .*no image processor"):
        quantize_vision("llava", tiny_llava, tmp_path)


def test_vision_error_reaches_text_calibration(tiny_qwen2_vl, tmp_path):
    """With the vision tower quantized, the text blocks' quantized stream starts from the quantized
    vision output while targets come from the full-precision model: the first text block's RTN loss
    grows by the vision error (auto-round calibrates both from one fp pass and misses it). Image
    tokens are a sixth of these samples, so the growth is modest but always there."""
    text_only, _ = quantize("qwen2_vl", tiny_qwen2_vl, tmp_path / "a", "embedded-images")
    with_vision, _ = quantize_vision("qwen2_vl", tiny_qwen2_vl, tmp_path / "b")
    first_text = next(b for b in with_vision.blocks if "language_model" in b.name)
    assert first_text.rtn_loss > 1.01 * text_only.blocks[0].rtn_loss
