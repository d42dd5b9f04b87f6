"""Tiny, offline, deterministic vision-language models for tests, demos and benchmarks.

Each builder writes a folder that looks like a real Hugging Face checkpoint of its family: config
from transformers' own config classes, bfloat16 safetensors, a byte-level BPE tokenizer trained on
the standard library's ``pydoc_data.topics`` text with the family's special tokens and chat
template, an image processor (PIL backend, no torchvision needed) and a generation config.
Weights are random but seeded, and large enough that next-token distributions are far from
uniform, so quantization error shows up in the logits. The same call gives the same bytes.

    python scripts/make_tiny_models.py --family qwen2_vl --out /tmp/tiny-qwen2-vl
    python scripts/make_tiny_models.py --family llava --out /tmp/tiny-llava --force

Families: see FAMILIES. ``phi3_v`` and ``cogvlm2`` ship small stand-ins of their released remote
code (scripts/remote_code/) and load only with ``trust_remote_code=True``; ``llama`` and ``qwen2``
are text-only causal LMs. Processors that transformers cannot build without torchvision
(Qwen2.5-VL, Qwen3-VL, SmolVLM, Pixtral) are saved as their parts, like processor-saved hub
checkpoints: tokenizer, image processor and, where the processor has settings, processor_config.json.

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

FAMILIES = (
    "qwen2_vl",
    "llava",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava_next",
    "mllama",
    "idefics3",
    "smolvlm",
    "gemma3",
    "mistral3",
    "phi3_v",  # remote code (scripts/remote_code/phi3_v): load with trust_remote_code=True
    "cogvlm2",  # remote code (scripts/remote_code/cogvlm2)
    "llama",  # text only
    "qwen2",  # text only
)
REMOTE_CODE_FAMILIES = ("phi3_v", "cogvlm2")
TEXT_ONLY_FAMILIES = ("llama", "qwen2")
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
    image_token: str | None
    chat_template: str
    padding_side: str = "right"
    named_tokens: tuple[tuple[str, str], ...] = ()  # extra tokenizer attributes (Gemma 3's boi_token, ...)


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
        padding_side="left",
    ),
}

# ------------------------------------------------------------------- more families' tokenizers
# Special tokens in the order of the released tokenizers (those before the vocabulary are trained
# in at ids 0.., as Mistral's and Gemma's sit; the others follow the vocabulary, as Llama 3's and
# Qwen's do). Chat templates are the published ones, or shortened where they carry tool-calling or
# date logic (marked "reduced"); each still renders text and image turns like the original.

QWEN2_5_SPECIALS = (
    *QWEN2_VL_SPECIALS,
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
QWEN3_SPECIALS = (
    *QWEN2_5_SPECIALS,
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)

# Qwen3-VL-Instruct, reduced: no tools, no reasoning branch; no default system prompt.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content['type'] == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2-Instruct (text).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral-7b-hf ([INST] turns, images first), also accepting string content.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\\n' + (message['content'] if message['content'] is string else message['content'][0]['text'])"
    " + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{{ '<image>\\n' }}{% endif %}"
    "{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{% endif %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + (message['content'] if message['content'] is string else message['content'][0]['text']) + eos_token }}"
    "{% endif %}{% endfor %}"
)

# Llama 3.1/3.2 special tokens (ids 128000..128010 in the released tokenizer).
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)

# Meta-Llama-3-8B-Instruct.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Llama-3.2-11B-Vision-Instruct, reduced: no tools, no date header.
MLLAMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

IDEFICS3_IMAGE_SPECIALS = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
)

# HuggingFaceM4/Idefics3-8B-Llama3 ("User:<image>...<end_of_utterance>\nAssistant:").
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# HuggingFaceTB/SmolVLM-Instruct: the Idefics3 template after SmolLM2's <|im_start|>.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# google/gemma-3-4b-it.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# Mistral-Small-3.1 (Tekken) control tokens, ids 0..19 as released: [IMG] is 10.
MISTRAL3_SPECIALS = (
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
)

# Mistral-Small-3.1-24B-Instruct-2503, reduced: a fixed default system prompt (the original one
# is long and carries today's date, which would make prompts change from day to day).
MISTRAL3_CHAT_TEMPLATE = (
    "{%- set default_system_message = 'You are a helpful assistant.' %}"
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{%- set system_message = messages[0]['content'] %}"
    "{%- else %}{%- set system_message = messages[0]['content'][0]['text'] %}{%- endif %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = default_system_message %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if message['content'] is string %}{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST]' }}{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}"
    "{%- else %}{{- raise_exception('Only text and image blocks are supported in message content!') }}"
    "{%- endif %}{%- endfor %}{{- '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is string %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- message['content'][0]['text'] + eos_token }}{%- endif %}"
    "{%- else %}{{- raise_exception('Only user, system and assistant roles are supported!') }}{%- endif %}"
    "{%- endfor %}"
)

PHI3_SPECIALS = ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")

# microsoft/Phi-3.5-vision-instruct (images are written as <|image_1|> in the text).
PHI3_V_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\\n' -}}{% endif %}"
)

# Llama 3.0 special tokens as CogVLM2 (Llama-3-8B based) ships them; <|reserved_special_token_0|>
# (128002) is its padding and vision placeholder token.
COGVLM2_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
)

TOKENIZER_SPECS.update(
    {
        "qwen2_5_vl": TokenizerSpec(
            leading_specials=(),
            trailing_specials=QWEN2_5_SPECIALS,
            bos=None,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            unk=None,
            image_token="<|image_pad|>",
            chat_template=QWEN2_VL_CHAT_TEMPLATE,  # Qwen2.5-VL-Instruct publishes the same template
        ),
        "qwen3_vl": TokenizerSpec(
            leading_specials=(),
            trailing_specials=QWEN3_SPECIALS,
            bos=None,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            unk=None,
            image_token="<|image_pad|>",
            chat_template=QWEN3_VL_CHAT_TEMPLATE,
        ),
        "llava_next": TokenizerSpec(
            leading_specials=("<unk>", "<s>", "</s>"),
            trailing_specials=("<image>", "<pad>"),
            bos="<s>",
            eos="</s>",
            pad="<pad>",
            unk="<unk>",
            image_token="<image>",
            chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
            padding_side="left",
        ),
        "mllama": TokenizerSpec(
            leading_specials=(),
            trailing_specials=(*LLAMA3_SPECIALS, "<|image|>"),
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            pad="<|finetune_right_pad_id|>",
            unk=None,
            image_token="<|image|>",
            chat_template=MLLAMA_CHAT_TEMPLATE,
        ),
        "idefics3": TokenizerSpec(
            leading_specials=(),
            trailing_specials=(*COGVLM2_SPECIALS, *IDEFICS3_IMAGE_SPECIALS),
            bos="<|begin_of_text|>",
            eos="<end_of_utterance>",
            pad="<|reserved_special_token_0|>",
            unk=None,
            image_token="<image>",
            chat_template=IDEFICS3_CHAT_TEMPLATE,
            padding_side="left",
        ),
        "smolvlm": TokenizerSpec(
            leading_specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),  # SmolLM2's ids 0, 1, 2
            trailing_specials=IDEFICS3_IMAGE_SPECIALS,
            bos=None,  # SmolLM2 adds no BOS; its template writes <|im_start|>
            eos="<end_of_utterance>",
            pad="<|im_end|>",
            unk="<|endoftext|>",
            image_token="<image>",
            chat_template=SMOLVLM_CHAT_TEMPLATE,
            padding_side="left",
        ),
        "gemma3": TokenizerSpec(
            leading_specials=("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"),
            trailing_specials=(
                "<start_of_turn>",
                "<end_of_turn>",
                "<start_of_image>",
                "<end_of_image>",
                "<image_soft_token>",
            ),
            bos="<bos>",
            eos="<eos>",
            pad="<pad>",
            unk="<unk>",
            image_token="<image_soft_token>",
            chat_template=GEMMA3_CHAT_TEMPLATE,
            named_tokens=(
                ("boi_token", "<start_of_image>"),
                ("eoi_token", "<end_of_image>"),
                ("image_token", "<image_soft_token>"),
            ),
        ),
        "mistral3": TokenizerSpec(
            leading_specials=MISTRAL3_SPECIALS,
            trailing_specials=(),
            bos="<s>",
            eos="</s>",
            pad="<pad>",
            unk="<unk>",
            image_token="[IMG]",
            chat_template=MISTRAL3_CHAT_TEMPLATE,
        ),
        "llama": TokenizerSpec(
            leading_specials=(),
            trailing_specials=LLAMA3_SPECIALS,
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            pad="<|finetune_right_pad_id|>",
            unk=None,
            image_token=None,
            chat_template=LLAMA3_CHAT_TEMPLATE,
        ),
        "qwen2": TokenizerSpec(
            leading_specials=(),
            trailing_specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            bos=None,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            unk=None,
            image_token=None,
            chat_template=QWEN2_CHAT_TEMPLATE,
        ),
        "phi3_v": TokenizerSpec(
            leading_specials=("<unk>", "<s>", "</s>"),
            trailing_specials=PHI3_SPECIALS,
            bos="<s>",
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            unk="<unk>",
            image_token=None,  # "<|image_1|>" is text; the processor turns it into negative ids
            chat_template=PHI3_V_CHAT_TEMPLATE,
        ),
        "cogvlm2": TokenizerSpec(
            leading_specials=(),
            trailing_specials=COGVLM2_SPECIALS,
            bos="<|begin_of_text|>",
            eos="<|end_of_text|>",
            pad="<|reserved_special_token_0|>",
            unk=None,
            image_token=None,  # images are pad-token placeholders marked by token_type_ids
            chat_template=LLAMA3_CHAT_TEMPLATE,
        ),
    }
)

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
    specials.update(spec.named_tokens)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_TRAINED[family]),
        model_max_length=TEXT_SIZES["max_position_embeddings"],
        padding_side=spec.padding_side,
        clean_up_tokenization_spaces=False,
        **specials,
    )
    tokenizer.chat_template = spec.chat_template
    return tokenizer


def padded_vocab_size(tokenizer) -> int:
    n = len(tokenizer)
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


# --------------------------------------------------------------------------------------- models


def _init_and_save(model_cls, config, tokenizer, image_processor, processor, out: Path, adjust=None) -> Path:
    """Seeded init in float32, cast to bfloat16 like released checkpoints, save everything.

    ``adjust(model)``, if given, changes weights after the init (still seeded), e.g. to open gates
    that transformers initialises to zero but trained checkpoints have open.
    """
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    if adjust is not None:
        with torch.no_grad():
            adjust(model)
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
    if image_processor is not None:  # None for text-only models
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


# ------------------------------------------------------------------------------- more families
# Vision towers are 128 wide with 2 layers; every text decoder has TEXT_SIZES. Images: the 56 x 56
# gradient_image() becomes a handful of image tokens in each family.

VISION_SIZES = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)


def _qwen_ids(tokenizer, specials) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in specials}


def _mrope_section(head_dim: int, split: tuple[int, int, int]) -> list[int]:
    """Split the head_dim / 2 rotary frequencies in the released models' proportions."""
    unit = head_dim // 2 // sum(split)
    return [part * unit for part in split]


def _write_json(path: Path, data: dict) -> None:
    import json

    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_tiny_qwen2_5_vl(path: str | Path) -> Path:
    """A 4-layer Qwen2.5-VL (window attention + SwiGLU vision tower, 128 wide, 2 blocks) at ``path``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    out = Path(path)
    tokenizer = build_tokenizer("qwen2_5_vl")
    ids = _qwen_ids(tokenizer, QWEN2_5_SPECIALS)
    head_dim = TEXT_SIZES["hidden_size"] // TEXT_SIZES["num_attention_heads"]
    text_config = dict(
        **TEXT_SIZES,
        vocab_size=padded_vocab_size(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-6,
        initializer_range=INITIALIZER_RANGE,
        # [16, 24, 24] for head_dim 128 in Qwen2.5-VL-3B/7B: 2:3:3 again.
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": _mrope_section(head_dim, (2, 3, 3)),
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        use_sliding_window=False,
        tie_word_embeddings=False,
    )
    vision_config = dict(
        depth=2,
        hidden_size=128,
        intermediate_size=256,  # SwiGLU MLP (gate/up/down) like the released tower's
        num_heads=4,
        out_hidden_size=TEXT_SIZES["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],  # released: every 8th block attends globally, the others in windows
        tokens_per_second=2,
        hidden_act="silu",
        in_channels=3,
        initializer_range=INITIALIZER_RANGE,
    )
    config = Qwen2_5_VLConfig(
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
    image_processor = Qwen2VLImageProcessorPil(  # Qwen2.5-VL ships Qwen2-VL's image processor
        min_pixels=4 * factor * factor,
        max_pixels=16 * factor * factor,
        patch_size=vision_config["patch_size"],
        temporal_patch_size=vision_config["temporal_patch_size"],
        merge_size=vision_config["spatial_merge_size"],
    )
    tokenizer._set_processor_class("Qwen2_5_VLProcessor")
    return _init_and_save(Qwen2_5_VLForConditionalGeneration, config, tokenizer, image_processor, None, out)


def make_tiny_qwen3_vl(path: str | Path) -> Path:
    """A 4-layer Qwen3-VL (Qwen3 text with q/k norms, 16 px patches, one DeepStack layer) at ``path``."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    out = Path(path)
    tokenizer = build_tokenizer("qwen3_vl")
    ids = _qwen_ids(tokenizer, QWEN3_SPECIALS)
    head_dim = TEXT_SIZES["hidden_size"] // TEXT_SIZES["num_attention_heads"]
    text_config = dict(
        **TEXT_SIZES,
        head_dim=head_dim,
        vocab_size=padded_vocab_size(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-6,
        initializer_range=INITIALIZER_RANGE,
        # Qwen3-VL: [24, 20, 20] of head_dim 128, interleaved -> 6:5:5.
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": _mrope_section(head_dim, (6, 5, 5)),
            "mrope_interleaved": True,
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    vision_config = dict(
        depth=2,
        hidden_size=128,
        intermediate_size=512,
        num_heads=4,
        out_hidden_size=TEXT_SIZES["hidden_size"],
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,  # an 8 x 8 learned grid, interpolated to the image (released: 48 x 48)
        deepstack_visual_indexes=[0],  # released: 3 of 27 blocks feed the first text layers
        hidden_act="gelu_pytorch_tanh",
        in_channels=3,
        initializer_range=INITIALIZER_RANGE,
    )
    config = Qwen3VLConfig(
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
    image_processor = Qwen2VLImageProcessorPil(  # Qwen3-VL ships Qwen2-VL's (fast) image processor
        min_pixels=4 * factor * factor,  # 56 x 56 -> 64 x 64 -> 4 image tokens
        max_pixels=16 * factor * factor,
        patch_size=vision_config["patch_size"],
        temporal_patch_size=vision_config["temporal_patch_size"],
        merge_size=vision_config["spatial_merge_size"],
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    tokenizer._set_processor_class("Qwen3VLProcessor")
    return _init_and_save(Qwen3VLForConditionalGeneration, config, tokenizer, image_processor, None, out)


def _clip_tower(image_size: int, patch_size: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        **VISION_SIZES,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=128,
        initializer_range=INITIALIZER_RANGE,
    )


def make_tiny_llava_next(path: str | Path) -> Path:
    """A LLaVA-NeXT (v1.6, Mistral text) model: anyres tiles of 28 x 28 on a 2-layer CLIP tower."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        MistralConfig,
    )

    out = Path(path)
    tokenizer = build_tokenizer("llava_next")
    image_size, patch_size = 28, 14
    text_config = MistralConfig(
        **TEXT_SIZES,
        vocab_size=padded_vocab_size(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=INITIALIZER_RANGE,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # The released grid is [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] for 336 tiles.
    pinpoints = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]
    config = LlavaNextConfig(
        text_config=text_config,
        vision_config=_clip_tower(image_size, patch_size),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=False,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        do_center_crop=True,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    _init_and_save(LlavaNextForConditionalGeneration, config, tokenizer, image_processor, processor, out)
    _use_hub_vision_tower_names(out)
    return out


def make_tiny_mllama(path: str | Path) -> Path:
    """A Llama-3.2-Vision shaped model: 4 text layers of which layer 1 cross-attends to the image."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessorPil,
        MllamaProcessor,
    )

    out = Path(path)
    tokenizer = build_tokenizer("mllama")
    image_size, patch_size = 56, 14
    aspect_ratios = [[1, 1], [1, 2], [2, 1]]
    vision_config = dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_global_layers=1,  # released: 32 local + 8 global (gated) layers
        attention_heads=4,
        intermediate_layers_indices=[0],  # released: 5 of 32; features = hidden * (1 + len(...))
        vision_output_dim=128 * 2,
        image_size=image_size,
        patch_size=patch_size,
        max_num_tiles=2,
        supported_aspect_ratios=aspect_ratios,
        initializer_range=INITIALIZER_RANGE,
    )
    text_config = dict(
        **TEXT_SIZES,
        vocab_size=padded_vocab_size(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=INITIALIZER_RANGE,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        cross_attention_layers=[1],  # released 11B: 8 of 40 layers (3, 8, 13, ...)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = MllamaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    image_processor = MllamaImageProcessorPil(
        size={"height": image_size, "width": image_size},
        max_image_tiles=2,
    )
    processor = MllamaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )

    def open_gates(model):
        # transformers initialises the tanh gates of the cross-attention layers and of the tile and
        # position embeddings to 0, which cuts the image off; trained checkpoints have them open.
        for name, param in model.named_parameters():
            if name.endswith("gate") or name.endswith("_gate"):
                param.fill_(1.0)

    return _init_and_save(
        MllamaForConditionalGeneration, config, tokenizer, image_processor, processor, out, adjust=open_gates
    )


def _llama_text(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        **{**TEXT_SIZES, **{k: extra.pop(k) for k in list(extra) if k in TEXT_SIZES}},
        vocab_size=padded_vocab_size(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=INITIALIZER_RANGE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def make_tiny_idefics3(path: str | Path) -> Path:
    """An Idefics3 (Llama 3 text, 2-layer SigLIP tower, pixel shuffle 2): 56 x 56 tiles, 4 tokens each."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    out = Path(path)
    tokenizer = build_tokenizer("idefics3")
    image_size, patch_size, scale_factor = 56, 14, 2
    config = Idefics3Config(
        text_config=_llama_text(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
        vision_config=dict(
            **VISION_SIZES,
            image_size=image_size,
            patch_size=patch_size,
            initializer_range=INITIALIZER_RANGE,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * image_size},  # a 56 x 56 picture -> 2 x 2 tiles + the whole
        max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(image_size // patch_size) ** 2 // scale_factor**2,
        chat_template=tokenizer.chat_template,
    )
    return _init_and_save(
        Idefics3ForConditionalGeneration, config, tokenizer, image_processor, processor, out
    )


def make_tiny_smolvlm(path: str | Path) -> Path:
    """A SmolVLM (Idefics3 architecture, SmolLM2 tokenizer, 16 px patches) at ``path``.

    SmolVLMProcessor owns a video processor and needs ``num2words``, so it cannot be built without
    torchvision; the folder holds what a processor-saved hub checkpoint holds: tokenizer, image
    processor and ``processor_config.json`` (``image_seq_len``).
    """
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil

    out = Path(path)
    tokenizer = build_tokenizer("smolvlm")
    image_size, patch_size, scale_factor = 64, 16, 2
    config = SmolVLMConfig(
        text_config=_llama_text(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
        vision_config=dict(
            **VISION_SIZES,
            image_size=image_size,
            patch_size=patch_size,
            initializer_range=INITIALIZER_RANGE,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": 2 * image_size},
        max_image_size={"longest_edge": image_size},
    )
    tokenizer._set_processor_class("SmolVLMProcessor")
    _init_and_save(SmolVLMForConditionalGeneration, config, tokenizer, image_processor, None, out)
    _write_json(
        out / "processor_config.json",
        {
            "image_seq_len": (image_size // patch_size) ** 2 // scale_factor**2,
            "processor_class": "SmolVLMProcessor",
        },
    )
    return out


def make_tiny_gemma3(path: str | Path) -> Path:
    """A Gemma 3 (sliding + global attention, SigLIP tower, 4 pooled image tokens) at ``path``."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    out = Path(path)
    tokenizer = build_tokenizer("gemma3")
    image_size, patch_size, mm_tokens = 56, 14, 4
    head_dim = TEXT_SIZES["hidden_size"] // TEXT_SIZES["num_attention_heads"]
    text_config = dict(
        **TEXT_SIZES,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        vocab_size=padded_vocab_size(tokenizer),
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        initializer_range=INITIALIZER_RANGE,
        sliding_window=64,
        # Released: 5 sliding-window layers, then 1 global; here 3 then 1.
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Released Gemma 3 ties lm_head to the embedding. With random weights a tied model predicts its
        # own input token everywhere (the embedding, scaled by sqrt(hidden), dominates the residual
        # stream), so the tiny one has its own lm_head.
        tie_word_embeddings=False,
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=dict(
            **VISION_SIZES,
            image_size=image_size,
            patch_size=patch_size,
            vision_use_head=False,
        ),
        mm_tokens_per_image=mm_tokens,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        initializer_range=INITIALIZER_RANGE,
        tie_word_embeddings=False,
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=mm_tokens,
        chat_template=tokenizer.chat_template,
    )

    def init_projection(model):
        # transformers initialises the image projection to zeros, so the image would not matter.
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, INITIALIZER_RANGE)

    _init_and_save(
        Gemma3ForConditionalGeneration,
        config,
        tokenizer,
        image_processor,
        processor,
        out,
        adjust=init_projection,
    )
    _use_hub_vision_tower_names(out)  # google/gemma-3-*-it: vision_tower.vision_model.encoder...
    return out


def make_tiny_mistral3(path: str | Path) -> Path:
    """A Mistral 3 (Mistral-Small-3.1: Pixtral tower, 2 x 2 patch merger, Mistral text) at ``path``.

    PixtralProcessor needs torchvision, so like SmolVLM the folder holds the tokenizer, the image
    processor and ``processor_config.json`` written by hand, as the hub checkpoint has them.
    """
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessorPil,
        PixtralVisionConfig,
    )

    out = Path(path)
    tokenizer = build_tokenizer("mistral3")
    patch_size, merge = 14, 2
    head_dim = TEXT_SIZES["hidden_size"] // TEXT_SIZES["num_attention_heads"]
    text_config = MistralConfig(
        **TEXT_SIZES,
        head_dim=head_dim,
        vocab_size=padded_vocab_size(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=INITIALIZER_RANGE,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000000.0},
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision_config = PixtralVisionConfig(
        **VISION_SIZES,
        head_dim=128 // 4,
        image_size=112,
        patch_size=patch_size,
        initializer_range=INITIALIZER_RANGE,
    )
    config = Mistral3Config(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=merge,
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": 112},
        patch_size={"height": patch_size, "width": patch_size},
    )
    tokenizer._set_processor_class("PixtralProcessor")
    _init_and_save(Mistral3ForConditionalGeneration, config, tokenizer, image_processor, None, out)
    _write_json(
        out / "processor_config.json",
        {
            "image_break_token": "[IMG_BREAK]",
            "image_end_token": "[IMG_END]",
            "image_token": "[IMG]",
            "patch_size": patch_size,
            "processor_class": "PixtralProcessor",
            "spatial_merge_size": merge,
        },
    )
    return out


def _make_causal_lm(family: str, model_cls, config, out: Path) -> Path:
    tokenizer = build_tokenizer(family)
    return _init_and_save(model_cls, config(tokenizer), tokenizer, None, None, out)


def make_tiny_llama(path: str | Path) -> Path:
    """A 4-layer Llama 3 style causal LM (text only) at ``path``."""
    from transformers import LlamaForCausalLM

    def config(tokenizer):
        return _llama_text(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})

    return _make_causal_lm("llama", LlamaForCausalLM, config, Path(path))


def make_tiny_llama_odd_width(path: str | Path) -> Path:
    """A 2-layer Llama whose hidden size (192) group size 128 does not divide, as SmolLM2's 576
    (the text decoder of SmolVLM-256M/500M) does not; its intermediate size (512) it does."""
    from transformers import LlamaForCausalLM

    def config(tokenizer):
        sizes = {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 2}
        return _llama_text(
            tokenizer, **sizes, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}
        )

    return _make_causal_lm("llama", LlamaForCausalLM, config, Path(path))


def make_tiny_qwen2(path: str | Path) -> Path:
    """A 4-layer Qwen2 causal LM (text only, q/k/v biases) at ``path``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def config(tokenizer):
        return Qwen2Config(
            **TEXT_SIZES,
            vocab_size=padded_vocab_size(tokenizer),
            hidden_act="silu",
            rms_norm_eps=1e-6,
            initializer_range=INITIALIZER_RANGE,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            use_sliding_window=False,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )

    return _make_causal_lm("qwen2", Qwen2ForCausalLM, config, Path(path))


# ----------------------------------------------------------------------------- remote-code families
# Phi-3.5-vision and CogVLM2 ship their own modeling code. scripts/remote_code/<family>/ holds small
# stand-ins with the released module names; the builders copy them into the checkpoint and name
# them in config.json's auto_map, so the folder loads only with trust_remote_code=True.

REMOTE_CODE_DIR = Path(__file__).resolve().parent / "remote_code"


def _remote_module(family: str, module: str):
    """Import ``scripts/remote_code/<family>/<module>.py`` as part of a package (relative imports work)."""
    import importlib
    import types

    package = f"_tiny_remote_code_{family}"
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = [str(REMOTE_CODE_DIR / family)]
        sys.modules[package] = pkg
    return importlib.import_module(f"{package}.{module}")


def _copy_remote_code(family: str, out: Path) -> None:
    for source in sorted((REMOTE_CODE_DIR / family).glob("*.py")):
        shutil.copyfile(source, out / source.name)


def _rename_prefix(out: Path, old: str, new: str) -> None:
    """Rename checkpoint tensors ``old*`` to ``new*`` (to the released checkpoint's names)."""
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    tensors = load_file(path)
    renamed = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in tensors.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def make_tiny_phi3_v(path: str | Path) -> Path:
    """A Phi-3.5-vision stand-in (remote code): Phi-3 text with fused projections, CLIP tower, HD crops."""
    out = Path(path)
    tokenizer = build_tokenizer("phi3_v")
    configuration = _remote_module("phi3_v", "configuration_phi3_v")
    modeling = _remote_module("phi3_v", "modeling_phi3_v")
    crop, patch = 56, 14
    tokens_per_side = crop // patch // 2  # 2 x 2 patches merge into one token, as 24 x 24 -> 12 x 12
    config = configuration.Phi3VConfig(
        **{k: v for k, v in TEXT_SIZES.items() if k != "max_position_embeddings"},
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        vocab_size=padded_vocab_size(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=INITIALIZER_RANGE,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        img_processor={
            "image_dim_out": 128,
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": tokens_per_side**2,
            # Not in the release (which hard-codes CLIP ViT-L/14-336): the tiny tower's sizes.
            "image_size": crop,
            "patch_size": patch,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        architectures=["Phi3VForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_phi3_v.Phi3VConfig",
            "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
        },
    )
    tokenizer._set_processor_class("Phi3VProcessor")
    _init_and_save(modeling.Phi3VForCausalLM, config, tokenizer, None, None, out)
    # Released: eos_token_id [32007, 32001, 32000] (<|end|>, <|assistant|>, <|endoftext|>).
    _write_json(
        out / "generation_config.json",
        {
            "_from_model_config": False,
            "bos_token_id": tokenizer.bos_token_id,
            "do_sample": False,
            "eos_token_id": [
                tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|assistant|>", "<|endoftext|>")
            ],
            "pad_token_id": tokenizer.pad_token_id,
        },
    )
    _write_json(
        out / "preprocessor_config.json",
        {
            "auto_map": {
                "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor",
                "AutoProcessor": "processing_phi3_v.Phi3VProcessor",
            },
            "crop_size": crop,
            "do_convert_rgb": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "Phi3VImageProcessor",
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "num_crops": 4,
            "num_img_tokens_per_side": tokens_per_side,
            "processor_class": "Phi3VProcessor",
        },
    )
    _copy_remote_code("phi3_v", out)
    # transformers 5 builds CLIPVisionModel without its vision_model level; the release has it.
    _rename_prefix(
        out,
        "model.vision_embed_tokens.img_processor.",
        "model.vision_embed_tokens.img_processor.vision_model.",
    )
    return out


def make_tiny_cogvlm2(path: str | Path) -> Path:
    """A CogVLM2 stand-in (remote code): Llama-3 text with language/vision experts, EVA2-CLIP tower."""
    out = Path(path)
    tokenizer = build_tokenizer("cogvlm2")
    configuration = _remote_module("cogvlm2", "configuration_cogvlm")
    modeling = _remote_module("cogvlm2", "modeling_cogvlm")
    config = configuration.CogVLMConfig(
        vocab_size=padded_vocab_size(tokenizer),
        hidden_size=TEXT_SIZES["hidden_size"],
        intermediate_size=TEXT_SIZES["intermediate_size"],
        num_hidden_layers=TEXT_SIZES["num_hidden_layers"],
        num_attention_heads=TEXT_SIZES["num_attention_heads"],
        num_multi_query_heads=TEXT_SIZES["num_key_value_heads"],
        max_position_embeddings=8192,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=INITIALIZER_RANGE,
        template_version="chat",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        vision_config={
            "dropout_prob": 0.0,
            "hidden_act": "gelu",
            "in_channels": 3,
            "num_hidden_layers": 2,
            "hidden_size": 128,
            "patch_size": 14,
            "num_heads": 4,
            "intermediate_size": 512,
            "layer_norm_eps": 1e-06,
            "num_positions": (56 // 14) ** 2 + 1,  # the patch grid plus the CLS embedding
            "image_size": 56,  # 4 x 4 patches -> 2 x 2 after the stride-2 conv -> 4 + boi/eoi tokens
        },
        architectures=["CogVLMForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_cogvlm.CogVLMConfig",
            "AutoModelForCausalLM": "modeling_cogvlm.CogVLMForCausalLM",
        },
    )
    _init_and_save(modeling.CogVLMForCausalLM, config, tokenizer, None, None, out)
    # Released: eos_token_id [128001, 128009] (<|end_of_text|>, <|eot_id|>).
    _write_json(
        out / "generation_config.json",
        {
            "_from_model_config": False,
            "bos_token_id": tokenizer.bos_token_id,
            "do_sample": False,
            "eos_token_id": [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")],
            "pad_token_id": tokenizer.pad_token_id,
        },
    )
    _copy_remote_code("cogvlm2", out)
    return out


BUILDERS = {
    "qwen2_vl": make_tiny_qwen2_vl,
    "llava": make_tiny_llava,
    "qwen2_5_vl": make_tiny_qwen2_5_vl,
    "qwen3_vl": make_tiny_qwen3_vl,
    "llava_next": make_tiny_llava_next,
    "mllama": make_tiny_mllama,
    "idefics3": make_tiny_idefics3,
    "smolvlm": make_tiny_smolvlm,
    "gemma3": make_tiny_gemma3,
    "mistral3": make_tiny_mistral3,
    "phi3_v": make_tiny_phi3_v,
    "cogvlm2": make_tiny_cogvlm2,
    "llama": make_tiny_llama,
    "qwen2": make_tiny_qwen2,
}
assert tuple(BUILDERS) == FAMILIES


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
