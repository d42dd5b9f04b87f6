"""The tiny builders of the other families: each loads offline, runs text and image, generates,
never changes, and matches its registration in auto_round_mllm.models.families.

Without torchvision some processors cannot be built by transformers, and ``load_processor`` cannot
yet assemble every one of them (``KNOWN_PROCESSOR_GAPS``). For those, :func:`image_processor_for`
builds the family's own processor class by the workaround named there, so the model's image path
is tested either way; once ``load_processor`` handles a family, its workaround is no longer used.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import make_tiny_models as tiny
import pytest
import torch
from safetensors import safe_open
from torch import nn

from auto_round_mllm.models.family import family_for_model_type
from auto_round_mllm.models.processor_loading import load_processor

TEXT_FAMILIES = ["llama", "qwen2"]
# qwen2_vl and llava have their own tests (tests/scripts/test_make_tiny_models.py)
VLM_FAMILIES = [f for f in tiny.FAMILIES if f not in (*TEXT_FAMILIES, "qwen2_vl", "llava")]
FAMILIES = VLM_FAMILIES + TEXT_FAMILIES
REMOTE = set(tiny.REMOTE_CODE_FAMILIES)
PROMPT = "The function returns a list of"
REPO_ROOT = Path(__file__).resolve().parents[2]

# What load_processor cannot do yet on a machine without torchvision (transformers 5.23), and the
# workaround this file uses instead. An entry that no longer fails is simply not used.
KNOWN_PROCESSOR_GAPS = {
    "smolvlm": "SmolVLMProcessor.__init__ needs num2words (used for videos only): stubbed",
    "mistral3": "PixtralProcessor requires torchvision (its module imports the torchvision image "
    "processor for one helper): imported with the PIL module's helper in its place",
    "phi3_v": "Phi3VProcessor.image_processor_class makes ProcessorMixin scan VIDEO_PROCESSOR_MAPPING "
    "(AttributeError _extra_content): built from AutoImageProcessor + AutoTokenizer",
}

# Model inputs that an image forward takes, as the family's processor returns them.
IMAGE_INPUT_KEYS = {
    "qwen2_5_vl": {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"},
    "qwen3_vl": {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"},
    "llava_next": {"input_ids", "attention_mask", "pixel_values", "image_sizes"},
    "mllama": {
        "input_ids",
        "attention_mask",
        "pixel_values",
        "aspect_ratio_ids",
        "aspect_ratio_mask",
        "cross_attention_mask",
    },
    "idefics3": {"input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"},
    "smolvlm": {"input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"},
    "gemma3": {"input_ids", "attention_mask", "pixel_values", "token_type_ids"},
    "mistral3": {"input_ids", "attention_mask", "pixel_values", "image_sizes"},
    "phi3_v": {"input_ids", "attention_mask", "pixel_values", "image_sizes"},
    "cogvlm2": {"input_ids", "attention_mask", "token_type_ids", "images"},
}

# Image placeholder tokens for the 56 x 56 gradient_image() (how the model finds them).
IMAGE_TOKENS = {
    "qwen2_5_vl": 4,  # 56 -> 4 x 4 patches of 14 -> 2 x 2 merged
    "qwen3_vl": 4,  # 56 -> 64 -> 4 x 4 patches of 16 -> 2 x 2 merged
    "llava_next": 24,  # anyres: base 2 x 2 + 2 x 2 tiles of 2 x 2 patches (4 x 4) + a newline per row
    "mllama": 1,  # one <|image|>; the decoder cross-attends to the tiles
    "idefics3": 20,  # 2 x 2 tiles + the whole, 4 tokens each
    "smolvlm": 20,
    "gemma3": 4,  # mm_tokens_per_image
    "mistral3": 4,  # 2 x 2 [IMG] (+ [IMG_BREAK], [IMG_END])
    "phi3_v": 27,  # HD transform: 2 x 2 crops + global view + separators
    "cogvlm2": 6,  # 2 x 2 after the stride-2 conv, plus boi/eoi
}

# One tensor of the first text block and of the first vision block: name in the saved file ->
# name in the loaded model (transformers 5 renames some on load).
CHECKPOINT_NAMES = {
    "qwen2_5_vl": {
        "model.layers.0.self_attn.q_proj.weight": "model.language_model.layers.0.self_attn.q_proj.weight",
        "visual.blocks.0.attn.qkv.weight": "model.visual.blocks.0.attn.qkv.weight",
    },
    "qwen3_vl": {
        "model.language_model.layers.0.self_attn.q_proj.weight": (
            "model.language_model.layers.0.self_attn.q_proj.weight"
        ),
        "model.visual.blocks.0.attn.qkv.weight": "model.visual.blocks.0.attn.qkv.weight",
    },
    "llava_next": {
        "language_model.model.layers.0.self_attn.q_proj.weight": (
            "model.language_model.layers.0.self_attn.q_proj.weight"
        ),
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight": (
            "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
        ),
    },
    "mllama": {
        "language_model.model.layers.1.cross_attn.q_proj.weight": (
            "model.language_model.layers.1.cross_attn.q_proj.weight"
        ),
        "vision_model.transformer.layers.0.self_attn.q_proj.weight": (
            "model.vision_model.transformer.layers.0.self_attn.q_proj.weight"
        ),
    },
    "idefics3": {
        "model.text_model.layers.0.self_attn.q_proj.weight": "model.text_model.layers.0.self_attn.q_proj.weight",
        "model.vision_model.encoder.layers.0.self_attn.q_proj.weight": (
            "model.vision_model.encoder.layers.0.self_attn.q_proj.weight"
        ),
    },
    "smolvlm": {
        "model.text_model.layers.0.self_attn.q_proj.weight": "model.text_model.layers.0.self_attn.q_proj.weight",
        "model.vision_model.encoder.layers.0.self_attn.q_proj.weight": (
            "model.vision_model.encoder.layers.0.self_attn.q_proj.weight"
        ),
    },
    "gemma3": {
        "language_model.model.layers.0.self_attn.q_proj.weight": (
            "model.language_model.layers.0.self_attn.q_proj.weight"
        ),
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight": (
            "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
        ),
    },
    "mistral3": {
        "language_model.model.layers.0.self_attn.q_proj.weight": (
            "model.language_model.layers.0.self_attn.q_proj.weight"
        ),
        "vision_tower.transformer.layers.0.attention.q_proj.weight": (
            "model.vision_tower.transformer.layers.0.attention.q_proj.weight"
        ),
    },
    "phi3_v": {
        "model.layers.0.self_attn.qkv_proj.weight": "model.layers.0.self_attn.qkv_proj.weight",
        "model.layers.0.mlp.gate_up_proj.weight": "model.layers.0.mlp.gate_up_proj.weight",
        "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.q_proj.weight": (
            "model.vision_embed_tokens.img_processor.encoder.layers.0.self_attn.q_proj.weight"
        ),
    },
    "cogvlm2": {
        "model.layers.0.self_attn.language_expert_query_key_value.weight": (
            "model.layers.0.self_attn.language_expert_query_key_value.weight"
        ),
        "model.layers.0.mlp.vision_mlp.down_proj.weight": "model.layers.0.mlp.vision_mlp.down_proj.weight",
        "model.vision.transformer.layers.0.attention.query_key_value.weight": (
            "model.vision.transformer.layers.0.attention.query_key_value.weight"
        ),
    },
    "llama": {"model.layers.0.self_attn.q_proj.weight": "model.layers.0.self_attn.q_proj.weight"},
    "qwen2": {"model.layers.0.self_attn.q_proj.bias": "model.layers.0.self_attn.q_proj.bias"},
}


@pytest.fixture(params=FAMILIES)
def family_dir(request) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(params=VLM_FAMILIES)
def vlm_dir(request) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(f"tiny_{request.param}")


_LOADED: dict[Path, nn.Module] = {}


def load_model(family: str, path: Path):
    """The model, loaded once per session (tests only read it)."""
    if path not in _LOADED:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        cls = (
            AutoModelForImageTextToText
            if family in VLM_FAMILIES and family not in REMOTE
            else AutoModelForCausalLM
        )
        model, info = cls.from_pretrained(path, output_loading_info=True, trust_remote_code=family in REMOTE)
        assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
        _LOADED[path] = model.eval()
    return _LOADED[path]


def file_hashes(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir()) if f.is_file()}


def image_processor_for(family: str, path: Path, monkeypatch):
    """(processor, tokenizer) for an image forward: load_processor, or the KNOWN_PROCESSOR_GAPS workaround."""
    loaded = load_processor(path, trust_remote_code=family in REMOTE)
    if loaded.processor is not None or loaded.notice is None:  # cogvlm2 has no processor at all
        return loaded.processor, loaded.tokenizer
    assert family in KNOWN_PROCESSOR_GAPS, loaded.notice
    assert "cannot build the processor here" in loaded.notice
    from transformers import AutoImageProcessor, AutoTokenizer

    if family == "smolvlm":
        import transformers.models.smolvlm.processing_smolvlm as smolvlm

        monkeypatch.setattr(smolvlm, "num2words", str)
        loaded = load_processor(path)
        return loaded.processor, loaded.tokenizer
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=family in REMOTE)
    image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=family in REMOTE)
    if family == "mistral3":
        import transformers.models.pixtral.image_processing_pil_pixtral as pil

        monkeypatch.setitem(sys.modules, "transformers.models.pixtral.image_processing_pixtral", pil)
        from transformers.models.pixtral.processing_pixtral import PixtralProcessor

        settings = json.loads((path / "processor_config.json").read_text())
        settings.pop("processor_class")
        return PixtralProcessor(
            image_processor, tokenizer, chat_template=tokenizer.chat_template, **settings
        ), tokenizer
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    cls = get_class_from_dynamic_module("processing_phi3_v.Phi3VProcessor", str(path))
    return cls(image_processor, tokenizer), tokenizer


def image_inputs(family: str, model, processor, tokenizer, image) -> dict:
    if family == "cogvlm2":  # the release's own input builder (no processor class)
        built = model.build_conversation_input_ids(tokenizer, query="What is this?", images=[image])
        return {
            "input_ids": built["input_ids"][None],
            "token_type_ids": built["token_type_ids"][None],
            "attention_mask": built["attention_mask"][None],
            "images": [[built["images"][0].to(model.dtype)]],
        }
    if family == "phi3_v":  # images are named in the text
        messages = [{"role": "user", "content": "<|image_1|>\nWhat is this?"}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return dict(processor(prompt, [image], return_tensors="pt"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    if family == "smolvlm":  # SmolVLMProcessor.apply_chat_template reads video_processor.num_frames
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return dict(processor(text=prompt, images=image, return_tensors="pt"))


def count_image_tokens(family: str, model, inputs: dict) -> int:
    ids = inputs["input_ids"]
    if family == "phi3_v":
        return int((ids < 0).sum())
    if family == "cogvlm2":
        return int((inputs["token_type_ids"] == 1).sum())
    config = model.config
    token = getattr(config, "image_token_id", None)
    if token is None:
        token = config.image_token_index
    return int((ids == token).sum())


# ------------------------------------------------------------------------------------------ files


def test_checkpoint_files_and_config(family_dir):
    family, path = family_dir
    from transformers import AutoConfig, AutoTokenizer

    names = {p.name for p in path.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    if family in VLM_FAMILIES and family != "cogvlm2":  # CogVLM2 ships no image processor config
        assert "preprocessor_config.json" in names
    config = AutoConfig.from_pretrained(path, trust_remote_code=family in REMOTE)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=family in REMOTE)
    text = config.get_text_config()
    assert config.dtype == torch.bfloat16
    assert text.vocab_size % 64 == 0 and len(tokenizer) <= text.vocab_size < len(tokenizer) + 64
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (256, 4, 4)
    assert text.intermediate_size == 768
    with safe_open(path / "model.safetensors", "pt") as f:
        assert {f.get_tensor(name).dtype for name in f.keys()}  # noqa: SIM118 (safe_open is no dict) == {torch.bfloat16}
    if family in REMOTE:
        auto_map = json.loads((path / "config.json").read_text())["auto_map"]
        for target in auto_map.values():
            assert (path / f"{target.split('.')[0]}.py").is_file()


def test_checkpoint_names_and_module_names(family_dir):
    """What save_pretrained wrote vs. what the loaded model calls it (the exporter maps between them)."""
    family, path = family_dir
    with safe_open(path / "model.safetensors", "pt") as f:
        on_disk = set(f.keys())
    params = dict(load_model(family, path).named_parameters())
    for file_name, module_name in CHECKPOINT_NAMES[family].items():
        assert file_name in on_disk, file_name
        assert module_name in params, module_name
    assert len(on_disk) == len(params)


# ------------------------------------------------------------------------------- load, run, generate


def test_loads_offline_and_runs_text_only(family_dir):
    family, path = family_dir
    from transformers import AutoTokenizer

    model = load_model(family, path)
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=family in REMOTE)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    vocab = model.config.get_text_config().vocab_size
    assert logits.shape == (1, inputs.input_ids.shape[1], vocab)
    assert torch.isfinite(logits).all()
    probs = logits[0, -1].float().softmax(-1)
    assert probs.max() > 10 / vocab, "next-token distribution is near uniform"
    assert int(probs.argmax()) != int(inputs.input_ids[0, -1]), "the model only copies its input"


def test_runs_and_generates_with_an_image(vlm_dir, monkeypatch):
    family, path = vlm_dir
    model = load_model(family, path)
    processor, tokenizer = image_processor_for(family, path, monkeypatch)
    inputs = image_inputs(family, model, processor, tokenizer, tiny.gradient_image())
    assert set(inputs) == IMAGE_INPUT_KEYS[family]
    assert count_image_tokens(family, model, inputs) == IMAGE_TOKENS[family]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    other = image_inputs(family, model, processor, tokenizer, tiny.gradient_image().rotate(90))
    with torch.no_grad():
        assert not torch.allclose(model(**other).logits, logits), "the image does not reach the logits"
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_mllama_cross_attention_layers_need_an_image(tiny_mllama, monkeypatch):
    """Text alone skips the cross-attention decoder layer: it would get no calibration data."""
    model = load_model("mllama", tiny_mllama)
    layers = model.model.language_model.layers
    cross = [
        i for i, layer in enumerate(layers) if type(layer).__name__ == "MllamaCrossAttentionDecoderLayer"
    ]
    assert cross == model.config.text_config.cross_attention_layers == [1]
    calls = []
    handle = layers[1].register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True
    )
    try:
        processor, tokenizer = image_processor_for("mllama", tiny_mllama, monkeypatch)
        with torch.no_grad():
            model(**tokenizer(PROMPT, return_tensors="pt"))
            assert calls == []
            model(**image_inputs("mllama", model, processor, tokenizer, tiny.gradient_image()))
    finally:
        handle.remove()
    assert len(calls) == 1 and calls[0]["cross_attention_states"] is not None


@pytest.mark.parametrize("family", sorted(REMOTE))
def test_remote_code_loads_only_when_trusted(family, request):
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(f"tiny_{family}")
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(path)
    assert type(load_model(family, path)).__module__.startswith("transformers_modules.")


@pytest.mark.parametrize("family", sorted(REMOTE))
def test_remote_code_generation_with_cache_matches_without(family, request, monkeypatch):
    path = request.getfixturevalue(f"tiny_{family}")
    model = load_model(family, path)
    processor, tokenizer = image_processor_for(family, path, monkeypatch)
    inputs = image_inputs(family, model, processor, tokenizer, tiny.gradient_image())
    cached = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    uncached = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_qwen_vl_image_forward_needs_mm_token_type_ids(tiny_qwen3_vl, monkeypatch):
    """Qwen3-VL refuses an image without mm_token_type_ids (M-RoPE positions come from them)."""
    model = load_model("qwen3_vl", tiny_qwen3_vl)
    processor, tokenizer = image_processor_for("qwen3_vl", tiny_qwen3_vl, monkeypatch)
    inputs = image_inputs("qwen3_vl", model, processor, tokenizer, tiny.gradient_image())
    inputs.pop("mm_token_type_ids")
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        model(**inputs)


# ------------------------------------------------------------------------- determinism and registry


def test_builds_are_byte_identical(family_dir, tmp_path):
    family, fixture_path = family_dir
    out, built = tiny.build(family, tmp_path / family)
    assert built
    assert file_hashes(out) == file_hashes(fixture_path)


def test_cli_knows_every_family():
    assert set(FAMILIES) | {"qwen2_vl", "llava"} == set(tiny.FAMILIES) == set(tiny.BUILDERS)


def test_registry_resolves_model_type_and_block_paths(family_dir):
    family, path = family_dir
    from auto_round_mllm.models.family import text_block_list

    model = load_model(family, path)
    registered = family_for_model_type(model.config.model_type)
    assert registered.name == ("causal_lm" if family in TEXT_FAMILIES else family)
    modules = dict(model.named_modules())
    text = text_block_list(model, registered)
    assert text == next(p for p in registered.text_blocks if p in modules)
    assert isinstance(modules[text], nn.ModuleList) and len(modules[text]) == 4
    if family in VLM_FAMILIES:
        vision = [p for p in registered.vision_blocks if isinstance(modules.get(p), nn.ModuleList)]
        assert vision, f"none of {registered.vision_blocks} is in the model"
        assert registered.text_only_calibration == (family not in ("mllama", "cogvlm2"))
        assert (REPO_ROOT / "templates" / f"{registered.template}.json").is_file()
    assert "lm_head" in registered.ignore
