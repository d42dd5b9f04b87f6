"""Same seed, data and machine: byte-identical output files, for every format at once."""

from tests.e2e.runs import run, snapshot


def test_two_runs_write_identical_bytes(tiny_qwen2_vl, tmp_path, capsys):
    args = [
        "--model", str(tiny_qwen2_vl), "--iters", "3", "--nsamples", "4", "--seqlen", "32", "--batch_size", "2",
        "--asym", "--format", "auto_round,auto_gptq,fake", "--output_dir", str(tmp_path), "--force",
    ]  # fmt: skip
    assert run(args) == 0, capsys.readouterr().err
    first = snapshot(tmp_path)
    assert run(args) == 0, capsys.readouterr().err
    second = snapshot(tmp_path)
    assert any(name.endswith(".safetensors") for name in first)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    assert run([*args, "--seed", "7"]) == 0
    changed = snapshot(tmp_path)
    assert any(changed[name] != first[name] for name in first if name.endswith(".safetensors"))
