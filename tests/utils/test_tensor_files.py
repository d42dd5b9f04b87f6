"""The streaming safetensors writer gives the bytes ``save_file`` gives, one tensor in memory at a time."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from auto_round_mllm.utils.tensor_files import LazyTensor, plan_shards, write_file, write_sharded

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.uint8,
    torch.int8,
    torch.int64,
    torch.int16,
    torch.float64,
    torch.bool,
]


def mixed_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        raw = torch.randn(3, i + 1, generator=generator) * 50
        tensors[f"layer.{9 - i}.{str(dtype)[6:]}"] = raw.to(dtype)
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["a.first"] = torch.arange(7, dtype=torch.float32)
    tensors["strided"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # not contiguous
    return tensors


def test_bytes_match_save_file(tmp_path):
    tensors = mixed_tensors()
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        tmp_path / "ref.safetensors",
        metadata={"format": "pt"},
    )
    write_file(tensors, tmp_path / "ours.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_lazy_tensors_are_loaded_one_at_a_time(tmp_path):
    tensors = mixed_tensors()
    live: list[str] = []
    loaded: list[str] = []

    def lazy(name: str, tensor: torch.Tensor) -> LazyTensor:
        def load() -> torch.Tensor:
            assert not live, f"{live} still held when {name} was loaded"
            loaded.append(name)
            return tensor.clone()

        return LazyTensor(tensor.dtype, tuple(tensor.shape), load)

    write_file({k: lazy(k, v) for k, v in tensors.items()}, tmp_path / "lazy.safetensors")
    assert sorted(loaded) == sorted(tensors)
    back = load_file(tmp_path / "lazy.safetensors")
    for name, tensor in tensors.items():
        assert torch.equal(back[name], tensor), name


def test_lazy_tensor_that_breaks_its_promise_is_refused(tmp_path):
    bad = LazyTensor(torch.float16, (2, 2), lambda: torch.zeros(2, 2))
    try:
        write_file({"x": bad}, tmp_path / "bad.safetensors")
    except RuntimeError as exc:
        assert "promised" in str(exc)
    else:
        raise AssertionError("a dtype mismatch must not be written silently")


def test_shards_cut_in_name_order_with_an_oversized_tensor_alone():
    tensors = {
        "a": torch.zeros(10),  # 40 bytes
        "b": torch.zeros(10),
        "c": torch.zeros(100),  # 400 bytes: larger than the limit
        "d": torch.zeros(5),
    }
    assert plan_shards(tensors, limit=100) == [["a", "b"], ["c"], ["d"]]


def test_sharded_files_round_trip(tmp_path):
    tensors = {f"t{i:02d}": torch.full((64,), float(i)) for i in range(10)}
    names, weight_map, total = write_sharded(tensors, tmp_path, limit=600)
    assert names == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]  # two 256-byte tensors each
    assert total == 10 * 64 * 4
    for name, file in weight_map.items():
        assert torch.equal(load_file(tmp_path / file)[name], tensors[name])
