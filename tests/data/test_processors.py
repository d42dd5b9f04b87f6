"""Processors turn samples into model inputs the real (tiny) models accept; calibration sets pad
conversations and keep their masks."""

import pytest
import torch
from PIL import Image

from auto_round_mllm.data.calib_set import build_calibration_set
from auto_round_mllm.data.processors import (
    PROCESSORS,
    CalibrationProcessor,
    SampleError,
    TextProcessor,
    processor_for,
    register_processor,
)
from auto_round_mllm.data.sample import Sample, SourceSamples
from auto_round_mllm.data.templates import resolve_template
from auto_round_mllm.models.loading import load_model


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "gradient.png"
    Image.linear_gradient("L").resize((56, 56)).convert("RGB").save(path)
    return path


def conversation(picture):
    return Sample(
        messages=[
            {"role": "human", "content": "<image>\nWhat is shown here?"},
            {"role": "gpt", "content": "A grey gradient from black to white."},
        ],
        images=[picture],
    )


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_image_conversations_become_inputs_the_model_accepts(family, tiny_models, picture):
    loaded = load_model(str(tiny_models[family]))
    template, _ = resolve_template(None, loaded.model_type)
    processor = processor_for(template.processor, loaded, template)
    inputs = processor.encode(conversation(picture), seqlen=512)
    assert "pixel_values" in inputs and inputs["input_ids"].shape[0] == 1
    if family == "qwen2_vl":
        assert "image_grid_thw" in inputs and int(inputs["mm_token_type_ids"].sum()) > 0
    with torch.no_grad():
        logits = loaded.model(**inputs).logits
    assert logits.shape[1] == inputs["input_ids"].shape[1] and torch.isfinite(logits).all()


def test_text_processor_renders_conversations_without_images(tiny_qwen2_vl, picture):
    loaded = load_model(str(tiny_qwen2_vl))
    template, _ = resolve_template(None, "qwen2_vl")
    processor = TextProcessor(tokenizer=loaded.tokenizer, template=template)
    inputs = processor.encode(conversation(picture), seqlen=512)
    text = loaded.tokenizer.decode(inputs["input_ids"][0])
    assert "What is shown here?" in text and "<|image_pad|>" not in text and "<image>" not in text
    assert processor.encode(Sample(text="abc " * 400), seqlen=16)["input_ids"].shape == (1, 16)


def test_unreadable_images_are_sample_errors(tiny_llava, tmp_path):
    loaded = load_model(str(tiny_llava))
    template, _ = resolve_template(None, "llava")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(SampleError, match="cannot read image"):
        processor_for("hf", loaded, template).encode(conversation(broken), seqlen=64)


def test_calibration_set_pads_conversations_and_packs_text(tiny_qwen2_vl, picture):
    loaded = load_model(str(tiny_qwen2_vl))
    template, _ = resolve_template(None, "qwen2_vl")
    processor = processor_for("qwen2_vl", loaded, template)
    texts = [Sample(text="The quick brown fox jumps over the lazy dog. " * 12) for _ in range(3)]
    source = SourceSamples(label="mix", samples=[*texts, conversation(picture), conversation(picture)])
    calib = build_calibration_set(source, processor, seqlen=128, nsamples=8, seed=0)
    assert calib.image_samples == 2 and calib.used == 8
    text_chunks = [s for s in calib.samples if "pixel_values" not in s]
    assert all(s["input_ids"].shape == (1, 128) and s["attention_mask"].all() for s in text_chunks)
    # conversations are padded to the longest conversation, with zeros in the mask
    images = [s for s in calib.samples if "pixel_values" in s]
    length = images[0]["input_ids"].shape[1]
    assert length < 128 and all(s["input_ids"].shape == (1, length) for s in images)
    longer = conversation(picture)
    longer.messages[1]["content"] += " It is a very smooth gradient indeed." * 3
    source = SourceSamples(label="mix", samples=[conversation(picture), longer])
    calib = build_calibration_set(source, processor, seqlen=128, nsamples=8, seed=0)
    short, long = sorted(calib.samples, key=lambda s: int(s["attention_mask"].sum()))
    real = int(short["attention_mask"].sum())
    assert short["input_ids"].shape == long["input_ids"].shape and long["attention_mask"].all()
    assert not short["attention_mask"][0, real:].any()
    assert (short["input_ids"][0, real:] == loaded.tokenizer.pad_token_id).all()
    assert short["mm_token_type_ids"].shape == short["input_ids"].shape
    again = build_calibration_set(source, processor, seqlen=128, nsamples=8, seed=0)
    assert all(
        torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(calib.samples, again.samples, strict=True)
    )


def test_processors_that_need_images_skip_text_and_say_so(tiny_llava, picture):
    loaded = load_model(str(tiny_llava))
    template, _ = resolve_template(None, "llava")

    @register_processor("test_needs_images", replace=True)
    class NeedsImages(PROCESSORS.get("hf")):
        needs_images = True

    processor = processor_for("test_needs_images", loaded, template)
    source = SourceSamples(label="mix", samples=[Sample(text="plain text " * 50), conversation(picture)])
    calib = build_calibration_set(source, processor, seqlen=256, nsamples=4, seed=0)
    assert calib.used == 1 and calib.image_samples == 1 and calib.skipped == 1
    assert any("needs an image" in note for note in calib.notes)


def test_users_register_their_own_processor(tiny_llava):
    loaded = load_model(str(tiny_llava))
    template, _ = resolve_template(None, "llava")

    class Shouting(CalibrationProcessor):
        def encode_text(self, text, *, seqlen):
            return super().encode_text(text.upper(), seqlen=seqlen)

    register_processor("shouting", replace=True)(Shouting)
    processor = processor_for("shouting", loaded, template)
    ids = processor.encode(Sample(text="hello"), seqlen=16)["input_ids"][0]
    assert loaded.tokenizer.decode(ids) == "HELLO"
    assert "shouting" in PROCESSORS.names()


def test_mistral3_image_tokens_match_transformers_pixtral_processor(tiny_mistral3, picture, monkeypatch):
    """Without torchvision we lay out Pixtral's image tokens ourselves; transformers' own
    PixtralProcessor (made importable by pointing its torchvision image module at the PIL one) must
    produce the same ids and pixels."""
    import json
    import sys

    from auto_round_mllm.data.processors import load_image

    loaded = load_model(str(tiny_mistral3))
    assert loaded.processor is None and loaded.image_processor is not None
    template, _ = resolve_template(None, "mistral3")
    ours = processor_for("mistral3", loaded, template)
    sample = conversation(picture)
    mine = ours.encode(sample, seqlen=512)

    import transformers.models.pixtral.image_processing_pil_pixtral as pil

    monkeypatch.setitem(sys.modules, "transformers.models.pixtral.image_processing_pixtral", pil)
    from transformers.models.pixtral.processing_pixtral import PixtralProcessor

    settings = json.loads((tiny_mistral3 / "processor_config.json").read_text())
    settings.pop("processor_class")
    reference = PixtralProcessor(loaded.image_processor, loaded.tokenizer, **settings)
    expected = reference(text=[ours.prompt(sample)], images=[load_image(picture)], return_tensors="pt")
    assert torch.equal(mine["input_ids"], expected["input_ids"])
    assert torch.equal(mine["pixel_values"], expected["pixel_values"])
    assert torch.equal(mine["image_sizes"], expected["image_sizes"])
