"""--nblocks N: N consecutive blocks are tuned together against their joint full-precision output;
the checkpoint, the report and resume work per block as before."""

import json

import pytest
import torch

from auto_round_mllm.cli.app import main
from auto_round_mllm.pipeline.blockwise import BlockChain, tuning_units
from auto_round_mllm.pipeline.resume import ResumeState
from auto_round_mllm.tuning.signround import SignRoundTuner
from tests.e2e.runs import run, snapshot, tune_export
from tests.e2e.test_group_size_fallback import same_logits


def test_units_cut_the_order_into_runs_of_n():
    order = [f"model.layers.{i}" for i in range(5)]
    assert tuning_units(order, 2) == [order[0:2], order[2:4], order[4:]]
    assert tuning_units(order, 1) == [[name] for name in order]


def test_two_blocks_are_tuned_against_the_output_of_the_second(tiny_llama, tmp_path, monkeypatch):
    """The unit of blocks 0-1 starts from block 0's inputs and is tuned against the full-precision
    output of block 1: the same tensors the one-block run gives block 0 and block 1."""
    seen = []
    real = SignRoundTuner.tune_block

    def spy(self, block, wrapped, ctx):
        seen.append(
            (block, sorted(wrapped), [t.clone() for t in ctx.targets], [h.clone() for h in ctx.inputs.hidden])
        )
        return real(self, block, wrapped, ctx)

    monkeypatch.setattr(SignRoundTuner, "tune_block", spy)
    tune_export(tiny_llama, tmp_path / "one", "auto_round")
    single = list(seen)
    seen.clear()
    _, tuned, folder = tune_export(tiny_llama, tmp_path / "two", "auto_round", nblocks=2)
    assert len(single) == 4 and len(seen) == 2  # 4 blocks, 2 units
    chain, names, targets, inputs = seen[0]
    assert isinstance(chain, BlockChain) and len(list(chain.children())) == 2
    assert names[0].startswith("0.") and names[-1].startswith("1.") and len(names) == 14
    for ours, theirs in zip(inputs, single[0][3], strict=True):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(targets, single[1][2], strict=True):
        assert torch.equal(ours, theirs)
    assert [b.name for b in tuned.blocks] == [f"model.layers.{i}" for i in range(4)]
    assert tuned.blocks[0].final_loss == tuned.blocks[1].final_loss  # one unit, one loss
    same_logits(tuned, folder, packed_layers=28)


def test_a_larger_unit_changes_the_result(tiny_llama, tmp_path):
    _, one, _ = tune_export(tiny_llama, tmp_path / "one", "auto_round")
    _, two, _ = tune_export(tiny_llama, tmp_path / "two", "auto_round", nblocks=2)
    name = "model.layers.1.mlp.down_proj"
    assert not torch.equal(one.qweights[name].codes, two.qweights[name].codes)


class Crash(BaseException):
    """Stands for the process dying."""


def test_a_unit_commits_whole_and_a_killed_run_resumes_to_identical_bytes(tiny_llama, tmp_path, monkeypatch):
    args = ["--model", str(tiny_llama), "--iters", "3", "--nsamples", "4", "--seqlen", "32", "--batch_size", "2",
            "--nblocks", "2", "--format", "auto_round", "--device", "cpu"]  # fmt: skip
    assert run([*args, "--output_dir", str(tmp_path / "out")]) == 0
    (tmp_path / "out").rename(tmp_path / "reference")
    real_commit = ResumeState.commit

    def commit_then_die(self, blocks, streams, tensors=None):
        real_commit(self, blocks, streams, tensors)
        raise Crash

    monkeypatch.setattr(ResumeState, "commit", commit_then_die)
    with pytest.raises(Crash):
        main([*args, "--output_dir", str(tmp_path / "out")])
    progress = json.loads(next((tmp_path / "out").glob(".*.resume/progress.json")).read_text())
    assert [entry["block"] for entry in progress["blocks"]] == ["model.layers.0", "model.layers.1"]
    assert progress["streams_after"] == "model.layers.1"
    monkeypatch.setattr(ResumeState, "commit", real_commit)
    assert run([*args, "--output_dir", str(tmp_path / "out"), "--resume"]) == 0
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "reference")
