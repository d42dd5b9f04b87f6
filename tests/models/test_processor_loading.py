"""load_processor: the library's processor when it can be built, an image-only one when not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import make_tiny_models as tiny
import pytest
import torch
from transformers import LlavaProcessor, Qwen2VLProcessor
from transformers.utils import is_torchvision_available

from auto_round_mllm.models.processor_loading import (
    LoadedProcessor,
    image_only_processor_class,
    load_processor,
)

needs_no_torchvision = pytest.mark.skipif(
    is_torchvision_available(), reason="with torchvision, transformers builds the full processor itself"
)

QWEN_MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
QWEN_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\n<|im_start|>assistant\n"
)


def copy_without_weights(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, target / file.name)
    return target


def qwen_inputs(processor):
    text = processor.apply_chat_template(QWEN_MESSAGES, add_generation_prompt=True)
    return processor(text=text, images=tiny.gradient_image(56), return_tensors="pt")


@needs_no_torchvision
def test_qwen2_vl_processor_is_assembled_with_a_notice(tiny_qwen2_vl):
    loaded = load_processor(tiny_qwen2_vl)
    assert isinstance(loaded, LoadedProcessor)
    assert isinstance(loaded.processor, Qwen2VLProcessor)  # the library's class, minus video
    assert type(loaded.processor).__name__ == "Qwen2VLProcessor"
    assert not hasattr(loaded.processor, "video_processor")
    assert loaded.tokenizer is loaded.processor.tokenizer
    assert loaded.image_processor is loaded.processor.image_processor
    assert type(loaded.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert loaded.notice and "\n" not in loaded.notice
    assert "torchvision" in loaded.notice and "Qwen2VLProcessor" in loaded.notice


def test_qwen2_vl_inputs_expand_the_image_and_run_the_model(tiny_qwen2_vl):
    from transformers import AutoModelForImageTextToText

    processor = load_processor(tiny_qwen2_vl).processor
    assert processor.apply_chat_template(QWEN_MESSAGES, add_generation_prompt=True) == QWEN_PROMPT
    inputs = qwen_inputs(processor)
    # 56 x 56 -> a 4 x 4 grid of 14-pixel patches (2 frames each) -> 2 x 2 merged -> 4 image tokens
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert tuple(inputs["pixel_values"].shape) == (16, 3 * 2 * 14 * 14)
    expected = processor.tokenizer(QWEN_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * 4)).input_ids
    assert inputs["input_ids"][0].tolist() == expected
    assert inputs["attention_mask"].tolist() == [[1] * len(expected)]

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_vl).eval()
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 4
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


def test_qwen2_vl_chat_template_can_tokenize_images_too(tiny_qwen2_vl):
    processor = load_processor(tiny_qwen2_vl).processor
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": tiny.gradient_image()}, {"type": "text", "text": "Hi"}],
        }
    ]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert sum(t == processor.image_token_id for t in out["input_ids"][0]) == 4


def test_saved_qwen2_vl_processor_loads_back_here_and_with_torchvision(tiny_qwen2_vl, tmp_path):
    from transformers.video_processing_utils import BaseVideoProcessor

    processor = load_processor(tiny_qwen2_vl).processor
    processor.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
    } <= names
    assert (
        json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    )
    assert (
        json.loads((tmp_path / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    )

    reloaded = load_processor(tmp_path)  # a folder with no config.json: found by processor_class
    assert isinstance(reloaded.processor, Qwen2VLProcessor)
    again = qwen_inputs(reloaded.processor)
    for key, value in qwen_inputs(processor).items():
        assert torch.equal(again[key], value), key
    # What a machine with torchvision reads to build the video processor it would add.
    video_dict, _ = BaseVideoProcessor.get_video_processor_dict(str(tmp_path))
    assert video_dict["image_processor_type"] == "Qwen2VLImageProcessor"


@needs_no_torchvision
def test_a_source_video_processor_config_is_kept(tiny_qwen2_vl, tmp_path):
    source = copy_without_weights(tiny_qwen2_vl, tmp_path / "source")
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "fps": 2.0, "merge_size": 2, "patch_size": 14}
    (source / "video_preprocessor_config.json").write_text(json.dumps(video))
    loaded = load_processor(source)
    loaded.processor.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "video_preprocessor_config.json").read_text()) == video


def test_llava_processor_loads_normally(tiny_llava):
    from transformers import AutoModelForImageTextToText

    loaded = load_processor(tiny_llava)
    assert isinstance(loaded.processor, LlavaProcessor)
    assert loaded.notice is None
    assert loaded.image_processor is loaded.processor.image_processor
    text = loaded.processor.apply_chat_template(QWEN_MESSAGES, add_generation_prompt=True)
    assert text == "USER: <image>\nDescribe it. ASSISTANT:"
    inputs = loaded.processor(text=text, images=tiny.gradient_image(), return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 28, 28)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava).eval()
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 4  # 2 x 2 patches, CLS dropped
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_text_only_model_gives_just_a_tokenizer(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(tmp_path)
    tiny.build_tokenizer("llava").save_pretrained(tmp_path)
    loaded = load_processor(tmp_path)
    assert loaded.processor is None and loaded.image_processor is None and loaded.notice is None
    assert loaded.tokenizer("hello").input_ids


def test_other_failures_are_not_hidden(tmp_path):
    with pytest.raises(OSError):
        load_processor(tmp_path / "does-not-exist")


@pytest.mark.parametrize("name", ["Qwen2VLProcessor", "Qwen2_5_VLProcessor", "Qwen3VLProcessor"])
def test_qwen_vl_processors_work_without_video(name, tiny_qwen2_vl):
    """Qwen2.5-VL and Qwen3-VL processors share Qwen2-VL's tokens and image processor."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    base = getattr(transformers, name, None)
    if base is None:
        pytest.skip(f"this transformers has no {name}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    image_processor = AutoImageProcessor.from_pretrained(tiny_qwen2_vl)
    processor = image_only_processor_class(base)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    inputs = qwen_inputs(processor)
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 4


def test_image_only_class_drops_only_the_video_processor():
    cls = image_only_processor_class(Qwen2VLProcessor)
    assert image_only_processor_class(Qwen2VLProcessor) is cls
    assert issubclass(cls, Qwen2VLProcessor) and cls.__name__ == "Qwen2VLProcessor"
    assert cls.get_attributes() == ["image_processor", "tokenizer"]
    assert image_only_processor_class(LlavaProcessor) is LlavaProcessor  # nothing to drop
