"""vLLM decides which Linears of a GPTQ checkpoint are packed by two rules (vLLM 0.32
``model_executor/layers/quantization/utils/gptq_utils.py``): a layer is quantized when an entry of
``modules_in_block_to_quantize`` is a *substring* of its name, unless a ``dynamic`` ``-:`` regex
matches it (``re.match``). A CLIP vision tower's ``self_attn.q_proj`` contains the text blocks'
``self_attn.q_proj``, so without a skip rule vLLM built LLaVA's vision tower as GPTQ layers and
failed on its 16-bit weights (``'QKVParallelLinear' object has no attribute 'data'``, seen in
``scripts/check_engines.py``). These tests apply vLLM's rules to the names in our checkpoints."""

from __future__ import annotations

import json
import re

import pytest
from safetensors import safe_open

from auto_round_mllm import api
from auto_round_mllm.config import ExportConfig, QuantJob, QuantScheme, TuningConfig
from auto_round_mllm.models.loading import load_model


def vllm_builds_packed(config: dict, layer: str) -> bool:
    """``get_linear_quant_method``'s decision for an unfused layer name."""
    in_blocks = any(entry in layer for group in config["modules_in_block_to_quantize"] for entry in group)
    skipped = any(
        re.match(pattern.removeprefix("-:"), layer)
        for pattern in config.get("dynamic", {})
        if pattern.startswith("-:")
    )
    return in_blocks and not skipped


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_vllm_builds_exactly_the_packed_layers_as_gptq(family, tiny_models, tmp_path):
    job = QuantJob(
        model=str(tiny_models[family]),
        scheme=QuantScheme(4, 32, True),
        tuning=TuningConfig(iters=0),
        export=ExportConfig(output_dir=str(tmp_path), formats=("auto_gptq",)),
        device="cpu",
    )
    tuned = api.tune(job, load_model(job.model))
    folder = tmp_path / "gptq"
    api.write_formats(tuned, job, {"auto_gptq": folder}, lambda facts: {})
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
    packed = {n.removesuffix(".qweight") for n in names if n.endswith(".qweight")}
    plain = {n.removesuffix(".weight") for n in names if n.endswith("_proj.weight") or ".fc" in n}
    assert packed and plain  # both kinds exist: the vision tower stays in 16 bit
    for layer in packed:
        assert vllm_builds_packed(config, layer), layer
    for layer in plain - packed:
        assert not vllm_builds_packed(config, layer), layer
