"""``quantize(job)``, the one orchestration function behind the command, and ``AutoRoundMLLM``,
auto-round's Python front end; both run the same steps:

1. :func:`~auto_round_mllm.preflight.preflight`: every check that needs no weights -> a run plan.
2. :func:`~auto_round_mllm.models.loading.load_model` (streaming the decoder blocks when it can),
   with a resume folder beside the output (:mod:`~auto_round_mllm.pipeline.resume`).
3. :func:`tune`: the tuning run (:mod:`~auto_round_mllm.pipeline.run`) with the layer checks of
   the requested formats.
4. :func:`write_formats`: every format, with the report (:mod:`~auto_round_mllm.report`) beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from auto_round_mllm.config import QuantJob
from auto_round_mllm.data.calibration_plan import CalibrationPlan
from auto_round_mllm.export import EXPORTERS, ExportInput
from auto_round_mllm.export import outputs as export_outputs
from auto_round_mllm.export.outputs import ExportFacts, format_dirs, not_marlin, output_root
from auto_round_mllm.models.layer_plan import LayerCheck, one_scheme_check
from auto_round_mllm.models.loading import LoadedModel, load_model, loaded_from_objects
from auto_round_mllm.pipeline import run
from auto_round_mllm.pipeline.blockwise import ProgressSink
from auto_round_mllm.pipeline.resume import ResumeState, open_progress
from auto_round_mllm.pipeline.run import TunedModel
from auto_round_mllm.preflight import Devices, ModelPlan, check_job, plan_model, preflight
from auto_round_mllm.report import QuantResult, summarize
from auto_round_mllm.utils.memory import peak_rss_gb

log = logging.getLogger(__name__)

__all__ = ["AutoRoundMLLM", "QuantResult", "TunedModel", "quantize", "tune", "write_formats"]


def layer_checks(job: QuantJob) -> list[LayerCheck]:
    """Which Linears the job's formats cannot store: each format's own check, and for formats
    with one scheme for all layers, any layer whose scheme differs from the job's."""
    exporters = {fmt: EXPORTERS.get(fmt) for fmt in job.export.formats}
    checks: list[LayerCheck] = [
        functools.partial(exporter.layer_problem, job_scheme=job.scheme) for exporter in exporters.values()
    ]
    single = [fmt for fmt, exporter in exporters.items() if not exporter.per_layer_schemes]
    if single:
        checks.append(one_scheme_check(job.scheme, single))
    return checks


def tune(
    job: QuantJob,
    loaded: LoadedModel,
    progress: ProgressSink | None = None,
    *,
    plan: CalibrationPlan | None = None,
    resume: ResumeState | None = None,
    devices: Devices | None = None,
) -> TunedModel:
    """Tune ``loaded`` for ``job``: the tuning run, told which Linears the job's formats cannot store."""
    devices = devices or check_job(job)
    return run.tune(
        job,
        loaded,
        progress,
        device=devices.compute,
        spread=list(devices.spread) if devices.spread else None,
        layer_checks=layer_checks(job),
        plan=plan,
        resume=resume,
    )


def write_formats(
    tuned: TunedModel,
    job: QuantJob,
    dirs: dict[str, Path],
    report: Callable[[dict[str, ExportFacts]], dict[str, Any]] | None = None,
) -> dict[str, ExportFacts]:
    """Write every format of ``dirs``, all landing together or none; ``report`` makes the report
    written beside each from the exporters' facts (by default the run's summary)."""
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
        tensors=tuned.tensors,
    )
    report = report or (lambda facts: summarize(job, tuned, not_marlin(facts)).checkpoint_report())
    return export_outputs.write_formats(data, dirs, report, force=job.export.force)


def load_planned(job: QuantJob, model: ModelPlan, *, stream: bool) -> LoadedModel:
    """Load the model preflight checked, in the dtype it chose (``stream``: blocks from disk)."""
    return load_model(
        str(model.folder),
        model_dtype=model.load_dtype,
        trust_remote_code=job.trust_remote_code,
        stream_blocks=list(model.streamable) if stream and job.memory.streaming else None,
        config=model.config,
    )


def quantize(
    job: QuantJob,
    loaded: LoadedModel | None = None,
    *,
    progress: ProgressSink | None = None,
    output_dirs: dict[str, Path] | None = None,
    resume: bool = False,
) -> QuantResult:
    """Check, load (unless given), tune and export; returns what the summary and report show.

    Progress is committed after every block to a folder beside the output (see
    :mod:`auto_round_mllm.pipeline.resume`); a matching unfinished run there is continued,
    ``resume`` insists on it. Streaming needs that folder, so it applies to the job's own outputs."""
    started = time.perf_counter()
    plan = preflight(job, loaded=loaded, output_dirs=output_dirs)
    state = None
    if loaded is None:
        assert plan.model is not None
        if output_dirs is None:
            state = open_progress(job, plan.model.folder, output_root(job), resume=resume)
        loaded = load_planned(job, plan.model, stream=state is not None)
    tuned = tune(job, loaded, progress, plan=plan.calibration, resume=state, devices=plan.devices)
    notes = (loaded.processor_notice,) if loaded.processor_notice else ()
    result: QuantResult | None = None

    def report(facts: dict[str, ExportFacts]) -> dict[str, Any]:
        nonlocal result
        result = summarize(job, tuned, not_marlin(facts), extra_notes=notes)
        return result.checkpoint_report()

    write_formats(tuned, job, plan.output_dirs, report)
    assert result is not None
    result.outputs = {fmt: str(folder) for fmt, folder in plan.output_dirs.items()}
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

    ``model`` is a loaded transformers model or a path / hub id. Keywords are the command's flag
    names in any spelling (``asym``, ``bs``, ``enable_torch_compile`` ...) or auto-round's API names
    (``sym``, ``amp``, ``enable_minmax_tuning`` ...): see :mod:`auto_round_mllm.flags`. It runs
    :func:`tune` and :func:`write_formats`, the functions the command runs.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        processor: Any = None,
        image_processor: Any = None,
        **options: Any,
    ) -> None:
        from auto_round_mllm.flags import job_from_keywords

        is_path = isinstance(model, (str, Path))
        name = str(model) if is_path else getattr(model, "name_or_path", "") or type(model).__name__
        self.job, run_options = job_from_keywords(name, options, caller="AutoRoundMLLM()")
        self._apply_run_options(run_options)
        self.devices = check_job(self.job)
        if is_path:
            self.loaded = load_planned(self.job, plan_model(self.job, self.devices), stream=False)
        else:
            self.loaded = loaded_from_objects(model, tokenizer, processor, image_processor)
        self.tuned: TunedModel | None = None

    @staticmethod
    def _apply_run_options(options: dict[str, Any]) -> None:
        """``debug`` turns on this package's debug log; the command's other run options (``json``,
        ``eval``, ``resume``) have no meaning here, and a warning says so rather than failing a
        script that passes its whole flag dictionary."""
        if options.pop("debug", False):
            logging.getLogger("auto_round_mllm").setLevel(logging.DEBUG)
        ignored = sorted(key for key, value in options.items() if value)
        if ignored:
            log.warning(
                "AutoRoundMLLM: %s shape(s) the command line's run and do nothing here "
                "(quantize(job, resume=True) resumes; evaluate() checks a checkpoint, "
                "evaluate_tasks() runs lm-eval on one)",
                ", ".join(ignored),
            )

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    def quantize(self) -> tuple[torch.nn.Module, dict[str, dict[str, Any]]]:
        """Tune every text block; the model keeps fake-quantized weights. Returns (model, layer config)."""
        self.tuned = tune(self.job, self.loaded, devices=self.devices)
        layer_config = {
            name: dataclasses.asdict(d.scheme) if d.scheme else {"bits": 16, "reason": d.reason}
            for name, d in self.tuned.decisions.items()
        }
        return self.model, layer_config

    def quantize_and_save(
        self,
        output_dir: str | Path = "tmp_autoround",
        format: str | None = "auto_round",
        inplace: bool = True,
        max_shard_size: int | str | None = None,
        **kwargs: Any,
    ) -> tuple[torch.nn.Module, list[str]]:
        """auto-round's one call: tune, then write every format of ``format`` (a comma list) into
        ``output_dir`` (one sub-folder per format when several). Returns (model, the folders)."""
        if kwargs:
            raise TypeError(
                f"quantize_and_save() got unexpected keyword arguments: {', '.join(sorted(kwargs))}"
            )
        format = format or "auto_round"
        self.quantize()
        self.save_quantized(output_dir, format=format, inplace=inplace, max_shard_size=max_shard_size)
        formats = tuple(f.strip() for f in format.split(",") if f.strip())
        return self.model, [str(folder) for folder in format_dirs(Path(output_dir), formats).values()]

    def save_quantized(
        self,
        output_dir: str | Path,
        format: str = "auto_round",
        inplace: bool = True,
        force: bool = True,
        max_shard_size: int | str | None = None,
    ) -> torch.nn.Module:
        """Write the checkpoint into ``output_dir`` (one sub-folder per format when several are given).

        ``inplace`` is accepted for auto-round compatibility: the in-memory model keeps its
        fake-quantized weights either way, and packing never modifies it.
        """
        if self.tuned is None:
            self.quantize()
        assert self.tuned is not None
        formats = tuple(f.strip() for f in format.split(",") if f.strip())
        export = dataclasses.replace(
            self.job.export,
            formats=formats,
            output_dir=str(output_dir),
            force=force,
            max_shard_size=str(max_shard_size or self.job.export.max_shard_size),
        )
        job = dataclasses.replace(self.job, export=export)
        check_job(job)
        write_formats(self.tuned, job, format_dirs(Path(output_dir), formats))
        return self.model


AutoRound = AutoRoundMLLM
"""auto-round's text-model front end: the same class (text models need no processor)."""
