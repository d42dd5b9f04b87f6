"""``--tasks`` on both commands: lm-eval runs on the written checkpoint and reports into the summary
and ``--json``; what can be refused is refused in one line, exit 2, before a weight is read."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest

from auto_round_mllm.cli.app import lm_eval_settings, main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def checkpoint(tiny_llama, tmp_path_factory):
    from auto_round_mllm.config import QuantScheme
    from tests.conftest import quantize_tiny

    _, folder = quantize_tiny(
        tiny_llama, tmp_path_factory.mktemp("tasks-cli"), scheme=QuantScheme(4, 32), iters=0
    )
    return folder


def hide(monkeypatch, *packages):
    """Make ``packages`` look uninstalled to importlib.util.find_spec (and only them)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name in packages else real(name, *a, **k)
    )


def test_eval_tasks_json(checkpoint, lm_eval_task_dir, capsys):
    args = [
        "eval",
        "--model",
        checkpoint,
        "--tasks",
        lm_eval_task_dir / "tiny_choice.yaml",
        "--limit",
        "4",
        "--json",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == str(checkpoint) and result["samples"] == {"tiny_choice": 4}
    assert 0 <= result["metrics"]["tiny_choice"]["acc"] <= 1 and result["settings"]["limit"] == 4


def test_eval_tasks_table_with_auto_rounds_flags(checkpoint, lm_eval_task_dir, capsys):
    args = [
        "eval", "--model", checkpoint, "--task", lm_eval_task_dir, "--limit", "2", "--eval_bs", "2",
        "--num-fewshot", "1", "--eval_model_dtype", "fp32", "--add_bos_token", "--eval_task_by_task",
    ]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "tiny_choice (2 docs, 1-shot)" in out and "bits_per_byte" in out and "acc_norm" in out


def test_eval_tasks_refuses_the_checks_options(checkpoint, lm_eval_task_dir, capsys):
    args = ["eval", "--model", checkpoint, "--tasks", lm_eval_task_dir, "--baseline", checkpoint]
    code, out, err = run_cli(args, capsys)
    assert code == 2 and "--baseline belongs to eval's checks, which --tasks replaces" in err and out == ""


def test_quantize_then_tasks(tiny_llama, lm_eval_task_dir, tmp_path, capsys):
    args = [
        "--model", tiny_llama, "--iters", "0", "--group_size", "32", "--output_dir", tmp_path,
        "--tasks", lm_eval_task_dir / "tiny_rolling.yaml", "--limit", "2", "--json",
    ]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    summary = json.loads(out)
    scores = summary["lm_eval"]
    assert scores["model"] == summary["outputs"]["auto_round"] and scores["samples"] == {"tiny_rolling": 2}
    assert scores["metrics"]["tiny_rolling"]["bits_per_byte"] > 0
    # the checkpoint's own report does not hold lm-eval's numbers (it is written before they exist)
    folder = summary["outputs"]["auto_round"]
    assert "lm_eval" not in json.loads((tmp_path / folder / "quantization_report.json").read_text())


def test_quantize_refuses_an_unknown_task_before_reading_the_model(tiny_llama, tmp_path, capsys, monkeypatch):
    hide(monkeypatch, "lmms_eval")
    out = tmp_path / "out"
    args = ["--model", tiny_llama, "--iters", "0", "--output_dir", out, "--tasks", "hellaswag,mmmu_vall"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 2 and stdout == ""
    assert "lm-eval knows no task 'mmmu_vall' (did you mean 'mmmu_val'?)" in err
    assert "image-text tasks need lmms-eval, which is not installed" in err
    assert "Traceback" not in err and not out.exists()


def test_a_missing_lm_eval_is_refused_on_both_commands(tiny_llama, checkpoint, tmp_path, capsys, monkeypatch):
    hide(monkeypatch, "lm_eval")
    out = tmp_path / "out"
    code, _, err = run_cli(["--model", tiny_llama, "--output_dir", out, "--tasks", "piqa"], capsys)
    assert (
        code == 2 and "--tasks needs the lm-eval package, which is not installed; pip install lm-eval" in err
    )
    assert not out.exists()
    code, _, err = run_cli(["eval", "--model", checkpoint, "--tasks", "piqa"], capsys)
    assert code == 2 and "--tasks needs the lm-eval package" in err


def test_eval_backend_vllm_stays_refused(tiny_llama, tmp_path, capsys):
    code, _, err = run_cli(
        ["--model", tiny_llama, "--output_dir", tmp_path / "o", "--eval_backend", "vllm"], capsys
    )
    assert code == 2 and "--eval_backend vllm: another evaluation backend is not supported here" in err


def test_lm_eval_options_without_tasks_are_named_in_a_warning(caplog):
    values = {"tasks": None, "limit": 4.0, "eval_bs": None, "add_bos_token": True, "json": True}
    values |= dict.fromkeys(("num_fewshot", "eval_gen_kwargs", "eval_model_dtype"))
    values |= dict.fromkeys(("fewshot_as_multiturn", "apply_chat_template", "eval_task_by_task"), False)
    with caplog.at_level(logging.WARNING, logger="auto_round_mllm"):
        assert lm_eval_settings(values) is None
    assert "--limit, --add_bos_token have no effect without --tasks" in caplog.text
    assert values == {"json": True}  # the lm-eval options were taken out
