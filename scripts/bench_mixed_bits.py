"""Mixed bits at an average budget against the uniform width and a mix by layer order, on one model.

Every run is our CLI on the same calibration tokens and seed, scored by KL / top-1 / perplexity
against the full-precision model on held-out text (the scoring of scripts/bench_vs_autoround.py):

- ``uniform``: every layer at ``--uniform_bits`` (3 by default: the budget itself);
- ``by-order``: the first half of the blocks at ``--high`` bits, the second half at ``--low``
  (``--layer_config``), the same average;
- ``mixed``: ``--schemes`` with ``--avg_bits`` (sensitivity-measured allocation), once per
  ``--sensitivities`` entry (``fisher``, the default, and ``local``) and per ``--schemes`` given.

Every run uses one group size (the presets' 128; a width it does not divide falls back alike in
all three). The budget counts weight bits only (``--ignore_scale_zp_bits``) so that the uniform width meets it
exactly. Example (SmolLM2-135M, optimized RTN, then 50 iters)::

    python scripts/bench_mixed_bits.py --iters 0
    python scripts/bench_mixed_bits.py --iters 0 --schemes W2A16,W4A16,W8A16 --schemes W2A16,W3A16,W4A16,W8A16
    python scripts/bench_mixed_bits.py --iters 50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(SCRIPTS / "bench_support"))

from bench_vs_autoround import Run, build_model, score, split_texts, thread_env  # noqa: E402


def run_ours(name: str, model: Path, dataset: Path, out: Path, extra: list[str], args) -> Run:
    command = [
        sys.executable, "-m", "auto_round_mllm", "--model", str(model), "--group_size", str(args.group_size),
        "--iters", str(args.iters), "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
        "--batch_size", str(args.batch_size), "--seed", str(args.seed), "--dataset", str(dataset),
        "--output_dir", str(out), "--force", "--json", *(["--enable_opt_rtn"] if args.iters == 0 else []), *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=thread_env(args.threads), check=False)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    print(f"{name}: {'; '.join(n for n in result['notes'] if n.startswith('mixed bits'))}", flush=True)
    return Run(
        tool=name,
        wall_s=time.perf_counter() - started,
        tune_s=result["tune_seconds"],
        peak_rss_gb=result["peak_rss_gb"],
        mean_final_loss=None,
        output=next(iter(result["outputs"].values())),
    )


def by_order_config(blocks: int, high: int, low: int) -> dict[str, dict[str, int]]:
    """``--layer_config`` for the mix by layer order: blocks ``0 .. blocks/2 - 1`` at ``high`` bits,
    the rest at ``low``."""
    first = blocks // 2
    return {
        rf"layers\.({'|'.join(map(str, range(first)))})\.": {"bits": high},
        rf"layers\.({'|'.join(map(str, range(first, blocks)))})\.": {"bits": low},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--blocks", type=int, default=30, help="the model's decoder blocks (for by-order)")
    parser.add_argument("--avg_bits", type=float, default=3.0)
    parser.add_argument("--uniform_bits", type=int, default=3)
    parser.add_argument("--low", type=int, default=2)
    parser.add_argument("--high", type=int, default=4)
    parser.add_argument("--schemes", action="append", help="options of a mixed run (repeatable)")
    parser.add_argument(
        "--sensitivities", default="fisher,local", help="--mixed_sensitivity of each mixed run"
    )
    parser.add_argument("--group_size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=0)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval_samples", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/auto-round-mllm-bench"))
    args = parser.parse_args()

    calib, held_out = split_texts(args.workdir)
    model = build_model(args.model, args.workdir / "models", None)
    out = args.workdir / "out-mixed" / f"iters{args.iters}"
    by_order = json.dumps(by_order_config(args.blocks, args.high, args.low))
    runs = [
        run_ours("uniform", model, calib, out / "uniform", ["--bits", str(args.uniform_bits)], args),
        run_ours("by-order", model, calib, out / "by-order", ["--layer_config", by_order], args),
    ]
    for schemes in args.schemes or ["W2A16,W4A16,W8A16"]:
        for sensitivity in args.sensitivities.split(","):
            name = f"mixed {schemes}, {sensitivity}"
            flags = ["--schemes", schemes, "--avg_bits", str(args.avg_bits), "--ignore_scale_zp_bits",
                     "--mixed_sensitivity", sensitivity]  # fmt: skip
            runs.append(
                run_ours(name, model, calib, out / name.replace(" ", "_").replace(",", "-"), flags, args)
            )
    fp = score(runs, model, held_out, args)
    print(f"\n{args.model}, {args.iters} iters, {args.nsamples} x {args.seqlen}, group {args.group_size}, "
          f"seed {args.seed}, budget {args.avg_bits} weight bits; fp perplexity {fp:.2f}\n")  # fmt: skip
    print("| run | KL vs fp | top-1 | perplexity | tuning |\n|---|---|---|---|---|")
    for run in runs:
        print(f"| {run.tool} | {run.kl:.4f} | {run.top1:.3f} | {run.perplexity:.2f} | {run.tune_s:.0f} s |")


if __name__ == "__main__":
    main()
