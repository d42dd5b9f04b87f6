"""Capturing the first text block's inputs on real (tiny) Qwen2-VL and LLaVA models.

Replaying the captured arguments through the block must reproduce exactly what the block computes
inside the full model's forward, for text and for image-text samples, alone and batched.
"""

import copy

import pytest
import torch

from auto_round_mllm.models.loading import load_model
from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.pipeline.capture import capture_block_inputs
from auto_round_mllm.tuning.block_inputs import run_block

CPU = torch.device("cpu")


def image_sample(loaded):
    from make_tiny_models import gradient_image

    processor = loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = dict(processor(text=[prompt], images=[gradient_image(56)], return_tensors="pt"))
    if loaded.model_type == "qwen2_vl":  # transformers 5.23 wants to know which tokens are image tokens
        image_id = loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).long()
    return inputs


def block_outputs_in_full_forward(model, block, samples):
    outputs = []
    handle = block.register_forward_hook(
        lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            for sample in samples:
                model(**sample, use_cache=False)
    finally:
        handle.remove()
    return outputs


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_replayed_block_inputs_reproduce_the_model(family, tiny_models):
    loaded = load_model(str(tiny_models[family]))
    model = loaded.model
    block = model.model.language_model.layers[0]
    text = {"input_ids": torch.randint(0, 1900, (1, 20), generator=torch.Generator().manual_seed(0))}
    samples = [text, image_sample(loaded)]
    expected = block_outputs_in_full_forward(model, block, samples)

    inputs = capture_block_inputs(model, block, samples, device=CPU, cache=CachePlacement(CPU))
    assert len(inputs) == 2
    kwargs = {**inputs.shared, **inputs.per_sample[0]}
    assert "position_embeddings" in kwargs  # rotary (Qwen2-VL: multimodal rope) travels with the block
    assert kwargs.get("use_cache", False) is False and "past_key_values" not in kwargs
    with torch.no_grad():
        for index in range(2):
            hidden, args, kw = inputs.batch([index], CPU)
            torch.testing.assert_close(run_block(block, hidden, args, kw), expected[index], atol=0, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_same_length_samples_batch_like_single_ones(family, tiny_models):
    loaded = load_model(str(tiny_models[family]))
    model = loaded.model
    block = model.model.language_model.layers[0]
    gen = torch.Generator().manual_seed(1)
    samples = [{"input_ids": torch.randint(0, 1900, (1, 16), generator=gen)} for _ in range(3)]
    inputs = capture_block_inputs(model, block, samples, device=CPU, cache=CachePlacement(CPU))
    assert inputs.shape_buckets() == [[0, 1, 2]]
    block = copy.deepcopy(block).float()  # fp32 so batched and single matmuls agree closely
    with torch.no_grad():
        hidden, args, kwargs = inputs.batch([2, 0], CPU)
        batched = run_block(block, hidden.float(), args, kwargs)
        for row, index in enumerate((2, 0)):
            hidden, args, kwargs = inputs.batch([index], CPU)
            single = run_block(block, hidden.float(), args, kwargs)
            torch.testing.assert_close(batched[row], single[0], atol=1e-5, rtol=1e-4)


def test_padded_samples_carry_their_loss_mask(tiny_qwen2_vl):
    loaded = load_model(str(tiny_qwen2_vl))
    model = loaded.model
    block = model.model.language_model.layers[0]
    ids = torch.randint(0, 1900, (1, 12), generator=torch.Generator().manual_seed(2))
    padded = {"input_ids": ids, "attention_mask": torch.tensor([[1] * 9 + [0] * 3])}
    full = {"input_ids": ids, "attention_mask": torch.ones(1, 12, dtype=torch.long)}
    inputs = capture_block_inputs(model, block, [padded, full], device=CPU, cache=CachePlacement(CPU))
    assert inputs.masks[0].tolist() == [[1.0] * 9 + [0.0] * 3]
    assert inputs.masks[1] is None
    # a padded sample's 4D attention mask cannot share a batch with an unpadded sample's None
    assert sorted(inputs.shape_buckets()) == [[0], [1]]
