"""Tiny, offline, deterministic vision-language models for tests, demos and benchmarks.

Each builder writes a folder that looks like a real Hugging Face checkpoint of its family: config
from transformers' own config classes, bfloat16 safetensors, a byte-level BPE tokenizer trained on
the standard library's ``pydoc_data.topics`` text with the family's special tokens and chat
template, an image processor (PIL backend, no torchvision needed) and a generation config.
Weights are random but seeded, and large enough that next-token distributions are far from
uniform, so quantization error shows up in the logits. The same call gives the same bytes.

    python scripts/make_tiny_models.py --family qwen2_vl --out /tmp/tiny-qwen2-vl
    python scripts/make_tiny_models.py --family llava --out /tmp/tiny-llava --force

Tests import this file by putting ``scripts/`` on ``sys.path``; the package never imports it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("qwen2_vl", "llava")
SEED = 1234
# Weight std. 0.02 (transformers' default) leaves 256-wide logits near uniform; 0.1 gives each Linear
# about the gain of a 7B model's (0.1 * sqrt(256) vs 0.02 * sqrt(4096)) and top-1 probabilities
# 30-100x above 1/vocab.
INITIALIZER_RANGE = 0.1
BPE_VOCAB = 2000
VOCAB_MULTIPLE = 64

# Text sizes shared by both families: multiples of 32 so every group size in tests applies.
TEXT_SIZES = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)

# The chat template published with Qwen/Qwen2-VL-7B-Instruct (ChatML, vision placeholders).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-1.5 style ("USER: <image>\n... ASSISTANT:"), accepting string or list content.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ c['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c or 'image_url' in c %}{{ '<image>\n' }}{% endif %}"
    "{% endfor %}{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ c['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class TokenizerSpec:
    """What a family's tokenizer adds on top of the trained BPE vocabulary."""

    leading_specials: tuple[str, ...]  # trained in, ids 0.. (Llama's <unk> <s> </s>)
    trailing_specials: tuple[str, ...]  # appended after the BPE vocabulary (Qwen's <|...|>, <image>)
    bos: str | None
    eos: str
    pad: str
    unk: str | None
    image_token: str
    chat_template: str


QWEN2_VL_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

TOKENIZER_SPECS: dict[str, TokenizerSpec] = {
    "qwen2_vl": TokenizerSpec(
        leading_specials=(),
        trailing_specials=QWEN2_VL_SPECIALS,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
        image_token="<|image_pad|>",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    ),
    "llava": TokenizerSpec(
        leading_specials=("<unk>", "<s>", "</s>"),
        trailing_specials=("<image>", "<pad>"),
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        image_token="<image>",
        chat_template=LLAVA_CHAT_TEMPLATE,
    ),
}

_TRAINED: dict[str, str] = {}  # family -> serialized tokenizers.Tokenizer (trained once per process)


def _check_family(family: str) -> TokenizerSpec:
    if family not in TOKENIZER_SPECS:
        raise ValueError(f"unknown family {family!r}; use one of: {', '.join(FAMILIES)}")
    return TOKENIZER_SPECS[family]


def _corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _train_backend(spec: TokenizerSpec) -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB + len(spec.leading_specials),
        special_tokens=list(spec.leading_specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.trailing_specials])
    if spec.bos is not None:
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos}:0 $A:0",
            pair=f"{spec.bos}:0 $A:0 {spec.bos}:1 $B:1",
            special_tokens=[(spec.bos, bos_id)],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def build_tokenizer(family: str):
    """A fresh ``PreTrainedTokenizerFast`` for ``family``; the BPE is trained once per process."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = _check_family(family)
    if family not in _TRAINED:
        _TRAINED[family] = _train_backend(spec)
    specials = dict(eos_token=spec.eos, pad_token=spec.pad)
    if spec.bos is not None:
        specials["bos_token"] = spec.bos
    if spec.unk is not None:
        specials["unk_token"] = spec.unk
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_TRAINED[family]),
        model_max_length=TEXT_SIZES["max_position_embeddings"],
        padding_side="left" if family == "llava" else "right",
        clean_up_tokenization_spaces=False,
        **specials,
    )
    tokenizer.chat_template = spec.chat_template
    return tokenizer


def padded_vocab_size(tokenizer) -> int:
    n = len(tokenizer)
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


# --------------------------------------------------------------------------------------- models


def _init_and_save(model_cls, config, tokenizer, image_processor, processor, out: Path) -> Path:
    """Seeded init in float32, cast to bfloat16 like released checkpoints, save everything."""
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    text = config.get_text_config()
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)  # processor_config.json, tokenizer, chat template
    else:
        tokenizer.save_pretrained(out)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    image_processor.save_pretrained(out)  # preprocessor_config.json, which every loader reads
    return out


def _use_hub_vision_tower_names(out: Path) -> None:
    """Rename ``vision_tower.*`` to ``vision_tower.vision_model.*`` as in llava-hf checkpoints.

    transformers 5 builds CLIP without the ``vision_model`` level and, for a model made from a
    config, saves the tower without it; a model loaded from a hub checkpoint saves it back with
    it. Both load; we write what users' checkpoints contain.
    """
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    tensors = load_file(path)
    renamed = {
        ("vision_tower.vision_model." + k[len("vision_tower.") :] if k.startswith("vision_tower.") else k): v
        for k, v in tensors.items()
    }
    save_file(renamed, path, metadata={"format": "pt"})


def make_tiny_qwen2_vl(path: str | Path) -> Path:
    """A 4-layer Qwen2-VL (256 wide text, 128 wide vision tower) at ``path``."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    out = Path(path)
    tokenizer = build_tokenizer("qwen2_vl")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIALS}
    head_dim = TEXT_SIZES["hidden_size"] // TEXT_SIZES["num_attention_heads"]
    # Qwen2-VL-2B/7B: head_dim 128 and mrope_section [16, 24, 24], which covers the head_dim / 2
    # rotary frequencies as 2:3:3 (time, height, width). Same split for our head_dim 64: [8, 12, 12].
    unit = head_dim // 16
    mrope_section = [2 * unit, 3 * unit, 3 * unit]
    text_config = dict(
        **TEXT_SIZES,
        vocab_size=padded_vocab_size(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-6,
        initializer_range=INITIALIZER_RANGE,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        use_sliding_window=False,
        tie_word_embeddings=False,
    )
    vision_config = dict(
        depth=2,
        embed_dim=128,
        hidden_size=TEXT_SIZES["hidden_size"],
        num_heads=4,
        mlp_ratio=4,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        hidden_act="quick_gelu",
        initializer_range=INITIALIZER_RANGE,
    )
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        initializer_range=INITIALIZER_RANGE,
    )
    factor = vision_config["patch_size"] * vision_config["spatial_merge_size"]
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=4 * factor * factor,  # 56 x 56 -> 4 x 4 patches -> 4 image tokens
        max_pixels=16 * factor * factor,  # 112 x 112 at most -> 16 image tokens
        patch_size=vision_config["patch_size"],
        temporal_patch_size=vision_config["temporal_patch_size"],
        merge_size=vision_config["spatial_merge_size"],
    )
    tokenizer._set_processor_class("Qwen2VLProcessor")  # as a processor-saved hub checkpoint records it
    return _init_and_save(Qwen2VLForConditionalGeneration, config, tokenizer, image_processor, None, out)


def make_tiny_llava(path: str | Path) -> Path:
    """A LLaVA-1.5 shaped model: 4-layer Llama text, 2-layer CLIP tower on 28 x 28 images."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(path)
    tokenizer = build_tokenizer("llava")
    image_size, patch_size = 28, 14
    text_config = LlamaConfig(
        **TEXT_SIZES,
        vocab_size=padded_vocab_size(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=INITIALIZER_RANGE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=128,
        initializer_range=INITIALIZER_RANGE,
    )
    image_token_id = tokenizer.convert_tokens_to_ids(TOKENIZER_SPECS["llava"].image_token)
    config = LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=False,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token=TOKENIZER_SPECS["llava"].image_token,
        num_additional_image_tokens=1,  # CLIP's CLS embedding, dropped by the "default" strategy
        chat_template=tokenizer.chat_template,
    )
    _init_and_save(LlavaForConditionalGeneration, config, tokenizer, image_processor, processor, out)
    _use_hub_vision_tower_names(out)
    return out


BUILDERS = {"qwen2_vl": make_tiny_qwen2_vl, "llava": make_tiny_llava}


def gradient_image(size: int = 56):
    """A deterministic RGB test picture: red grows left to right, green top to bottom."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = 128
    return Image.fromarray(pixels)  # uint8 H x W x 3 -> RGB


def build(family: str, out: str | Path, *, force: bool = False) -> tuple[Path, bool]:
    """Build ``family`` into ``out`` unless a model is already there. Returns (path, built)."""
    _check_family(family)
    out = Path(out)
    if out.exists() and not force:
        if (out / "config.json").exists():
            return out, False
        if any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty and holds no config.json; use --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder should not be
    try:
        BUILDERS[family](tmp)
        for file in tmp.iterdir():
            file.chmod(0o644)  # transformers writes model.safetensors owner-only
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--out", required=True, type=Path, help="folder to write the model into")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT/config.json exists")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out, built = build(args.family, args.out, force=args.force)
    except FileExistsError as exc:
        parser.error(str(exc))
    if built:
        print(f"built tiny {args.family} in {out} ({time.perf_counter() - start:.1f} s)")
    else:
        print(f"{out / 'config.json'} exists; skipping (use --force to rebuild)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
