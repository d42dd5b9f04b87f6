"""Every option string of auto-round's own command is known here: implemented (flags.py),
accepted where it asks for what we do, or refused in one line before any weight is read."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from auto_round_mllm.autoround_flags import FOREIGN_FLAGS, NEGATIVES, check_foreign
from auto_round_mllm.errors import UserError
from auto_round_mllm.flags import FLAGS, job_from_keywords
from tests.e2e.runs import run


def our_option_strings() -> set[str]:
    import typer.main

    from auto_round_mllm.cli.app import app

    command = typer.main.get_command(app)
    return {name for param in command.params for name in (*param.opts, *param.secondary_opts)} | {
        "-h",
        "--help",
    }


READ_PARSER = """
import json
from auto_round.cli.parser import build_quantize_parser
print(json.dumps([name for action in build_quantize_parser()._actions for name in action.option_strings]))
"""


def test_every_option_of_autorounds_command_is_known():
    """auto-round's parser is read in a process of its own: importing auto-round patches
    transformers, which the rest of the suite must not see."""
    if importlib.util.find_spec("auto_round") is None:
        pytest.skip("auto-round (a test extra) is not installed")
    done = subprocess.run([sys.executable, "-c", READ_PARSER], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    theirs = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert len(theirs) > 100  # the parser was really read
    assert sorted(theirs - our_option_strings()) == []


def test_the_two_tables_do_not_share_a_name():
    ours = {s for flag in FLAGS for s in (*flag.spellings, *flag.negative)}
    foreign = {s for flag in FOREIGN_FLAGS for s in flag.spellings} | set(NEGATIVES)
    assert ours & foreign == set()


def refused_value(flag):
    if flag.kind is bool:
        return True
    return {int: 3, float: 0.5}.get(flag.kind, "something-else")


@pytest.mark.parametrize("flag", FOREIGN_FLAGS, ids=lambda f: f.name)
def test_defaults_pass_and_other_values_are_refused_with_the_fix(flag):
    check_foreign({flag.name: None})
    check_foreign({flag.name: flag.default})
    if not flag.fix:  # asks for what we do, whatever its value
        check_foreign({flag.name: refused_value(flag)})
        return
    with pytest.raises(UserError) as info:
        check_foreign({flag.name: refused_value(flag)})
    line = info.value.one_line()
    assert line.startswith(f"--{flag.name}") and flag.asks_for in line and flag.fix in line


def test_values_that_ask_for_our_behaviour_are_accepted():
    check_foreign({"act_bits": 16, "platform": "hf", "algorithm": "auto_round"})
    check_foreign({"mllm": True, "disable_model_free": True})
    with pytest.raises(
        UserError, match=r"--super_group_size 16: double-quantized scales .* is not built yet"
    ):
        check_foreign({"super_group_size": 16})


def test_the_command_refuses_before_anything_is_read(tmp_path, capsys):
    out = tmp_path / "out"
    code = run(["--model", str(tmp_path / "no-model"), "--super_group_size", "16", "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert (
        code == 2 and "--super_group_size 16: double-quantized scales (GGUF K-quants) is not built yet" in err
    )
    assert "Traceback" not in err and not out.exists()
    code = run(["--model", str(tmp_path / "no-model"), "--no-quant_lm_head", "--mllm", "--act_bits", "16"])
    assert code == 2 and "does not exist" in capsys.readouterr().err  # accepted: the model is the problem


def test_autorounds_spellings_of_our_switches():
    job, _ = job_from_keywords("m", {"low_cpu_mem_usage": False, "enable_minmax_tuning": False}, caller="t")
    assert job.memory.streaming is False and job.tuning.enable_minmax_tuning is False
    job, _ = job_from_keywords("m", {"low_cpu_mem_usage": True, "bit": 2, "mllm": True}, caller="t")
    assert job.memory.streaming is True and job.scheme.bits == 2
    job, _ = job_from_keywords(
        "m", {"quant_lm_head": True, "untie_embeddings": True, "nblocks": 2}, caller="t"
    )
    assert job.quant_lm_head and job.untie_embeddings and job.tuning.nblocks == 2
    job, _ = job_from_keywords("m", {"no-quant_lm_head": True}, caller="t")
    assert job.quant_lm_head is False
    job, _ = job_from_keywords("m", {"no-quant_lm_head": False}, caller="t")
    assert job.quant_lm_head is True
