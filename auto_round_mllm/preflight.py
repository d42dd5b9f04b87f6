"""Every check that needs no weights, run before any is read, and the frozen plan of the run.

A wrong flag must fail in a second, not after an hour of tuning: the device, the device map, the
cache folder, the scheme against every requested format, the output folders, the model folder and
its config.json, the architecture (on a meta-device skeleton), the chat template and the
calibration data are all checked here, in that order. What they decided is handed on as a
:class:`RunPlan`, so nothing downstream parses a flag or reads config.json again.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auto_round_mllm.config import SCALE_DTYPES, QuantJob
from auto_round_mllm.data.calibration_plan import CalibrationPlan, plan_calibration
from auto_round_mllm.errors import UserError
from auto_round_mllm.export import EXPORTERS
from auto_round_mllm.export.outputs import format_dirs, output_root
from auto_round_mllm.export.writer import check_output_dir
from auto_round_mllm.layer_config import check_layer_config
from auto_round_mllm.models.architecture import model_skeleton
from auto_round_mllm.models.family import ModelFamily, family_for_model_type, select_blocks
from auto_round_mllm.models.loading import LoadedModel, read_config, resolve_model_dir
from auto_round_mllm.pipeline.head import head_problem
from auto_round_mllm.pipeline.placement import parse_device_map
from auto_round_mllm.utils.device import resolve_device
from auto_round_mllm.utils.dtype_policy import load_dtype_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Devices:
    """Where a run computes: ``--device``, or the first device of ``--device_map`` (``spread``)."""

    compute: torch.device
    spread: tuple[torch.device, ...] | None = None


@dataclass(frozen=True)
class ModelPlan:
    """The checkpoint on disk, as read before loading it."""

    folder: Path
    config: dict[str, Any]
    family: ModelFamily
    streamable: tuple[str, ...]
    """Blocks that can stay on disk until the pipeline reaches them (none when no skeleton builds)."""
    load_dtype: str
    """The dtype name to load in (see :func:`~auto_round_mllm.utils.dtype_policy.load_dtype_name`)."""


@dataclass(frozen=True)
class RunPlan:
    """What preflight decided: devices, output folders, the model (None when a loaded model was
    handed in) and the calibration plan."""

    job: QuantJob
    devices: Devices
    output_dirs: dict[str, Path]
    model: ModelPlan | None
    calibration: CalibrationPlan


def check_job(job: QuantJob) -> Devices:
    """Checks of the job alone: the device and device map exist, the cache folder is writable,
    and each format accepts the scheme."""
    device = resolve_device(job.device)
    spread = parse_device_map(job.memory.device_map)
    if job.memory.cache_dir is not None:
        check_cache_dir(Path(job.memory.cache_dir))
    check_layer_config(job.layer_config, job.scheme)
    check_mixed_bits(job)
    check_lm_head_flags(job)
    for fmt in job.export.formats:
        exporter = EXPORTERS.get(fmt)
        exporter.check(job.scheme)
        check_scale_storage(fmt, exporter.scale_storage, job.tuning.scale_dtype)
    return Devices(spread[0], tuple(spread)) if spread else Devices(device)


EXACT_IN = {"float16": ("float16", "bfloat16"), "bfloat16": ("bfloat16",), "float32": SCALE_DTYPES}
"""Scale dtypes whose tuned values a stored dtype holds exactly. fp16 holds every bf16 value from
2**-17 up (its subnormals are spaced 2**-24, as bf16 values are there), and bf16 scales never go
below 1e-5 (quant/ops.py ``scale_eps``); fp32's 1e-8 floor and its 24-bit mantissa it does not."""


def check_scale_storage(fmt: str, stored: str | None, scale_dtype: str) -> None:
    """The checkpoint must be the tuned model: refuse a scale dtype the format cannot store."""
    if stored is None or scale_dtype in EXACT_IN[stored]:
        return
    raise UserError(
        f"--scale_dtype {scale_dtype} cannot be stored by --format {fmt}: it writes {stored} scales, "
        "so the checkpoint would not be the model that was tuned",
        fix=f"use --scale_dtype {' or '.join(EXACT_IN[stored])}, or --format fake",
    )


def check_mixed_bits(job: QuantJob) -> None:
    """``--schemes`` needs formats that carry per-layer schemes, in a packing that holds them all."""
    if not job.mixed.active:
        return
    for fmt in job.export.formats:
        if not EXPORTERS.get(fmt).per_layer_schemes:
            raise UserError(
                f"--schemes mixes schemes per layer, which --format {fmt} cannot store (one scheme for all layers)",
                fix="use --format auto_round, auto_gptq or llm_compressor",
            )
    awq_packed = [f for f in job.export.formats if f in ("auto_round", "auto_round:auto_awq")]
    if not job.scheme.sym and awq_packed:
        raise UserError(
            f"--schemes with --asym: --format {awq_packed[0]} packs asymmetric weights as AWQ, which holds "
            "4-bit layers only",
            fix="use --format llm_compressor or gptq_v2 (exact zero points at any width), or symmetric schemes",
        )


def check_lm_head_flags(job: QuantJob) -> None:
    """``--quant_lm_head`` needs a format whose loaders read a quantized lm_head, and is not mixed
    (the allocation measures the blocks' layers only); ``--untie_embeddings`` only serves it."""
    if job.untie_embeddings and not job.quant_lm_head:
        raise UserError(
            "--untie_embeddings unties lm_head so that --quant_lm_head can quantize it alone, but "
            "--quant_lm_head is not given",
            fix="add --quant_lm_head, or leave --untie_embeddings out",
        )
    if not job.quant_lm_head:
        return
    for fmt in job.export.formats:
        if not EXPORTERS.get(fmt).quantized_head:
            raise UserError(
                f"--quant_lm_head with --format {fmt}: its loaders keep lm_head in 16 bit",
                fix="use --format auto_round, auto_gptq or llm_compressor, or leave --quant_lm_head out",
            )
    if job.mixed.active:
        raise UserError(
            "--quant_lm_head with --schemes: the mixed-bits allocation measures the blocks' layers, not lm_head",
            fix='give lm_head its scheme with --layer_config \'{"lm_head": "W8A16"}\' instead of --schemes, '
            "or leave --quant_lm_head out",
        )


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
    if job.quant_lm_head:
        problem = head_problem(skeleton, job, blocks[0].rsplit(".", 1)[0])
        if problem is not None:
            raise problem
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


def plan_model(job: QuantJob, devices: Devices) -> ModelPlan:
    """The model folder, config.json, family, streamable blocks and load dtype."""
    folder = resolve_model_dir(job.model)
    config = read_config(folder)
    family = family_for_model_type(config.get("model_type", ""))
    streamable = check_architecture(folder, config, job, family)
    load_dtype = load_dtype_name(job.model_dtype, devices.compute, config, amp=job.tuning.amp)
    return ModelPlan(folder, config, family, tuple(streamable), load_dtype)


def preflight(
    job: QuantJob, *, loaded: LoadedModel | None = None, output_dirs: dict[str, Path] | None = None
) -> RunPlan:
    """Every check that needs no weights, in the order a user would fix them. ``output_dirs``
    replaces the job's own output folders; with ``loaded``, the model on disk is not checked."""
    devices = check_job(job)
    dirs = output_dirs or format_dirs(output_root(job), job.export.formats)
    for folder in dirs.values():
        check_output_dir(folder, force=job.export.force)
    if loaded is not None:
        return RunPlan(job, devices, dirs, None, plan_calibration(job, loaded.model_type, loaded.family))
    model = plan_model(job, devices)
    calibration = plan_calibration(job, model.config.get("model_type", ""), model.family)
    return RunPlan(job, devices, dirs, model, calibration)
