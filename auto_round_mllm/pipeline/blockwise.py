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
from auto_round_mllm.quant.tunable import QuantizedWeight, TunableLinear, unwrap_linears, wrap_linears
from auto_round_mllm.tuning.base import InputRecorder, TuneContext, Tuner
from auto_round_mllm.tuning.block_inputs import BlockInputs, run_block
from auto_round_mllm.tuning.norm_bias import attach_offsets
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
    steps: int | None = None
    """Tuning steps run: ``--iters``, or fewer where ``--dynamic_max_gap`` stopped the block."""
    seconds: float = 0.0
    peak_device_gb: float | None = None


@dataclass
class BlockwiseResult:
    qweights: dict[str, QuantizedWeight] = field(default_factory=dict)
    blocks: list[BlockReport] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """16-bit tensors the tuning changed (``--enable_norm_bias_tuning``: norm weights, biases), by
    full name: the checkpoint writes these instead of the source's."""
    streams: Streams | None = None
    """The streams leaving the last block run (with ``through_end``, the list's last block)."""


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


def tuning_units(order: list[str], nblocks: int) -> list[list[str]]:
    """``order`` cut into runs of ``nblocks`` consecutive blocks, each tuned against its joint
    output (auto-round's ``nblocks``; the last run may be shorter)."""
    return [order[start : start + nblocks] for start in range(0, len(order), nblocks)]


class BlockChain(nn.Module):
    """Consecutive blocks called as one: each takes the previous one's hidden states and the same
    arguments (attention mask, position embeddings), which the blocks of one list share. Its
    children are named by block index, so a Linear's name inside the chain is its name inside
    the block list."""

    def __init__(self, names: list[str], blocks: list[nn.Module]) -> None:
        super().__init__()
        for name, block in zip(names, blocks, strict=True):
            self.add_module(name.rsplit(".", 1)[1], block)

    def forward(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for block in self.children():
            hidden = run_block(block, hidden, args, kwargs)
        return hidden


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
    through_end: bool = False,
) -> BlockwiseResult:
    """Quantize ``block_names`` (members of the block list ``group``) in forward order.

    ``through_end``: run on to the list's last block, so that the result's streams are the final
    hidden states (what ``--quant_lm_head`` tunes on).

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
    loop = BlockLoop(
        model=model,
        group=group,
        chosen=set(block_names),
        decisions=decisions,
        tuner=tuner,
        config=config,
        device=device,
        precision=precision,
        progress=progress or ProgressSink(),
        cache=cache or CachePlacement(device),
        placement=placement,
        resume=resume,
        weights=weights,
        kernel=quantizer_kernel(config, device, tuner),
    )
    size = len(model.get_submodule(group))
    order = blocks_in_forward_order(group, size, block_names)
    if through_end:
        order += [f"{group}.{i}" for i in range(int(order[-1].rsplit(".", 1)[1]) + 1, size)]
    finished = loop.restore_finished()
    if finished and len(finished) == len(loop.chosen) and not (through_end and tuner.needs_data):
        return loop.result
    if tuner.needs_data and streams is None:
        streams = loop.capture(order[0], samples, only_samples_reaching)
    if finished:
        streams = loop.saved_streams(finished[-1], streams)
        order = order[order.index(finished[-1]) + 1 :]
    for unit in tuning_units(order, config.nblocks):
        streams = loop.advance(unit, streams)
    loop.result.streams = streams
    return loop.result


@dataclass
class BlockLoop:
    """One block list's pass, step by step: restore what a killed run finished, capture the first
    block's inputs, then for each block onload it, tune it (or only run it, for a block between
    chosen ones), advance the streams and put the block away."""

    model: nn.Module
    group: str
    chosen: set[str]
    decisions: dict[str, LayerDecision]
    tuner: Tuner
    config: TuningConfig
    device: torch.device
    precision: Precision
    progress: ProgressSink
    cache: CachePlacement
    placement: BlockPlacement | None
    resume: ResumeState | None
    weights: StreamedWeights | None
    kernel: QdqKernel
    result: BlockwiseResult = field(default_factory=BlockwiseResult)

    def run_all(self, block: nn.Module, inputs: BlockInputs, recorder: InputRecorder | None = None):
        return forward_all(
            block, inputs, self.device, self.precision, self.config.batch_size, self.cache, recorder
        )

    def restore_finished(self) -> list[str]:
        """Blocks an earlier run of this job finished: their stored weights back in the model
        (a streamed block is read back at export) and their reports. Returns their names."""
        finished = self.resume.finished(self.group) if self.resume else []
        for entry in finished:
            name = entry["block"]
            stored = self.resume.stored_qweights(name)  # type: ignore[union-attr]
            tensors = self.resume.stored_tensors(name)  # type: ignore[union-attr]
            if self.weights is None or not self.weights.is_streamed(name):
                restore_weights(self.model.get_submodule(name), name, stored)
                restore_tensors(self.model, tensors)
            self.result.qweights.update(stored)
            self.result.tensors.update(tensors)
            self.result.blocks.append(BlockReport(**entry["report"]))
            self.progress.block_done(self.result.blocks[-1])
        return [entry["block"] for entry in finished]

    def capture(self, first: str, samples: list | None, only_samples_reaching: bool) -> Streams:
        """The first block's inputs, one stream for both (nothing is quantized yet)."""
        if not samples:
            raise ValueError("the tuner needs calibration samples")
        place_outside_blocks(self.model, [self.group], self.device)
        captured = capture_block_inputs(
            self.model,
            self.model.get_submodule(first),
            samples,
            device=self.device,
            cache=self.cache,
            skip_unreached=only_samples_reaching,
        )
        return Streams(captured, captured)

    def saved_streams(self, last: str, streams: Streams | None) -> Streams | None:
        """The streams after ``last``, as the killed run committed them."""
        if streams is None or self.resume is None:
            return streams
        saved = self.resume.load_streams(last)
        if saved is None:
            raise RuntimeError(f"the resume folder has no activations after {last}")
        return restored_streams(streams, saved, self.cache)

    def onload(self, block_name: str) -> nn.Module:
        """The block on the compute device (or spread over ``--device_map``), weights read from
        disk first when it streams."""
        block = self.model.get_submodule(block_name)
        if self.weights is not None:
            self.weights.materialize(self.model, block_name)
        if self.placement is not None:
            self.placement.attach(block)  # its children spread over the devices; I/O on the first
        else:
            block.to(self.device)
        block.requires_grad_(False)
        return block

    def advance(self, unit: list[str], streams: Streams | None) -> Streams | None:
        """Run one unit (a block, or ``--nblocks`` consecutive ones): tune it if it holds a chosen
        block, and return the streams entering the next unit."""
        started = time.perf_counter()
        devices.reset_peak_memory(self.device)
        blocks = [self.onload(name) for name in unit]
        module = blocks[0] if len(unit) == 1 else BlockChain(unit, blocks)
        prefix = unit[0] if len(unit) == 1 else self.group  # what Linear names inside ``module`` follow
        targets = self.run_all(module, streams.full) if streams else None
        if not self.chosen.intersection(unit):
            if streams is not None and targets is not None:
                same = streams.quantized is streams.full
                streams = streams.advance(
                    targets, targets if same else self.run_all(module, streams.quantized)
                )
            for name in unit:
                put_away(self.model, name, self.weights)
            return streams
        report, qweights, streams, tensors = self.tune_one(unit, prefix, module, streams, targets)
        devices.synchronize(self.device)
        report.seconds = time.perf_counter() - started
        report.peak_device_gb = devices.peak_memory_gb(self.device)
        for name in unit:
            put_away(self.model, name, self.weights)
        devices.empty_cache(self.device)
        self.record(unit, report, qweights, streams, tensors)
        return streams

    def tune_one(
        self,
        unit: list[str],
        prefix: str,
        module: nn.Module,
        streams: Streams | None,
        targets: list[torch.Tensor] | None,
    ) -> tuple[BlockReport, dict[str, QuantizedWeight], Streams | None, dict[str, torch.Tensor]]:
        """Wrap the unit's Linears, measure round-to-nearest, tune, unwrap with the quantized
        weights written back, and measure the tuned unit on the calibration set. The quantized
        weights and the tuned 16-bit tensors are keyed by full name."""
        config = self.config
        wrapped = wrap_linears(
            module,
            scheme_lookup(self.decisions, prefix),
            enable_minmax_tuning=config.enable_minmax_tuning,
            scale_dtype=devices.torch_dtype(config.scale_dtype),
            kernel=self.kernel,
        )
        report = BlockReport(
            name=unit[0] if len(unit) == 1 else f"{unit[0]}-{unit[-1].rsplit('.', 1)[1]}",
            quantized_layers=len(wrapped),
            total_layers=sum(1 for d in self.decisions.values() if d.block in unit),
        )
        ctx = None
        if streams is not None and targets is not None:
            ctx = self.context(streams, targets)
            if wrapped:
                self.measure_rtn(module, wrapped, ctx, report)
        offsets = attach_offsets(module, prefix) if config.norm_bias_tuning and ctx is not None else None
        if ctx is not None and offsets is not None:
            ctx.extra = offsets.parameters
        if wrapped:
            outcome = self.tuner.tune_block(module, wrapped, ctx)
            report.first_loss, report.best_loss = outcome.first_loss, outcome.best_loss
            report.best_iter = outcome.best_iter
            report.steps = outcome.iters
        tensors = offsets.finish() if offsets is not None else {}
        qweights = {
            f"{prefix}.{rel}": qw.to("cpu")
            for rel, qw in unwrap_linears(module, wrapped, write_back=True).items()
        }
        if ctx is not None and streams is not None and targets is not None:
            quantized_out = self.run_all(module, ctx.inputs)
            report.final_loss = mse(quantized_out, targets, ctx.inputs)
            streams = streams.advance(targets, quantized_out if config.enable_quanted_input else targets)
        return report, qweights, streams, tensors

    def context(self, streams: Streams, targets: list[torch.Tensor]) -> TuneContext:
        """What the tuner reads: the quantized stream (or the full one with
        ``--disable_quanted_input``) and the fp targets; each block gets its own seed."""
        return TuneContext(
            inputs=streams.quantized if self.config.enable_quanted_input else streams.full,
            targets=targets,
            device=self.device,
            precision=self.precision,
            seed=self.config.seed + len(self.result.blocks),
            on_step=self.progress.step,
        )

    def measure_rtn(
        self, block: nn.Module, wrapped: dict[str, TunableLinear], ctx: TuneContext, report: BlockReport
    ) -> None:
        """One pass gives the RTN MSE and whatever the tuner records (the clipping search's
        statistics), instead of a pass each."""
        recorder = self.tuner.input_recorder(wrapped)
        with recorder or contextlib.nullcontext():
            rtn_out = self.run_all(block, ctx.inputs, recorder)
        report.rtn_loss = mse(rtn_out, ctx.targets, ctx.inputs)
        del rtn_out
        ctx.input_stats = recorder.result() if recorder is not None else None

    def record(
        self,
        unit: list[str],
        report: BlockReport,
        qweights: dict[str, QuantizedWeight],
        streams: Streams | None,
        tensors: dict[str, torch.Tensor],
    ) -> None:
        """Keep the unit's result, one report per block (a unit's blocks share its losses and
        time); with a resume folder, commit it there first, all blocks at once (the export then
        reads the committed copy, layer by layer)."""
        reports = [
            report
            if len(unit) == 1
            else dataclasses.replace(
                report,
                name=name,
                quantized_layers=sum(1 for key in qweights if key.startswith(f"{name}.")),
                total_layers=sum(1 for d in self.decisions.values() if d.block == name),
                seconds=report.seconds / len(unit),
            )
            for name in unit
        ]
        by_block = {
            name: {
                key.removeprefix(f"{name}."): qw for key, qw in qweights.items() if key.startswith(f"{name}.")
            }
            for name in unit
        }
        self.result.tensors.update(tensors)
        if self.resume is not None:
            self.resume.commit(
                [
                    (name, by_block[name], dataclasses.asdict(r))
                    for name, r in zip(unit, reports, strict=True)
                ],
                stream_state(streams),
                tensors,
            )
            for name in unit:
                self.result.qweights.update(self.resume.stored_qweights(name))
        else:
            self.result.qweights.update(qweights)
        for block_report in reports:
            self.result.blocks.append(block_report)
            log.debug("block %s: %s", block_report.name, block_report)
            self.progress.block_done(block_report)


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


def restore_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put tuned 16-bit tensors (norm weights, biases) back into the model."""
    with torch.no_grad():
        for name, value in tensors.items():
            module, _, attribute = name.rpartition(".")
            getattr(model.get_submodule(module), attribute).copy_(value)


def restore_weights(block: nn.Module, block_name: str, stored: dict[str, StoredQuantizedWeight]) -> None:
    """Put a finished block's quantized weights back into the model, exactly as tuning left them."""
    with torch.no_grad():
        for name, qw in stored.items():
            layer = block.get_submodule(name.removeprefix(f"{block_name}."))
            layer.weight.copy_(qw.dequantize(layer.weight.dtype))
