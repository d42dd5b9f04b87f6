"""What a run reports: :class:`QuantResult`, which the command prints (or writes as ``--json``) and
whose checkpoint part is written beside the weights as quantization_report.json.

The facts about the checkpoint come from where they were decided: the layer plan (layers kept in
16 bit and why), the tuning run (blocks, losses, calibration) and the exporters (layers vLLM's
Marlin kernels cannot take); nothing here recomputes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from auto_round_mllm.config import QuantJob
from auto_round_mllm.pipeline.blockwise import BlockReport
from auto_round_mllm.pipeline.run import TunedModel


@dataclass
class QuantResult:
    job: QuantJob
    outputs: dict[str, str] = field(default_factory=dict)
    blocks: list[BlockReport] = field(default_factory=list)
    skipped_layers: dict[str, str] = field(default_factory=dict)
    own_schemes: dict[str, str] = field(default_factory=dict)
    """Layers quantized with a scheme of their own (--layer_config, a smaller group size), and why."""
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


def calibration_facts(tuned: TunedModel) -> dict[str, Any]:
    """The calibration set as the summary shows it (only the template for round-to-nearest)."""
    calib, plan = tuned.calibration, tuned.plan
    if calib is None:
        return {"template": plan.template.name}
    return {
        "source": calib.source,
        "samples": calib.used,
        "requested": calib.requested,
        "seqlen": calib.seqlen,
        "tokens": calib.tokens,
        "image_samples": calib.image_samples,
        "skipped_samples": calib.skipped,
        "missing_images": plan.source.missing_images if plan.source else 0,
        "template": plan.template.name,
    }


def format_notes(job: QuantJob, tuned: TunedModel, not_marlin: dict[str, str]) -> list[str]:
    """What the user should know about the formats written."""
    notes = []
    if not_marlin:
        name, why = next(iter(not_marlin.items()))
        notes.append(
            f"{len(not_marlin)} of {len(tuned.qweights)} layers cannot use vLLM's Marlin kernels "
            f"(first: {name}: {why}); vLLM runs them on slower GPTQ/AWQ kernels"
        )
    gptq = [fmt for fmt in job.export.formats if fmt in ("auto_gptq", "gptq_v2")]
    if gptq and len(tuned.block_groups) > 1:
        notes.append(
            f"{gptq[0]} with quantized vision blocks: transformers' GPTQ loader (optimum) reads one block "
            "list only; load it with auto_round_mllm.load_quantized or vLLM, or export auto_round"
        )
    return notes


def summarize(
    job: QuantJob, tuned: TunedModel, not_marlin: dict[str, str], *, extra_notes: tuple[str, ...] = ()
) -> QuantResult:
    """The result of tuning ``job`` into ``tuned``; ``not_marlin`` is what the exporters of Marlin
    formats found (see :func:`~auto_round_mllm.export.outputs.not_marlin`)."""
    calib = tuned.calibration
    device_peaks = [b.peak_device_gb for b in tuned.blocks if b.peak_device_gb is not None]
    return QuantResult(
        job=job,
        blocks=tuned.blocks,
        skipped_layers={d.name: d.reason or "" for d in tuned.decisions.values() if not d.quantized},
        own_schemes={d.name: d.note for d in tuned.decisions.values() if d.quantized and d.note},
        quantized_layers=len(tuned.qweights),
        calibration=calibration_facts(tuned),
        device=tuned.device,
        precision=tuned.precision,
        model_dtype=tuned.model_dtype,
        tune_seconds=tuned.seconds,
        peak_device_gb=max(device_peaks) if device_peaks else None,
        notes=[
            *tuned.notes,
            *tuned.plan.notes,
            *(calib.notes if calib else []),
            *format_notes(job, tuned, not_marlin),
            *extra_notes,
        ],
        not_marlin=not_marlin,
    )
