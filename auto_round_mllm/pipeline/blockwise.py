"""The block loop: capture -> for each block: onload, fp targets, wrap, tune, finalize, propagate.

Two activation streams flow through the blocks. The full-precision stream feeds the fp block to
produce targets; the quantized stream (outputs of the already quantized blocks) feeds the block
being tuned, so each block learns to correct the error of the ones before it. After tuning, the
block's fake-quantized output becomes the next block's quantized input.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from auto_round_mllm.config import TuningConfig
from auto_round_mllm.pipeline.cache import BlockInputs, run_block
from auto_round_mllm.pipeline.capture import capture_block_inputs
from auto_round_mllm.pipeline.plan import LayerDecision, scheme_lookup
from auto_round_mllm.quant.tunable import QuantizedWeight, unwrap_linears, wrap_linears
from auto_round_mllm.tuning.base import TuneContext, Tuner
from auto_round_mllm.utils import device as devices
from auto_round_mllm.utils.device import Precision

log = logging.getLogger(__name__)
SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class BlockReport:
    name: str
    quantized_layers: int
    total_layers: int
    rtn_loss: float | None = None
    """Full-calibration-set MSE of the block with round-to-nearest weights (V=0, no clipping)."""
    first_loss: float | None = None
    best_loss: float | None = None
    final_loss: float | None = None
    """Full-calibration-set MSE of the block with the tuned weights."""
    best_iter: int | None = None
    seconds: float = 0.0
    peak_device_gb: float | None = None


@dataclass
class BlockwiseResult:
    qweights: dict[str, QuantizedWeight] = field(default_factory=dict)
    blocks: list[BlockReport] = field(default_factory=list)


class ProgressSink:
    """Receives progress events; the CLI renders them with rich, the API ignores them."""

    def start(self, total_blocks: int) -> None: ...

    def step(self, step: int) -> None: ...

    def block_done(self, index: int, report: BlockReport) -> None: ...

    def finish(self) -> None: ...


def place_outside_blocks(model: nn.Module, block_groups: list[str], device: torch.device) -> None:
    """Move everything except the decoder blocks to ``device`` for the capture forward; blocks
    come to the device one at a time."""
    prefixes = tuple(f"{group}." for group in block_groups)
    for name, param in list(model.named_parameters()) + list(model.named_buffers()):
        if not name.startswith(prefixes) and param.device != device:
            param.data = param.data.to(device)


@torch.no_grad()
def forward_all(
    block: nn.Module,
    inputs: BlockInputs,
    device: torch.device,
    precision: Precision,
    batch_size: int,
    cache: torch.device,
) -> list[torch.Tensor]:
    """The block's output for every sample, batched by shape, stored on the cache device."""
    outputs: list[torch.Tensor | None] = [None] * len(inputs)
    for bucket in inputs.shape_buckets():
        for start in range(0, len(bucket), batch_size):
            indices = bucket[start : start + batch_size]
            hidden, args, kwargs = inputs.batch(indices, device)
            with precision.context():
                out = run_block(block, hidden, args, kwargs)
            out = out.to(inputs.hidden[indices[0]].dtype)
            for i, index in enumerate(indices):
                outputs[index] = out[i : i + 1].to(cache)
    return outputs  # type: ignore[return-value]


def mse(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    total = sum(
        F.mse_loss(o.float(), t.float(), reduction="sum").item()
        for o, t in zip(outputs, targets, strict=True)
    )
    count = sum(t.numel() for t in targets)
    return total / count


def quantize_blocks(
    model: nn.Module,
    *,
    group: str,
    block_names: list[str],
    decisions: dict[str, LayerDecision],
    tuner: Tuner,
    config: TuningConfig,
    samples: list[dict[str, torch.Tensor]] | None,
    device: torch.device,
    precision: Precision,
    progress: ProgressSink | None = None,
) -> BlockwiseResult:
    """Quantize ``block_names`` (members of the block list ``group``) in forward order.

    Blocks of the group after the first chosen one that are not chosen still run, unquantized,
    so both streams reach the next chosen block.
    """
    progress = progress or ProgressSink()
    modules = dict(model.named_modules())
    group_list = modules[group]
    first = min(int(name.rsplit(".", 1)[1]) for name in block_names)
    order = [f"{group}.{i}" for i in range(first, len(group_list))]
    order = order[: max(order.index(name) for name in block_names) + 1]
    chosen = set(block_names)
    scale_dtype = SCALE_DTYPES[config.scale_dtype]
    result = BlockwiseResult()
    cache_device = device

    fp_inputs: BlockInputs | None = None
    q_inputs: BlockInputs | None = None
    if tuner.needs_data:
        if not samples:
            raise ValueError("the tuner needs calibration samples")
        place_outside_blocks(model, [group], device)
        fp_inputs = capture_block_inputs(
            model, modules[order[0]], samples, device=device, cache_device=cache_device
        )
        q_inputs = fp_inputs

    progress.start(len(block_names))
    for block_name in order:
        block = modules[block_name]
        started = time.perf_counter()
        devices.reset_peak_memory(device)
        block.to(device)
        for param in block.parameters():
            param.requires_grad_(False)
        targets = None
        if fp_inputs is not None:
            targets = forward_all(block, fp_inputs, device, precision, config.batch_size, cache_device)
        if block_name not in chosen:
            if q_inputs is not None and targets is not None:
                q_out = (
                    targets
                    if q_inputs is fp_inputs
                    else forward_all(block, q_inputs, device, precision, config.batch_size, cache_device)
                )
                fp_inputs, q_inputs = fp_inputs.with_hidden(targets), q_inputs.with_hidden(q_out)
            block.to("cpu")
            continue

        wrapped = wrap_linears(
            block,
            scheme_lookup(decisions, block_name),
            enable_minmax_tuning=config.enable_minmax_tuning,
            scale_dtype=scale_dtype,
        )
        report = BlockReport(
            name=block_name,
            quantized_layers=len(wrapped),
            total_layers=sum(1 for d in decisions.values() if d.block == block_name),
        )
        tune_inputs = q_inputs if config.enable_quanted_input else fp_inputs
        ctx = None
        if tuner.needs_data and tune_inputs is not None and targets is not None:
            seed = config.seed + len(result.blocks)
            ctx = TuneContext(
                inputs=tune_inputs,
                targets=targets,
                device=device,
                precision=precision,
                seed=seed,
                on_step=progress.step,
            )
            if wrapped:
                rtn_out = forward_all(block, tune_inputs, device, precision, config.batch_size, cache_device)
                report.rtn_loss = mse(rtn_out, targets)
                del rtn_out
        if wrapped:
            outcome = tuner.tune_block(block, wrapped, ctx)
            report.first_loss, report.best_loss, report.best_iter = (
                outcome.first_loss,
                outcome.best_loss,
                outcome.best_iter,
            )
        qweights = unwrap_linears(block, wrapped, write_back=True)
        result.qweights.update({f"{block_name}.{rel}": qw for rel, qw in qweights.items()})

        if ctx is not None and tune_inputs is not None and targets is not None:
            q_out = forward_all(block, tune_inputs, device, precision, config.batch_size, cache_device)
            report.final_loss = mse(q_out, targets)
            q_inputs = tune_inputs.with_hidden(q_out) if config.enable_quanted_input else None
            fp_inputs = fp_inputs.with_hidden(targets)  # type: ignore[union-attr]
            if q_inputs is None:
                q_inputs = fp_inputs
        devices.synchronize(device)
        report.seconds = time.perf_counter() - started
        report.peak_device_gb = devices.peak_memory_gb(device)
        block.to("cpu")
        devices.empty_cache(device)
        result.blocks.append(report)
        log.debug("block %s: %s", block_name, report)
        progress.block_done(len(result.blocks), report)
    progress.finish()
    return result
