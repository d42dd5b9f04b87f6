"""The memory benchmark's synthetic checkpoint is a real, loadable model (tiny sizes here)."""

from __future__ import annotations

import bench_memory
import torch

from auto_round_mllm.models.loading import load_model


def test_synthetic_llama_loads_whole_and_streamed(tmp_path):
    folder = bench_memory.build_synthetic_llama(
        tmp_path / "synthetic", layers=2, hidden=64, intermediate=128, vocab=2048, heads=4, kv_heads=2
    )
    assert not (tmp_path / "synthetic.partial").exists()
    whole = load_model(str(folder)).model
    streamed = load_model(str(folder), stream_blocks=["model.layers.0", "model.layers.1"])
    assert streamed.streamed is not None
    assert whole.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    data = sum(t.numel() * t.element_size() for t in whole.state_dict().values())
    assert data <= bench_memory.size_on_disk(folder) <= data + 64 * 1024  # the data plus a JSON header
