"""`auto-round-mllm eval` and `--eval`: the checks measure what they claim."""

import json
import math

import pytest

from auto_round_mllm.cli.app import main
from auto_round_mllm.evaluate.quality import evaluate
from tests.conftest import quantize_tiny


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def checkpoints(tiny_qwen2_vl, tmp_path_factory):
    from auto_round_mllm.config import QuantScheme

    out = tmp_path_factory.mktemp("eval")
    _, w4 = quantize_tiny(tiny_qwen2_vl, out / "w4", scheme=QuantScheme(4, 128), iters=0)
    return {"w4": w4}


def test_a_model_agrees_with_itself(tiny_qwen2_vl):
    report = evaluate(
        str(tiny_qwen2_vl), baseline=str(tiny_qwen2_vl), nsamples=2, seqlen=128, max_new_tokens=4
    )
    assert report.kl_divergence == pytest.approx(0.0, abs=1e-6) and report.top1_agreement == 1.0
    assert report.perplexity == pytest.approx(report.baseline_perplexity)
    assert report.generation["quantized"] == report.generation["baseline"]


def test_quantized_checkpoint_against_its_model(tiny_qwen2_vl, checkpoints):
    report = evaluate(
        str(checkpoints["w4"]), baseline=str(tiny_qwen2_vl), nsamples=2, seqlen=128, max_new_tokens=4
    )
    assert report.kl_divergence > 0 and 0 < report.top1_agreement < 1
    assert math.isfinite(report.perplexity) and report.image_samples == 2 and report.text_samples == 2
    assert set(report.generation) == {"quantized", "baseline"}


def test_eval_command_json(tiny_qwen2_vl, checkpoints, capsys):
    args = [
        "eval",
        "--model",
        str(checkpoints["w4"]),
        "--baseline",
        str(tiny_qwen2_vl),
        "--nsamples",
        "2",
        "--seqlen",
        "128",
        "--json",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["top1_agreement"] < 1 and report["baseline"] == str(tiny_qwen2_vl)


def test_eval_after_quantization(tiny_qwen2_vl, tmp_path, capsys):
    args = ["--model", str(tiny_qwen2_vl), "--iters", "0", "--eval", "--output_dir", str(tmp_path), "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["eval"]["baseline"] == str(tiny_qwen2_vl) and summary["eval"]["kl_divergence"] > 0
