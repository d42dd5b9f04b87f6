"""The tuning run of one job on a loaded model: prepare, vision pass, re-capture, text pass.

1. Prepare: the model dtype (:mod:`~auto_round_mllm.utils.dtype_policy`), the autocast precision,
   the tuner, the blocks to tune and a :class:`LayerDecision` for every Linear in them.
2. Calibration: the planned samples go through the template's processor (tuners that need data).
3. Vision pass (``--quant_nontext_module``): each vision block list is tuned with batch 1.
4. Re-capture: the text blocks' quantized stream is captured again behind the quantized vision
   tower, so its error reaches text calibration (the full-precision stream was captured first).
5. Text pass: the text decoder's blocks, streamed from disk when the loader allowed it.

Nothing here writes a checkpoint: :class:`TunedModel` is what the exporters read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from auto_round_mllm.config import QuantJob, QuantScheme, TuningConfig
from auto_round_mllm.data.calib_set import CalibrationSet, build_calibration_set
from auto_round_mllm.data.calibration_plan import CalibrationPlan, plan_calibration
from auto_round_mllm.data.processors import processor_for
from auto_round_mllm.errors import UserError
from auto_round_mllm.models.family import select_blocks, vision_block_lists
from auto_round_mllm.models.layer_plan import (
    LayerCheck,
    LayerDecision,
    LayerRules,
    check_something_quantizes,
    plan_layers,
)
from auto_round_mllm.models.loading import LoadedModel
from auto_round_mllm.pipeline.blockwise import (
    BlockReport,
    BlockwiseResult,
    ProgressSink,
    Streams,
    place_outside_blocks,
    quantize_blocks,
    quantizer_kernel,
)
from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.pipeline.capture import capture_block_inputs
from auto_round_mllm.pipeline.head import final_norm, head_decision, head_problem, tune_head, untie
from auto_round_mllm.pipeline.mixed import measures_for, mixed_decisions
from auto_round_mllm.pipeline.placement import BlockPlacement
from auto_round_mllm.pipeline.resume import ResumeState, samples_fingerprint
from auto_round_mllm.quant.tunable import QuantizedWeight
from auto_round_mllm.tuning import Tuner, tuner_for
from auto_round_mllm.tuning.block_inputs import BlockInputs
from auto_round_mllm.utils.device import DTYPE_NAMES, Precision, choose_precision, deterministic_algorithms
from auto_round_mllm.utils.dtype_policy import cast_parameters, model_dtype_for, parameter_dtype

log = logging.getLogger(__name__)


@dataclass
class TunedModel:
    """The outcome of tuning, before any format is written."""

    loaded: LoadedModel
    qweights: dict[str, QuantizedWeight]
    decisions: dict[str, LayerDecision]
    block_groups: list[str]
    blocks: list[BlockReport]
    calibration: CalibrationSet | None
    plan: CalibrationPlan
    device: str
    precision: str
    seconds: float
    model_dtype: str = "float32"
    notes: list[str] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """16-bit tensors the tuning changed (norm weights and biases), by full name."""


@dataclass
class BlockChoice:
    """The blocks a job tunes: the text decoder's (one block list) and, with
    ``--quant_nontext_module``, every vision block list's, in forward order."""

    text_group: str
    text_blocks: list[str]
    vision: dict[str, list[str]]

    @property
    def all_blocks(self) -> list[str]:
        return [name for names in self.vision.values() for name in names] + self.text_blocks

    @property
    def count(self) -> int:
        return len(self.all_blocks)


@dataclass(frozen=True)
class PassDevices:
    """Where a pass runs: the compute device, its autocast, and where activations are kept."""

    device: torch.device
    precision: Precision
    cache: CachePlacement


@dataclass
class RunSetup:
    """What every pass of one run shares."""

    device: torch.device
    model_dtype: torch.dtype
    precision: Precision
    tuner: Tuner
    blocks: BlockChoice
    decisions: dict[str, LayerDecision]
    samples: list | None
    cache: CachePlacement
    placement: BlockPlacement | None
    resume: ResumeState | None
    head: LayerDecision | None = None
    """lm_head's decision when ``--quant_lm_head`` quantizes it (tuned after the text blocks)."""


def prepare_dtype(job: QuantJob, loaded: LoadedModel, device: torch.device) -> tuple[torch.dtype, list[str]]:
    """Cast the model to the dtype it is tuned and written in (a model handed in, or a config that
    named no dtype, may not be in it yet); the note says so when ``auto`` changed the dtype."""
    model = loaded.model
    stored = loaded.checkpoint_dtype or parameter_dtype(model)
    model_dtype = model_dtype_for(job.model_dtype, device, stored, amp=job.tuning.amp)
    if parameter_dtype(model) != model_dtype:
        cast_parameters(model, model_dtype)
    notes = []
    if job.model_dtype == "auto" and model_dtype != stored:
        notes.append(
            f"the {DTYPE_NAMES[stored]} checkpoint was tuned and is written in "
            f"{DTYPE_NAMES[model_dtype]}, the dtype AMP computes in (--model_dtype fp32 keeps fp32)"
        )
    return model_dtype, notes


def choose_blocks(job: QuantJob, loaded: LoadedModel) -> BlockChoice:
    """The text blocks ``--to_quant_block_names`` selects (one block list only) and the vision
    blocks ``--quant_nontext_module`` adds."""
    model = loaded.model
    block_names = select_blocks(model, loaded.family, job.to_quant_block_names)
    groups = sorted({name.rsplit(".", 1)[0] for name in block_names})
    if len(groups) > 1:
        raise UserError(
            f"--to_quant_block_names selects blocks from several block lists ({', '.join(groups)})",
            fix="select blocks of the text decoder only, and use --quant_nontext_module for the vision tower",
        )
    vision_groups = vision_block_lists(model, loaded.family) if job.quant_nontext_module else []
    if job.quant_nontext_module and not vision_groups:
        raise UserError(
            f"--quant_nontext_module: no vision blocks found in {type(model).__name__}",
            fix="leave the flag out for text-only models",
        )
    modules = dict(model.named_modules())
    vision = {g: [f"{g}.{i}" for i in range(len(modules[g]))] for g in vision_groups}
    return BlockChoice(groups[0], block_names, vision)


def build_calibration(
    job: QuantJob, loaded: LoadedModel, plan: CalibrationPlan, tuner: Tuner
) -> CalibrationSet | None:
    """The planned samples through the processor (the family's, or the one a named template
    brings); None when the tuner needs no data."""
    if not (tuner.needs_data or job.mixed.active) or plan.source is None:
        return None
    name = plan.template.processor if job.data.template else loaded.family.processor
    processor = processor_for(name, loaded, plan.template)
    return build_calibration_set(
        plan.source, processor, seqlen=job.tuning.seqlen, nsamples=job.tuning.nsamples, seed=job.tuning.seed
    )


def plan_mixed_bits(
    job: QuantJob,
    loaded: LoadedModel,
    blocks: BlockChoice,
    decisions: dict[str, LayerDecision],
    layer_checks: list[LayerCheck],
    calibration: CalibrationSet,
    where: PassDevices,
) -> tuple[dict[str, LayerDecision], str]:
    """``--schemes``: measure every candidate scheme of every free layer in a full-precision pass,
    then give each layer its allocated scheme (pipeline/mixed.py)."""

    def plan_for(scheme: QuantScheme) -> dict[str, LayerDecision]:
        return plan_layers(
            loaded.model,
            blocks.all_blocks,
            scheme,
            keep_patterns=tuple(job.fp_layers) + tuple(loaded.family.ignore),
            checks=layer_checks,
            group_size_fallback=job.group_size_fallback,
            layer_config=job.layer_config,
        )

    groups = {group: (names, 1) for group, names in blocks.vision.items()}  # vision: one sample a batch
    groups[blocks.text_group] = (blocks.text_blocks, job.tuning.batch_size)
    measures = measures_for(
        job,
        loaded.model,
        list(groups),
        blocks.text_group,
        where.device,
        where.precision,
        where.cache,
        loaded.streamed,
    )
    return mixed_decisions(job, decisions, plan_for, groups, measures, calibration.samples)


def plan_head(
    job: QuantJob, loaded: LoadedModel, blocks: BlockChoice, layer_checks: list[LayerCheck]
) -> LayerDecision | None:
    """``--quant_lm_head``: lm_head's decision (untied first when asked), or None without the flag."""
    if not job.quant_lm_head:
        return None
    problem = head_problem(loaded.model, job, blocks.text_group)
    if problem is not None:  # preflight checked the skeleton; a model handed in is checked here
        raise problem
    if job.untie_embeddings:
        untie(loaded.model)
    rules = LayerRules(
        job.scheme, tuple(job.fp_layers), layer_checks, job.group_size_fallback, job.layer_config
    )
    return head_decision(loaded.model, rules)


def vision_tuning(tuning: TuningConfig) -> TuningConfig:
    """Vision blocks take one sample per step (auto-round's rule): their hidden states carry no
    batch dimension in several towers (Qwen2-VL's packed patches), so samples are not concatenated;
    gradient accumulation keeps the number of samples per step."""
    steps = tuning.batch_size * tuning.gradient_accumulate_steps
    return dataclasses.replace(tuning, batch_size=1, gradient_accumulate_steps=steps)


def capture_text_inputs(loaded: LoadedModel, setup: RunSetup) -> BlockInputs:
    """The first text block's inputs, everything outside the text blocks on the compute device."""
    model, group = loaded.model, setup.blocks.text_group
    place_outside_blocks(model, [group], setup.device)
    first = model.get_submodule(setup.blocks.text_blocks[0])
    return capture_block_inputs(model, first, setup.samples, device=setup.device, cache=setup.cache)


def setup_run(
    job: QuantJob,
    loaded: LoadedModel,
    plan: CalibrationPlan,
    *,
    device: torch.device,
    spread: list[torch.device] | None,
    layer_checks: list[LayerCheck],
    resume: ResumeState | None,
) -> tuple[RunSetup, CalibrationSet | None, list[str]]:
    """Steps 1-2: dtype, precision, tuner, blocks, layer decisions and calibration set."""
    model_dtype, notes = prepare_dtype(job, loaded, device)
    precision = choose_precision(device, model_dtype, amp=job.tuning.amp)
    tuner = tuner_for(job.tuning)
    blocks = choose_blocks(job, loaded)
    decisions = plan_layers(
        loaded.model,
        blocks.all_blocks,
        job.scheme,
        keep_patterns=tuple(job.fp_layers) + tuple(loaded.family.ignore),
        checks=layer_checks,
        group_size_fallback=job.group_size_fallback,
        layer_config=job.layer_config,
    )
    check_something_quantizes(decisions, job.scheme)
    head = plan_head(job, loaded, blocks, layer_checks)
    if head is not None:
        decisions[head.name] = head
        head = head if head.quantized else None
    calibration = build_calibration(job, loaded, plan, tuner)
    cache = CachePlacement.for_run(device, host=job.memory.host_caches, folder=job.memory.cache_dir)
    if job.mixed.active and calibration is not None:
        decisions, mixed = plan_mixed_bits(
            job, loaded, blocks, decisions, layer_checks, calibration, PassDevices(device, precision, cache)
        )
        notes.append(mixed)
    log.info(
        "quantizing %d blocks of %s%s on %s (%s), %s, %s",
        len(blocks.text_blocks),
        blocks.text_group,
        "".join(f" and {len(b)} of {g}" for g, b in blocks.vision.items()),
        device,
        precision.label,
        job.scheme.label,
        f"SignRound {job.tuning.iters} iters" if job.tuning.iters else "RTN",
    )
    if blocks.vision and calibration is not None and calibration.image_samples == 0:
        raise UserError(
            "--quant_nontext_module: no calibration sample with an image could be processed "
            f"({'; '.join(calibration.notes) or 'no image samples'})",
            fix="check that the model's processor loads (see the notes) and that the dataset has images",
        )
    samples = calibration.samples if calibration else None
    if resume is not None:
        resume.check_data(samples_fingerprint(samples))
    placement = BlockPlacement(spread) if spread else None
    setup = RunSetup(
        device, model_dtype, precision, tuner, blocks, decisions, samples, cache, placement, resume, head
    )
    return setup, calibration, notes


def tune_passes(
    job: QuantJob, loaded: LoadedModel, setup: RunSetup, progress: ProgressSink
) -> BlockwiseResult:
    """Steps 3-5: the vision pass, the re-capture behind the quantized tower, the text pass."""
    model, blocks = loaded.model, setup.blocks
    common = dict(
        decisions=setup.decisions,
        samples=setup.samples,
        device=setup.device,
        precision=setup.precision,
        resume=setup.resume,
        cache=setup.cache,
        placement=setup.placement,
        progress=progress,
    )
    total = BlockwiseResult()
    qweights, reports = total.qweights, total.blocks
    recapture = bool(blocks.vision) and setup.tuner.needs_data
    # The text blocks' full-precision stream comes from the fp model, before the tower is quantized.
    full = capture_text_inputs(loaded, setup) if recapture else None
    config = vision_tuning(job.tuning)
    for group, names in blocks.vision.items():
        done = quantize_blocks(
            model, group=group, block_names=names, tuner=tuner_for(config), config=config, **common
        )
        qweights.update(done.qweights)
        reports.extend(done.blocks)
        total.tensors.update(done.tensors)
    streams = Streams(full, capture_text_inputs(loaded, setup)) if full is not None else None
    done = quantize_blocks(
        model,
        group=blocks.text_group,
        block_names=blocks.text_blocks,
        tuner=setup.tuner,
        config=job.tuning,
        streams=streams,
        weights=loaded.streamed,
        through_end=setup.head is not None,
        **common,
    )
    qweights.update(done.qweights)
    reports.extend(done.blocks)
    total.tensors.update(done.tensors)
    if setup.head is not None:
        report, head_weights = tune_head(
            model,
            setup.head,
            final_norm(model, blocks.text_group),
            done.streams,
            tuner=setup.tuner,
            job=job,
            kernel=quantizer_kernel(job.tuning, setup.device, setup.tuner),
            device=setup.device,
            precision=setup.precision,
            cache=setup.cache,
            seed=job.tuning.seed + len(reports),
            on_step=progress.step,
        )
        qweights.update(head_weights)
        reports.append(report)
        progress.block_done(report)
    return total


def tune(
    job: QuantJob,
    loaded: LoadedModel,
    progress: ProgressSink | None = None,
    *,
    device: torch.device,
    spread: list[torch.device] | None = None,
    layer_checks: Sequence[LayerCheck] = (),
    plan: CalibrationPlan | None = None,
    resume: ResumeState | None = None,
) -> TunedModel:
    """Tune every chosen block of ``loaded`` on ``device`` (``spread``: ``--device_map``'s devices);
    ``layer_checks`` say which Linears the requested formats cannot store; ``plan`` comes from
    :func:`~auto_round_mllm.data.calibration_plan.plan_calibration` (made here if None)."""
    started = time.perf_counter()
    torch.manual_seed(job.tuning.seed)
    plan = plan or plan_calibration(job, loaded.model_type, loaded.family)
    setup, calibration, notes = setup_run(
        job, loaded, plan, device=device, spread=spread, layer_checks=list(layer_checks), resume=resume
    )
    progress = progress or ProgressSink()
    progress.start(setup.blocks.count + (setup.head is not None))  # lm_head is one more
    with deterministic_algorithms(job.tuning.deterministic):
        done = tune_passes(job, loaded, setup, progress)
    progress.finish()
    place_outside_blocks(loaded.model, [], torch.device("cpu"))  # streamed blocks stay on meta
    return TunedModel(
        loaded=loaded,
        qweights=done.qweights,
        decisions=setup.decisions,
        block_groups=[*setup.blocks.vision, setup.blocks.text_group],
        blocks=done.blocks,
        calibration=calibration,
        plan=plan,
        device=str(device),
        precision=setup.precision.label,
        seconds=time.perf_counter() - started,
        model_dtype=DTYPE_NAMES.get(setup.model_dtype, str(setup.model_dtype)),
        notes=notes,
        tensors=done.tensors,
    )
