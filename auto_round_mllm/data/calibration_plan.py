"""The chat template and the calibration samples of a job, decided before any weight is loaded:
a malformed template, a missing dataset or too many missing images fail in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from auto_round_mllm.config import QuantJob
from auto_round_mllm.data.sample import SourceSamples
from auto_round_mllm.data.sources import EMBEDDED, EMBEDDED_IMAGES, default_dataset_for, load_samples
from auto_round_mllm.data.templates import ChatTemplate, resolve_template
from auto_round_mllm.errors import UserError
from auto_round_mllm.models.family import ModelFamily


@dataclass
class CalibrationPlan:
    """Template and calibration samples (None for round-to-nearest, which needs no data)."""

    template: ChatTemplate
    source: SourceSamples | None
    notes: list[str] = field(default_factory=list)


def plan_calibration(job: QuantJob, model_type: str, family: ModelFamily) -> CalibrationPlan:
    """The template the job names (else the family's) and the samples of its dataset (else the
    template's default); image-text data where the family or ``--quant_nontext_module`` needs it."""
    template, notice = resolve_template(
        job.data.template, family.template if family.model_types else model_type
    )
    notes = [notice] if notice else []
    if job.tuning.iters == 0 and not job.tuning.opt_rtn and not job.mixed.active:
        return CalibrationPlan(template, None, notes)  # plain round-to-nearest reads no data
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
