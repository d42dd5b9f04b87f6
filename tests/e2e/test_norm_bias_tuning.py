"""--enable_norm_bias_tuning end to end: the norms and biases move, the checkpoint holds the tuned
values (a streamed run's too, read back by our loaders with the tuned model's logits), and a
killed run resumes to the same bytes."""

import pytest
import torch
from safetensors.torch import load_file

from auto_round_mllm.pipeline.resume import ResumeState
from tests.e2e.runs import run, snapshot, tune_export
from tests.e2e.test_group_size_fallback import same_logits


@pytest.fixture
def trained_norms(tiny_qwen2, tmp_path):
    """The tiny Qwen2 with norm weights spread as a trained model's are (a freshly built model's are
    all 1: a range of 0 gives a step of 1e-5, which a bf16 weight of 1 cannot take)."""
    import shutil

    from safetensors.torch import save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen2, model)
    tensors = load_file(model / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for name, value in tensors.items():
        if "norm" in name:
            tensors[name] = (0.5 + torch.rand(value.shape, generator=generator)).to(value.dtype)
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    return model


def test_norms_and_biases_are_tuned_and_written(trained_norms, tmp_path):
    source = load_file(trained_norms / "model.safetensors")
    _, tuned, folder = tune_export(
        trained_norms, tmp_path, "auto_round", iters=6, enable_norm_bias_tuning=True
    )
    names = sorted(tuned.tensors)
    assert (
        "model.layers.0.input_layernorm.weight" in names and "model.layers.3.self_attn.q_proj.bias" in names
    )
    assert not any(name.startswith("model.norm") for name in names)  # outside the blocks
    written = load_file(folder / "model.safetensors")
    moved = 0
    for name, value in tuned.tensors.items():  # a block whose best step was its first keeps all
        original = source[name].float()
        step = max(float(original.max() - original.min()) / 15, 1e-5)
        assert (value.float() - original).abs().max() <= 0.5 * step + 2**-7, name  # plus bf16 rounding
        moved += int(not torch.equal(value.float(), original))
        if name in written:  # a quantized layer's bias is in its packed parts
            assert torch.equal(written[name], value.to(written[name].dtype)), name
    assert moved >= len(tuned.tensors) // 2
    qbias = tuned.qweights["model.layers.3.self_attn.q_proj"].bias
    assert torch.equal(qbias, tuned.tensors["model.layers.3.self_attn.q_proj.bias"].to(qbias.dtype))
    same_logits(tuned, folder, packed_layers=28)


def test_without_the_flag_nothing_but_the_rounding_moves(tiny_qwen2, tmp_path):
    _, tuned, _ = tune_export(tiny_qwen2, tmp_path, "auto_round", iters=2)
    assert tuned.tensors == {}


class Crash(BaseException):
    """A simulated kill."""


def test_a_killed_run_resumes_to_identical_bytes(tiny_qwen2, tmp_path, monkeypatch):
    args = ["--model", str(tiny_qwen2), "--iters", "3", "--nsamples", "4", "--seqlen", "32", "--batch_size", "2",
            "--enable_norm_bias_tuning", "--format", "auto_round,fake", "--device", "cpu"]  # fmt: skip
    assert run([*args, "--output_dir", str(tmp_path / "out")]) == 0
    (tmp_path / "out").rename(tmp_path / "reference")
    real_commit = ResumeState.commit
    commits = []

    def commit_then_die(self, *a, **k):
        real_commit(self, *a, **k)
        commits.append(1)
        if len(commits) == 2:
            raise Crash

    monkeypatch.setattr(ResumeState, "commit", commit_then_die)
    with pytest.raises(Crash):
        from auto_round_mllm.cli.app import main

        main([*args, "--output_dir", str(tmp_path / "out")])
    monkeypatch.setattr(ResumeState, "commit", real_commit)
    for extra in (["--disable_streaming"],):  # the restored tensors go back into an in-memory model too
        assert run([*args, "--output_dir", str(tmp_path / "out"), "--resume", *extra]) == 0
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "reference")


def test_iters_0_is_refused(tiny_qwen2, tmp_path, capsys):
    assert run(["--model", str(tiny_qwen2), "--iters", "0", "--enable_norm_bias_tuning",
                "--output_dir", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "--iters 0 tunes nothing" in capsys.readouterr().err
