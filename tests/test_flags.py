"""The one flag table: the command, job_from_flags, the Python API and README all follow it."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from auto_round_mllm.config import QuantJob
from auto_round_mllm.errors import UserError
from auto_round_mllm.flags import BY_NAME, FLAGS, RUN_OPTIONS, job_from_flags, job_from_keywords, keywords

REPO = Path(__file__).resolve().parents[1]

# A value other than the default for every flag that takes one (switches are simply given).
OTHER_VALUES = {
    "model": "elsewhere",
    "scheme": "W2A16G64",
    "bits": 2,
    "group_size": 64,
    "data_type": "int",  # the only data type: it sets the field to the value it already has
    "iters": 3,
    "lr": 0.01,
    "minmax_lr": 0.02,
    "nsamples": 4,
    "seqlen": 32,
    "batch_size": 2,
    "gradient_accumulate_steps": 2,
    "seed": 7,
    "scale_dtype": "bf16",
    "model_dtype": "fp32",
    "fp_layers": "down_proj,re:.*q_proj",
    "to_quant_block_names": "layers\\.0$",
    "dataset": "embedded",
    "template": "llava",
    "extra_data_dir": "/data",
    "max_missing_images": 0.5,
    "device": "cpu",
    "output_dir": "/out",
    "format": "fake,auto_gptq",
    "max_shard_size": "1GB",
    "cache_dir": "/cache",
    "device_map": "cpu,cpu",
    "layer_config": '{"down_proj": {"bits": 8}}',
    "recipe": "light",
    "momentum": 0.9,
    "dynamic_max_gap": 10,
    "nblocks": 2,
    "mixed_sensitivity": "local",
    "schemes": "W2A16,W4A16",
    "avg_bits": 3.0,
    "shared_layers": "o_proj,down_proj",
}
COMPANIONS = {"schemes": {"avg_bits": 3.0}, "avg_bits": {"schemes": "W2A16,W4A16"}}
"""Flags that only make sense together: each is given with its companion."""


def flat(job: QuantJob) -> dict:
    out = {}
    for key, value in dataclasses.asdict(job).items():
        if isinstance(value, dict) and key != "layer_config":  # a field holding a mapping
            out.update({f"{key}.{leaf}": v for leaf, v in value.items()})
        else:
            out[key] = value
    return out


def test_defaults_of_the_table_are_the_jobs_defaults():
    every_default = {flag.name: flag.default for flag in FLAGS if flag.target is not None}
    every_default["model"] = "m"
    assert job_from_flags(**every_default) == QuantJob(model="m") == job_from_flags(model="m")


@pytest.mark.parametrize("flag", [f for f in FLAGS if f.target is not None], ids=lambda f: f.name)
def test_every_flag_reaches_its_field(flag):
    if not flag.is_switch and flag.name not in OTHER_VALUES:
        pytest.fail(f"a new flag: give --{flag.name} a value other than its default in OTHER_VALUES")
    value = True if flag.is_switch else OTHER_VALUES[flag.name]
    base = {"model": "m"}
    if flag.name == "disable_trust_remote_code":  # it only undoes --trust_remote_code's default
        assert job_from_flags(**base, disable_trust_remote_code=True).trust_remote_code is False
        return
    companion = COMPANIONS.get(flag.name, {})
    job = flat(job_from_flags(**{**base, **companion, flag.name: value}))
    default = flat(job_from_flags(**base))
    changed = {key for key in job if job[key] != default[key]}
    if flag.name == "data_type":
        assert job["scheme.data_type"] == "int"
        return
    # a preset is no field of its own: W2A16G64 changes bits and group size; a recipe sets several
    expected = {"scheme.bits", "scheme.group_size"} if flag.target == "scheme.preset" else {flag.target}
    expected |= {BY_NAME[name].target for name in companion}
    if flag.name == "recipe":
        expected = {"tuning.iters", "tuning.lr"}  # light: 50 iters at 5e-3; its other values are defaults
    assert changed == expected, (flag.name, changed)


def test_run_options_are_not_job_fields():
    from auto_round_mllm.evaluate.lm_eval_tasks import OPTION_NAMES

    assert set(RUN_OPTIONS) == {"json", "eval", "debug", "resume", *OPTION_NAMES}


def test_contradictions_are_refused_with_both_names():
    with pytest.raises(UserError, match="--trust_remote_code and --disable_trust_remote_code contradict"):
        job_from_flags(model="m", trust_remote_code=True, disable_trust_remote_code=True)
    with pytest.raises(UserError, match="contradict each other"):
        job_from_keywords("m", {"sym": True, "asym": True}, caller="t")
    # the same value twice is no contradiction
    job, _ = job_from_keywords(
        "m", {"sym": False, "asym": True, "amp": False, "disable_amp": True}, caller="t"
    )
    assert job.scheme.sym is False and job.tuning.amp is False


def test_the_api_accepts_every_flag_spelling_and_autorounds_names():
    table = keywords()
    for flag in FLAGS:
        for spelling in flag.spellings:
            assert table[spelling].flag is flag
    job, run = job_from_keywords(
        "m", {"enable_torch_compile": True, "bs": 2, "iter": 5, "json": True}, caller="t"
    )
    assert job.tuning.torch_compile is True and job.tuning.batch_size == 2 and job.tuning.iters == 5
    assert run == {"json": True}
    job, _ = job_from_keywords(
        "m", {"disable_torch_compile": True, "enable_minmax_tuning": False}, caller="t"
    )
    assert job.tuning.torch_compile is False and job.tuning.enable_minmax_tuning is False
    with pytest.raises(TypeError, match=r"'itres'.*did you mean 'iters'"):
        job_from_keywords("m", {"itres": 3}, caller="t")


def test_the_command_has_exactly_the_tables_options():
    import typer.main

    from auto_round_mllm.autoround_flags import FOREIGN_FLAGS
    from auto_round_mllm.cli.app import app

    command = typer.main.get_command(app)
    options = {param.name: param for param in command.params}
    assert set(options) == {flag.name for flag in FLAGS} | {flag.name for flag in FOREIGN_FLAGS}
    for flag in FLAGS:
        spelled = {f"--{s}" for s in flag.spellings} | {f"--{s.replace('_', '-')}" for s in flag.spellings}
        assert set(options[flag.name].opts) == spelled, flag.name
        negatives = {f"--{s}" for s in flag.negative} | {f"--{s.replace('_', '-')}" for s in flag.negative}
        assert set(options[flag.name].secondary_opts) == negatives, flag.name
        assert options[flag.name].default == flag.default, flag.name
        assert options[flag.name].is_flag == (flag.kind is bool), flag.name


def test_readme_flag_table_is_rendered_from_the_table():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import render_flag_table
    finally:
        sys.path.remove(str(REPO / "scripts"))
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert render_flag_table.rendered(text) == text, (
        "README's flag table is stale: python scripts/render_flag_table.py"
    )
    for flag in FLAGS:
        assert f"| `--{flag.name}`" in text
