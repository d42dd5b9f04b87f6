"""Chat templates: the built-in prompts are the models' own, and every bad template file is a one-line
error that names the file and the field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from auto_round_mllm.data import templates as templates_module
from auto_round_mllm.data.templates import (
    TEMPLATE_FIELDS,
    TEMPLATES,
    ChatTemplate,
    load_template_file,
    register_template,
    resolve_template,
)
from auto_round_mllm.errors import DatasetError, UnknownName, UserError
from auto_round_mllm.utils.assets import asset_dir

BUILT_IN = (
    "default",
    "qwen2_vl",
    "qwen2_5_vl",
    "llava",
    "mllama",
    "phi3_v",
    "cogvlm2",
    "idefics3",
    "smolvlm",
    "gemma3",
    "mistral3",
)

# A LLaVA conversation_58k sample: human/gpt roles, the image marker first, two exchanges.
CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat is on the sofa?"},
    {"from": "gpt", "value": "A cat."},
    {"from": "human", "value": "What colour is it?"},
    {"from": "gpt", "value": "Black."},
]

EXPECTED = {
    "qwen2_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is on the sofa?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is it?<|im_end|>\n"
        "<|im_start|>assistant\nBlack.<|im_end|>\n"
    ),
    "llava": "USER: <image>\nWhat is on the sofa? ASSISTANT: A cat.</s>USER: What colour is it? ASSISTANT: Black.</s>",
    "mllama": (
        "<|start_header_id|>user<|end_header_id|>\n\n<|image|>What is on the sofa?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat colour is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBlack.<|eot_id|>"
    ),
    "phi3_v": (
        "<|user|>\n<|image_1|>\nWhat is on the sofa?<|end|>\n<|assistant|>\nA cat.<|end|>\n"
        "<|user|>\nWhat colour is it?<|end|>\n<|assistant|>\nBlack.<|end|>\n"
    ),
    "cogvlm2": "Question: What is on the sofa? Answer: A cat.\nQuestion: What colour is it? Answer: Black.\n",
    "gemma3": (
        "<start_of_turn>user\n<start_of_image>What is on the sofa?<end_of_turn>\n"
        "<start_of_turn>model\nA cat.<end_of_turn>\n"
        "<start_of_turn>user\nWhat colour is it?<end_of_turn>\n"
        "<start_of_turn>model\nBlack.<end_of_turn>\n"
    ),
    "mistral3": "[INST][IMG]What is on the sofa?[/INST]A cat.</s>[INST]What colour is it?[/INST]Black.</s>",
    "idefics3": (
        "User:<image>What is on the sofa?<end_of_utterance>\nAssistant: A cat.<end_of_utterance>\n"
        "User:What colour is it?<end_of_utterance>\nAssistant: Black.<end_of_utterance>\n"
    ),
}


def write_template(folder: Path, data: object, name: str = "mine.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def one_line_error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_template_file(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- built-in templates --------------------------------------------------------------------------


def test_every_built_in_template_file_is_registered_under_its_model_type():
    files = sorted(path.stem for path in asset_dir("templates").glob("*.json"))
    assert files == sorted(BUILT_IN)
    assert TEMPLATES.names() == sorted(BUILT_IN)
    for name in BUILT_IN:
        assert TEMPLATES.get(name).model_type == name


def test_built_in_files_use_only_auto_round_fields():
    for path in asset_dir("templates").glob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert set(data) <= set(TEMPLATE_FIELDS), path.name


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_template_renders_an_image_conversation(name):
    template = TEMPLATES.get(name)
    text = template.render(CONVERSATION)
    assert "What is on the sofa?" in text and "Black." in text
    assert "{{content}}" not in text
    assert text.index("What is on the sofa?") < text.index("A cat.") < text.index("What colour is it?")
    if name not in ("default", "llava", "idefics3", "smolvlm"):
        assert "<image>" not in text  # replaced by the model's own image token (or removed)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_prompts(name):
    assert TEMPLATES.get(name).render(CONVERSATION) == EXPECTED[name]


def test_qwen2_5_vl_and_smolvlm_match_their_siblings():
    assert TEMPLATES.get("qwen2_5_vl").render(CONVERSATION) == EXPECTED["qwen2_vl"]
    assert TEMPLATES.get("smolvlm").render(CONVERSATION) == EXPECTED["idefics3"]


def test_qwen2_vl_render_equals_qwens_published_chat_template():
    """Our format_* strings and the template Qwen ships produce the same prompt, for both the string
    contents to_messages makes and the structured (image part + text) contents processors use."""
    from make_tiny_models import QWEN2_VL_CHAT_TEMPLATE

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    published = env.from_string(QWEN2_VL_CHAT_TEMPLATE)
    template = TEMPLATES.get("qwen2_vl")
    ours = template.render(CONVERSATION, add_generation_prompt=True)

    as_strings = template.to_messages(CONVERSATION)
    assert published.render(messages=as_strings, add_generation_prompt=True) == ours

    structured = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is on the sofa?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "What colour is it?"},
        {"role": "assistant", "content": "Black."},
    ]
    assert published.render(messages=structured, add_generation_prompt=True) == ours


def test_generation_prompts_end_where_the_answer_starts():
    prompts = {name: TEMPLATES.get(name).generation_prompt for name in BUILT_IN}
    assert prompts["qwen2_vl"] == "<|im_start|>assistant\n"
    assert prompts["llava"] == "ASSISTANT:"
    assert prompts["cogvlm2"] == "Answer:"
    assert prompts["mllama"] == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert prompts["phi3_v"] == "<|assistant|>\n"
    assert prompts["gemma3"] == "<start_of_turn>model\n"
    assert prompts["mistral3"] == ""  # [/INST] already closes the user turn
    question = CONVERSATION[:1]
    assert TEMPLATES.get("cogvlm2").render(question, add_generation_prompt=True) == (
        "Question: What is on the sofa? Answer:"
    )
    assert TEMPLATES.get("llava").render(question, add_generation_prompt=True) == (
        "USER: <image>\nWhat is on the sofa? ASSISTANT:"
    )


def test_processors_datasets_and_extra_encode():
    processors = {name: TEMPLATES.get(name).processor for name in BUILT_IN}
    assert processors == {
        "default": "hf",
        "qwen2_vl": "qwen2_vl",
        "qwen2_5_vl": "qwen2_vl",
        "llava": "hf",
        "mllama": "mllama",
        "phi3_v": "hf",
        "cogvlm2": "cogvlm2",
        "idefics3": "hf",
        "smolvlm": "hf",
        "gemma3": "hf",
        "mistral3": "mistral3",
    }
    for name in BUILT_IN:
        dataset = TEMPLATES.get(name).default_dataset
        assert dataset == ("liuhaotian/llava_conv_58k" if name == "mllama" else "NeelNanda/pile-10k")
    assert {name for name in BUILT_IN if TEMPLATES.get(name).extra_encode} == {"cogvlm2", "phi3_v"}


# --- roles, system text, replacements ------------------------------------------------------------


def test_role_aliases_and_both_key_spellings():
    template = TEMPLATES.get("qwen2_vl")
    mixed = [
        {"role": "Human", "content": "hi"},
        {"from": "gpt", "value": "hello"},
        {"role": "bot", "content": "again"},
        {"role": "model", "content": "and again"},
        {"role": "tool", "content": "42"},
    ]
    roles = [turn["role"] for turn in template.to_messages(mixed)]
    assert roles == ["user", "assistant", "assistant", "assistant", "observation"]


def test_to_messages_replaces_tokens_keeps_system_and_adds_no_default_system():
    template = TEMPLATES.get("mllama")
    turns = template.to_messages([{"role": "system", "content": "Be brief."}, *CONVERSATION[:2]])
    assert turns == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<|image|>What is on the sofa?"},
        {"role": "assistant", "content": "A cat."},
    ]
    assert TEMPLATES.get("qwen2_vl").to_messages(CONVERSATION[:1])[0]["role"] == "user"  # no system added
    kept = template.to_messages(CONVERSATION[:1], apply_replacements=False)
    assert kept == [{"role": "user", "content": "<image>\nWhat is on the sofa?"}]


def test_unknown_role_and_malformed_turn_are_dataset_errors():
    template = TEMPLATES.get("default")
    with pytest.raises(DatasetError, match=r"turn 1 has unknown role 'narrator'.*user"):
        template.render([{"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}])
    with pytest.raises(DatasetError, match="turn 0 has no string 'role' and 'content'"):
        template.to_messages([{"role": "user", "content": ["not", "a", "string"]}])


def test_conversation_system_turn_replaces_default_system_once_before_the_first_turn():
    template = TEMPLATES.get("qwen2_vl")
    text = template.render([{"role": "system", "content": "Be brief."}, *CONVERSATION[:2]])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert text.count("<|im_start|>system") == 1
    assert "You are a helpful assistant." not in text


def test_default_system_is_used_only_when_present_and_empty_system_emits_nothing():
    assert (
        TEMPLATES.get("qwen2_vl")
        .render(CONVERSATION[:1])
        .startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    )
    # mllama has no default system text: no empty system header (the real template omits it with images)
    assert "system" not in TEMPLATES.get("mllama").render(CONVERSATION[:1])
    with_system = TEMPLATES.get("mllama").render(
        [{"role": "system", "content": "Be brief."}, *CONVERSATION[:1]]
    )
    assert with_system.startswith("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")


def test_empty_format_drops_the_role():
    gemma = TEMPLATES.get("gemma3")  # Gemma 3 has no system turn
    assert gemma.render([{"role": "system", "content": "Be brief."}, *CONVERSATION[:1]]) == (
        "<start_of_turn>user\n<start_of_image>What is on the sofa?<end_of_turn>\n"
    )
    qwen = TEMPLATES.get("qwen2_vl")  # no function/observation format: those turns are left out
    assert qwen.render([*CONVERSATION[:1], {"role": "tool", "content": "42"}]) == qwen.render(
        CONVERSATION[:1]
    )


def test_replacements_apply_in_order_and_separator_is_not_inserted():
    template = ChatTemplate(
        name="order",
        format_user="[{{content}}]",
        format_assistant="({{content}})",
        format_system="",
        format_separator="|SEP|",
        replace_tokens=(("<image>\n", "IMG "), ("<image>", "IMG "), ("IMG", "PIC")),
    )
    assert template.replace("<image>\nx <image>y") == "PIC x PIC y"
    assert template.render([{"role": "user", "content": "<image>\nq"}, {"role": "gpt", "content": "a"}]) == (
        "[PIC q](a)"
    )
    reversed_order = ChatTemplate(name="rev", replace_tokens=(("<image>", "IMG "), ("<image>\n", "never")))
    assert reversed_order.replace("<image>\nq") == "IMG \nq"  # the first pair already consumed the marker


def test_placeholder_is_filled_once_even_if_content_contains_it():
    template = ChatTemplate(name="t", format_user="<{{content}}>", format_system="")
    assert template.render([{"role": "user", "content": "literal {{content}}"}]) == "<literal {{content}}>"


# --- validation ----------------------------------------------------------------------------------


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "format_user": "{{content}}",\n  "extra_encode": tru\n}\n', encoding="utf-8")
    message = one_line_error(path)
    assert str(path) in message
    assert "not valid JSON" in message and "line 3 column" in message


def test_unknown_field_names_it_and_lists_valid_fields(tmp_path):
    message = one_line_error(write_template(tmp_path, {"format_usr": "{{content}}"}))
    assert "mine.json" in message and "unknown field 'format_usr'" in message
    assert "did you mean 'format_user'" in message
    for field in TEMPLATE_FIELDS:
        assert field in message


@pytest.mark.parametrize(
    ("data", "field", "expected"),
    [
        ({"extra_encode": "true"}, "extra_encode", "true or false"),
        ({"extra_encode": 1}, "extra_encode", "true or false"),
        ({"format_user": 3}, "format_user", "a string"),
        ({"default_system": ["a"]}, "default_system", "a string"),
        ({"model_type": None}, "model_type", "a string"),
        ({"processor": {"name": "hf"}}, "processor", "a string"),
        ({"replace_tokens": "<image>"}, "replace_tokens", "a list of strings or null"),
    ],
)
def test_wrong_type_names_field_and_expected_type(tmp_path, data, field, expected):
    message = one_line_error(write_template(tmp_path, data))
    assert "mine.json" in message and f"field {field!r} must be {expected}" in message


def test_missing_placeholder_names_the_field(tmp_path):
    message = one_line_error(write_template(tmp_path, {"format_assistant": "ASSISTANT: "}))
    assert "mine.json" in message and "field 'format_assistant' has no {{content}} placeholder" in message


def test_repeated_placeholder_is_refused(tmp_path):
    message = one_line_error(write_template(tmp_path, {"format_user": "{{content}} {{content}}"}))
    assert "field 'format_user' has {{content}} 2 times" in message


def test_odd_or_non_string_replace_tokens_name_the_field(tmp_path):
    odd = one_line_error(write_template(tmp_path, {"replace_tokens": ["<image>", "<|image|>", "x"]}))
    assert "mine.json" in odd and "field 'replace_tokens' has an odd number of strings (3)" in odd
    not_str = one_line_error(write_template(tmp_path, {"replace_tokens": ["<image>", 5]}))
    assert "field 'replace_tokens' item 1 must be a string" in not_str
    empty_old = one_line_error(write_template(tmp_path, {"replace_tokens": ["", "x"]}))
    assert "field 'replace_tokens' pair 0 replaces the empty string" in empty_old


def test_not_an_object_and_missing_file(tmp_path):
    assert "must hold a JSON object" in one_line_error(write_template(tmp_path, ["format_user"]))
    assert "does not exist" in one_line_error(tmp_path / "absent.json")


def test_template_files_are_data_not_code(tmp_path, monkeypatch):
    monkeypatch.setattr("builtins.eval", lambda *a, **k: pytest.fail("eval called"))
    path = write_template(tmp_path, {"format_user": "{{content}} {{ __import__('os').getcwd() }}"})
    template = load_template_file(path)
    assert template.render([{"role": "user", "content": "x"}]) == "x {{ __import__('os').getcwd() }}"


def test_python_construction_is_validated_the_same_way():
    with pytest.raises(
        UserError, match=re.escape("template 'bad': field 'format_user' has no {{content}} placeholder")
    ):
        ChatTemplate(name="bad", format_user="USER:")
    with pytest.raises(UserError, match="template 'bad': field 'replace_tokens' item 0 is not an"):
        ChatTemplate(name="bad", replace_tokens=("<image>", "x"))  # flat, not pairs
    with pytest.raises(UserError, match="field 'extra_encode' must be true or false"):
        ChatTemplate(name="bad", extra_encode="yes")


# --- user templates and resolution ---------------------------------------------------------------


def test_user_template_file_defaults_and_rendering(tmp_path):
    path = write_template(
        tmp_path,
        {
            "format_user": "<|user|>\n{{content}}<|end|>\n",
            "format_assistant": "<|bot|>\n{{content}}<|end|>\n",
            "replace_tokens": ["<image>", "<image_0>"],
            "extra_encode": True,
            "format_system": None,
        },
        name="my_vlm.json",
    )
    template = load_template_file(path)
    assert template.name == template.model_type == "my_vlm"
    assert template.format_system == "{{content}}" and template.default_system == ""
    assert template.processor == "hf" and template.default_dataset == "NeelNanda/pile-10k"
    assert template.format_separator == "\n"
    assert (
        template.render(CONVERSATION[:2])
        == "<|user|>\n<image_0>\nWhat is on the sofa?<|end|>\n<|bot|>\nA cat.<|end|>\n"
    )


def test_readme_example_renders_as_documented():
    readme = (asset_dir("templates") / "README.md").read_text(encoding="utf-8")
    example = json.loads(readme.split("```json\n", 1)[1].split("```", 1)[0])
    template = ChatTemplate(name="my_vlm", **{**example, "replace_tokens": (("<image>", "<image_0>"),)})
    rendered = template.render(
        [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]
    )
    assert rendered == "<|user|>\n<image_0>\nWhat is this?<|end|>\n<|bot|>\nA cat.<|end|>\n"


def test_resolve_by_model_type_or_default_with_notice():
    template, notice = resolve_template(None, "qwen2_vl")
    assert template.name == "qwen2_vl" and notice is None
    template, notice = resolve_template(None, "florence2")
    assert template.name == "default"
    assert notice is not None and "'florence2' has no chat template" in notice and "\n" not in notice


def test_resolve_by_name_path_and_unknown(tmp_path, monkeypatch):
    assert resolve_template("Qwen2-VL", "llava")[0].name == "qwen2_vl"  # names are normalized
    path = write_template(tmp_path, {"format_user": "Q: {{content}}\n"}, name="custom.json")
    template, notice = resolve_template(str(path), "llava")
    assert template.name == "custom" and notice is None
    assert "custom" not in TEMPLATES  # a file is used for the run, not registered
    extensionless = tmp_path / "plain_template"
    extensionless.write_text('{"format_user": "Q: {{content}}\\n"}', encoding="utf-8")
    assert resolve_template(str(extensionless), "llava")[0].name == "plain_template"
    with pytest.raises(UserError, match="does not exist"):
        resolve_template(str(tmp_path / "missing.json"), "llava")
    with pytest.raises(UnknownName) as info:
        resolve_template("qwen2vl", "llava")
    message = str(info.value)
    assert "unknown template 'qwen2vl'" in message and "did you mean 'qwen2_vl'" in message
    assert "mllama" in message and ".json" in message and "\n" not in message


def test_register_template_from_python(monkeypatch):
    TEMPLATES.names()  # load the built-ins into the real registry before taking a copy
    monkeypatch.setattr(TEMPLATES, "_items", dict(TEMPLATES._items))  # keep the global registry clean
    mine = ChatTemplate(
        name="my_vlm",
        format_user="<|user|>\n{{content}}<|end|>\n",
        format_assistant="<|bot|>\n{{content}}<|end|>\n",
        replace_tokens=[("<image>", "<image_0>")],  # a list of pairs is accepted and frozen
        extra_encode=True,
    )
    assert register_template(mine) is mine
    assert mine.replace_tokens == (("<image>", "<image_0>"),)
    assert resolve_template(None, "my_vlm") == (mine, None)
    assert resolve_template("my-vlm", "llava")[0] is mine
    with pytest.raises(ValueError, match="already registered"):
        register_template(ChatTemplate(name="qwen2_vl"))
    replacement = ChatTemplate(name="qwen2_vl", processor="qwen2_vl")
    assert register_template(replacement, replace=True) is replacement
    assert TEMPLATES.get("qwen2_vl") is replacement


def test_built_ins_load_lazily_on_first_lookup(monkeypatch):
    fresh = templates_module._TemplateRegistry()
    calls: list[Path] = []
    real_loader = templates_module.load_template_file
    monkeypatch.setattr(templates_module, "load_template_file", lambda p: calls.append(p) or real_loader(p))
    assert calls == []  # creating the registry reads nothing
    assert "qwen2_vl" in fresh
    assert len(calls) == len(BUILT_IN)
    fresh.get("llava")
    assert len(calls) == len(BUILT_IN)  # once only


def test_registering_before_any_lookup_still_protects_built_in_names():
    fresh = templates_module._TemplateRegistry()
    with pytest.raises(ValueError, match="already registered"):
        fresh.add("mllama", ChatTemplate(name="mllama"))
