"""lm-eval on our checkpoints (``evaluate_tasks``): the numbers come from the checkpoint on disk,
read by our loader, and whatever can be refused without weights is refused before they load."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from auto_round_mllm.errors import UserError
from auto_round_mllm.evaluate.lm_eval_tasks import (
    OPTION_NAMES,
    LmEvalSettings,
    evaluate_tasks,
    prepare,
)
from tests.conftest import LM_EVAL_TEXTS


@pytest.fixture(scope="module")
def checkpoints(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """One round-to-nearest tuning of the tiny Llama, written as auto_round and auto_gptq."""
    from auto_round_mllm import api
    from auto_round_mllm.export.outputs import format_dirs
    from auto_round_mllm.flags import job_from_flags
    from auto_round_mllm.models.loading import load_model

    out = tmp_path_factory.mktemp("lm-eval-ckpt")
    job = job_from_flags(
        model=str(tiny_llama), iters=0, nsamples=4, seqlen=32, batch_size=2, group_size=32,
        format="auto_round,auto_gptq", output_dir=str(out), device="cpu",
    )  # fmt: skip
    tuned = api.tune(job, load_model(job.model))
    dirs = format_dirs(out / "ckpt", job.export.formats)
    api.write_formats(tuned, job, dirs, lambda facts: {"test": True})
    return dirs


def bits_per_byte(folder: Path, texts: list[str]) -> float:
    """lm-eval's rolling loglikelihood, recomputed by hand on the checkpoint our loader reads: the
    prefix (BOS) token, then each text as the tokenizer encodes it."""
    from transformers import AutoTokenizer

    from auto_round_mllm.inference.loader import load_quantized

    model = load_quantized(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    total = 0.0
    for text in texts:
        ids = [tokenizer.bos_token_id, *tokenizer(text)["input_ids"]]
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits.float().log_softmax(-1)[0]
        total += sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))
    return -total / sum(len(t.encode()) for t in texts) / math.log(2)


def test_a_quantized_checkpoint_is_scored_through_our_loader(checkpoints, lm_eval_task_dir):
    result = evaluate_tasks(
        checkpoints["auto_round"],
        [str(lm_eval_task_dir / "tiny_choice.yaml"), str(lm_eval_task_dir / "tiny_rolling.yaml")],
        limit=4,
        eval_model_dtype="float32",
        device="cpu",
    )
    assert result.tasks == ["tiny_choice", "tiny_rolling"]
    assert result.samples == {"tiny_choice": 4, "tiny_rolling": 3}  # 6 and 3 documents, limit 4
    choice = result.metrics["tiny_choice"]
    assert 0.0 <= choice["acc"] <= 1.0 and "acc_stderr" in choice and "acc_norm" in choice
    # the number is the checkpoint's: recomputed by hand from the same packed weights
    expected = bits_per_byte(checkpoints["auto_round"], LM_EVAL_TEXTS)
    assert result.metrics["tiny_rolling"]["bits_per_byte"] == pytest.approx(expected, rel=1e-4)
    assert result.lm_eval_version == importlib.metadata.version("lm-eval")
    assert json.loads(json.dumps(result.to_dict()))["settings"]["limit"] == 4
    assert ("tiny_choice", "acc", choice["acc"], choice["acc_stderr"]) in result.rows()


def test_the_score_follows_the_weights(checkpoints, lm_eval_task_dir, tiny_llama):
    """Two packings of the same weights score alike; the full-precision model does not."""
    rolling = str(lm_eval_task_dir / "tiny_rolling.yaml")

    def score(folder):
        return evaluate_tasks(folder, rolling, eval_model_dtype="float32", device="cpu").metrics[
            "tiny_rolling"
        ]["bits_per_byte"]

    packed = score(checkpoints["auto_round"])
    assert score(checkpoints["auto_gptq"]) == pytest.approx(packed, rel=1e-4)
    full = score(tiny_llama)
    assert math.isfinite(full) and abs(full - packed) > 1e-3


def test_a_vision_language_checkpoint_runs_text_tasks(tiny_qwen2_vl, lm_eval_task_dir, tmp_path):
    """lm-eval scores the language model of an image-text checkpoint (its class is no CausalLM)."""
    from auto_round_mllm.config import QuantScheme
    from tests.conftest import quantize_tiny

    _, folder = quantize_tiny(tiny_qwen2_vl, tmp_path, scheme=QuantScheme(4, 32), iters=0)
    result = evaluate_tasks(folder, str(lm_eval_task_dir / "tiny_rolling.yaml"), limit=2, device="cpu")
    assert result.samples == {"tiny_rolling": 2} and result.metrics["tiny_rolling"]["bits_per_byte"] > 0


def test_a_folder_of_tasks_a_fraction_and_task_by_task(checkpoints, lm_eval_task_dir):
    together = evaluate_tasks(checkpoints["auto_round"], str(lm_eval_task_dir), limit=0.5, device="cpu")
    assert together.samples == {"tiny_choice": 3, "tiny_rolling": 2}  # half of 6 and of 3, rounded up
    apart = evaluate_tasks(
        checkpoints["auto_round"],
        str(lm_eval_task_dir),
        limit=0.5,
        device="cpu",
        eval_task_by_task=True,
        eval_bs=2,
    )
    assert apart.samples == together.samples
    for task, metrics in together.metrics.items():
        assert apart.metrics[task] == pytest.approx(metrics, rel=1e-3)


def test_task_by_task_halves_the_batch_size_on_running_out_of_memory(monkeypatch, lm_eval_task_dir):
    """auto-round's retry: a task that runs out of memory runs again at half the batch size."""
    import types

    from auto_round_mllm.evaluate import lm_eval_tasks

    plan = prepare(LmEvalSettings(tasks=str(lm_eval_task_dir / "tiny_choice.yaml"), eval_bs=8))
    tried = []

    def fits_at(largest):
        def fake_evaluate(lm, plan, names):
            tried.append(lm.batch_size_per_gpu)
            if lm.batch_size_per_gpu > largest:
                raise torch.OutOfMemoryError("out of memory")
            return {"results": {}}

        return fake_evaluate

    monkeypatch.setattr(lm_eval_tasks, "evaluate", fits_at(2))
    lm = types.SimpleNamespace()
    assert lm_eval_tasks.evaluate_with_retry(lm, plan, ["tiny_choice"]) == {"results": {}}
    assert tried == [8, 4, 2]
    monkeypatch.setattr(lm_eval_tasks, "evaluate", fits_at(0))
    with pytest.raises(torch.OutOfMemoryError):  # at batch size 1 there is nothing left to halve
        lm_eval_tasks.evaluate_with_retry(lm, plan, ["tiny_choice"])
    assert lm.batch_size_per_gpu == 1


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limit": 0}, "--limit 0 must be positive"),
        ({"eval_bs": 0}, "--eval_bs 0 must be at least 1"),
        ({"num_fewshot": -1}, "--num_fewshot -1 is negative"),
        ({"eval_model_dtype": "int8"}, "--eval_model_dtype 'int8' is not supported"),
        ({"fewshot_as_multiturn": True}, "needs --apply_chat_template"),
        ({"eval_gen_kwargs": "temperature"}, "'temperature' is not key=value"),
    ],
)
def test_bad_settings_are_refused_in_one_line(lm_eval_task_dir, options, message):
    with pytest.raises(UserError, match=message):
        prepare(LmEvalSettings(tasks=str(lm_eval_task_dir / "tiny_choice.yaml"), **options))


def test_task_paths_that_define_nothing_runnable_are_refused(tmp_path):
    with pytest.raises(UserError, match="no such task file or folder"):
        prepare(LmEvalSettings(tasks=str(tmp_path / "missing.yaml")))
    with pytest.raises(UserError, match=r"lm-eval reads task files named \*\.yaml; rename it to task\.yaml"):
        prepare(LmEvalSettings(tasks=str(write(tmp_path, "task.yml", "task: t\n"))))
    empty = write(tmp_path, "empty.yaml", "dataset_path: json\n")
    with pytest.raises(UserError, match="defines no lm-eval task"):
        prepare(LmEvalSettings(tasks=str(empty)))
    images = write(
        tmp_path,
        "pictures.yaml",
        "task: pictures\ndataset_path: json\ndoc_to_image: [image]\ndoc_to_text: q\n",
    )
    with pytest.raises(UserError, match="pictures is an image-text task"):
        prepare(LmEvalSettings(tasks=str(images)))


def test_what_lm_eval_would_refuse_after_quantizing_is_refused_before(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "a"}\n')
    task = "dataset_path: json\ntest_split: test\noutput_type: loglikelihood_rolling\ndoc_to_target: '{{text}}'\n"
    write(
        tmp_path,
        "lost.yaml",
        f"task: lost\n{task}dataset_kwargs:\n  data_files:\n    test: {tmp_path}/gone.jsonl\n",
    )
    with pytest.raises(
        UserError, match=r"lost reads .*gone\.jsonl, which does not exist; fix dataset_kwargs"
    ):
        prepare(LmEvalSettings(tasks=str(tmp_path / "lost.yaml")))
    single = write(
        tmp_path, "single.yaml", f"task: single\n{task}dataset_kwargs:\n  data_files:\n    test: {data}\n"
    )
    group = write(tmp_path, "group.yaml", "group: both\ntask:\n  - single\n")
    with pytest.raises(UserError, match="both and single both run single, which lm-eval refuses"):
        prepare(LmEvalSettings(tasks=[str(group), str(single)]))
    assert prepare(LmEvalSettings(tasks=[str(group)])).names == ("both",)


def test_a_missing_lm_eval_is_refused_before_anything_else(monkeypatch, lm_eval_task_dir):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a)
    )
    with pytest.raises(
        UserError, match="--tasks needs the lm-eval package, which is not installed; pip install"
    ):
        prepare(LmEvalSettings(tasks=str(lm_eval_task_dir)))


def test_an_older_lm_eval_is_refused(monkeypatch, lm_eval_task_dir):
    from auto_round_mllm.evaluate import lm_eval_tasks

    monkeypatch.setattr(lm_eval_tasks, "installed_version", lambda: "0.4.2")
    with pytest.raises(
        UserError, match=r"needs lm-eval 0\.4\.13 or later; 0\.4\.2 is installed; pip install -U"
    ):
        prepare(LmEvalSettings(tasks=str(lm_eval_task_dir)))


def test_the_settings_are_the_flag_tables_run_options():
    from auto_round_mllm.flags import BY_NAME, RUN_OPTIONS

    assert set(OPTION_NAMES) <= set(RUN_OPTIONS)
    for name in OPTION_NAMES:
        assert BY_NAME[name].target is None and BY_NAME[name].default in (None, False)
    assert LmEvalSettings(tasks="a, b").tasks == ("a", "b")
