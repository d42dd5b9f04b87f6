"""The ``auto-round-mllm`` command: flags -> QuantJob -> api.quantize -> summary (or ``--json``).

Every flag takes auto-round's underscore spelling and the dashed one (``--group_size`` and
``--group-size``), plus auto-round's aliases (``--bs``, ``--iter``, ``--nsample`` ...), so existing
batch scripts run unchanged. User mistakes print one line and exit 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from auto_round_mllm.errors import UserError

EXAMPLES = """
\b
Examples:
  auto-round-mllm --model ./Qwen2-VL-2B-Instruct --bits 4 --group_size 128
  auto-round-mllm --model Qwen/Qwen2-VL-7B-Instruct --scheme W2A16G64 --iters 400 --output_dir ./out
  auto-round-mllm --model ./llava-1.5-7b-hf --asym --dataset ./calib.jsonl --nsamples 64 --seqlen 1024
  auto-round-mllm --model ./model --iters 0 --json        # round-to-nearest, summary as JSON
  auto-round-mllm list schemes
"""

app = typer.Typer(
    name="auto-round-mllm",
    help="Quantize vision-language models to 2/3/4/8-bit weights with SignRound.\n\n" + EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    pretty_exceptions_enable=False,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
)


def names(*flags: str) -> list[str]:
    """Each flag in its underscore and dashed spellings."""
    out: list[str] = []
    for flag in flags:
        for spelling in (flag, "--" + flag[2:].replace("_", "-")):
            if spelling not in out:
                out.append(spelling)
    return out


def quantize_command(ctx: typer.Context, **values: Any) -> None:
    """Quantize a model (the flags are listed below)."""
    if ctx.invoked_subcommand is not None:
        return
    if values["model"] is None:
        raise UserError("no model given", fix="pass --model PATH_OR_HUB_ID (see auto-round-mllm --help)")
    setup_logging(debug=values["debug"])
    from auto_round_mllm.autoround_flags import BY_NAME as FOREIGN
    from auto_round_mllm.autoround_flags import check_foreign
    from auto_round_mllm.flags import RUN_OPTIONS, job_from_flags

    check_foreign({name: values.pop(name) for name in FOREIGN})
    run = {name: values.pop(name) for name in RUN_OPTIONS}
    settings = lm_eval_settings(run)
    # Only the flags typed: a flag left at its default must not override --recipe (and sets the
    # job's default anyway).
    job = job_from_flags(**{name: value for name, value in values.items() if given(ctx, name)})
    if run["resume"] and job.export.force:
        raise UserError(
            "--resume and --force contradict each other (--force discards an unfinished run)",
            fix="pass --resume to continue it, or --force to start again",
        )
    tasks = None
    if settings is not None:  # before quantizing: a typo in --tasks must not cost the whole run
        from auto_round_mllm.evaluate.lm_eval_tasks import prepare

        tasks = prepare(settings)
    run_job(job, json_output=run["json"], run_eval=run["eval"], resume=run["resume"], tasks=tasks)


def lm_eval_settings(values: dict[str, Any], *, unused_too: tuple[str, ...] = ()) -> Any:
    """The lm-eval settings among the command's values (taken out of ``values``), or None without
    ``--tasks``; lm-eval options given without it are named in a warning, not silently dropped."""
    from auto_round_mllm.evaluate.lm_eval_tasks import OPTION_NAMES, LmEvalSettings

    options = {name: values.pop(name) for name in OPTION_NAMES}
    if options["tasks"] is not None:
        return LmEvalSettings(**options)
    unused = [f"--{name}" for name, value in options.items() if value not in (None, False)]
    unused += [f"--{name}" for name in unused_too]
    if unused:
        logging.getLogger("auto_round_mllm").warning(
            "%s %s no effect without --tasks", ", ".join(unused), "has" if len(unused) == 1 else "have"
        )
    return None


def given(ctx: typer.Context, name: str) -> bool:
    """Whether flag ``name`` was on the command line (or in the environment), not defaulted."""
    source = ctx.get_parameter_source(name)  # typer's vendored click's enum, not click's own
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def option_names(spellings: tuple[str, ...], negatives: tuple[str, ...] = ()) -> list[str]:
    """Click's declarations: every spelling underscored and dashed, negatives as ``--on/--off`` pairs."""
    on = names(*(f"--{s}" for s in spellings))
    off = names(*(f"--{s}" for s in negatives))
    return [f"{name}/{off[i]}" if i < len(off) else name for i, name in enumerate(on)]


def flag_parameter(flag: Any) -> inspect.Parameter:
    """The command parameter of one row of the flag table."""
    option = typer.Option(
        flag.default,
        *option_names(flag.spellings, flag.negative),
        help=flag.help,
        show_default=not flag.negative,
    )
    return inspect.Parameter(flag.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=flag.kind)


def flag_parameters() -> list[inspect.Parameter]:
    """The command's parameters: one per row of the flag table (auto_round_mllm/flags.py), and
    auto-round's flags that set nothing here (auto_round_mllm/autoround_flags.py), hidden from
    ``--help`` and listed in README."""
    from auto_round_mllm.autoround_flags import FOREIGN_FLAGS
    from auto_round_mllm.flags import FLAGS

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    params.extend(flag_parameter(flag) for flag in FLAGS)
    for foreign in FOREIGN_FLAGS:
        negatives = (foreign.negative,) if foreign.negative else ()
        default = False if foreign.kind is bool else None
        option = typer.Option(default, *option_names(foreign.spellings, negatives), hidden=True)
        params.append(inspect.Parameter(foreign.name, keyword, default=option, annotation=foreign.kind))
    return params


def _register_quantize_command() -> None:
    """Typer reads a command's options from its signature; this one's comes from the flag table."""
    params = flag_parameters()
    quantize_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    quantize_command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    app.callback(invoke_without_command=True)(quantize_command)


_register_quantize_command()


def run_job(
    job: Any, *, json_output: bool, run_eval: bool = False, resume: bool = False, tasks: Any = None
) -> None:
    """Quantize, then the checks (``--eval``) and lm-eval (``tasks``, a checked plan) on the first
    output folder; lm-eval's numbers go to the summary and ``--json``'s ``lm_eval``, not into the
    checkpoint's report, which is written before they exist."""
    from auto_round_mllm import api
    from auto_round_mllm.cli.summary import RichProgress, render_lm_eval, render_summary

    err = Console(stderr=True)
    result = api.quantize(job, progress=RichProgress(err, job.tuning.iters), resume=resume)
    data = result.to_dict()
    folder = next(iter(result.outputs.values()))
    if run_eval:
        from auto_round_mllm.evaluate.quality import evaluate

        report = evaluate(folder, baseline=job.model, trust_remote_code=job.trust_remote_code)
        data["eval"] = report.to_dict()
    if tasks is not None:
        scores = tasks_on_output(folder, tasks, job)
        data["lm_eval"] = scores.to_dict()
    if json_output:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    render_summary(Console(), result)
    if run_eval:
        show_eval(report, json_output=False)
    if tasks is not None:
        render_lm_eval(Console(), scores)


def tasks_on_output(folder: str, plan: Any, job: Any) -> Any:
    """lm-eval on a fresh checkpoint; a failure says the checkpoint is written."""
    from auto_round_mllm.evaluate.lm_eval_tasks import run_tasks

    try:
        return run_tasks(folder, plan, device=job.device, trust_remote_code=job.trust_remote_code)
    except UserError as exc:
        raise UserError(
            f"{exc.problem} (the quantized checkpoint is written: {folder})",
            fix="; ".join(
                filter(None, [exc.fix, f"then run `auto-round-mllm eval --model {folder} --tasks ...`"])
            ),
        ) from exc


CHECK_OPTIONS = ("baseline", "dataset", "image_dataset", "nsamples", "seqlen")
"""``eval``'s options for the checks, which ``--tasks`` replaces."""


def eval_command(
    ctx: typer.Context,
    model: str = typer.Option(
        ..., *names("--model"), help="A quantized checkpoint (any format we write) or a model."
    ),
    baseline: str = typer.Option(
        None,
        *names("--baseline"),
        help="The full-precision model, for agreement and side-by-side generation.",
    ),
    dataset: str = typer.Option("embedded-text", *names("--dataset"), help="Text for perplexity."),
    image_dataset: str = typer.Option(
        "embedded-images", *names("--image_dataset"), help="Image-text prompts for the agreement check."
    ),
    nsamples: int = typer.Option(8, *names("--nsamples"), help="Samples per check."),
    seqlen: int = typer.Option(512, *names("--seqlen"), help="Tokens per text sample."),
    device: str = typer.Option(
        "auto", *names("--device"), help="Device lm-eval runs on (--tasks): auto, cpu, cuda, cuda:N ..."
    ),
    trust_remote_code: bool = typer.Option(False, *names("--trust_remote_code"), help="Allow remote code."),
    json_output: bool = typer.Option(False, *names("--json"), help="Print the report as JSON on stdout."),
    debug: bool = typer.Option(False, *names("--debug"), help="Verbose logs and full tracebacks."),
    **lm_eval_options: Any,
) -> None:
    """Check a quantized checkpoint: perplexity, agreement with the full-precision model, generation;
    or, with --tasks, run lm-eval tasks on it instead."""
    setup_logging(debug=debug)
    unused = ("device",) if given(ctx, "device") else ()
    settings = lm_eval_settings(lm_eval_options, unused_too=unused)
    if settings is not None:
        eval_tasks(
            ctx, model, settings, device=device, trust_remote_code=trust_remote_code, json_output=json_output
        )
        return
    from auto_round_mllm.evaluate.quality import evaluate

    report = evaluate(
        model,
        baseline=baseline,
        text_dataset=dataset,
        image_dataset=image_dataset,
        nsamples=nsamples,
        seqlen=seqlen,
        trust_remote_code=trust_remote_code,
    )
    show_eval(report, json_output=json_output)


def _register_eval_command() -> None:
    """``eval`` takes the flag table's lm-eval rows (``--tasks``, ``--limit`` ...) as they are."""
    from auto_round_mllm.evaluate.lm_eval_tasks import OPTION_NAMES
    from auto_round_mllm.flags import BY_NAME

    own = [p for p in inspect.signature(eval_command).parameters.values() if p.kind is not p.VAR_KEYWORD]
    params = own + [flag_parameter(BY_NAME[name]) for name in OPTION_NAMES]
    eval_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    eval_command.__annotations__ |= {p.name: p.annotation for p in params[len(own) :]}
    app.command("eval")(eval_command)


def eval_tasks(
    ctx: typer.Context, model: str, settings: Any, *, device: str, trust_remote_code: bool, json_output: bool
) -> None:
    """``eval --tasks``: the checks' options would be ignored, so they are refused; everything lm-eval
    can check is checked before the weights load."""
    from auto_round_mllm.cli.summary import render_lm_eval
    from auto_round_mllm.evaluate import lm_eval_tasks
    from auto_round_mllm.models.loading import resolve_model_dir

    for name in CHECK_OPTIONS:
        if given(ctx, name):
            raise UserError(
                f"--{name} belongs to eval's checks, which --tasks replaces",
                fix="run eval once with --tasks and once without it for the checks",
            )
    resolve_model_dir(model)
    plan = lm_eval_tasks.prepare(settings)
    result = lm_eval_tasks.run_tasks(model, plan, device=device, trust_remote_code=trust_remote_code)
    if json_output:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    render_lm_eval(Console(), result)


def show_eval(report: Any, *, json_output: bool) -> None:
    from rich.table import Table

    if json_output:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        return
    table = Table(title="auto-round-mllm eval", title_justify="left")
    table.add_column("check")
    table.add_column("quantized", justify="right")
    table.add_column("baseline", justify="right")
    base = f"{report.baseline_perplexity:.3f}" if report.baseline_perplexity is not None else "-"
    table.add_row(f"perplexity ({report.text_samples} text samples)", f"{report.perplexity:.3f}", base)
    if report.kl_divergence is not None:
        table.add_row(
            f"KL per token vs baseline ({report.image_samples} image prompts)",
            f"{report.kl_divergence:.4f}",
            "0",
        )
        table.add_row("top-1 agreement with baseline", f"{report.top1_agreement:.1%}", "100%")
    console = Console()
    console.print(table)
    for who, text in report.generation.items():
        console.print(f"[bold]{who}:[/] {text!r}", highlight=False)


_register_eval_command()

LISTABLE = ("schemes", "formats", "models", "datasets", "templates", "processors")


@app.command("list")
def list_command(
    what: str = typer.Argument(..., help=", ".join(LISTABLE)),
) -> None:
    """List the registered schemes, export formats, model families (models), datasets, templates or processors."""
    from auto_round_mllm.config import PRESETS
    from auto_round_mllm.data.processors import PROCESSORS
    from auto_round_mllm.data.sources import DATASETS
    from auto_round_mllm.data.templates import TEMPLATES
    from auto_round_mllm.export import EXPORTERS
    from auto_round_mllm.export.engines import engine_note
    from auto_round_mllm.models.family import FAMILIES

    rows: dict[str, Any] = {
        "schemes": lambda: (
            (n, f"bits={p.bits} group_size={p.group_size} sym={p.sym}") for n, p in PRESETS.items()
        ),
        "formats": lambda: ((n, engine_note(n)) for n, _ in EXPORTERS.items()),
        "models": lambda: (
            (
                n,
                f"model types {', '.join(f.model_types) or '-'}; text blocks {', '.join(f.text_blocks) or 'found'}; "
                f"template {f.template}; processor {f.processor}"
                + ("" if f.text_only_calibration else "; needs image-text data"),
            )
            for n, f in FAMILIES.items()
        ),
        "datasets": lambda: ((d.name, d.description or "") for _, d in DATASETS.items()),
        "templates": lambda: (
            (n, f"processor {t.processor}; default dataset {t.default_dataset}") for n, t in TEMPLATES.items()
        ),
        "processors": lambda: ((n, (p.__doc__ or "").strip().splitlines()[0]) for n, p in PROCESSORS.items()),
    }
    what = {"families": "models"}.get(what, what)
    if what not in rows:
        raise UserError(f"cannot list {what!r}", fix=f"use one of: {', '.join(LISTABLE)}")
    console = Console()
    for name, detail in rows[what]():
        console.print(f"{name:22} {detail}".rstrip(), highlight=False, soft_wrap=True)


def setup_logging(*, debug: bool) -> None:
    handler = RichHandler(console=Console(stderr=True), show_path=debug, show_time=False, markup=False)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, handlers=[handler], format="%(message)s", force=True
    )
    noisy_loggers = (
        "transformers",
        "accelerate",
        "datasets",
        "huggingface_hub",
        "urllib3",
        "filelock",
        "lm_eval",
    )
    for noisy in noisy_loggers:
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)
    if not debug:  # transformers' own tqdm bars would interleave with ours
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    try:  # recent typer vendors click; older releases use the click package
        from typer._click.exceptions import ClickException
    except ImportError:
        from click import ClickException

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, prog_name="auto-round-mllm", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        Console(stderr=True).print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        Console(stderr=True).print("[bold red]aborted[/]")
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]interrupted[/]; no output was written")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
