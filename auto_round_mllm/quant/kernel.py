"""The fake-quantized weight of a tunable layer: one eager reference, one compiled fused kernel.

Eagerly, fake quantization is about ten elementwise passes over fp32 copies of the weight in the
forward pass and a dozen in the backward pass. On the project's 2-core CPU they cost about 50 ms of
a 250-280 ms SignRound step for one hidden-1024 Llama block at batch 8 x 256 (torch.profiler, via
``scripts/bench_step.py --profile``). Inductor fuses each direction into one loop that reads the
weight in its own dtype and writes the compute dtype directly: about 10 ms. Shapes are compiled
static, because kernels with a symbolic row count ran 5x slower on this CPU; every distinct layer
shape therefore compiles once per process (1-4 s each, cached on disk by inductor across processes).

Compilation is an optimisation, never a requirement: if it fails (no C++ compiler, an unsupported
device, a torch without inductor), the run logs one warning and continues with the eager
function, whose values the compiled one reproduces.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from auto_round_mllm.quant.ops import fake_quant, from_groups, qparams_from_range

log = logging.getLogger(__name__)

MIN_ITERS_TO_COMPILE = 10
"""Below this, the seconds spent compiling each layer shape outweigh what the steps save."""

RECOMPILE_LIMIT = 64
"""Distinct layer shapes one run may compile (dynamo's default of 8 is below a VLM's count)."""


def qdq(
    groups: Tensor,
    wmin: Tensor,
    wmax: Tensor,
    v: Tensor,
    min_scale: Tensor,
    max_scale: Tensor,
    *,
    bits: int,
    sym: bool,
    scale_dtype: torch.dtype,
    out_features: int,
    dtype: torch.dtype,
) -> Tensor:
    """The fake-quantized weight ``[out, in]`` in ``dtype``, differentiable w.r.t. ``v`` and the
    clipping multipliers (the eager reference; :class:`QdqKernel` compiles exactly this)."""
    scale, zp = qparams_from_range(wmin, wmax, bits, sym, min_scale, max_scale, scale_dtype=scale_dtype)
    return from_groups(fake_quant(groups, scale, zp, bits, v), out_features).to(dtype)


QdqFunction = Callable[..., Tensor]


@dataclass
class QdqKernel:
    """:func:`qdq`, compiled when ``compiled`` is set and gradients are being recorded.

    Forward passes without gradients (the block's loss before tuning) stay eager: compiling them
    would be a second graph per shape for a handful of calls.
    """

    compiled: bool
    _function: QdqFunction | None = field(default=None, init=False, repr=False)
    _failed: bool = field(default=False, init=False)
    _probed: set[tuple] = field(default_factory=set, init=False, repr=False)

    @property
    def active(self) -> bool:
        """Whether calls with gradients go through the compiled kernel (False after a failure)."""
        return self.compiled and not self._failed

    def __call__(self, *args: Tensor, **kwargs: object) -> Tensor:
        if not self.active or not torch.is_grad_enabled():
            return qdq(*args, **kwargs)  # type: ignore[arg-type]
        try:
            with warnings.catch_warnings(), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                # inductor's note on mixing bf16 weights with fp16 scales in one loop is harmless
                warnings.filterwarnings("ignore", message=".*are mixed in the scheduler node")
                self._probe(args, kwargs)
                return self._compiled()(*args, **kwargs)
        except Exception as error:
            self._failed = True
            text = str(error).strip()
            log.warning(
                "torch.compile of the quantizer failed (%s); tuning continues eagerly, about 10%% "
                "slower on a CPU (--disable_torch_compile skips the attempt)",
                (text.splitlines()[0] if text else type(error).__name__)[:200],
            )
            return qdq(*args, **kwargs)  # type: ignore[arg-type]

    def _compiled(self) -> QdqFunction:
        if self._function is None:
            # emulate_precision_casts: the scale is rounded to its stored dtype inside the fused
            # loop too, so every rounding decision matches the eager quantizer
            self._function = torch.compile(qdq, dynamic=False, options={"emulate_precision_casts": True})
        return self._function

    def _probe(self, args: tuple[Tensor, ...], kwargs: dict[str, object]) -> None:
        """Run a new shape forward and backward once on copies: the backward graph compiles
        lazily, and a failure there would otherwise surface in the middle of ``loss.backward()``."""
        groups = args[0]
        key = (tuple(groups.shape), groups.dtype, groups.device, tuple(sorted(kwargs.items())))
        if key in self._probed:
            return
        copies = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
        self._compiled()(*copies, **kwargs).float().sum().backward()
        self._probed.add(key)


def compile_by_default(device: torch.device, iters: int) -> bool:
    """Whether a run given neither ``--enable_torch_compile`` nor ``--disable_torch_compile``
    compiles: on CPUs and CUDA GPUs (inductor's best-tested targets), once tuning is long enough
    to repay a few seconds of compilation per layer shape."""
    return device.type in ("cpu", "cuda") and iters >= MIN_ITERS_TO_COMPILE
