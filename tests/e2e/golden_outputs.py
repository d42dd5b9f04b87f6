"""Checksums of every file a few CLI runs write, for every export format: refactors must leave
the checkpoints byte-identical (tests/e2e/test_golden_outputs.py compares with the committed
golden_outputs.json).

The checksums hold on the machine, torch and transformers they were written with (floating-point
kernels differ between CPU instruction sets, and config.json names the transformers version), so
the file records that platform and the test compares only on it. To rewrite them, on purpose,
after a change that is meant to change the outputs:

    python tests/e2e/golden_outputs.py --write

The quantization report is compared as JSON with the run's folders replaced by placeholders.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden_outputs.json")
SMALL = ["--iters", "3", "--nsamples", "4", "--seqlen", "32", "--batch_size", "2"]

# name -> (tiny model family, flags); together they write every format, sym and asym, 2/3/4/8
# bits, vision blocks, round-to-nearest, streaming and whole-model loading.
RUNS: dict[str, tuple[str, list[str]]] = {
    "qwen2_vl-w4g32-sym-all-formats": (
        "qwen2_vl",
        [*SMALL, "--group_size", "32", "--format",
         "auto_round,auto_round:auto_gptq,auto_round:auto_awq,auto_gptq,auto_awq,llm_compressor,fake"],
    ),
    "qwen2_vl-w4g64-asym-vision": (
        "qwen2_vl",
        [*SMALL, "--group_size", "64", "--asym", "--quant_nontext_module",
         "--format", "auto_round,auto_round:auto_awq,gptq_v2,auto_awq,llm_compressor,fake"],
    ),
    "llama-w3g32-asym": ("llama", [*SMALL, "--bits", "3", "--group_size", "32", "--asym",
                                   "--format", "auto_round,gptq_v2,fake"]),
    "llama-w8-rtn": ("llama", ["--iters", "0", "--bits", "8", "--format", "auto_round,auto_gptq,fake"]),
    "llava-w2g32-whole-model": ("llava", [*SMALL, "--scheme", "W2A16G32", "--disable_streaming",
                                          "--format", "auto_round,fake"]),
}  # fmt: skip


def platform_fingerprint() -> dict[str, str]:
    import torch
    import transformers

    from auto_round_mllm.utils.device import cpu_has_native_bf16

    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "threads": str(torch.get_num_threads()),  # parallel reductions may round differently
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": str(cpu_has_native_bf16()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def cpu_model() -> str:
    """The CPU's model name (math libraries pick kernels by vendor and generation)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report_digest(data: bytes, folders: dict[str, str]) -> str:
    """The report with this run's folders replaced and keys sorted (its bytes name the folders)."""
    text = data.decode()
    for placeholder, folder in folders.items():
        text = text.replace(folder, placeholder)
    report = json.loads(text)
    report.get("job", {}).pop("version", None)  # a dead field the job once had; nothing read it
    return hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()


def digests(output: Path, folders: dict[str, str]) -> dict[str, str]:
    """Every file under the run's one checkpoint folder (``<model>-<scheme>``, whose name depends on
    the model folder's), by its path inside it."""
    (root,) = [child for child in output.iterdir() if child.is_dir()]
    out = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        name = str(path.relative_to(root))
        if path.name == "quantization_report.json":
            out[name] = report_digest(data, folders)
        else:
            out[name] = hashlib.sha256(data).hexdigest()
    return out


def run_cli(args: list[str]) -> None:
    from auto_round_mllm.cli.app import main

    try:
        main(args)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"auto-round-mllm {' '.join(args)} exited {exc.code}") from None


def checksums_of_run(name: str, model_dir: Path, work: Path, *extra: str) -> dict[str, str]:
    """Run ``RUNS[name]`` (plus ``extra`` flags) on ``model_dir`` into ``work``; its files' checksums."""
    _, flags = RUNS[name]
    out = work / name
    args = ["--model", str(model_dir), *flags, *extra, "--device", "cpu", "--output_dir", str(out), "--force"]
    run_cli(args)
    return digests(out, {"OUT": str(out), "MODEL": str(model_dir)})


def build_model(family: str, folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    import make_tiny_models

    return make_tiny_models.BUILDERS[family](folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.name} (else print)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="golden-")))
        models: dict[str, Path] = {}
        runs = {}
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))  # the runs' summaries
        for name, (family, _) in RUNS.items():
            if family not in models:
                models[family] = build_model(family, work / "models" / family)
            runs[name] = checksums_of_run(name, models[family], work / "out")
    data = {"platform": platform_fingerprint(), "runs": runs}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if args.write:
        GOLDEN.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
