"""Streaming loads what ``from_pretrained`` loads, tensor for tensor, without the streamed blocks."""

from __future__ import annotations

import pytest
import torch

from auto_round_mllm.models.family import family_for_model_type, select_blocks
from auto_round_mllm.models.loading import load_model, read_config
from auto_round_mllm.models.streaming import NotStreamable, load_streaming

FAMILIES = ["tiny_llama", "tiny_llava", "tiny_qwen2_vl", "tiny_gemma3", "tiny_mllama", "tiny_idefics3"]


def stream(folder, model_dtype="auto"):
    config = read_config(folder)
    whole = load_model(str(folder), model_dtype=model_dtype).model
    blocks = select_blocks(whole, family_for_model_type(config["model_type"]), ())
    model, weights = load_streaming(
        folder, config, model_dtype=model_dtype, trust_remote_code=False, streamed_blocks=blocks
    )
    return whole, model, weights, blocks


@pytest.mark.parametrize("fixture", FAMILIES)
@pytest.mark.parametrize("model_dtype", ["auto", "bfloat16"])
def test_streamed_model_equals_from_pretrained(fixture, model_dtype, request):
    whole, model, weights, blocks = stream(request.getfixturevalue(fixture), model_dtype)
    on_meta = {name for name, t in model.state_dict().items() if t.device.type == "meta"}
    assert on_meta and all(name.startswith(tuple(f"{b}." for b in blocks)) for name in on_meta)
    for block in blocks:
        weights.materialize(model, block)
    expected, got = whole.state_dict(), model.state_dict()
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
    for name, buffer in whole.named_buffers():  # computed buffers (rotary inv_freq) too
        assert torch.equal(model.get_buffer(name), buffer), name
    for tied, source in getattr(whole, "all_tied_weights_keys", {}).items():
        assert model.get_parameter(tied) is model.get_parameter(source)


def test_release_gives_the_memory_back_and_keeps_computed_buffers(tiny_qwen2_vl):
    _, model, weights, blocks = stream(tiny_qwen2_vl)
    block = model.get_submodule(blocks[0])
    weights.materialize(model, blocks[0])
    assert all(p.device.type == "cpu" for p in block.parameters())
    weights.release(model, blocks[0])
    assert all(p.device.type == "meta" for p in block.parameters())
    assert weights.materialized == set()
    buffers = dict(model.named_buffers())
    assert buffers and all(b.device.type == "cpu" for b in buffers.values())


def test_pickled_weights_do_not_stream(tiny_llama, tmp_path):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "bin-model"
    shutil.copytree(tiny_llama, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(NotStreamable, match="no safetensors"):
        load_streaming(
            folder, read_config(folder), model_dtype="auto", trust_remote_code=False, streamed_blocks=["x"]
        )
    loaded = load_model(str(folder), stream_blocks=["model.layers.0"])
    assert loaded.streamed is None  # loaded whole instead
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
