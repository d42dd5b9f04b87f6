"""Rendering for people: a live progress bar per block and the summary table at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from auto_round_mllm.pipeline.blockwise import BlockReport, ProgressSink
from auto_round_mllm.report import QuantResult

if TYPE_CHECKING:
    from auto_round_mllm.evaluate.lm_eval_tasks import LmEvalResult

OWN_SCHEMES_SHOWN = 20
"""Layers with a scheme of their own listed one per line; a mixed-bits run lists the count of the rest."""


def fmt_loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


class RichProgress(ProgressSink):
    """One bar over blocks, one over the current block's iterations, a line per finished block."""

    def __init__(self, console: Console, iters: int) -> None:
        self.console = console
        self.iters = iters
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.blocks_task = None
        self.iters_task = None
        self.total = 0
        self.done = 0

    def start(self, total_blocks: int) -> None:
        self.total = total_blocks
        self.progress.start()
        self.blocks_task = self.progress.add_task("blocks", total=total_blocks)
        if self.iters:
            self.iters_task = self.progress.add_task("iters", total=self.iters)

    def step(self, step: int) -> None:
        if self.iters_task is not None:
            self.progress.update(self.iters_task, completed=step + 1)

    def block_done(self, report: BlockReport) -> None:
        self.done += 1
        index = self.done
        losses = ""
        if report.rtn_loss is not None:
            losses = (
                f"  loss iter0 {fmt_loss(report.first_loss)} -> best {fmt_loss(report.best_loss)}"
                f"  block MSE RTN {fmt_loss(report.rtn_loss)} -> {fmt_loss(report.final_loss)}"
            )
        self.progress.console.print(
            f"[bold]block {index}/{self.total}[/] {report.name}: "
            f"{report.quantized_layers}/{report.total_layers} layers{losses}  {report.seconds:.1f}s"
        )
        self.progress.update(self.blocks_task, completed=index)
        if self.iters_task is not None:
            self.progress.reset(self.iters_task)

    def finish(self) -> None:
        self.progress.stop()


def render_summary(console: Console, result: QuantResult) -> None:
    groups = sorted({block.name.rsplit(".", 1)[0] for block in result.blocks if "." in block.name})
    groups += [block.name for block in result.blocks if "." not in block.name]  # lm_head
    table = Table(title="auto-round-mllm summary", title_justify="left")
    for column, justify in (
        ("block", "left"),
        ("layers", "right"),
        ("RTN MSE", "right"),
        ("tuned MSE", "right"),
        ("change", "right"),
        ("time", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for block in result.blocks:
        change = "-"
        if block.rtn_loss and block.final_loss is not None:
            change = f"{(block.final_loss / block.rtn_loss - 1) * 100:+.1f}%"
        table.add_row(
            block.name.rsplit(".", 1)[-1],  # a block's index; lm_head's own name
            f"{block.quantized_layers}/{block.total_layers}",
            fmt_loss(block.rtn_loss),
            fmt_loss(block.final_loss),
            change,
            f"{block.seconds:.1f}s",
        )
    console.print(table)
    job = result.job
    method = f"SignRound, {job.tuning.iters} iters" if job.tuning.iters else "RTN"
    lines = [
        f"blocks      {', '.join(groups)} ({len(result.blocks)} tuned)",
        f"scheme      {job.scheme.label} ({'sym' if job.scheme.sym else 'asym'}), {method}",
        f"layers      {result.quantized_layers} quantized"
        + (f" ({len(result.own_schemes)} with a scheme of their own)" if result.own_schemes else "")
        + f", {len(result.skipped_layers)} kept in 16 bit",
        f"device      {result.device} ({result.precision} compute, {result.model_dtype} weights)",
        f"time        {result.total_seconds:.1f}s total, {result.tune_seconds:.1f}s tuning",
        f"memory      peak RSS {result.peak_rss_gb:.2f} GiB"
        + (f", peak device {result.peak_device_gb:.2f} GiB" if result.peak_device_gb is not None else ""),
    ]
    calib = result.calibration
    if "samples" in calib:
        images = f", {calib['image_samples']} with images" if calib["image_samples"] else ""
        lines.append(
            f"calibration {calib['samples']} samples of up to {calib['seqlen']} tokens{images} from "
            f"{calib['source']}, template {calib['template']}"
            + (f" (asked for {calib['requested']})" if calib["samples"] < calib["requested"] else "")
        )
        if calib["missing_images"]:
            lines.append(f"images      {calib['missing_images']} missing (see notes)")
    for fmt, folder in result.outputs.items():
        lines.append(f"output      {folder} ({fmt})")
    for line in lines:
        console.print(line)
    own = list(result.own_schemes.items())
    for name, reason in own[:OWN_SCHEMES_SHOWN]:
        console.print(f"[yellow]own scheme[/] {name}: {reason}")
    if len(own) > OWN_SCHEMES_SHOWN:
        console.print(f"[yellow]own scheme[/] ... and {len(own) - OWN_SCHEMES_SHOWN} more (see the report)")
    for name, reason in result.skipped_layers.items():
        console.print(f"[yellow]kept in 16 bit[/] {name}: {reason}")
    for note in result.notes:
        console.print(f"[yellow]note[/] {note}")


def fmt_metric(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4e}"


def render_lm_eval(console: Console, result: LmEvalResult) -> None:
    """lm-eval's numbers, one row per metric with its standard error, each task's first row
    saying how many documents it scored and with how many few-shot examples."""
    table = Table(
        title=f"lm-eval {result.lm_eval_version} on {result.model} ({result.seconds:.1f}s)",
        title_justify="left",
    )
    for column, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("stderr", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    shown: set[str] = set()
    for task, metric, value, stderr in result.rows():
        label = ""
        if task not in shown:
            shown.add(task)
            docs = result.samples.get(task)
            shots = result.num_fewshot.get(task)
            details = [
                f"{docs} docs" if docs is not None else "",
                f"{shots}-shot" if shots is not None else "",
            ]
            label = task + (f" ({', '.join(d for d in details if d)})" if any(details) else "")
        table.add_row(label, metric, fmt_metric(value), "-" if stderr is None else fmt_metric(stderr))
    console.print(table)
