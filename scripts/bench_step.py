"""Time one SignRound step of one decoder block, eager quantizer against compiled, with the floor.

The end-to-end harness (``bench_vs_autoround.py``) says how long a run takes; this says where a
step's time goes, which is what a speed lever has to move. A step is what the tuner does: the block's
forward under bf16 autocast with fake-quantized weights, the MSE against a fixed target, the
backward pass, and the sign update of every tunable. The floor is 6 x block parameters x tokens at
the bf16 matmul rate measured here.

    python scripts/bench_step.py --shape llama-1024 --shape smollm2-135m
    python scripts/bench_step.py --shape smollm2-135m --profile    # torch.profiler table per kernel
    python scripts/bench_step.py --shape smollm2-135m --block_dtype float32  # an fp32 checkpoint's block

``--block_dtype float32`` is what the pipeline tunes for an fp32 checkpoint (SmolLM2's): norms,
residual stream and cached activations in fp32, the matmuls under bf16 autocast. auto-round casts
the whole model to bf16 first, which is the default here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BlockShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    group_size: int


SHAPES = {
    "llama-1024": BlockShape(1024, 2816, 16, 4, 128),  # the harness's synthetic Llama
    "smollm2-135m": BlockShape(576, 1536, 9, 3, 64),  # SmolLM2-135M (576 is not a multiple of 128)
}


def matmul_rate(threads: int) -> float:
    """bf16 GFLOP/s of a 2048^3 matmul, the best of five."""
    torch.set_num_threads(threads)
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048**3 / best / 1e9


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def build_step(
    shape: BlockShape, compiled: bool, batch: int, seqlen: int, bits: int, dtype: torch.dtype = torch.bfloat16
):
    """A Llama decoder block with random weights, wrapped as the pipeline wraps it; returns the
    step function, the tunables' parameter count, and the block's quantized weight count."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from auto_round_mllm.config import QuantScheme
    from auto_round_mllm.quant.kernel import QdqKernel
    from auto_round_mllm.quant.tunable import wrap_linears
    from auto_round_mllm.tuning.signround import sign_step

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        num_hidden_layers=1,
    )
    config._attn_implementation = "sdpa"
    block = LlamaDecoderLayer(config, 0).to(dtype)
    for parameter in block.parameters():
        if parameter.dim() == 2:
            parameter.data.normal_(0, 0.02)
    block.requires_grad_(False)
    hidden = torch.randn(batch, seqlen, shape.hidden, dtype=dtype)
    positions = torch.arange(seqlen)[None].expand(batch, -1)
    rope = LlamaRotaryEmbedding(config)(hidden, positions)

    def forward() -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            out = block(hidden, position_embeddings=rope, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out

    with torch.no_grad():
        target = forward().to(dtype)
    wrapped = wrap_linears(
        block, lambda name: QuantScheme(bits, shape.group_size, True), kernel=QdqKernel(compiled=compiled)
    )
    tunables = [p for layer in wrapped.values() for p in layer.parameters() if p.requires_grad]
    weights = sum(layer.layer.weight.numel() for layer in wrapped.values())

    def step() -> None:
        loss = F.mse_loss(forward().float(), target)
        loss.backward()
        sign_step(tunables, 1e-3)

    return step, weights


def measure(name: str, compiled: bool, args, rate: float) -> dict:
    dtype = getattr(torch, args.block_dtype)
    step, weights = build_step(SHAPES[name], compiled, args.batch_size, args.seqlen, args.bits, dtype)
    started = time.perf_counter()
    for _ in range(3):  # the compiled kernel compiles here
        step()
    warmup = time.perf_counter() - started
    times = [_timed(step) for _ in range(args.steps)]
    floor = 6 * weights * args.batch_size * args.seqlen / (rate * 1e9)
    median = statistics.median(times)
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return {"median": median, "floor": floor, "warmup": warmup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="block shape(s)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--block_dtype",
        choices=("bfloat16", "float32"),
        default="bfloat16",
        help="dtype of the block's weights, inputs and targets (autocast to bf16 either way)",
    )
    args = parser.parse_args()
    rate = matmul_rate(args.threads)
    print(
        f"{args.threads} threads, bf16 matmul {rate:.0f} GFLOP/s; batch {args.batch_size} x {args.seqlen} tokens"
    )
    print("| block | quantizer | step (median) | x floor | first 3 steps |")
    print("|---|---|---|---|---|")
    for name in args.shape or ["llama-1024"]:
        for compiled in (False, True):
            m = measure(name, compiled, args, rate)
            print(
                f"| {name} W{args.bits}G{SHAPES[name].group_size} | {'compiled' if compiled else 'eager'} | "
                f"{m['median'] * 1000:.0f} ms | {m['median'] / m['floor']:.2f} | {m['warmup']:.1f} s |"
            )


if __name__ == "__main__":
    main()
