"""Device selection and mixed precision.

The tuning loop runs on one compute device; this module turns the user's ``--device`` value into a
``torch.device`` and decides the autocast dtype: the model dtype on accelerators, bf16 on CPUs that
have native bf16 instructions (about twice the fp32 matmul rate there), fp32 otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from auto_round_mllm.errors import UserError

_DEVICE_RE = re.compile(r"^(cpu|cuda|xpu|hpu)(:\d+)?$")


def _hpu_available() -> bool:
    try:
        import habana_frameworks.torch.core  # noqa: F401  (registers the hpu device)
    except ImportError:
        return False
    return bool(getattr(torch, "hpu", None) and torch.hpu.is_available())


def _xpu_available() -> bool:
    return bool(getattr(torch, "xpu", None) and torch.xpu.is_available())


def available_accelerator() -> str | None:
    """The first accelerator type present on this machine, if any."""
    if torch.cuda.is_available():
        return "cuda"
    if _xpu_available():
        return "xpu"
    if _hpu_available():
        return "hpu"
    return None


def resolve_device(spec: str | None) -> torch.device:
    """Map ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``xpu``, ``hpu`` or a bare index to a device."""
    value = (spec or "auto").strip().lower()
    if value == "auto":
        return torch.device(available_accelerator() or "cpu")
    if value.isdigit():  # auto-round's habit: --device 0 means the first accelerator
        kind = available_accelerator()
        if kind is None:
            raise UserError(
                f"--device {spec} asks for an accelerator but none is available", fix="use --device cpu"
            )
        value = f"{kind}:{value}"
    if not _DEVICE_RE.match(value):
        raise UserError(f"--device {spec!r} is not understood", fix="use auto, cpu, cuda, cuda:N, xpu or hpu")
    kind, _, index = value.partition(":")
    checks = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "xpu": _xpu_available,
        "hpu": _hpu_available,
    }
    if not checks[kind]():
        raise UserError(f"--device {spec} is not available on this machine", fix="use --device auto or cpu")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UserError(
            f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible",
            fix=f"use an index below {torch.cuda.device_count()}",
        )
    return torch.device(value)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX, where bf16 matmuls beat fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Precision:
    """How the tuning forward runs: ``autocast`` is None when it runs in plain fp32/model dtype."""

    device: torch.device
    autocast: torch.dtype | None

    @property
    def label(self) -> str:
        return str(self.autocast).replace("torch.", "") if self.autocast else "float32"

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        if self.autocast is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.autocast):
            yield


def choose_precision(device: torch.device, model_dtype: torch.dtype, *, amp: bool) -> Precision:
    """auto-round's rule, made explicit: autocast in the model dtype on accelerators, bf16 on a
    CPU with native bf16, and no autocast when ``--disable_amp`` is given or nothing is faster."""
    if not amp:
        return Precision(device, None)
    if device.type == "cpu":
        return Precision(device, torch.bfloat16 if cpu_has_native_bf16() else None)
    if model_dtype in (torch.float16, torch.bfloat16):
        return Precision(device, model_dtype)
    return Precision(device, None)


def supports_bf16(device: torch.device) -> bool:
    """Whether bf16 is a fast compute dtype on ``device`` (native instructions or tensor cores)."""
    if device.type == "cpu":
        return cpu_has_native_bf16()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type in ("xpu", "hpu")


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a canonical name from :mod:`auto_round_mllm.config` (float16, ...)."""
    return DTYPES[name]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "xpu":
        torch.xpu.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "xpu":
        torch.xpu.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak accelerator memory since the last reset, or None on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if device.type == "xpu":
        return torch.xpu.max_memory_allocated(device) / 2**30
    return None


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the duration (auto-round's
    ``enable_deterministic_algorithms``): an operation without a deterministic kernel then fails
    instead of varying between runs. cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` for it; it is set
    here when the user has not, before the first CUDA matmul of the run."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
