"""Where the shipped data folders (``templates/``, ``calibration/``) live.

They sit at the repository root; a wheel maps them into the package as
``auto_round_mllm/_assets/<name>``. One function answers both cases, so no code depends on the
working directory.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def asset_dir(name: str) -> Path:
    for candidate in (PACKAGE_DIR / "_assets" / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"shipped folder {name!r} is missing from the installation ({PACKAGE_DIR})")
