"""--low_gpu_mem_usage, --cache_dir and --device_map change where things live, never the result."""

from __future__ import annotations

import pytest

from auto_round_mllm.pipeline import cache as cache_module
from auto_round_mllm.pipeline.placement import BlockPlacement
from tests.e2e.runs import comparable, run

COMMON = [
    "--iters",
    "2",
    "--nsamples",
    "3",
    "--seqlen",
    "24",
    "--batch_size",
    "2",
    "--format",
    "auto_round,fake",
]


@pytest.fixture(scope="module")
def reference(tiny_qwen2_vl, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert run(["--model", str(tiny_qwen2_vl), *COMMON, "--output_dir", str(out)]) == 0
    return comparable(out)


def test_low_gpu_mem_usage(tiny_qwen2_vl, tmp_path, reference):
    assert (
        run(["--model", str(tiny_qwen2_vl), *COMMON, "--output_dir", str(tmp_path), "--low_gpu_mem_usage"])
        == 0
    )
    assert comparable(tmp_path) == reference


def test_cache_dir_spills_activations_to_mapped_files(tiny_qwen2_vl, tmp_path, reference, monkeypatch):
    mapped = []
    real = cache_module._map_to_file

    def spy(tensor, folder):
        out = real(tensor, folder)
        mapped.append(out)
        return out

    monkeypatch.setattr(cache_module, "_map_to_file", spy)
    spill = tmp_path / "spill"
    out = tmp_path / "out"
    args = ["--model", str(tiny_qwen2_vl), *COMMON, "--output_dir", str(out), "--cache_dir", str(spill)]
    assert run(args) == 0
    assert comparable(out) == reference
    assert len(mapped) >= 3 * 4  # every sample's hidden states, block after block
    assert list(spill.iterdir()) == []  # files are unlinked once mapped


def test_device_map_of_cpu_devices_hooks_every_block(tiny_qwen2_vl, tmp_path, reference, monkeypatch):
    plans = []
    real = BlockPlacement.attach

    def spy(self, block):
        plans.append(real(self, block))
        return plans[-1]

    monkeypatch.setattr(BlockPlacement, "attach", spy)
    assert (
        run(
            ["--model", str(tiny_qwen2_vl), *COMMON, "--output_dir", str(tmp_path), "--device_map", "cpu,cpu"]
        )
        == 0
    )
    assert comparable(tmp_path) == reference
    assert len(plans) == 4 and all({"self_attn", "mlp"} <= set(plan) for plan in plans)
