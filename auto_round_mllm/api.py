"""``quantize(job)``: the one orchestration function behind the CLI and the Python API.

Order matters for the user: everything that can be checked without weights (scheme against
formats, output folder, dataset) is checked first, so a wrong flag fails in a second, not after
an hour of tuning.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from auto_round_mllm.config import QuantJob, TuningConfig
from auto_round_mllm.data.calib_set import CalibrationSet, build_calibration_set
from auto_round_mllm.data.processors import processor_for
from auto_round_mllm.data.sample import SourceSamples
from auto_round_mllm.data.sources import EMBEDDED, EMBEDDED_IMAGES, default_dataset_for, load_samples
from auto_round_mllm.data.templates import ChatTemplate, resolve_template
from auto_round_mllm.errors import UserError
from auto_round_mllm.export import EXPORTERS, ExportInput
from auto_round_mllm.export.checkpoint import marlin_report
from auto_round_mllm.export.writer import atomic_outputs, check_output_dir, write_json
from auto_round_mllm.models.architecture import model_skeleton
from auto_round_mllm.models.family import (
    ModelFamily,
    family_for_model_type,
    select_blocks,
    vision_block_lists,
)
from auto_round_mllm.models.layer_plan import LayerDecision, plan_layers
from auto_round_mllm.models.loading import (
    LoadedModel,
    checkpoint_dtype,
    load_model,
    read_config,
    resolve_model_dir,
)
from auto_round_mllm.pipeline.blockwise import (
    BlockReport,
    ProgressSink,
    Streams,
    place_outside_blocks,
    quantize_blocks,
)
from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.pipeline.capture import capture_block_inputs
from auto_round_mllm.pipeline.placement import BlockPlacement, parse_device_map
from auto_round_mllm.pipeline.resume import (
    ResumeState,
    model_fingerprint,
    resume_dir_for,
    samples_fingerprint,
)
from auto_round_mllm.quant.tunable import QuantizedWeight
from auto_round_mllm.tuning import tuner_for
from auto_round_mllm.tuning.block_inputs import BlockInputs
from auto_round_mllm.utils.device import (
    DTYPE_NAMES,
    choose_precision,
    resolve_device,
    torch_dtype,
    tuning_dtype,
)
from auto_round_mllm.utils.memory import peak_rss_gb

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


@dataclass
class QuantResult:
    job: QuantJob
    outputs: dict[str, str] = field(default_factory=dict)
    blocks: list[BlockReport] = field(default_factory=list)
    skipped_layers: dict[str, str] = field(default_factory=dict)
    quantized_layers: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "float32"
    model_dtype: str = "float32"
    tune_seconds: float = 0.0
    total_seconds: float = 0.0
    peak_rss_gb: float = 0.0
    peak_device_gb: float | None = None
    notes: list[str] = field(default_factory=list)
    not_marlin: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["job"] = self.job.to_dict()
        return data

    # Measurements of this run rather than facts about the checkpoint: the CLI shows them, the
    # report written beside the weights leaves them out so that reruns write identical bytes.
    MEASURED: ClassVar[tuple[str, ...]] = ("tune_seconds", "total_seconds", "peak_rss_gb", "peak_device_gb")
    MEASURED_PER_BLOCK: ClassVar[tuple[str, ...]] = ("seconds", "peak_device_gb")

    def checkpoint_report(self) -> dict[str, Any]:
        data = self.to_dict()
        for key in self.MEASURED:
            data.pop(key)
        data.pop("outputs")
        data["job"].pop("memory")  # how the run fitted in memory does not change the checkpoint
        for block in data["blocks"]:
            for key in self.MEASURED_PER_BLOCK:
                block.pop(key)
        return data


def output_root(job: QuantJob) -> Path:
    """auto-round's habit: ``<output_dir>/<model name>-w{bits}g{group_size}``."""
    name = Path(job.model.removeprefix("local:").rstrip("/")).name or "model"
    suffix = f"-w{job.scheme.bits}g{job.scheme.group_size}" + ("" if job.scheme.sym else "-asym")
    return Path(job.export.output_dir) / f"{name}{suffix}"


def format_dirs(root: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """One format: the root itself. Several: one sub-folder per format."""
    if len(formats) == 1:
        return {formats[0]: root}
    return {fmt: root / fmt.replace(":", "-") for fmt in formats}


def check_job(job: QuantJob) -> None:
    """Checks that need no weights: the device exists and each format accepts the scheme."""
    resolve_device(job.device)
    parse_device_map(job.memory.device_map)
    if job.memory.cache_dir is not None:
        check_cache_dir(Path(job.memory.cache_dir))
    for fmt in job.export.formats:
        EXPORTERS.get(fmt).check(job.scheme)


def check_cache_dir(folder: Path) -> None:
    """The activation spill folder must be a folder we can write in (it is created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise UserError(
            f"--cache_dir {folder} cannot hold activation files ({exc.strerror or exc})",
            fix="point --cache_dir at a writable folder on a disk with room for the calibration activations",
        ) from None


@dataclass
class CalibrationPlan:
    """Template and calibration samples, decided before any weight is loaded."""

    template: ChatTemplate
    source: SourceSamples | None
    notes: list[str] = field(default_factory=list)


def plan_calibration(job: QuantJob, model_type: str, family: ModelFamily) -> CalibrationPlan:
    """The chat template and the samples for this job: a malformed template, a missing dataset or
    too many missing images fail here, in seconds."""
    template, notice = resolve_template(
        job.data.template, family.template if family.model_types else model_type
    )
    notes = [notice] if notice else []
    if job.tuning.iters == 0:
        return CalibrationPlan(template, None, notes)
    needs_images = job.quant_nontext_module or not family.text_only_calibration
    spec = job.data.dataset
    if spec is None:
        spec = default_dataset_for(template.default_dataset, extra_data_dir=job.data.extra_data_dir)
        if needs_images and spec == EMBEDDED:
            spec = EMBEDDED_IMAGES
            notes.append(
                f"{family.name} cannot calibrate on text alone: using the embedded image-text conversations"
            )
    source = load_samples(
        spec, extra_data_dir=job.data.extra_data_dir, max_missing_images=job.data.max_missing_images
    )
    if needs_images and not any(sample.images for sample in source.samples):
        who = "--quant_nontext_module needs" if job.quant_nontext_module else f"{family.name} models need"
        raise UserError(
            f"{who} images in calibration, and {source.label} has none",
            fix=f"use --dataset {EMBEDDED_IMAGES}, or liuhaotian/llava_conv_58k with --extra_data_dir",
        )
    return CalibrationPlan(template, source, notes)


def tune(
    job: QuantJob,
    loaded: LoadedModel,
    progress: ProgressSink | None = None,
    *,
    plan: CalibrationPlan | None = None,
    resume: ResumeState | None = None,
) -> TunedModel:
    """Tune every chosen block; ``plan`` comes from :func:`plan_calibration` (made here if None)."""
    started = time.perf_counter()
    torch.manual_seed(job.tuning.seed)
    model = loaded.model
    spread = parse_device_map(job.memory.device_map)
    device = compute_device(job)
    stored_dtype = loaded.checkpoint_dtype or parameter_dtype(model)
    model_dtype = resolved_model_dtype(job, device, stored_dtype)
    if parameter_dtype(model) != model_dtype:  # a model handed in, or a config that named no dtype
        cast_parameters(model, model_dtype)
    dtype_notes = []
    if job.model_dtype == "auto" and model_dtype != stored_dtype:
        dtype_notes.append(
            f"the {DTYPE_NAMES[stored_dtype]} checkpoint was tuned and is written in "
            f"{DTYPE_NAMES[model_dtype]}, the dtype AMP computes in (--model_dtype fp32 keeps fp32)"
        )
    precision = choose_precision(device, model_dtype, amp=job.tuning.amp)
    tuner = tuner_for(job.tuning)

    block_names = select_blocks(model, loaded.family, job.to_quant_block_names)
    groups = sorted({name.rsplit(".", 1)[0] for name in block_names})
    if len(groups) > 1:
        raise UserError(
            f"--to_quant_block_names selects blocks from several block lists ({', '.join(groups)})",
            fix="select blocks of the text decoder only, and use --quant_nontext_module for the vision tower",
        )
    text_group = groups[0]
    modules = dict(model.named_modules())
    vision_groups = vision_block_lists(model, loaded.family) if job.quant_nontext_module else []
    if job.quant_nontext_module and not vision_groups:
        raise UserError(
            f"--quant_nontext_module: no vision blocks found in {type(model).__name__}",
            fix="leave the flag out for text-only models",
        )
    vision_blocks = {g: [f"{g}.{i}" for i in range(len(modules[g]))] for g in vision_groups}
    exporters = [EXPORTERS.get(fmt) for fmt in job.export.formats]
    decisions = plan_layers(
        model,
        [name for names in vision_blocks.values() for name in names] + block_names,
        job.scheme,
        keep_patterns=tuple(job.fp_layers) + tuple(loaded.family.ignore),
        checks=[exporter.layer_problem for exporter in exporters],
    )
    check_something_quantizes(decisions, job)
    plan = plan or plan_calibration(job, loaded.model_type, loaded.family)
    calibration = None
    if tuner.needs_data and plan.source is not None:
        # The family knows its processor; a template the user names brings its own.
        name = plan.template.processor if job.data.template else loaded.family.processor
        processor = processor_for(name, loaded, plan.template)
        calibration = build_calibration_set(
            plan.source,
            processor,
            seqlen=job.tuning.seqlen,
            nsamples=job.tuning.nsamples,
            seed=job.tuning.seed,
        )
    log.info(
        "quantizing %d blocks of %s%s on %s (%s), %s, %s",
        len(block_names),
        text_group,
        "".join(f" and {len(b)} of {g}" for g, b in vision_blocks.items()),
        device,
        precision.label,
        job.scheme.label,
        f"SignRound {job.tuning.iters} iters" if job.tuning.iters else "RTN",
    )
    if vision_blocks and calibration is not None and calibration.image_samples == 0:
        raise UserError(
            "--quant_nontext_module: no calibration sample with an image could be processed "
            f"({'; '.join(calibration.notes) or 'no image samples'})",
            fix="check that the model's processor loads (see the notes) and that the dataset has images",
        )
    samples = calibration.samples if calibration else None
    if resume is not None:
        resume.check_data(samples_fingerprint(samples))
    cache = CachePlacement.for_run(device, host=job.memory.host_caches, folder=job.memory.cache_dir)
    common = dict(
        decisions=decisions,
        samples=samples,
        device=device,
        precision=precision,
        resume=resume,
        cache=cache,
        placement=BlockPlacement(spread) if spread else None,
    )
    progress = progress or ProgressSink()
    progress.start(len(block_names) + sum(len(b) for b in vision_blocks.values()))
    qweights: dict[str, QuantizedWeight] = {}
    reports: list[BlockReport] = []
    text_streams = None
    if vision_blocks and tuner.needs_data:
        # The text blocks' full-precision stream comes from the fp model; their quantized stream is
        # captured again once the vision tower is quantized, so its error reaches text calibration.
        full = capture_text_inputs(model, modules[block_names[0]], text_group, samples, device, cache)
    vision_config = vision_tuning(job.tuning)
    for group, names in vision_blocks.items():
        vision_result = quantize_blocks(
            model,
            group=group,
            block_names=names,
            tuner=tuner_for(vision_config),
            config=vision_config,
            progress=progress,
            **common,
        )
        qweights.update(vision_result.qweights)
        reports.extend(vision_result.blocks)
    if vision_blocks and tuner.needs_data:
        text_streams = Streams(
            full, capture_text_inputs(model, modules[block_names[0]], text_group, samples, device, cache)
        )
    result = quantize_blocks(
        model,
        group=text_group,
        block_names=block_names,
        tuner=tuner,
        config=job.tuning,
        progress=progress,
        streams=text_streams,
        weights=loaded.streamed,
        **common,
    )
    progress.finish()
    qweights.update(result.qweights)
    reports.extend(result.blocks)
    place_outside_blocks(model, [], torch.device("cpu"))  # streamed blocks stay on meta
    return TunedModel(
        loaded=loaded,
        qweights=qweights,
        decisions=decisions,
        block_groups=[*vision_blocks, text_group],
        blocks=reports,
        calibration=calibration,
        plan=plan,
        device=str(device),
        precision=precision.label,
        seconds=time.perf_counter() - started,
        model_dtype=DTYPE_NAMES.get(model_dtype, str(model_dtype)),
        notes=dtype_notes,
    )


def open_progress(job: QuantJob, model_dir: Path, *, resume: bool) -> ResumeState:
    """The progress folder of this job's output. Output-only settings (--force, shard size) may
    change between the killed run and its resumption; everything that shapes the tuning may not."""
    identity = job.to_dict()
    identity["export"] = {k: v for k, v in identity["export"].items() if k not in ("force", "max_shard_size")}
    identity.pop("memory")  # a run killed while streaming may resume without, and the other way
    fingerprint = {"job": identity, "model": model_fingerprint(model_dir)}
    folder = resume_dir_for(output_root(job))
    if resume and not (folder / "job.json").is_file():
        log.info("--resume: no unfinished run in %s; starting one", folder)
    return ResumeState.open(folder, fingerprint, resume=resume, force=job.export.force)


def check_architecture(
    model_dir: Path, config: dict[str, Any], job: QuantJob, family: ModelFamily
) -> list[str]:
    """Find the blocks to quantize on a meta-device skeleton, before any weight is read: an
    architecture without transformer blocks fails here in a second. Returns the blocks that can
    stream from disk (none when the skeleton cannot be built)."""
    try:
        skeleton = model_skeleton(model_dir, config, trust_remote_code=job.trust_remote_code)
    except UserError:
        raise
    except Exception as exc:  # remote code that cannot build on meta: the real load decides
        log.debug("no meta skeleton for %s: %s", model_dir, exc)
        return []
    blocks = select_blocks(skeleton, family, job.to_quant_block_names)
    modules = dict(skeleton.named_modules())
    if not any(isinstance(m, torch.nn.Linear) for name in blocks for m in modules[name].modules()):
        raise UserError(
            f"{config['architectures'][0]} has no transformer blocks with Linear layers to quantize "
            f"(found {blocks[0].rsplit('.', 1)[0]})",
            fix="auto-round-mllm quantizes decoder LLMs and vision-language models (auto-round-mllm list models)",
        )
    return streamable_blocks(blocks, len(modules[blocks[0].rsplit(".", 1)[0]]))


def streamable_blocks(chosen: list[str], group_size: int) -> list[str]:
    """The blocks that can stay on disk until reached: from the first chosen block to the end of
    its list. Blocks before it run in every capture forward, so they stay in memory."""
    group = chosen[0].rsplit(".", 1)[0]
    first = min(int(name.rsplit(".", 1)[1]) for name in chosen)
    return [f"{group}.{i}" for i in range(first, group_size)]


def check_something_quantizes(decisions: dict[str, LayerDecision], job: QuantJob) -> None:
    """A run that would quantize no layer is a mistake in the flags, not a success to report."""
    if any(d.quantized for d in decisions.values()):
        return
    if not decisions:
        raise UserError("the chosen blocks hold no Linear layer", fix="check --to_quant_block_names")
    first = next(iter(decisions.values()))
    if "group_size" in (first.reason or ""):
        widths = sorted({d.in_features for d in decisions.values()})
        raise UserError(
            f"group_size={job.scheme.group_size} fits no layer: no in_features "
            f"({', '.join(map(str, widths[:6]))}) is a multiple of it",
            fix="use a group_size that divides them (32, 64 or 128 usually do), or -1 for per-channel",
        )
    raise UserError(
        f"no layer of the chosen blocks can be quantized (first: {first.name}: {first.reason})",
        fix="check --fp_layers, --format and the scheme",
    )


def vision_tuning(tuning: TuningConfig) -> TuningConfig:
    """Vision blocks take one sample per step (auto-round's rule): their hidden states carry no
    batch dimension in several towers (Qwen2-VL's packed patches), so samples are not concatenated;
    gradient accumulation keeps the number of samples per step."""
    steps = tuning.batch_size * tuning.gradient_accumulate_steps
    return dataclasses.replace(tuning, batch_size=1, gradient_accumulate_steps=steps)


def capture_text_inputs(
    model: torch.nn.Module,
    block: torch.nn.Module,
    group: str,
    samples: list,
    device: torch.device,
    cache: CachePlacement,
) -> BlockInputs:
    place_outside_blocks(model, [group], device)
    return capture_block_inputs(model, block, samples, device=device, cache=cache)


def compute_device(job: QuantJob) -> torch.device:
    """Where blocks are tuned: ``--device``, or the first device of ``--device_map``."""
    spread = parse_device_map(job.memory.device_map)
    return spread[0] if spread else resolve_device(job.device)


def parameter_dtype(model: torch.nn.Module) -> torch.dtype:
    """The model's dtype as transformers reports it: its first floating-point parameter's."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def resolved_model_dtype(job: QuantJob, device: torch.device, stored: torch.dtype) -> torch.dtype:
    """The dtype the model is tuned and exported in: ``--model_dtype``, or under ``auto`` the
    checkpoint's, with fp32 cast to bf16 where AMP autocasts to bf16 (see :func:`tuning_dtype`)."""
    if job.model_dtype != "auto":
        return torch_dtype(job.model_dtype)
    return tuning_dtype(device, stored, amp=job.tuning.amp)


def load_dtype(job: QuantJob, config: dict[str, Any]) -> str:
    """The dtype to load the checkpoint in, so that an fp32 checkpoint tuned in bf16 is never
    held in memory in fp32 (twice the RSS of the model while it loads)."""
    stored = checkpoint_dtype(config)
    if job.model_dtype != "auto" or stored is None:
        return job.model_dtype
    wanted = resolved_model_dtype(job, compute_device(job), stored)
    return DTYPE_NAMES[wanted] if wanted != stored and wanted in DTYPE_NAMES else "auto"


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point parameters only: buffers such as rotary ``inv_freq`` stay in fp32, as
    ``from_pretrained(dtype=...)`` leaves them. The config follows, so the exported config.json
    names the dtype its tensors are written in."""
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    config = getattr(model, "config", None)
    if config is None:
        return
    config.dtype = dtype
    for key in getattr(config, "sub_configs", {}):
        if (sub := getattr(config, key, None)) is not None and hasattr(sub, "dtype"):
            sub.dtype = dtype


def write_formats(
    tuned: TunedModel, job: QuantJob, dirs: dict[str, Path], report: dict[str, Any]
) -> dict[str, str]:
    """Write every requested format, each with its quantization_report.json; all of them land
    together or none does."""
    loaded = tuned.loaded
    data = ExportInput(
        model=loaded.model,
        qweights=tuned.qweights,
        decisions=tuned.decisions,
        block_groups=tuned.block_groups,
        job=job,
        source_dir=loaded.source_dir,
        tokenizer=loaded.tokenizer,
        processor=loaded.processor,
        image_processor=loaded.image_processor,
        streamed=loaded.streamed,
    )
    with atomic_outputs(list(dirs.values()), force=job.export.force) as stagings:
        for (fmt, _), staging in zip(dirs.items(), stagings, strict=True):
            facts = EXPORTERS.get(fmt).write(data, staging)
            write_json(staging / "quantization_report.json", {**report, "format": fmt, "export": facts})
    return {fmt: str(folder) for fmt, folder in dirs.items()}


MARLIN_FORMATS = ("auto_round", "auto_round:auto_gptq", "auto_gptq")


def kernel_notes(job: QuantJob, tuned: TunedModel) -> dict[str, str]:
    """Layers vLLM's fast Marlin kernels cannot take, for the formats vLLM would run with Marlin."""
    if not any(fmt in MARLIN_FORMATS for fmt in job.export.formats):
        return {}
    return marlin_report(tuned.qweights)


def summarize(job: QuantJob, tuned: TunedModel) -> QuantResult:
    calib = tuned.calibration
    not_marlin = kernel_notes(job, tuned)
    notes = []
    if not_marlin:
        name, why = next(iter(not_marlin.items()))
        notes.append(
            f"{len(not_marlin)} of {len(tuned.qweights)} layers cannot use vLLM's Marlin kernels "
            f"(first: {name}: {why}); vLLM runs them on slower GPTQ/AWQ kernels"
        )
    if "auto_gptq" in job.export.formats and len(tuned.block_groups) > 1:
        notes.append(
            "auto_gptq with quantized vision blocks: transformers' GPTQ loader (optimum) reads one block "
            "list only; load it with auto_round_mllm.load_quantized or vLLM, or export auto_round"
        )
    return QuantResult(
        job=job,
        blocks=tuned.blocks,
        skipped_layers={d.name: d.reason or "" for d in tuned.decisions.values() if not d.quantized},
        quantized_layers=len(tuned.qweights),
        calibration=(
            {
                "source": calib.source,
                "samples": calib.used,
                "requested": calib.requested,
                "seqlen": calib.seqlen,
                "tokens": calib.tokens,
                "image_samples": calib.image_samples,
                "skipped_samples": calib.skipped,
                "missing_images": tuned.plan.source.missing_images if tuned.plan.source else 0,
                "template": tuned.plan.template.name,
            }
            if calib
            else {"template": tuned.plan.template.name}
        ),
        device=tuned.device,
        precision=tuned.precision,
        model_dtype=tuned.model_dtype,
        tune_seconds=tuned.seconds,
        notes=list(tuned.notes) + list(tuned.plan.notes) + (list(calib.notes) if calib else []) + notes,
        not_marlin=not_marlin,
    )


def quantize(
    job: QuantJob,
    loaded: LoadedModel | None = None,
    *,
    progress: ProgressSink | None = None,
    output_dirs: dict[str, Path] | None = None,
    resume: bool = False,
) -> QuantResult:
    """Load (unless given), tune and export; returns what the summary and report show.

    Progress is committed after every block to a folder beside the output (see
    :mod:`auto_round_mllm.pipeline.resume`); a matching unfinished run there is continued,
    ``resume`` insists on it."""
    started = time.perf_counter()
    check_job(job)
    dirs = output_dirs or format_dirs(output_root(job), job.export.formats)
    for folder in dirs.values():
        check_output_dir(folder, force=job.export.force)
    state = None
    if loaded is None:
        model_dir = resolve_model_dir(job.model)
        if output_dirs is None:
            state = open_progress(job, model_dir, resume=resume)
        config = read_config(model_dir)
        model_type = config.get("model_type", "")
        family = family_for_model_type(model_type)
        streamable = check_architecture(model_dir, config, job, family)
        plan = plan_calibration(job, model_type, family)
        loaded = load_model(
            str(model_dir),
            model_dtype=load_dtype(job, config),
            trust_remote_code=job.trust_remote_code,
            stream_blocks=streamable if job.memory.streaming and state is not None else None,
        )
    else:
        plan = plan_calibration(job, loaded.model_type, loaded.family)
    tuned = tune(job, loaded, progress, plan=plan, resume=state)
    result = summarize(job, tuned)
    if loaded.processor_notice:
        result.notes.append(loaded.processor_notice)
    result.peak_rss_gb = peak_rss_gb()
    device_peaks = [b.peak_device_gb for b in tuned.blocks if b.peak_device_gb is not None]
    result.peak_device_gb = max(device_peaks) if device_peaks else None
    result.outputs = write_formats(tuned, job, dirs, result.checkpoint_report())
    if state is not None:
        state.remove()
    result.total_seconds = time.perf_counter() - started
    result.peak_rss_gb = peak_rss_gb()
    return result


class AutoRoundMLLM:
    """auto-round's MLLM front end, so its README's usage runs with only the import changed::

        autoround = AutoRoundMLLM(model, tokenizer, processor, bits=4, group_size=128, sym=True)
        autoround.quantize()
        autoround.save_quantized(output_dir, format="auto_round", inplace=True)

    ``model`` is a loaded transformers model or a path / hub id. Keywords are the CLI flag names
    (``asym``, ``disable_amp``, ``not_use_best_mse`` ...) or auto-round's API names (``sym``,
    ``amp``, ``enable_minmax_tuning`` ...). It is a thin front over :func:`tune` and
    :func:`write_formats`, the functions the CLI runs.
    """

    # auto-round's API keyword -> (the CLI flag it inverts, the inversion)
    API_ALIASES: ClassVar[dict[str, tuple[str, Any]]] = {
        "sym": ("asym", lambda v: not v),
        "amp": ("disable_amp", lambda v: not v),
        "enable_minmax_tuning": ("disable_minmax_tuning", lambda v: not v),
        "enable_quanted_input": ("disable_quanted_input", lambda v: not v),
    }

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        processor: Any = None,
        image_processor: Any = None,
        **options: Any,
    ) -> None:
        from auto_round_mllm.config import job_from_flags
        from auto_round_mllm.models.family import family_for_model_type

        flags: dict[str, Any] = {}
        for key, value in options.items():
            if key in self.API_ALIASES:  # a switch given both ways is on if either spelling turns it on
                key, negate = self.API_ALIASES[key]
                value = flags.get(key, False) or negate(value)
            flags[key] = value
        is_path = isinstance(model, (str, Path))
        name = str(model) if is_path else getattr(model, "name_or_path", "") or type(model).__name__
        self.job = job_from_flags(model=name, **flags)
        trust_remote_code = self.job.trust_remote_code
        check_job(self.job)
        if is_path:
            config = read_config(resolve_model_dir(str(model)))
            self.loaded = load_model(
                str(model), model_dtype=load_dtype(self.job, config), trust_remote_code=trust_remote_code
            )
        else:
            if tokenizer is None:
                tokenizer = getattr(processor, "tokenizer", None)
            if tokenizer is None:
                raise UserError(
                    "AutoRoundMLLM needs a tokenizer with a loaded model",
                    fix="pass tokenizer= (or a processor that has one)",
                )
            source = Path(getattr(model, "name_or_path", "") or ".")
            self.loaded = LoadedModel(
                model=model,
                family=family_for_model_type(model.config.model_type),
                source_dir=source if (source / "config.json").is_file() else None,
                tokenizer=tokenizer,
                processor=processor,
                image_processor=image_processor or getattr(processor, "image_processor", None),
            )
        self.tuned: TunedModel | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    def quantize(self) -> tuple[torch.nn.Module, dict[str, dict[str, Any]]]:
        """Tune every text block; the model keeps fake-quantized weights. Returns (model, layer config)."""
        self.tuned = tune(self.job, self.loaded)
        layer_config = {
            name: dataclasses.asdict(d.scheme) if d.scheme else {"bits": 16, "reason": d.reason}
            for name, d in self.tuned.decisions.items()
        }
        return self.model, layer_config

    def save_quantized(
        self, output_dir: str | Path, format: str = "auto_round", inplace: bool = True, force: bool = True
    ) -> torch.nn.Module:
        """Write the checkpoint into ``output_dir`` (one sub-folder per format when several are given).

        ``inplace`` is accepted for auto-round compatibility: the in-memory model keeps its
        fake-quantized weights either way, and packing never modifies it.
        """
        if self.tuned is None:
            self.quantize()
        assert self.tuned is not None
        formats = tuple(f.strip() for f in format.split(",") if f.strip())
        job = dataclasses.replace(
            self.job,
            export=dataclasses.replace(
                self.job.export, formats=formats, output_dir=str(output_dir), force=force
            ),
        )
        check_job(job)
        dirs = format_dirs(Path(output_dir), formats)
        result = summarize(job, self.tuned)
        write_formats(self.tuned, job, dirs, result.checkpoint_report())
        return self.model
