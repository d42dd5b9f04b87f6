"""Peak host memory of a quantization run against the model's size on disk: streaming vs whole.

Builds (once) a synthetic Llama-architecture checkpoint of several GB: the real module tree and
tensor names, random weights (std 0.02, norms at 1), bf16 safetensors shards, an offline BPE
tokenizer. Every tensor is generated and written one at a time, so building it needs little
memory. Then it runs the real CLI on it in a fresh process per mode and reads the peak RSS the CLI
reports (``ru_maxrss`` of that process), and prints a markdown table for docs/benchmarks.md.

    python scripts/bench_memory.py                    # 64 layers x 2048 wide: 6.8 GB on disk
    python scripts/bench_memory.py --layers 8 --modes streaming   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))


def build_synthetic_llama(
    folder: Path, *, layers: int, hidden: int, intermediate: int, vocab: int, heads: int, kv_heads: int
) -> Path:
    """Write the checkpoint into ``folder`` (skipped when it is already complete)."""
    from make_tiny_models import build_tokenizer
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from auto_round_mllm.export.writer import write_json
    from auto_round_mllm.utils.tensor_files import LazyTensor, write_sharded

    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_tokenizer("llama")
    config = LlamaConfig(
        vocab_size=max(vocab, len(tokenizer)),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="bfloat16",
    )
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    tensors = {}
    for index, (name, meta) in enumerate(sorted(skeleton.state_dict().items())):

        def make(meta=meta, seed=index, norm=name.endswith("norm.weight")) -> torch.Tensor:
            if norm:
                return torch.ones(meta.shape, dtype=torch.bfloat16)
            generator = torch.Generator().manual_seed(seed)
            return (torch.randn(meta.shape, generator=generator) * 0.02).to(torch.bfloat16)

        tensors[name] = LazyTensor(torch.bfloat16, tuple(meta.shape), make)
    staging = folder.with_name(folder.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    names, weight_map, total = write_sharded(tensors, staging, limit=2 * 10**9)
    if len(names) > 1:
        write_json(
            staging / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(staging)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id).save_pretrained(
        staging
    )
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return folder


def size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run_cli(model: Path, out: Path, mode: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, "-m", "auto_round_mllm", "--model", str(model), "--bits", "4", "--group_size", "128",
        "--iters", str(args.iters), "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
        "--batch_size", str(args.batch_size), "--dataset", "embedded-text", "--output_dir", str(out),
        "--force", "--json",
    ]  # fmt: skip
    if mode == "whole":
        command.append("--disable_streaming")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{mode} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    return {
        "mode": mode,
        "wall_s": wall,
        "peak_rss_gb": result["peak_rss_gb"],
        "tune_s": result["tune_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/auto-round-mllm-bench"))
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--modes", default="streaming,whole")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()

    name = f"synthetic-llama-{args.layers}x{args.hidden}"
    model = build_synthetic_llama(
        args.workdir / name,
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        vocab=args.vocab,
        heads=args.heads,
        kv_heads=args.kv_heads,
    )
    disk_gb = size_on_disk(model) / 2**30
    rows = [run_cli(model, args.workdir / f"out-{mode}", mode, args) for mode in args.modes.split(",")]
    print(f"\nmodel: {name}, {disk_gb:.2f} GiB of bf16 safetensors; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; torch {torch.__version__}\n")  # fmt: skip
    print("| mode | peak RSS | peak RSS / model size | wall time | of which tuning |")
    print("|---|---|---|---|---|")
    for row in rows:
        row["model_gib"] = disk_gb
        row["ratio"] = row["peak_rss_gb"] / disk_gb
        print(
            f"| {row['mode']} | {row['peak_rss_gb']:.2f} GiB | {row['ratio']:.0%} | {row['wall_s']:.0f} s "
            f"| {row['tune_s']:.0f} s |"
        )
    if args.json:
        args.json.write_text(json.dumps({"model": name, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
