"""The side-by-side harness's own arithmetic: the floor's parameter count, the data split, the table."""

from __future__ import annotations

import json

import bench_vs_autoround as bench

from auto_round_mllm.models.loading import load_model


def test_block_parameters_counts_every_linear_of_a_block(tiny_llama):
    params, blocks = bench.block_parameters(tiny_llama)
    model = load_model(str(tiny_llama)).model
    block = model.model.layers[0]
    linears = sum(m.weight.numel() for m in block.modules() if m.__class__.__name__ == "Linear")
    assert params == linears
    assert blocks == len(model.model.layers)


def test_held_out_texts_are_never_calibration_texts(tmp_path):
    calib, held = bench.split_texts(tmp_path)
    calib_texts = {json.loads(line)["text"] for line in calib.read_text().splitlines()}
    held_texts = [json.loads(line)["text"] for line in held.read_text().splitlines()]
    assert len(held_texts) == bench.HELD_OUT_TEXTS
    assert calib_texts and not calib_texts & set(held_texts)


def test_table_puts_the_ratios_under_each_case():
    runs = [
        bench.Run("ours", 10.0, 8.0, 1.0, 0.5, "a", kl=0.1, top1=0.9, perplexity=12.0, floor_multiple=1.1),
        bench.Run(
            "auto-round 0.16.1",
            20.0,
            16.0,
            2.0,
            0.6,
            "b",
            kl=0.2,
            top1=0.8,
            perplexity=13.0,
            floor_multiple=2.2,
        ),
        bench.Run(
            "RTN (ours)", 2.0, 0.1, 0.5, None, "c", kl=0.4, top1=0.7, perplexity=15.0, floor_multiple=0.0
        ),
    ]
    runs[0].image_kl, runs[1].image_kl = 0.03, 0.06
    text = bench.table([bench.Case("m", "W4G128", 11.0, 7.0, runs)])
    header = text.splitlines()[0].split("|")
    ratio_row = text.splitlines()[-1].split("|")
    assert len(ratio_row) == len(header)
    assert ratio_row[header.index(" wall time ")].strip() == "**0.50x**"
    assert ratio_row[header.index(" KL vs fp ")].strip() == "0.50x"
    assert ratio_row[header.index(" image-text KL ")].strip() == "0.50x"
    assert text.count("| m | W4G128 |") == 4


def test_a_tool_that_fails_is_a_row_of_its_own_and_no_ratio():
    runs = [
        bench.Run("ours", 10.0, 8.0, 1.0, 0.5, "a", kl=0.1, top1=0.9, perplexity=12.0, floor_multiple=1.1),
        bench.Run("auto-round", 0.0, 0.0, 0.0, None, "", failure="ValueError: unsupported model"),
    ]
    lines = bench.table([bench.Case("m", "W2G64", 11.0, 7.0, runs)]).splitlines()
    assert len(lines[-1].split("|")) == len(lines[0].split("|"))
    assert "failed: ValueError: unsupported model" in lines[-1]
    assert not any("ours / auto-round" in line for line in lines)


def test_seed_table_averages_each_tool_over_the_seeds_and_gives_the_ratio_of_means():
    def case(seed: int, ours_kl: float, theirs_kl: float) -> bench.Case:
        runs = [
            bench.Run("ours", 10.0, 8.0, 1.0, 0.5, "a", kl=ours_kl, perplexity=30.0),
            bench.Run("auto-round 0.16.1", 11.0, 9.0, 1.2, 0.6, "b", kl=theirs_kl, perplexity=40.0),
        ]
        return bench.Case("m", "W2G64", 13.0, 7.0, runs, seed)

    text = bench.seed_table([case(42, 1.2, 1.0), case(43, 0.8, 1.0), case(44, 0.7, 1.0)])
    lines = text.splitlines()
    header = lines[0].split("|")
    ours = next(line for line in lines if "| ours |" in line).split("|")
    ratio = lines[-1].split("|")
    assert all(len(line.split("|")) == len(header) for line in lines)
    assert ours[header.index(" seeds ")].strip() == "3"
    assert ours[header.index(" KL vs fp: mean (min-max) ")].strip() == "0.9 (0.7-1.2)"
    assert ratio[header.index(" KL vs fp: mean (min-max) ")].strip() == "**0.90x**"
    assert ratio[-2].strip() == "42: 1.20x, 43: 0.80x, 44: 0.70x"


def test_ours_flags_follow_the_shared_settings(tmp_path):
    import argparse

    args = argparse.Namespace(
        nsamples=16,
        seqlen=256,
        batch_size=8,
        seed=43,
        ours_flags="--model_dtype bfloat16 --disable_clip_search",
    )
    command = bench.ours_command(tmp_path / "m", 2, 64, 50, tmp_path / "c.jsonl", tmp_path / "o", args)
    assert command[-3:] == ["--model_dtype", "bfloat16", "--disable_clip_search"]
    assert command[command.index("--seed") + 1] == "43"
    args.ours_flags = None
    assert (
        bench.ours_command(tmp_path / "m", 2, 64, 50, tmp_path / "c.jsonl", tmp_path / "o", args)[-1]
        == "--json"
    )
