"""Build (once) an isolated virtual environment holding Intel's reference auto-round.

The comparison benchmark runs the reference quantizer in a separate interpreter so that nothing of
this project (``auto_round_mllm``, its pinned extras, or whatever else the project environment has
picked up) can leak into the reference numbers, and so the reference's own dependency pins cannot
disturb the project environment. The venv is created without system site packages for the same
reason.

torch is pinned to the exact version the project uses (the CPU wheel comes from the machine's pip
``find-links``); an unpinned ``torch`` would let pip pull a multi-gigabyte CUDA build and would make
timings incomparable. A marker file is written only after every install succeeded, so an
interrupted or failed build is redone on the next call instead of being silently reused.

    python scripts/bench_support/autoround_venv.py --root /tmp/arbench
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

TORCH_VERSION = "2.13.0"
TRANSFORMERS_VERSION = "5.23.0"
DEFAULT_AUTOROUND_VERSION = "0.16.1"
MARKER_NAME = ".autoround-venv-complete.json"


def _requirements(version: str) -> list[str]:
    """The packages installed into the venv.

    auto-round's own metadata asks for accelerate, datasets, numpy, py-cpuinfo, torch, tqdm,
    transformers, pydantic and requests; pip resolves those, but torch and transformers are pinned
    here so the reference runs on the same stack as the project. pillow is for vision-language
    models: auto-round's MLLM path needs their (PIL) image processor.
    """
    return [
        f"torch=={TORCH_VERSION}",
        f"transformers=={TRANSFORMERS_VERSION}",
        f"auto-round=={version}",
        "accelerate",
        "safetensors",
        "datasets",
        "pillow",
    ]


def _run(cmd: list[str]) -> None:
    """Run a build step, echoing it to stderr so a slow install is visibly in progress."""
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def ensure_autoround_venv(root: Path, version: str = DEFAULT_AUTOROUND_VERSION) -> Path:
    """Create ``root/autoround-<version>`` if needed and return its python executable.

    A venv whose marker records the same requirement list is reused as is; anything else (no
    marker, a different list, a missing interpreter) is rebuilt from scratch, because a half-done
    pip install can leave a venv that imports but has the wrong versions.
    """
    venv_dir = Path(root) / f"autoround-{version}"
    python = venv_dir / "bin" / "python"
    marker = venv_dir / MARKER_NAME
    requirements = _requirements(version)

    if marker.is_file() and python.exists():
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict) and recorded.get("requirements") == requirements:
            return python

    if venv_dir.exists():
        shutil.rmtree(venv_dir)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(system_site_packages=False, clear=True, with_pip=True, symlinks=True).create(venv_dir)
    _run([str(python), "-m", "pip", "install", "-q", *requirements])
    # Import check: fails here (and leaves no marker) if auto-round needs something pip did not bring.
    _run(
        [
            str(python),
            "-c",
            "import torch, transformers, safetensors, auto_round; from auto_round import AutoRound; "
            "print(auto_round.__version__, torch.__version__, transformers.__version__)",
        ]
    )
    marker.write_text(json.dumps({"requirements": requirements}, indent=1) + "\n")
    return python


def main(argv: list[str] | None = None) -> int:
    """Build the venv and print its python path (the only stdout line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder that holds the venv")
    parser.add_argument("--version", default=DEFAULT_AUTOROUND_VERSION, help="auto-round version")
    args = parser.parse_args(argv)
    print(ensure_autoround_venv(args.root, args.version))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
