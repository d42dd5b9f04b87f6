"""The ``auto-round-mllm`` command: flags -> QuantJob -> api.quantize -> summary (or ``--json``).

Every flag takes auto-round's underscore spelling and the dashed one (``--group_size`` and
``--group-size``), plus auto-round's aliases (``--bs``, ``--iter``, ``--nsample`` ...), so existing
batch scripts run unchanged. User mistakes print one line and exit 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

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


@app.callback(invoke_without_command=True)
def quantize_command(
    ctx: typer.Context,
    model: str = typer.Option(
        None,
        *names("--model", "--model_name", "--model_name_or_path"),
        help="Local folder, local:PATH, or hub id (read from the HF cache when offline).",
    ),
    scheme: str = typer.Option(
        "W4A16",
        *names("--scheme"),
        help="Preset: W4A16, W2A16, W2A16G64, W2A16G32, W3A16, W8A16; --bits/--group_size/--asym override it.",
    ),
    bits: int = typer.Option(
        None, *names("--bits"), help="Weight bits: 2, 3, 4 or 8 (default from --scheme: 4)."
    ),
    group_size: int = typer.Option(
        None,
        *names("--group_size"),
        help="Input channels per scale: -1 (per channel), 32, 64, 128 or any divisor of in_features (default from --scheme: 128).",
    ),
    asym: bool = typer.Option(
        False,
        *names("--asym"),
        help="Asymmetric weights (a zero point per group); default is auto-round's full-range symmetric.",
    ),
    data_type: str = typer.Option(
        None, *names("--data_type", "--dtype"), help="Weight data type; only 'int' for now."
    ),
    iters: int = typer.Option(
        200,
        *names("--iters", "--iter"),
        help="SignRound steps per block; 0 = round-to-nearest (no calibration data needed).",
    ),
    lr: float = typer.Option(
        None, *names("--lr"), help="Rounding learning rate (default 1/iters), decayed linearly to 0."
    ),
    minmax_lr: float = typer.Option(
        None, *names("--minmax_lr"), help="Clipping-scale learning rate (default: --lr)."
    ),
    nsamples: int = typer.Option(128, *names("--nsamples", "--nsample"), help="Calibration samples."),
    seqlen: int = typer.Option(2048, *names("--seqlen", "--seq_len"), help="Tokens per calibration sample."),
    batch_size: int = typer.Option(
        8, *names("--batch_size", "--train_bs", "--bs"), help="Samples per tuning step."
    ),
    gradient_accumulate_steps: int = typer.Option(
        1, *names("--gradient_accumulate_steps"), help="Micro-batches per tuning step."
    ),
    seed: int = typer.Option(42, *names("--seed"), help="Seed for sample order and batches."),
    disable_minmax_tuning: bool = typer.Option(
        False, *names("--disable_minmax_tuning"), help="Keep clipping scales at 1 (tune rounding only)."
    ),
    disable_clip_search: bool = typer.Option(
        False,
        *names("--disable_clip_search"),
        help="Start every group's clipping at 1, as auto-round does, instead of at the ratio with "
        "the least activation-weighted round-to-nearest error.",
    ),
    not_use_best_mse: bool = typer.Option(
        False,
        *names("--not_use_best_mse"),
        help="Keep the last step's parameters instead of the best step's.",
    ),
    disable_quanted_input: bool = typer.Option(
        False,
        *names("--disable_quanted_input"),
        help="Feed each block full-precision inputs instead of the quantized blocks' outputs.",
    ),
    disable_amp: bool = typer.Option(
        False,
        *names("--disable_amp"),
        help="No autocast: tune in the model dtype (fp32 on CPUs without bf16).",
    ),
    scale_dtype: str = typer.Option(
        "fp16", *names("--scale_dtype"), help="Scale precision during tuning: fp16 (default), bf16, fp32."
    ),
    enable_torch_compile: bool = typer.Option(
        False,
        *names("--enable_torch_compile"),
        help="Compile the fused quantizer even where it is off by default (devices other than CPU "
        "and CUDA, or under 10 iters).",
    ),
    disable_torch_compile: bool = typer.Option(
        False,
        *names("--disable_torch_compile"),
        help="Never compile the quantizer (on by default on CPU and CUDA from 10 iters; a failed "
        "compilation already falls back with a warning).",
    ),
    model_dtype: str = typer.Option(
        "auto",
        *names("--model_dtype"),
        help="Dtype to tune and write the model in: auto (the checkpoint's; an fp32 checkpoint goes "
        "to bf16 where AMP computes in bf16, as in auto-round), fp16, bf16, fp32.",
    ),
    fp_layers: str = typer.Option(
        "",
        *names("--fp_layers", "--ignore_layers"),
        help="Comma list of layer-name substrings (or re:REGEX) kept in 16 bit.",
    ),
    to_quant_block_names: str = typer.Option(
        "",
        *names("--to_quant_block_names"),
        help="Comma list of regexes selecting blocks to tune (default: all text decoder blocks).",
    ),
    quant_nontext_module: bool = typer.Option(
        False,
        *names("--quant_nontext_module"),
        help="Also quantize the vision tower's blocks (batch 1 with gradient accumulation); the text "
        "blocks then calibrate on the quantized vision tower's output.",
    ),
    dataset: str = typer.Option(
        None,
        *names("--dataset"),
        help="Calibration data: NeelNanda/pile-10k (from the datasets cache), liuhaotian/llava_conv_58k, "
        "llava_instruct_80k, llava_instruct_150k (local copies), embedded, embedded-text, embedded-images, "
        "a local .txt/.jsonl/.json/.parquet file or image folder, or a comma list with counts "
        "(name:count,...). Default: the template's dataset when it can be read offline, else embedded.",
    ),
    template: str = typer.Option(
        None,
        *names("--template"),
        help="Chat template: a name (auto-round-mllm list templates) or a JSON file; default: by model type.",
    ),
    extra_data_dir: str = typer.Option(
        None,
        *names("--extra_data_dir"),
        help="Folder with the images (and LLaVA JSON) of image-text datasets, or image=DIR,video=DIR,audio=DIR.",
    ),
    max_missing_images: float = typer.Option(
        0.1,
        *names("--max_missing_images"),
        help="Fraction of image references that may be missing before the run fails; missing ones are reported.",
    ),
    device: str = typer.Option(
        "auto",
        *names("--device", "--devices"),
        help="auto, cpu, cuda, cuda:N, xpu, hpu (or N for the N-th accelerator).",
    ),
    output_dir: str = typer.Option(
        "./tmp_autoround",
        *names("--output_dir"),
        help="Parent folder; the checkpoint goes to OUTPUT_DIR/<model>-w{bits}g{group_size}.",
    ),
    format: str = typer.Option(
        "auto_round",
        *names("--format", "--formats"),
        help="Export format(s), comma separated (one sub-folder each): auto_round (default), "
        "auto_round:auto_gptq, auto_round:auto_awq, auto_gptq, auto_awq, fake.",
    ),
    max_shard_size: str = typer.Option("5GB", *names("--max_shard_size"), help="Largest safetensors shard."),
    force: bool = typer.Option(False, *names("--force"), help="Replace an existing output folder."),
    trust_remote_code: bool = typer.Option(
        False,
        *names("--trust_remote_code"),
        help="Allow models that ship their own Python code (off by default).",
    ),
    disable_trust_remote_code: bool = typer.Option(
        False,
        *names("--disable_trust_remote_code"),
        help="Accepted for auto-round scripts; remote code is off unless --trust_remote_code.",
    ),
    resume: bool = typer.Option(
        False,
        *names("--resume"),
        help="Continue an unfinished run of this job in the output folder, and refuse if the job "
        "differs. A matching unfinished run is resumed even without it.",
    ),
    disable_streaming: bool = typer.Option(
        False,
        *names("--disable_streaming"),
        help="Load the whole model into memory instead of reading each decoder block from the "
        "safetensors shards when it is reached (the output is the same).",
    ),
    low_gpu_mem_usage: bool = typer.Option(
        False,
        *names("--low_gpu_mem_usage"),
        help="Keep activation caches in host memory and move each micro-batch to the device when used.",
    ),
    cache_dir: str = typer.Option(
        None,
        *names("--cache_dir"),
        help="Spill activation caches to memory-mapped files in this folder (very large calibration "
        "sets; implies --low_gpu_mem_usage).",
    ),
    device_map: str = typer.Option(
        None,
        *names("--device_map"),
        help="Spread each block's layers over several devices: auto (every visible GPU) or a comma "
        "list such as 0,1,2 or cuda:0,cuda:1.",
    ),
    json_output: bool = typer.Option(
        False, *names("--json"), help="Print the summary as JSON on stdout (logs stay on stderr)."
    ),
    run_eval: bool = typer.Option(
        False,
        *names("--eval"),
        help="After quantizing, run `auto-round-mllm eval` on the output against the model.",
    ),
    debug: bool = typer.Option(False, *names("--debug"), help="Verbose logs and full tracebacks."),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if model is None:
        raise UserError("no model given", fix="pass --model PATH_OR_HUB_ID (see auto-round-mllm --help)")
    setup_logging(debug=debug)
    from auto_round_mllm.config import job_from_flags

    flags = dict(ctx.params)
    for key in ("json_output", "debug", "disable_trust_remote_code", "run_eval", "resume"):
        flags.pop(key)
    if trust_remote_code and disable_trust_remote_code:
        raise UserError(
            "--trust_remote_code and --disable_trust_remote_code contradict each other",
            fix="pass only one (remote code is off unless --trust_remote_code)",
        )
    if enable_torch_compile and disable_torch_compile:
        raise UserError(
            "--enable_torch_compile and --disable_torch_compile contradict each other",
            fix="pass only one (or neither: compiled on CPU and CUDA from 10 iters)",
        )
    flags.pop("enable_torch_compile")
    flags.pop("disable_torch_compile")
    flags["torch_compile"] = True if enable_torch_compile else False if disable_torch_compile else None
    job = job_from_flags(**flags)
    if resume and job.export.force:
        raise UserError(
            "--resume and --force contradict each other (--force discards an unfinished run)",
            fix="pass --resume to continue it, or --force to start again",
        )
    run_job(job, json_output=json_output, run_eval=run_eval, resume=resume)


def run_job(job: Any, *, json_output: bool, run_eval: bool = False, resume: bool = False) -> None:
    from auto_round_mllm import api
    from auto_round_mllm.cli.summary import RichProgress, render_summary

    err = Console(stderr=True)
    result = api.quantize(job, progress=RichProgress(err, job.tuning.iters), resume=resume)
    data = result.to_dict()
    if run_eval:
        from auto_round_mllm.evaluate.quality import evaluate

        report = evaluate(
            next(iter(result.outputs.values())), baseline=job.model, trust_remote_code=job.trust_remote_code
        )
        data["eval"] = report.to_dict()
    if json_output:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    render_summary(Console(), result)
    if run_eval:
        show_eval(report, json_output=False)


@app.command("eval")
def eval_command(
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
    tasks: str = typer.Option(
        None, *names("--tasks"), help="lm-eval tasks (comma list); needs the lm_eval package."
    ),
    trust_remote_code: bool = typer.Option(False, *names("--trust_remote_code"), help="Allow remote code."),
    json_output: bool = typer.Option(False, *names("--json"), help="Print the report as JSON on stdout."),
    debug: bool = typer.Option(False, *names("--debug"), help="Verbose logs and full tracebacks."),
) -> None:
    """Check a quantized checkpoint: perplexity, agreement with the full-precision model, generation."""
    setup_logging(debug=debug)
    if tasks:
        run_tasks(model, tasks)
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


def run_tasks(model: str, tasks: str) -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(
            "--tasks needs the lm-eval package, which is not installed",
            fix="pip install lm-eval (and lmms-eval for multimodal tasks), or leave --tasks out",
        )
    from lm_eval import simple_evaluate

    results = simple_evaluate(model="hf", model_args=f"pretrained={model}", tasks=tasks.split(","))
    Console().print_json(data=results.get("results", {}))


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
    from auto_round_mllm.models.family import FAMILIES

    rows: dict[str, Any] = {
        "schemes": lambda: (
            (n, f"bits={p.bits} group_size={p.group_size} sym={p.sym}") for n, p in PRESETS.items()
        ),
        "formats": lambda: ((n, "") for n, _ in EXPORTERS.items()),
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
    for noisy in ("transformers", "accelerate", "datasets", "huggingface_hub", "urllib3", "filelock"):
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
