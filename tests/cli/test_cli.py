"""The CLI in-process: flag spellings, help, listing, and user errors (one line, exit 2, no files)."""

import json

import pytest

from auto_round_mllm.cli.app import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        main([*args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_help_lists_every_flag_with_examples(capsys):
    code, out, _ = run_cli(["-h"], capsys)
    assert code == 0
    for flag in (
        "--model",
        "--scheme",
        "--bits",
        "--group_size",
        "--group-size",
        "--asym",
        "--iters",
        "--lr",
        "--minmax_lr",
        "--nsamples",
        "--seqlen",
        "--batch_size",
        "--gradient_accumulate_steps",
        "--seed",
        "--disable_minmax_tuning",
        "--not_use_best_mse",
        "--disable_quanted_input",
        "--disable_amp",
        "--scale_dtype",
        "--model_dtype",
        "--fp_layers",
        "--to_quant_block_names",
        "--dataset",
        "--device",
        "--output_dir",
        "--format",
        "--force",
        "--json",
        "--debug",
    ):
        assert flag in out, flag
    assert "Examples" in out and "auto-round-mllm --model" in out


def test_list_registries(capsys):
    for what, needle in (
        ("models", "qwen2_vl"),
        ("families", "mllama"),
        ("templates", "phi3_v"),
        ("processors", "cogvlm2"),
        ("datasets", "liuhaotian/llava_conv_58k"),
    ):
        code, out, _ = run_cli(["list", what], capsys)
        assert code == 0 and needle in out, (what, out)
    code, _, err = run_cli(["list", "nothing"], capsys)
    assert code == 2 and "cannot list 'nothing'" in err


def test_list_schemes_and_formats(capsys):
    code, out, _ = run_cli(["list", "schemes"], capsys)
    assert code == 0 and "W2A16G64" in out and "bits=2 group_size=64" in out
    code, out, _ = run_cli(["list", "formats"], capsys)
    assert code == 0 and "auto_round" in out


def test_model_errors(tmp_path, capsys):
    code, _, err = run_cli(["--model", str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["--model", str(tmp_path / "empty")], capsys)
    assert code == 2 and "has no config.json" in err
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    code, _, err = run_cli(["--model", f"local:{tmp_path / 'empty'}"], capsys)
    assert code == 2 and "has no weights" in err


def test_hub_id_without_network_fails_fast(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, _, err = run_cli(
        ["--model", "Qwen/Qwen2-VL-2B-Instruct", "--output_dir", str(tmp_path / "o")], capsys
    )
    assert code == 2
    assert "not in the local Hugging Face cache" in err and "hf download Qwen/Qwen2-VL-2B-Instruct" in err
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_force(tiny_qwen2_vl, tmp_path, capsys):
    target = tmp_path / "out" / f"{tiny_qwen2_vl.name}-w4g128"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    code, _, err = run_cli(["--model", str(tiny_qwen2_vl), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (target / "keep.txt").read_text() == "mine"


def test_malformed_dataset_line_is_named(tiny_qwen2_vl, tmp_path, capsys):
    data = tmp_path / "calib.jsonl"
    data.write_text('{"text": "fine"}\n{"text": broken}\n')
    code, _, err = run_cli(
        ["--model", str(tiny_qwen2_vl), "--dataset", str(data), "--output_dir", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "line 2 is not valid JSON" in err
    data.write_text('{"text": "fine"}\n{"content": "x"}\n')
    code, _, err = run_cli(
        ["--model", str(tiny_qwen2_vl), "--dataset", str(data), "--output_dir", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "line 2 has no string field 'text'" in err


def test_config_without_architectures(tiny_qwen2_vl, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen2_vl, broken)
    config = json.loads((broken / "config.json").read_text())
    del config["architectures"]
    (broken / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(
        ["--model", str(broken), "--output_dir", str(tmp_path / "o"), "--iters", "0"], capsys
    )
    assert code == 2 and "no 'architectures' entry" in err
    assert not (tmp_path / "o").exists()


def test_hub_id_is_read_from_the_local_cache(tiny_qwen2_vl, tmp_path, capsys, monkeypatch):
    import shutil

    hub = tmp_path / "hf" / "hub" / "models--tiny-org--tiny-qwen"
    snapshot = hub / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_qwen2_vl, snapshot)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text(snapshot.name)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    code, out, err = run_cli(
        ["--model", "tiny-org/tiny-qwen", "--iters", "0", "--output_dir", str(tmp_path / "o"), "--json"],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["outputs"]["auto_round"] == str(tmp_path / "o" / "tiny-qwen-w4g128")


def test_no_arguments_shows_help_and_unknown_flags_exit_2(capsys):
    code, out, err = run_cli([], capsys)
    assert code == 2 and "Usage: auto-round-mllm" in out + err and "--group_size" in out + err
    code, _, err = run_cli(["--model", "x", "--bogus"], capsys)
    assert code == 2 and "No such option: --bogus" in err


def test_template_errors_fail_before_loading(tiny_qwen2_vl, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "x", "format_user": "no placeholder"}')
    code, _, err = run_cli(
        ["--model", str(tiny_qwen2_vl), "--template", str(bad), "--output_dir", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "format_user" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        ["--model", str(tiny_qwen2_vl), "--template", "nope", "--output_dir", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "nope" in err
    assert not (tmp_path / "o").exists()


def test_missing_images_above_the_threshold_fail(tiny_qwen2_vl, tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (56, 56), "red").save(images / "have.png")
    records = [
        {
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\\nColour?"},
                {"from": "gpt", "value": "Red."},
            ],
        }
        for name in ("have.png", "gone1.png", "gone2.png")
    ]
    data = tmp_path / "convs.json"
    data.write_text(json.dumps(records))
    args = ["--model", str(tiny_qwen2_vl), "--dataset", str(data), "--extra_data_dir", str(images)]
    code, _, err = run_cli([*args, "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    code, out, err = run_cli(
        [*args, "--max_missing_images", "0.7", "--iters", "1", "--nsamples", "2", "--seqlen", "32",
         "--output_dir", str(tmp_path / "o"), "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    calibration = json.loads(out)["calibration"]
    assert calibration["missing_images"] == 2 and calibration["image_samples"] == 1
