"""The block loop: capture -> for each block: onload, fp targets, wrap, tune, finalize, propagate.

Two activation streams flow through the blocks. The full-precision stream feeds the fp block to
produce targets; the quantized stream (outputs of the already quantized blocks) feeds the block
being tuned, so each block learns to correct the error of the ones before it. After tuning, the
block's fake-quantized output becomes the next block's quantized input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from auto_round_mllm.config import TuningConfig
from auto_round_mllm.models.layer_plan import LayerDecision, scheme_lookup
from auto_round_mllm.models.streaming import StreamedWeights
from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.pipeline.capture import capture_block_inputs
from auto_round_mllm.pipeline.placement import BlockPlacement
from auto_round_mllm.pipeline.resume import ResumeState, StoredQuantizedWeight
from auto_round_mllm.quant.kernel import QdqKernel, compile_by_default
from auto_round_mllm.quant.tunable import QuantizedWeight, unwrap_linears, wrap_linears
from auto_round_mllm.tuning.base import InputRecorder, TuneContext, Tuner
from auto_round_mllm.tuning.block_inputs import BlockInputs, run_block
from auto_round_mllm.utils import device as devices
from auto_round_mllm.utils.device import Precision
from auto_round_mllm.utils.memory import release_host_memory

log = logging.getLogger(__name__)


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
    """Receives progress events; the CLI renders them with rich, the API ignores them.

    ``start`` and ``finish`` bracket the whole run (every block group); ``block_done`` comes once
    per tuned block, in order.
    """

    def start(self, total_blocks: int) -> None: ...

    def step(self, step: int) -> None: ...

    def block_done(self, report: BlockReport) -> None: ...

    def finish(self) -> None: ...


def place_outside_blocks(model: nn.Module, block_groups: list[str], device: torch.device) -> None:
    """Move everything except the decoder blocks to ``device`` for the capture forward; blocks
    come to the device one at a time."""
    prefixes = tuple(f"{group}." for group in block_groups)
    for name, param in list(model.named_parameters()) + list(model.named_buffers()):
        if param.device.type == "meta":  # a streamed block's weights: read when it is reached
            continue
        if not name.startswith(prefixes) and param.device != device:
            param.data = param.data.to(device)


@torch.no_grad()
def forward_all(
    block: nn.Module,
    inputs: BlockInputs,
    device: torch.device,
    precision: Precision,
    batch_size: int,
    cache: CachePlacement,
    recorder: InputRecorder | None = None,
) -> list[torch.Tensor]:
    """The block's output for every sample, batched by shape, stored on the cache device;
    ``recorder`` (open around the call) learns each batch's loss mask before it runs."""
    outputs: list[torch.Tensor | None] = [None] * len(inputs)
    for bucket in inputs.shape_buckets():
        for start in range(0, len(bucket), batch_size):
            indices = bucket[start : start + batch_size]
            hidden, args, kwargs = inputs.batch(indices, device)
            if recorder is not None:
                recorder.batch(inputs.loss_mask(indices, device))
            with precision.context():
                out = run_block(block, hidden, args, kwargs)
            out = out.to(inputs.hidden[indices[0]].dtype)
            # Samples were joined along dim 0; a sample may own several rows there (image tiles, or
            # Qwen2-VL's packed patches), so split by each sample's own leading size.
            sizes = [inputs.hidden[index].shape[0] for index in indices]
            for index, part in zip(indices, torch.split(out, sizes), strict=True):
                outputs[index] = cache.store(part)
    return outputs  # type: ignore[return-value]


def mse(outputs: list[torch.Tensor], targets: list[torch.Tensor], inputs: BlockInputs) -> float:
    """MSE over every calibration sample's unmasked positions (the figure the report shows)."""
    total, count = 0.0, 0.0
    for index, (out, target) in enumerate(zip(outputs, targets, strict=True)):
        squared = (out.float() - target.float()).pow(2)
        mask = inputs.masks[index] if inputs.masks else None
        if mask is not None:
            squared = squared * mask.to(squared.device).unsqueeze(-1)
            count += float(mask.sum()) * out.shape[-1]
        else:
            count += out.numel()
        total += float(squared.sum())
    return total / max(count, 1.0)


@dataclass
class Streams:
    """The two activation streams entering a block. ``quantized`` is ``full`` itself until a
    quantized block has run (and always with ``--disable_quanted_input``)."""

    full: BlockInputs
    quantized: BlockInputs

    def advance(self, full_out: list[torch.Tensor], quantized_out: list[torch.Tensor]) -> Streams:
        full = self.full.with_hidden(full_out)
        quantized = full if quantized_out is full_out else self.quantized.with_hidden(quantized_out)
        return Streams(full, quantized)


def blocks_in_forward_order(group: str, group_size: int, block_names: list[str]) -> list[str]:
    """From the first chosen block to the last; unchosen blocks in between still run."""
    indices = sorted(int(name.rsplit(".", 1)[1]) for name in block_names)
    return [f"{group}.{i}" for i in range(indices[0], min(indices[-1] + 1, group_size))]


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
    streams: Streams | None = None,
    only_samples_reaching: bool = False,
    resume: ResumeState | None = None,
    weights: StreamedWeights | None = None,
    cache: CachePlacement | None = None,
    placement: BlockPlacement | None = None,
) -> BlockwiseResult:
    """Quantize ``block_names`` (members of the block list ``group``) in forward order.

    ``streams`` are the first block's inputs when the caller captured them (the text blocks after
    the vision tower was quantized: full-precision and quantized streams differ from the start);
    otherwise they are captured here from ``samples`` (with ``only_samples_reaching``, samples that
    never reach the first block, such as text samples for a vision block, are left out).

    With ``resume``, blocks finished by an earlier (killed) run are restored instead of tuned, the
    saved streams replace the captured ones, and every newly finished block is committed; the
    quantized Linears of finished blocks then stay in the progress files until export instead of
    in memory. With ``weights``, streamed blocks are read from disk when reached and dropped when
    done (``resume`` is then required).
    """
    if weights is not None and resume is None:
        raise ValueError("streaming keeps finished blocks in the progress folder: pass resume")
    progress = progress or ProgressSink()
    cache = cache or CachePlacement(device)
    modules = dict(model.named_modules())
    order = blocks_in_forward_order(group, len(modules[group]), block_names)
    chosen = set(block_names)
    result = BlockwiseResult()
    kernel = quantizer_kernel(config, device, tuner)

    def run_all(
        block: nn.Module, inputs: BlockInputs, recorder: InputRecorder | None = None
    ) -> list[torch.Tensor]:
        return forward_all(block, inputs, device, precision, config.batch_size, cache, recorder)

    finished = resume.finished(group) if resume else []
    for entry in finished:
        name = entry["block"]
        stored = resume.stored_qweights(name)  # type: ignore[union-attr]
        if weights is None or not weights.is_streamed(name):  # a streamed block is read back at export
            restore_weights(modules[name], name, stored)
        result.qweights.update(stored)
        result.blocks.append(BlockReport(**entry["report"]))
        progress.block_done(result.blocks[-1])
    if finished and len(finished) == len(chosen):
        return result

    if tuner.needs_data and streams is None:
        if not samples:
            raise ValueError("the tuner needs calibration samples")
        place_outside_blocks(model, [group], device)
        captured = capture_block_inputs(
            model,
            modules[order[0]],
            samples,
            device=device,
            cache=cache,
            skip_unreached=only_samples_reaching,
        )
        streams = Streams(captured, captured)

    if finished and resume is not None:
        last = finished[-1]["block"]
        if streams is not None:
            saved = resume.load_streams(last)
            if saved is None:
                raise RuntimeError(f"the resume folder has no activations after {last}")
            streams = restored_streams(streams, saved, cache)
        order = order[order.index(last) + 1 :]

    for block_name in order:
        block = modules[block_name]
        started = time.perf_counter()
        devices.reset_peak_memory(device)
        if weights is not None:
            weights.materialize(model, block_name)
        if placement is not None:
            placement.attach(block)  # its children spread over the devices; I/O on the first
        else:
            block.to(device)
        block.requires_grad_(False)
        targets = run_all(block, streams.full) if streams else None
        if block_name not in chosen:
            if streams is not None and targets is not None:
                same = streams.quantized is streams.full
                streams = streams.advance(targets, targets if same else run_all(block, streams.quantized))
            put_away(model, block_name, weights)
            continue

        wrapped = wrap_linears(
            block,
            scheme_lookup(decisions, block_name),
            enable_minmax_tuning=config.enable_minmax_tuning,
            scale_dtype=devices.torch_dtype(config.scale_dtype),
            kernel=kernel,
        )
        report = BlockReport(
            name=block_name,
            quantized_layers=len(wrapped),
            total_layers=sum(1 for d in decisions.values() if d.block == block_name),
        )
        ctx = None
        if streams is not None and targets is not None:
            tune_inputs = streams.quantized if config.enable_quanted_input else streams.full
            ctx = TuneContext(
                inputs=tune_inputs,
                targets=targets,
                device=device,
                precision=precision,
                seed=config.seed + len(result.blocks),
                on_step=progress.step,
            )
            if wrapped:
                # one pass gives the RTN MSE and whatever the tuner records (the clipping search's
                # statistics), instead of a pass each
                recorder = tuner.input_recorder(wrapped)
                with recorder or contextlib.nullcontext():
                    rtn_out = run_all(block, tune_inputs, recorder)
                report.rtn_loss = mse(rtn_out, targets, tune_inputs)
                del rtn_out
                ctx.input_stats = recorder.result() if recorder is not None else None
        if wrapped:
            outcome = tuner.tune_block(block, wrapped, ctx)
            report.first_loss, report.best_loss = outcome.first_loss, outcome.best_loss
            report.best_iter = outcome.best_iter
        qweights = {rel: qw.to("cpu") for rel, qw in unwrap_linears(block, wrapped, write_back=True).items()}
        if ctx is not None and streams is not None and targets is not None:
            quantized_out = run_all(block, ctx.inputs)
            report.final_loss = mse(quantized_out, targets, ctx.inputs)
            streams = streams.advance(targets, quantized_out if config.enable_quanted_input else targets)

        devices.synchronize(device)
        report.seconds = time.perf_counter() - started
        report.peak_device_gb = devices.peak_memory_gb(device)
        put_away(model, block_name, weights)
        devices.empty_cache(device)
        if resume is not None:  # export reads the committed copy, layer by layer
            resume.commit(block_name, qweights, dataclasses.asdict(report), stream_state(streams))
            result.qweights.update(resume.stored_qweights(block_name))
        else:
            result.qweights.update({f"{block_name}.{rel}": qw for rel, qw in qweights.items()})
        result.blocks.append(report)
        log.debug("block %s: %s", block_name, report)
        progress.block_done(report)
    return result


def quantizer_kernel(config: TuningConfig, device: torch.device, tuner: Tuner) -> QdqKernel:
    """The fake-quant kernel for this run: compiled when asked, or by default where it pays."""
    wanted = config.torch_compile
    if wanted is None:
        wanted = tuner.needs_data and compile_by_default(device, config.iters)
    log.info("quantizer: %s", "compiled (torch.compile)" if wanted else "eager")
    return QdqKernel(compiled=wanted)


def put_away(model: nn.Module, block_name: str, weights: StreamedWeights | None) -> None:
    """A finished block leaves the compute device: streamed blocks drop their weights (the
    export reads them from disk again), others wait on the CPU."""
    block = model.get_submodule(block_name)
    BlockPlacement.detach(block)
    if weights is not None and weights.is_streamed(block_name):
        weights.release(model, block_name)
    else:
        block.to("cpu")
    release_host_memory()


def stream_state(streams: Streams | None) -> tuple[list[torch.Tensor], list[torch.Tensor] | None] | None:
    """What a resume needs of the streams: their hidden states (the rest is recaptured)."""
    if streams is None:
        return None
    same = streams.quantized is streams.full
    return streams.full.hidden, None if same else streams.quantized.hidden


def restored_streams(
    captured: Streams, saved: tuple[list[torch.Tensor], list[torch.Tensor] | None], cache: CachePlacement
) -> Streams:
    full_hidden, quantized_hidden = saved
    full = captured.full.with_hidden([cache.store(t) for t in full_hidden])
    if quantized_hidden is None:
        return Streams(full, full)
    return Streams(full, captured.quantized.with_hidden([cache.store(t) for t in quantized_hidden]))


def restore_weights(block: nn.Module, block_name: str, stored: dict[str, StoredQuantizedWeight]) -> None:
    """Put a finished block's quantized weights back into the model, exactly as tuning left them."""
    with torch.no_grad():
        for name, qw in stored.items():
            layer = block.get_submodule(name.removeprefix(f"{block_name}."))
            layer.weight.copy_(qw.dequantize(layer.weight.dtype))
