"""Where a job's checkpoints go and how the requested formats are written together.

``<output_dir>/<model name>-<scheme label>`` is auto-round's habit; several formats get one
sub-folder each. Every format is written into a staging folder, then the run's report is made from
what the exporters said they wrote (:data:`ExportFacts`) and placed beside each checkpoint, and only
then do all the folders land, together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from auto_round_mllm.config import QuantJob
from auto_round_mllm.export.base import EXPORTERS, ExportInput
from auto_round_mllm.export.writer import atomic_outputs, write_json

ExportFacts = dict[str, Any]
"""What one exporter reports about the checkpoint it wrote (packing, layers vLLM's Marlin kernels
cannot take, ...)."""

MARLIN_FORMATS = ("auto_round", "auto_round:auto_gptq", "auto_gptq")
"""Formats vLLM runs with its Marlin kernels where the layer shapes allow."""

REPORT_FILE = "quantization_report.json"


def output_root(job: QuantJob) -> Path:
    """auto-round's habit: ``<output_dir>/<model name>-w{bits}g{group_size}[-asym]``."""
    name = Path(job.model.removeprefix("local:").rstrip("/")).name or "model"
    return Path(job.export.output_dir) / f"{name}-{job.scheme.label}"


def format_dirs(root: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """One format: the root itself. Several: one sub-folder per format."""
    if len(formats) == 1:
        return {formats[0]: root}
    return {fmt: root / fmt.replace(":", "-") for fmt in formats}


def not_marlin(facts: dict[str, ExportFacts]) -> dict[str, str]:
    """The layers Marlin cannot take, as the exporters of Marlin formats found them ({} when no
    format written is one vLLM would run with Marlin)."""
    for fmt, found in facts.items():
        if fmt in MARLIN_FORMATS:
            return found["not_marlin"]
    return {}


def write_formats(
    data: ExportInput,
    dirs: dict[str, Path],
    report: Callable[[dict[str, ExportFacts]], dict[str, Any]],
    *,
    force: bool,
) -> dict[str, ExportFacts]:
    """Write every format of ``dirs``; ``report`` turns the exporters' facts into the report that
    goes beside each checkpoint (with its own format and facts added). Returns the facts."""
    with atomic_outputs(list(dirs.values()), force=force) as stagings:
        facts = {
            fmt: EXPORTERS.get(fmt).write(data, staging) for fmt, staging in zip(dirs, stagings, strict=True)
        }
        common = report(facts)
        for fmt, staging in zip(dirs, stagings, strict=True):
            write_json(staging / REPORT_FILE, {**common, "format": fmt, "export": facts[fmt]})
    return facts
