"""Every format's files are byte-identical to the committed checksums (see golden_outputs.py):
restructuring the code must not change a single byte of a checkpoint. The same seed, data and
machine give the same bytes within one process too, and another seed gives other weights."""

from __future__ import annotations

import json

import pytest

from tests.e2e import golden_outputs as golden


@pytest.fixture(scope="module")
def expected() -> dict:
    data = json.loads(golden.GOLDEN.read_text(encoding="utf-8"))
    here = golden.platform_fingerprint()
    if data["platform"] != here:
        pytest.skip(
            f"the golden checksums were written on {data['platform']}, this is {here}; floating-point "
            "results differ between platforms (run tests/e2e/golden_outputs.py here to compare by hand)"
        )
    return data["runs"]


@pytest.fixture(scope="module")
def models(request) -> dict:
    """The suite's tiny models, by the family names golden_outputs.py uses."""
    return {
        family: request.getfixturevalue(f"tiny_{family}") for family in {f for f, _ in golden.RUNS.values()}
    }


def test_golden_runs_cover_every_format():
    from auto_round_mllm.export import EXPORTERS

    written = {flags[flags.index("--format") + 1] for _, flags in golden.RUNS.values()}
    assert {fmt for spec in written for fmt in spec.split(",")} == set(EXPORTERS.names())


@pytest.fixture(scope="module")
def first_runs() -> dict:
    return {}


@pytest.mark.parametrize("name", list(golden.RUNS))
def test_outputs_match_the_golden_checksums(name, expected, models, first_runs, tmp_path, capsys):
    family, _ = golden.RUNS[name]
    found = golden.checksums_of_run(name, models[family], tmp_path)
    capsys.readouterr()
    first_runs[name] = found
    assert sorted(found) == sorted(expected[name])
    assert [file for file in found if found[file] != expected[name][file]] == []


def test_a_second_run_in_the_same_process_writes_the_same_bytes_and_another_seed_does_not(
    models, first_runs, tmp_path, capsys
):
    name = "qwen2_vl-w4g32-sym-all-formats"
    first = first_runs.get(name) or golden.checksums_of_run(name, models["qwen2_vl"], tmp_path / "first")
    again = golden.checksums_of_run(name, models["qwen2_vl"], tmp_path / "again")
    assert any(file.endswith(".safetensors") for file in first)
    assert again == first
    reseeded = golden.checksums_of_run(name, models["qwen2_vl"], tmp_path / "seed7", "--seed", "7")
    capsys.readouterr()
    assert reseeded.keys() == first.keys()
    assert any(reseeded[file] != first[file] for file in first if file.endswith(".safetensors"))
