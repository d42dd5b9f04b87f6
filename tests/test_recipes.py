"""auto-round's recipes by name, under every explicit flag, from the command and from Python."""

import pytest

from auto_round_mllm.cli import app
from auto_round_mllm.config import RECIPES
from auto_round_mllm.errors import UserError
from auto_round_mllm.flags import job_from_flags, job_from_keywords


def test_each_recipe_sets_what_auto_round_sets():
    best = job_from_flags(model="m", recipe="best", bits=2).tuning
    assert (best.iters, best.nsamples, best.seqlen, best.batch_size) == (1000, 512, 2048, 8)
    assert best.effective_lr(2) == pytest.approx(2 / 1000)
    light = job_from_flags(model="m", recipe="light").tuning
    assert (light.iters, light.lr) == (50, 5e-3)
    opt = job_from_flags(model="m", recipe="opt_rtn").tuning
    assert (opt.iters, opt.opt_rtn) == (0, True)
    rtn = job_from_flags(model="m", recipe="rtn").tuning
    assert (rtn.iters, rtn.opt_rtn) == (0, False)
    assert job_from_flags(model="m", recipe="default").tuning == job_from_flags(model="m").tuning
    assert set(RECIPES) == {"default", "best", "light", "opt_rtn", "rtn"}


def test_explicit_flags_and_keywords_win_over_the_recipe():
    tuning = job_from_flags(model="m", recipe="best", iters=300, nsamples=64).tuning
    assert (tuning.iters, tuning.nsamples, tuning.seqlen) == (300, 64, 2048)
    job, _ = job_from_keywords("m", {"iters": 20, "recipe": "light"}, caller="quantize()")
    assert (job.tuning.iters, job.tuning.lr) == (20, 5e-3)
    job, _ = job_from_keywords("m", {"recipe": "opt_rtn", "disable_opt_rtn": True}, caller="quantize()")
    assert (job.tuning.iters, job.tuning.opt_rtn) == (0, False)


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(UserError, match="unknown recipe 'fast'") as info:
        job_from_flags(model="m", recipe="fast")
    assert "default, best, light, opt_rtn, rtn" in info.value.fix


def test_the_command_passes_only_the_flags_typed(monkeypatch, tmp_path):
    """A flag left at its default (--iters is 200) must not override the recipe's value."""
    jobs = []
    monkeypatch.setattr(app, "run_job", lambda job, **options: jobs.append(job))
    for argv in (
        ["--model", "m", "--recipe", "light"],
        ["--model", "m", "--recipe", "light", "--iters", "200"],
        ["--model", "m", "--recipe", "opt_rtn", "--disable_opt_rtn"],
    ):
        try:
            app.main(argv)
        except SystemExit as exit:
            assert exit.code in (0, None)
    assert [(job.tuning.iters, job.tuning.opt_rtn) for job in jobs] == [(50, False), (200, False), (0, False)]


def test_the_opt_rtn_recipe_reads_calibration_data_and_beats_plain_rtn(tiny_llama, tmp_path, capsys):
    import json

    from tests.e2e.runs import run

    args = ["--model", str(tiny_llama), "--nsamples", "4", "--seqlen", "32", "--device", "cpu", "--json"]
    reports = {}
    for recipe in ("rtn", "opt_rtn"):
        assert run([*args, "--recipe", recipe, "--output_dir", str(tmp_path / recipe)]) == 0
        reports[recipe] = json.loads(capsys.readouterr().out)
    assert "samples" not in reports["rtn"]["calibration"]  # plain round-to-nearest reads no data
    opt = reports["opt_rtn"]
    assert opt["calibration"]["samples"] == 4
    assert all(b["steps"] == 0 and b["final_loss"] < b["rtn_loss"] for b in opt["blocks"])
