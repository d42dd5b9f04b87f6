"""The real CLI end to end on tiny Qwen2-VL and LLaVA: flags in, checkpoint and summary out."""

import json
import os
import subprocess
import sys

import pytest
import torch

from auto_round_mllm.cli.app import main
from auto_round_mllm.inference.dequantize import load_dequantized

SMALL = ["--iters", "4", "--nsamples", "4", "--seqlen", "32", "--batch_size", "2", "--device", "cpu"]


def run_in_process(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize(
    ("scheme_args", "suffix"),
    [
        (["--bits", "4", "--group_size", "128"], "w4g128"),
        (["--bits", "4", "--group-size", "128", "--asym"], "w4g128-asym"),
        (["--scheme", "W2A16G64"], "w2g64"),
        (["--bits", "2", "--group_size", "64", "--asym"], "w2g64-asym"),
    ],
)
def test_cli_quantizes_and_the_checkpoint_generates(
    family, scheme_args, suffix, tiny_models, tmp_path, capsys
):
    model_dir = tiny_models[family]
    code, out, err = run_in_process(
        ["--model", str(model_dir), *scheme_args, *SMALL, "--output_dir", str(tmp_path), "--json"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    folder = tmp_path / f"{model_dir.name}-{suffix}"
    assert summary["outputs"] == {"auto_round": str(folder)}
    assert summary["quantized_layers"] == 28 and summary["skipped_layers"] == {}
    assert len(summary["blocks"]) == 4
    for block in summary["blocks"]:
        assert block["rtn_loss"] > 0 and block["final_loss"] > 0 and block["quantized_layers"] == 7
    assert summary["calibration"]["samples"] == 4 and summary["calibration"]["seqlen"] == 32
    report = json.loads((folder / "quantization_report.json").read_text())
    assert report["format"] == "auto_round"
    measured = ("seconds", "peak_device_gb")  # run measurements stay out of the checkpoint
    assert report["blocks"] == [{k: v for k, v in b.items() if k not in measured} for b in summary["blocks"]]
    assert "tune_seconds" not in report and "tune_seconds" in summary

    model = load_dequantized(folder)
    ids = torch.tensor([[5, 17, 42, 99, 7, 8]])
    generated = model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 10)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_console_script_runs_rtn_with_summary_table(family, tiny_models, tmp_path):
    """The installed console script, as users type it (RTN keeps it quick)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}
    script = "auto_round_mllm" if family == "llava" else "auto-round-mllm"
    command = [script, "--model", str(tiny_models[family]), "--iters", "0", "--output_dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "auto-round-mllm summary" in done.stdout
    assert "28 quantized, 0 kept in 16 bit" in done.stdout
    assert (tmp_path / f"{tiny_models[family].name}-w4g128" / "model.safetensors").is_file()


def test_python_module_entry_point_reports_errors(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "auto_round_mllm", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_tuning_flag_reaches_the_checkpoint(tiny_llava, tmp_path, capsys):
    args = [
        "--model", str(tiny_llava), *SMALL, "--output-dir", str(tmp_path), "--json",
        "--model_dtype", "fp32", "--disable_amp", "--disable_minmax_tuning", "--not_use_best_mse",
        "--disable_quanted_input", "--scale_dtype", "bf16", "--fp_layers", "o_proj",
        "--gradient_accumulate_steps", "2", "--lr", "0.01", "--minmax_lr", "0.005", "--seed", "7",
        "--max_shard_size", "4MB", "--disable_trust_remote_code",
    ]  # fmt: skip
    code, out, err = run_in_process(args, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["precision"] == "float32"
    assert summary["quantized_layers"] == 24 and len(summary["skipped_layers"]) == 4
    tuning = summary["job"]["tuning"]
    assert (tuning["amp"], tuning["enable_minmax_tuning"], tuning["use_best_mse"]) == (False, False, False)
    assert (tuning["enable_quanted_input"], tuning["scale_dtype"], tuning["seed"]) == (False, "bfloat16", 7)
    folder = tmp_path / f"{tiny_llava.name}-w4g128"
    config = json.loads((folder / "config.json").read_text())
    quant = config["quantization_config"]
    assert config["dtype"] == "float32"
    assert quant["lr"] == 0.01 and quant["minmax_lr"] == 0.005 and quant["gradient_accumulate_steps"] == 2
    assert (
        quant["amp"] is False
        and quant["enable_minmax_tuning"] is False
        and quant["scale_dtype"] == "bfloat16"
    )
    assert quant["extra_config"]["language_model.model.layers.0.self_attn.o_proj"] == {
        "bits": 16,
        "data_type": "float",
    }
    assert len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_image_text_calibration_with_a_user_template(family, tiny_models, tmp_path, capsys):
    """Calibrate on the embedded image-text conversations through a template file of the user's."""
    from auto_round_mllm.data.templates import TEMPLATES

    template = dict(vars(TEMPLATES.get(family)))
    template = {k: v for k, v in template.items() if k not in ("name",)}
    template["replace_tokens"] = [x for pair in template["replace_tokens"] for x in pair]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(template))
    args = ["--model", str(tiny_models[family]), "--dataset", "embedded-images:6", "--template", str(path)]
    code, out, err = run_in_process(
        [*args, *SMALL, "--seqlen", "512", "--output_dir", str(tmp_path), "--json"], capsys
    )
    assert code == 0, err
    calibration = json.loads(out)["calibration"]
    assert calibration["image_samples"] == 4 and calibration["template"] == "mine"
    assert calibration["source"].startswith("embedded")


def test_vision_layers_that_do_not_fit_are_listed_not_skipped_silently(tiny_qwen2_vl, tmp_path, capsys):
    """Qwen2-VL's vision blocks are 128 wide: with group size 256 their attention and fc1 layers
    take group size 128, and the summary says so for each; with --disable_group_size_fallback
    they stay in 16 bit, each with its reason."""
    args = ["--model", str(tiny_qwen2_vl), "--quant_nontext_module", "--group_size", "256", "--iters", "0"]
    code, out, err = run_in_process([*args, "--output_dir", str(tmp_path / "a"), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    smaller = {name: why for name, why in report["own_schemes"].items() if ".visual." in name}
    assert smaller and all(why.startswith("group_size 128: in_features 128") for why in smaller.values())
    assert not report["skipped_layers"] and not any(".language_model." in name for name in smaller)

    strict = [*args, "--disable_group_size_fallback", "--output_dir", str(tmp_path / "b"), "--json"]
    code, out, err = run_in_process(strict, capsys)
    assert code == 0, err
    skipped = json.loads(out)["skipped_layers"]
    assert set(skipped) == set(smaller)
    assert all("not a multiple of group_size 256" in why for why in skipped.values())


def test_several_formats_at_once_and_the_marlin_report(tiny_qwen2_vl, tmp_path, capsys):
    args = [
        "--model",
        str(tiny_qwen2_vl),
        "--scheme",
        "W2A16G64",
        "--iters",
        "0",
        "--format",
        "auto_round,auto_gptq,fake",
    ]
    code, out, err = run_in_process([*args, "--output_dir", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    root = tmp_path / f"{tiny_qwen2_vl.name}-w2g64"
    assert summary["outputs"] == {
        f: str(root / f.replace(":", "-")) for f in ("auto_round", "auto_gptq", "fake")
    }
    for folder in summary["outputs"].values():
        assert (root / folder / "quantization_report.json").is_file()
    assert len(summary["not_marlin"]) == 28 and all("2-bit" in why for why in summary["not_marlin"].values())
    assert any("Marlin" in note for note in summary["notes"])


def test_format_scheme_mismatch_fails_before_loading(tiny_qwen2_vl, tmp_path, capsys):
    code, _, err = run_in_process(
        [
            "--model",
            str(tiny_qwen2_vl),
            "--bits",
            "2",
            "--format",
            "auto_awq",
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "auto_awq stores 4-bit int weights only" in err
    assert not (tmp_path / "o").exists()
