"""The tiny model builders: real-looking checkpoints that load, run, generate and never change."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import make_tiny_models as tiny
import pytest
import torch
from safetensors import safe_open

from auto_round_mllm.models.processor_loading import load_processor

FAMILIES = ["qwen2_vl", "llava"]
PROMPTS = [
    "The function returns a list of",
    "Python evaluates expressions from left to right",
    "A class definition creates a new",
]


@pytest.fixture(params=FAMILIES)
def family_dir(request) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(f"tiny_{request.param}")


def load_model(path: Path):
    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    return model.eval()


def file_hashes(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir()) if f.is_file()}


def image_prompt(processor) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


# ----------------------------------------------------------------------------------------- tokenizer


def test_qwen2_vl_tokenizer_has_specials_and_chatml_template():
    tokenizer = tiny.build_tokenizer("qwen2_vl")
    for token in tiny.QWEN2_VL_SPECIALS:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llava_tokenizer_adds_bos_and_has_image_token():
    tokenizer = tiny.build_tokenizer("llava")
    ids = tokenizer("USER: hello").input_ids
    assert ids[0] == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids("<s>")
    assert tokenizer.encode("<image>", add_special_tokens=False) == [
        tokenizer.convert_tokens_to_ids("<image>")
    ]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "USER: <image>\nHi ASSISTANT:"


def test_build_tokenizer_returns_independent_copies_of_one_training():
    first, second = tiny.build_tokenizer("qwen2_vl"), tiny.build_tokenizer("qwen2_vl")
    assert first is not second
    first.add_tokens(["<|only-in-first|>"])
    assert len(second) == len(tiny.build_tokenizer("qwen2_vl")) == len(first) - 1
    assert second.backend_tokenizer.to_str() == tiny.build_tokenizer("qwen2_vl").backend_tokenizer.to_str()


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="qwen2_vl, llava"):
        tiny.build_tokenizer("no_such_family")


# ----------------------------------------------------------------------------------------- configs


def test_qwen2_vl_config_matches_tokenizer_and_real_layout(tiny_qwen2_vl):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_qwen2_vl)
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    text = config.text_config
    assert config.dtype == torch.bfloat16
    assert text.vocab_size % 64 == 0 and len(tokenizer) <= text.vocab_size < len(tokenizer) + 64
    for attr, token in [
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ]:
        assert getattr(config, attr) == tokenizer.convert_tokens_to_ids(token), attr
    head_dim = text.hidden_size // text.num_attention_heads
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (256, 4, 2)
    # mrope sections split the head_dim / 2 rotary frequencies 2:3:3, as [16, 24, 24] does for 128.
    assert text.rope_parameters["mrope_section"] == [8, 12, 12]
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert config.vision_config.embed_dim == 128
    assert config.vision_config.hidden_size == text.hidden_size  # merger output feeds the decoder


def test_llava_config_matches_tokenizer(tiny_llava):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_llava)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava)
    assert config.dtype == torch.bfloat16
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert config.text_config.vocab_size % 64 == 0 and config.text_config.vocab_size >= len(tokenizer)
    assert (config.vision_config.hidden_size, config.vision_config.image_size) == (128, 28)


def test_checkpoint_tensor_names_follow_the_hub_layout(tiny_qwen2_vl, tiny_llava):
    """transformers 5 renames tensors when loading; the files keep the released checkpoints' names."""
    expected = {
        tiny_qwen2_vl: {
            "model.layers.0.self_attn.q_proj.weight": "model.language_model.layers.0.self_attn.q_proj.weight",
            "visual.blocks.0.attn.qkv.weight": "model.visual.blocks.0.attn.qkv.weight",
            "model.embed_tokens.weight": "model.language_model.embed_tokens.weight",
            "lm_head.weight": "lm_head.weight",
        },
        tiny_llava: {
            "language_model.model.layers.0.self_attn.q_proj.weight": (
                "model.language_model.layers.0.self_attn.q_proj.weight"
            ),
            "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight": (
                "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
            ),
            "multi_modal_projector.linear_1.weight": "model.multi_modal_projector.linear_1.weight",
            "language_model.lm_head.weight": "lm_head.weight",
        },
    }
    for path, names in expected.items():
        with safe_open(path / "model.safetensors", "pt") as f:
            on_disk = set(f.keys())
            assert {f.get_tensor(name).dtype for name in on_disk} == {torch.bfloat16}
        modules = dict(load_model(path).named_parameters())
        for file_name, module_name in names.items():
            assert file_name in on_disk
            assert module_name in modules
            assert file_name == module_name or file_name not in modules
        assert len(on_disk) == len(modules)


# ------------------------------------------------------------------------------- load, run, generate


def test_loads_offline_and_runs_text_only(family_dir):
    _, path = family_dir
    from transformers import AutoTokenizer

    model = load_model(path)
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs.input_ids.shape[1], model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()


def test_runs_and_generates_with_an_image(family_dir):
    _, path = family_dir
    model = load_model(path)
    processor = load_processor(path).processor
    inputs = processor(text=image_prompt(processor), images=tiny.gradient_image(), return_tensors="pt")
    image_tokens = int((inputs.input_ids == model.config.image_token_id).sum())
    assert image_tokens == 4  # 56 x 56 -> 4 merged Qwen2-VL patches; 28 x 28 -> 4 CLIP patches
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs.input_ids.shape[1] + 4


def test_logits_are_not_degenerate(family_dir):
    family, path = family_dir
    from transformers import AutoTokenizer

    model = load_model(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    vocab = model.config.get_text_config().vocab_size
    argmaxes = set()
    for prompt in PROMPTS:
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].float()
        probs = logits.softmax(-1)
        assert probs.max() > 10 / vocab, f"{family}: next-token distribution is near uniform"
        argmaxes.add(int(probs.argmax()))
    assert len(argmaxes) == len(PROMPTS), f"{family}: different prompts give the same next token"


# ------------------------------------------------------------------------------ determinism and CLI


def test_cli_builds_byte_identical_models_and_skips_existing(family_dir, tmp_path, capsys):
    family, fixture_path = family_dir
    out = tmp_path / "nested" / family
    assert tiny.main(["--family", family, "--out", str(out)]) == 0
    assert f"built tiny {family}" in capsys.readouterr().out
    assert file_hashes(out) == file_hashes(fixture_path)  # same bytes, file by file, build to build
    assert [p.name for p in out.parent.iterdir()] == [family]  # the temp folder was renamed into place

    (out / "marker").write_text("kept")
    assert tiny.main(["--family", family, "--out", str(out)]) == 0
    assert "exists; skipping" in capsys.readouterr().out
    assert (out / "marker").exists()

    assert tiny.main(["--family", family, "--out", str(out), "--force"]) == 0
    assert not (out / "marker").exists()
    assert file_hashes(out) == file_hashes(fixture_path)


def test_cli_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        tiny.main(["--family", "llava", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "use --force" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_script_runs_from_the_command_line(tiny_llava):
    script = Path(tiny.__file__)
    result = subprocess.run(
        [sys.executable, str(script), "--family", "llava", "--out", str(tiny_llava)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "exists; skipping" in result.stdout


def test_saved_files_look_like_a_hub_checkpoint(family_dir):
    family, path = family_dir
    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
    } <= names
    preprocessor = json.loads((path / "preprocessor_config.json").read_text())
    expected_type = {"qwen2_vl": "Qwen2VLImageProcessor", "llava": "CLIPImageProcessor"}[family]
    assert preprocessor["image_processor_type"] == expected_type
    generation = json.loads((path / "generation_config.json").read_text())
    assert (
        generation["eos_token_id"]
        == json.loads((path / "config.json").read_text())["text_config"]["eos_token_id"]
    )
