"""Median tuning step inside each tool's real pipeline: ours against auto-round's, back to back.

``bench_step.py`` times a synthetic block; this times the steps the tools really take on a
checkpoint, which is what separates a step's cost from a tool's fixed cost per block (compilation,
caching, bookkeeping). Ours: the time between two progress callbacks of the Python API over the
first ``--blocks`` blocks. auto-round: the time between two of its per-iteration debug lines
(``AR_LOG_LEVEL=DEBUG``), whole model, through ``bench_support/autoround_runner.py`` in its own
venv. Both get the harness's calibration tokens (``bench_vs_autoround.py`` writes them).

    python scripts/bench_step_vs_autoround.py --model /tmp/auto-round-mllm-bench/models/smollm2-135m \\
        --bits 4 --group_size 64 --iters 60
    python scripts/bench_step_vs_autoround.py --model ... --skip_autoround --model_dtype bfloat16
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS / "bench_support"))
WORKDIR = Path("/tmp/auto-round-mllm-bench")
_ITER_LINE = re.compile(r"iter (\d+) loss")


def consecutive_gaps(stamps: list[tuple[int, float]]) -> list[float]:
    """Seconds between step i and step i+1 of the same block (a new block restarts at 0)."""
    return [b[1] - a[1] for a, b in itertools.pairwise(stamps) if b[0] == a[0] + 1]


def ours(args) -> dict[str, float]:
    from auto_round_mllm.api import quantize
    from auto_round_mllm.flags import job_from_flags
    from auto_round_mllm.pipeline.blockwise import BlockReport, ProgressSink

    class Stamps(ProgressSink):
        def __init__(self) -> None:
            self.steps: list[tuple[int, float]] = []
            self.blocks: list[float] = []

        def step(self, step: int) -> None:
            self.steps.append((step, time.perf_counter()))

        def block_done(self, report: BlockReport) -> None:
            self.blocks.append(report.seconds)

    job = job_from_flags(
        model=str(args.model),
        bits=args.bits,
        group_size=args.group_size,
        iters=args.iters,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        batch_size=args.batch_size,
        dataset=str(WORKDIR / "calib.jsonl"),
        to_quant_block_names=f"model.layers.[0-{args.blocks - 1}]$",
        output_dir=str(args.output / "ours"),
        force=True,
        model_dtype=args.model_dtype,
    )
    stamps = Stamps()
    quantize(job, progress=stamps)
    step = statistics.median(consecutive_gaps(stamps.steps))
    later = stamps.blocks[1:] or stamps.blocks  # the first block also compiles
    block = statistics.median(later)
    return {"step_s": step, "block_s": block, "outside_steps_s": block - args.iters * step}


def autoround(args) -> dict[str, float]:
    from autoround_venv import ensure_autoround_venv

    python = ensure_autoround_venv(WORKDIR / "venvs")
    tokens = WORKDIR / f"tokens-{args.model.name}.safetensors"
    if not tokens.is_file():
        raise SystemExit(
            f"{tokens} is missing: run bench_vs_autoround.py on this model first (it writes them)"
        )
    command = [
        str(python), str(SCRIPTS / "bench_support" / "autoround_runner.py"), "--model", str(args.model),
        "--tokens", str(tokens), "--bits", str(args.bits), "--group_size", str(args.group_size),
        "--iters", str(args.iters), "--batch_size", str(args.batch_size), "--threads", str(args.threads),
        "--output", str(args.output / "autoround"),
    ]  # fmt: skip
    env = {**os.environ, "AR_LOG_LEVEL": "DEBUG", "OMP_NUM_THREADS": str(args.threads)}
    stamps: list[tuple[int, float]] = []
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            match = _ITER_LINE.search(line)
            if match:
                stamps.append((int(match.group(1)), time.perf_counter()))
    if proc.returncode:
        raise SystemExit(
            f"auto-round failed (exit code {proc.returncode}); run the runner by hand to see why"
        )
    return {"step_s": statistics.median(consecutive_gaps(stamps))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model the harness built")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group_size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=3, help="ours: tune the first N blocks")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, default=WORKDIR / "out" / "step")
    parser.add_argument("--skip_autoround", action="store_true")
    parser.add_argument(
        "--model_dtype", default="auto", help="ours: --model_dtype (bfloat16: tune as auto-round does)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    mine = ours(args)
    print(
        f"ours: median step {mine['step_s'] * 1000:.1f} ms, block {mine['block_s']:.1f} s, "
        f"outside the steps {mine['outside_steps_s']:.2f} s per block",
        flush=True,
    )
    if not args.skip_autoround:
        theirs = autoround(args)
        print(f"auto-round: median step {theirs['step_s'] * 1000:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
