"""Resume after a crash: a run killed at any point continues at its first unfinished block and
writes the same bytes as a run that was never interrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from auto_round_mllm.cli.app import main
from auto_round_mllm.pipeline.resume import ResumeState
from tests.e2e.runs import run, snapshot


def flags(model, out, *extra):
    return [
        "--model", str(model), "--iters", "4", "--nsamples", "4", "--seqlen", "32", "--batch_size", "2",
        "--format", "auto_round,fake", "--output_dir", str(out), *extra,
    ]  # fmt: skip


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


@pytest.mark.parametrize("extra", [[], ["--quant_nontext_module"], ["--disable_quanted_input"]])
def test_a_run_that_dies_after_some_blocks_resumes_to_identical_bytes(
    extra, tiny_qwen2_vl, tmp_path, monkeypatch, capsys
):
    # same output folder for both runs (the report names it): the reference is moved aside
    assert run(flags(tiny_qwen2_vl, tmp_path / "resumed", *extra)) == 0
    (tmp_path / "resumed").rename(tmp_path / "reference")
    reference = snapshot(tmp_path / "reference")

    real_commit = ResumeState.commit
    commits = []

    def commit_then_die(self, *args, **kwargs):
        real_commit(self, *args, **kwargs)
        commits.append(args[0])
        if len(commits) == 3:
            raise Crash

    monkeypatch.setattr(ResumeState, "commit", commit_then_die)
    with pytest.raises(Crash):
        main(flags(tiny_qwen2_vl, tmp_path / "resumed", *extra))
    progress_dir = next((tmp_path / "resumed").glob(".*.resume"))
    assert len(json.loads((progress_dir / "progress.json").read_text())["blocks"]) == 3
    assert not [p for p in (tmp_path / "resumed").iterdir() if not p.name.startswith(".")]

    monkeypatch.setattr(ResumeState, "commit", real_commit)
    capsys.readouterr()
    assert run(flags(tiny_qwen2_vl, tmp_path / "resumed", "--resume", *extra)) == 0
    assert "resuming: 3 blocks already done" in capsys.readouterr().err
    assert snapshot(tmp_path / "resumed") == reference
    assert not progress_dir.exists()


def test_sigkill_at_random_moments_then_resume_gives_identical_bytes(tiny_qwen2_vl, tmp_path):
    """The real CLI in a subprocess, killed with SIGKILL at moments drawn at random (seeded) while
    blocks are being tuned and committed; every rerun resumes, the last one finishes."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "auto_round_mllm"]
    out = tmp_path / "killed"
    # eager: compiling would move most of the run's time before the first commit, where no kill lands
    args = flags(tiny_qwen2_vl, out, "--iters", "40", "--disable_torch_compile")
    subprocess.run([*command, *args], check=True, env=env, capture_output=True)
    out.rename(tmp_path / "reference")
    reference = snapshot(tmp_path / "reference")

    rng = random.Random(1234)
    kills, resumed_runs = 0, 0
    for _ in range(6):
        progress = next(out.glob(".*.resume/progress.json"), None) if out.exists() else None
        done_before = len(json.loads(progress.read_text())["blocks"]) if progress else 0
        resumed_runs += done_before > 0
        process = subprocess.Popen(
            [*command, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        # wait until tuning has started (a block was committed, or the first one is under way)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            progress = next(out.glob(".*.resume/progress.json"), None) if out.exists() else None
            if progress is not None or done_before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills >= 2 and resumed_runs >= 1, (kills, resumed_runs)  # killed runs were resumed
    finished = subprocess.run([*command, *args], env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert snapshot(out) == reference


def test_edited_calibration_data_refuses_to_resume_and_force_discards(
    tiny_qwen2_vl, tmp_path, monkeypatch, capsys
):
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(f'{{"text": "sample number {i} about rivers and hills"}}\n' for i in range(8)))
    args = flags(tiny_qwen2_vl, tmp_path / "out", "--dataset", str(data))
    real_commit = ResumeState.commit

    def commit_then_die(self, *a, **k):
        real_commit(self, *a, **k)
        raise Crash

    monkeypatch.setattr(ResumeState, "commit", commit_then_die)
    with pytest.raises(Crash):
        main(args)
    monkeypatch.setattr(ResumeState, "commit", real_commit)
    data.write_text("".join(f'{{"text": "other text {i} about seas and deserts"}}\n' for i in range(8)))
    capsys.readouterr()
    assert run(args) == 2
    assert "unfinished run on other calibration data" in capsys.readouterr().err
    assert run([*args, "--force"]) == 0
    assert "discarding the unfinished run" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob(".*.resume"))
