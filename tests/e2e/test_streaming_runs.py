"""Streaming (the default) writes the same bytes as a whole-model run, with one block in memory.

The model's decoder blocks stay on the meta device; each is read from the safetensors shards when
reached, tuned, committed and dropped, and the export reads every block's tensors back one at a
time. A spy on the streamed weights checks that no two streamed blocks are ever in memory at once.
"""

from __future__ import annotations

import pytest

from auto_round_mllm.models import loading
from auto_round_mllm.models.streaming import StreamedWeights
from tests.e2e.runs import comparable, run

COMMON = ["--iters", "2", "--nsamples", "3", "--seqlen", "24", "--batch_size", "2"]

CASES = {
    # several formats at once, asym, and small shards: lazy tensors across shard boundaries
    "qwen2-vl-formats": (
        "tiny_qwen2_vl",
        ["--asym", "--format", "auto_round,gptq_v2,fake", "--max_shard_size", "300KB"],
    ),
    # tuning starts at block 1: block 0 stays in memory for the capture forward, 1-3 stream
    "llava-later-blocks": (
        "tiny_llava",
        ["--to_quant_block_names", r"language_model\.layers\.[12]$", "--format", "auto_gptq"],
    ),
    # the vision tower is tuned in memory first, then the text blocks stream
    "llava-vision-too": ("tiny_llava", ["--quant_nontext_module", "--format", "auto_round"]),
    "mllama-cross-attention": (
        "tiny_mllama",
        ["--bits", "2", "--group_size", "32", "--format", "auto_round"],
    ),
    "gemma3-bf16": ("tiny_gemma3", ["--model_dtype", "bf16", "--format", "fake"]),
    # tuned norms and biases: a streamed block's are written from the tuning, not the source
    "qwen2-norm-bias": ("tiny_qwen2", ["--enable_norm_bias_tuning", "--format", "auto_round,fake"]),
}


class Crash(BaseException):
    """A simulated kill (not an Exception, so nothing on the way catches it)."""


@pytest.fixture
def streaming_spy(monkeypatch):
    """Records every StreamedWeights the loader hands out, and the most blocks ever materialized."""
    seen: list[StreamedWeights] = []
    peak = {"blocks": 0}
    real_load, real_materialize = loading.load_streaming, StreamedWeights.materialize

    def load(*args, **kwargs):
        model, weights = real_load(*args, **kwargs)
        seen.append(weights)
        return model, weights

    def materialize(self, model, block):
        real_materialize(self, model, block)
        peak["blocks"] = max(peak["blocks"], len(self.materialized))

    monkeypatch.setattr(loading, "load_streaming", load)
    monkeypatch.setattr(StreamedWeights, "materialize", materialize)
    return seen, peak


@pytest.mark.parametrize("case", list(CASES))
def test_streaming_writes_the_bytes_of_a_whole_model_run(case, request, tmp_path, capsys, streaming_spy):
    fixture, extra = CASES[case]
    model = request.getfixturevalue(fixture)
    base = ["--model", str(model), *COMMON, *extra]
    assert run([*base, "--output_dir", str(tmp_path / "whole"), "--disable_streaming"]) == 0, (
        capsys.readouterr().err
    )
    seen, peak = streaming_spy
    assert seen == []
    assert run([*base, "--output_dir", str(tmp_path / "streamed")]) == 0, capsys.readouterr().err
    assert len(seen) == 1 and seen[0].blocks, "the default run did not stream"
    assert peak["blocks"] == 1
    assert seen[0].materialized == set(), "a streamed block was left in memory"
    whole, streamed = comparable(tmp_path / "whole"), comparable(tmp_path / "streamed")
    assert any(name.endswith(".safetensors") for name in whole)
    assert sorted(whole) == sorted(streamed)
    assert [name for name in whole if whole[name] != streamed[name]] == []
    assert not any(".packing" in name or ".resume" in name for name in streamed)


def test_a_run_killed_while_streaming_resumes_without_it(tiny_qwen2_vl, tmp_path, capsys, monkeypatch):
    """Streaming is not part of the job: progress made streaming is continued by a whole-model run."""
    from auto_round_mllm.pipeline import resume as resume_module

    args = ["--model", str(tiny_qwen2_vl), *COMMON, "--format", "auto_round"]
    assert run([*args, "--output_dir", str(tmp_path / "reference")]) == 0, capsys.readouterr().err

    real_commit = resume_module.ResumeState.commit
    commits = {"n": 0}

    def crash_after_two(self, *a, **k):
        real_commit(self, *a, **k)
        commits["n"] += 1
        if commits["n"] == 2:
            raise Crash

    monkeypatch.setattr(resume_module.ResumeState, "commit", crash_after_two)
    with pytest.raises(Crash):
        run([*args, "--output_dir", str(tmp_path / "out")])
    monkeypatch.setattr(resume_module.ResumeState, "commit", real_commit)
    assert run([*args, "--output_dir", str(tmp_path / "out"), "--resume", "--disable_streaming"]) == 0
    assert comparable(tmp_path / "out") == comparable(tmp_path / "reference")
