"""Every format's files are byte-identical to the committed checksums (see golden_outputs.py):
restructuring the code must not change a single byte of a checkpoint."""

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
def models(tmp_path_factory) -> dict:
    """The tiny models in folders named as golden_outputs.py names them (output paths carry it)."""
    root = tmp_path_factory.mktemp("golden-models")
    families = sorted({family for family, _ in golden.RUNS.values()})
    return {family: golden.build_model(family, root / family) for family in families}


def test_golden_runs_cover_every_format(expected):
    from auto_round_mllm.export import EXPORTERS

    written = {flags[flags.index("--format") + 1] for _, flags in golden.RUNS.values()}
    assert {fmt for spec in written for fmt in spec.split(",")} == set(EXPORTERS.names())
    assert set(expected) == set(golden.RUNS)


@pytest.mark.parametrize("name", list(golden.RUNS))
def test_outputs_match_the_golden_checksums(name, expected, models, tmp_path, capsys):
    family, _ = golden.RUNS[name]
    found = golden.checksums_of_run(name, models[family], tmp_path)
    capsys.readouterr()
    assert sorted(found) == sorted(expected[name])
    assert [file for file in found if found[file] != expected[name][file]] == []
