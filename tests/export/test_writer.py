import json

import pytest
import torch
from safetensors.torch import load_file

from auto_round_mllm.errors import OutputExists, UserError
from auto_round_mllm.export.writer import atomic_outputs, check_output_dir, parse_size, write_safetensors


def test_shards_and_index(tmp_path):
    tensors = {f"layer.{i}.weight": torch.full((256,), float(i)) for i in range(5)}  # 1 KiB each
    names = write_safetensors(tensors, tmp_path, max_shard_size=2100)
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 1024
    loaded = {}
    for name in names:
        loaded.update(load_file(str(tmp_path / name)))
    assert set(loaded) == set(tensors) == set(index["weight_map"])
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_single_shard_has_no_index(tmp_path):
    assert write_safetensors({"a": torch.zeros(2)}, tmp_path, max_shard_size="5GB") == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_sizes():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size(100) == 100
    with pytest.raises(UserError):
        parse_size("lots")


def test_atomic_output_moves_into_place_or_leaves_nothing(tmp_path):
    final = tmp_path / "out" / "ckpt"
    with atomic_outputs([final], force=False) as (staging,):
        (staging / "f.txt").write_text("ok")
        assert not final.exists()
    assert (final / "f.txt").read_text() == "ok"

    with (
        pytest.raises(RuntimeError),
        atomic_outputs([tmp_path / "out" / "failed"], force=False) as (staging,),
    ):
        (staging / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ckpt"]


def test_force_replaces_existing(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(OutputExists):
        check_output_dir(final, force=False)
    check_output_dir(final, force=True)
    with atomic_outputs([final], force=True) as (staging,):
        (staging / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_finished_write_clears_what_killed_runs_left_behind(tmp_path):
    final = tmp_path / "out" / "model-w4g128"
    killed = [tmp_path / "out" / ".model-w4g128.tmp-abc123", tmp_path / "out" / ".model-w4g128.old-4242"]
    for folder in killed:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    unrelated = tmp_path / "out" / ".other-w4g128.tmp-xyz"
    unrelated.mkdir()
    with atomic_outputs([final], force=False) as (staging,):
        (staging / "config.json").write_text("{}")
    assert (final / "config.json").is_file()
    assert not any(folder.exists() for folder in killed)
    assert unrelated.is_dir()  # another output's run may still be writing
