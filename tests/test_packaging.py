"""The wheel must carry every subpackage and the embedded calibration set."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    source_packages = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "auto_round_mllm").rglob("__init__.py")
    }
    assert source_packages <= set(config["packages"])
    assert config["package-dir"]["auto_round_mllm._assets.calibration"] == "calibration"
    assert config["package-dir"]["auto_round_mllm._assets.templates"] == "templates"
    assert list((ROOT / "templates").glob("*.json"))
    assert (ROOT / "calibration" / "text.jsonl").is_file()
