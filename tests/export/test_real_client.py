"""A real client reads our checkpoints: the PyPI ``auto-round`` package, through transformers' own
``from_pretrained``, must give the logits of our fake-quantized Qwen2-VL and LLaVA models.

auto-round is a test extra, so this runs in CI. Its CPU loader forces fp16 when asked for fp32; the
exact path is to load in the checkpoint's bf16 and cast the module tree to fp32 afterwards (the
quantized layers dequantize ``fp16 scale x (q - zero)`` on the fly, which is exact in fp32).
"""

import pytest
import torch
from torch import nn

from auto_round_mllm.config import QuantScheme
from tests.conftest import fake_quant_fp32, quantize_tiny


def image_inputs(loaded):
    from make_tiny_models import gradient_image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    prompt = loaded.processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = dict(loaded.processor(text=[prompt], images=[gradient_image(56)], return_tensors="pt"))
    if loaded.model_type == "qwen2_vl":  # transformers 5.23 wants to know which tokens are image tokens
        image_id = loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).long()
    return inputs


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize(
    "scheme", [QuantScheme(4, 128, True), QuantScheme(2, 64, False)], ids=["w4g128", "w2g64-asym"]
)
def test_auto_round_package_loads_our_checkpoints(family, scheme, tiny_models, tmp_path):
    """For LLaVA this is where auto-round's own exports fail (its block names do not match its
    tensor names); ours list both conventions and load exactly."""
    import auto_round  # noqa: F401  (a test extra: its absence is a failure, not a skip)
    from transformers import AutoModelForImageTextToText

    tuned, folder = quantize_tiny(tiny_models[family], tmp_path, scheme=scheme, iters=3)
    reference = fake_quant_fp32(tuned)
    peer, info = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=torch.bfloat16, output_loading_info=True
    )
    nn.Module.float(peer)
    assert not info["missing_keys"] and not info["unexpected_keys"], info

    replaced = {name for name, module in peer.named_modules() if hasattr(module, "qweight")}
    assert len(replaced) == 28
    assert all(".language_model.layers." in name for name in replaced)  # the vision tower stays 16 bit

    ids = torch.randint(0, 1900, (2, 40), generator=torch.Generator().manual_seed(3))
    inputs = image_inputs(tuned.loaded)
    with torch.no_grad():
        for batch in ({"input_ids": ids}, dict(inputs)):
            expected = reference(**batch).logits
            actual = peer(**batch).logits
            torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
