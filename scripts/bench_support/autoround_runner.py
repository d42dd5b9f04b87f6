"""Quantize a causal LM or the text blocks of a vision-language model with Intel's reference
auto-round, on given tokens, and report.

This is the reference side of the auto-round comparison benchmark. It runs inside the isolated venv
built by ``autoround_venv.py`` (never the project's environment), so it imports only torch,
transformers, safetensors, auto_round and the standard library -- in particular not
``auto_round_mllm``, whose presence could change what is being measured.

Both quantizers must see exactly the same calibration data, so instead of letting auto-round
download and tokenize its default dataset, the caller passes the token ids (a safetensors file with
one int64 ``input_ids`` tensor of shape [nsamples, seqlen]). They are handed to auto-round as a list
of [batch_size, seqlen] tensors: its LLM calibration loop (``auto_round/calibration/llm.py``,
``calib``) feeds a tensor element straight to the model as ``input_ids`` with no re-tokenizing,
filtering or truncation, counts rows until ``nsamples`` and batches the calibration forward the way
its own dataloader would. A vision-language model (its config has ``vision_config``) is loaded with
``AutoModelForImageTextToText`` and goes through auto-round's MLLM calibrator
(``auto_round/calibration/mllm.py``), whose generic branch does the same with each element.
Everything else (amp/bf16 on CPU, learning rates, min-max tuning, torch.compile policy, export
layout) is left at auto-round's defaults, since the point is to measure auto-round as users get it.

stdout carries exactly one line of JSON; all logs (auto-round's, transformers', tqdm) go to stderr.
Its fields:

- ``autoround_version``; ``wall_s``: module load to the end (includes torch/auto-round import and model
  load); ``peak_rss_gb``: ``VmHWM`` of this process (``ru_maxrss`` would include the parent's
  peak from before ``exec``).
- ``tune_s``: auto-round's ``quantize()`` (calibration forward to cache block inputs, then block-wise
  tuning) minus the packing/shard writing it does inline for real export formats
  (``export_in_quantize_s``); ``quantize_s`` is the raw ``quantize()`` time, ``save_s`` the
  ``save_quantized()`` time, ``autoround_reported_tune_s`` auto-round's own "quantization tuning time"
  (tuning only, but including the inline export).
- ``blocks``: one ``{"first", "final", "best_iter"}`` per tuned block, in order, parsed from auto-round's
  log line (printed with ``%.3e``, so 4 significant digits); ``final`` is the best loss, whose
  parameters auto-round keeps. Empty for ``--iters 0`` (RTN / optimized RTN log no losses).
- ``output``: the folder the checkpoint really landed in (auto-round appends ``<model>-w<bits>g<gs>``).
- diagnostics: ``torch_compile``, ``amp``, ``amp_dtype`` (auto-round's final decisions),
  ``calib_rows_forwarded`` (rows seen by the embedding, i.e. calibration samples used),
  ``multimodal`` (the MLLM path was taken), the settings.

    <venv>/bin/python scripts/bench_support/autoround_runner.py --model DIR --tokens ids.safetensors \\
        --bits 4 --group_size 128 --iters 200 --batch_size 8 --seed 42 --threads 16 --output OUT
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def peak_rss_gb() -> float:
    """This program's own peak resident set size in GiB (Linux ``VmHWM``; see the docstring above)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


# Taken at module load, before torch/transformers/auto-round are imported (they are imported inside
# run()), so wall_s includes their import time; only the interpreter and stdlib start-up precede it.
_PROCESS_START = time.perf_counter()

# auto-round and transformers must never reach the network: the model and tokens are local, and a
# silent download (e.g. of auto-round's default pile-10k dataset) would change what is measured.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

# The one line auto-round logs per block (SignRound quantizer, INFOCLEAN level), e.g.
# "quantized 7/7 layers in the block, loss iter 0: 1.234e-02 -> iter 41: 5.678e-03". The second
# value is the best loss (auto-round keeps the best-loss parameters), at iteration best_iter.
_BLOCK_LOSS_RE = re.compile(
    r"quantized \d+/\d+ layers in the block, loss iter 0: (?P<first>\S+) -> iter (?P<iter>\d+): (?P<final>\S+)"
)
_TUNING_TIME_RE = re.compile(r"quantization tuning time (?P<sec>[0-9.eE+-]+)")


class _AutoRoundLogCapture(logging.Handler):
    """Collects per-block losses and auto-round's own tuning time from its ``autoround`` logger.

    Attached as an extra handler, so auto-round's own stderr output is left as it is; parsing the
    formatted message (rather than patching the quantizer) keeps auto-round's code path untouched.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.blocks: list[dict[str, float | int]] = []
        self.reported_tune_s: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record must not break quantization
            return
        match = _BLOCK_LOSS_RE.search(message)
        if match:
            self.blocks.append(
                {
                    "first": float(match["first"]),
                    "final": float(match["final"]),
                    "best_iter": int(match["iter"]),
                }
            )
            return
        match = _TUNING_TIME_RE.search(message)
        if match:
            self.reported_tune_s = float(match["sec"])


class _ExportTimer:
    """Measures time auto-round spends packing and writing shards *inside* ``quantize()``.

    With a real export format (auto_round, gptq, ...) and its default ``low_cpu_mem_usage`` auto-round
    packs each block and flushes it to the output shards right after tuning it, so the quantize call
    contains export work. Wrapping the two entry points (``immediate_pack`` and ``ShardWriter.write``)
    with timers lets ``tune_s`` exclude it without changing what auto-round does.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._restore: list[tuple[Any, str, Any]] = []

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            # Nested timed calls (one entry point calling the other) must be counted once.
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[_ExportTimer]:
        """Install the timers for the duration of the block; absent hooks (other versions) are skipped."""
        targets: list[tuple[str, str | None, str]] = [
            ("auto_round.compressors.utils", None, "immediate_pack"),
            ("auto_round.compressors.orchestrator", None, "immediate_pack"),
            ("auto_round.compressors.shard_writer", "ShardWriter", "write"),
        ]
        for module_name, class_name, attr in targets:
            module = sys.modules.get(module_name)
            owner = getattr(module, class_name) if (module is not None and class_name) else module
            original = getattr(owner, attr, None) if owner is not None else None
            if original is None:
                print(f"[runner] note: cannot time {module_name}.{attr}", file=sys.stderr)
                continue
            self._restore.append((owner, attr, original))
            setattr(owner, attr, self._wrap(original))
        try:
            yield self
        finally:
            for owner, attr, original in reversed(self._restore):
                setattr(owner, attr, original)
            self._restore.clear()


class _RowCounter:
    """Counts token rows entering the embedding, to confirm how many calibration samples were used."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, module: Any, inputs: tuple[Any, ...]) -> None:
        if inputs and hasattr(inputs[0], "shape") and len(inputs[0].shape) >= 2:
            self.rows += int(inputs[0].shape[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; nsamples and seqlen are not options because the token file fixes them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="local HF folder of a causal LM")
    parser.add_argument(
        "--tokens", type=Path, required=True, help="safetensors file with int64 input_ids [nsamples, seqlen]"
    )
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group_size", type=int, default=128)
    parser.add_argument("--asym", action="store_true", help="asymmetric quantization (default: symmetric)")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", type=Path, required=True, help="base output folder")
    parser.add_argument("--format", default="auto_round", help="auto-round export format")
    return parser.parse_args(argv)


def is_vision_language(model: Path) -> bool:
    """A checkpoint with a vision tower (its config has ``vision_config``)."""
    config = json.loads((model / "config.json").read_text())
    return "vision_config" in config


def load_tokens(path: Path) -> Any:
    """Read and validate the calibration ids, failing early with a clear message."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if "input_ids" not in tensors:
        raise SystemExit(f"{path}: no 'input_ids' tensor (has {sorted(tensors)})")
    ids = tensors["input_ids"]
    if ids.dtype != torch.int64 or ids.dim() != 2 or ids.numel() == 0:
        raise SystemExit(
            f"{path}: input_ids must be a non-empty 2-D int64 tensor, got {ids.dtype} {tuple(ids.shape)}"
        )
    return ids.contiguous()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Route everything written to fd 1 (Python or C level) to stderr while the block runs.

    The caller parses stdout as a single JSON line, so a stray ``print`` inside a library must not end
    up there.
    """
    sys.stdout.flush()
    saved_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, quantize with auto-round, save, and return the report (the JSON line's content)."""
    import safetensors
    import torch
    import transformers

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import auto_round
    from auto_round import AutoRound

    capture = _AutoRoundLogCapture()
    logging.getLogger("autoround").addHandler(capture)

    ids = load_tokens(args.tokens)
    nsamples, seqlen = (int(s) for s in ids.shape)

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(args.model))
    multimodal = is_vision_language(args.model)
    if multimodal:  # transformers 5 refuses AutoModelForCausalLM for these (Qwen2-VL, LLaVA, ...)
        model = transformers.AutoModelForImageTextToText.from_pretrained(str(args.model), dtype="auto")
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(args.model), dtype="auto")
    model.eval()

    vocab = model.get_input_embeddings().num_embeddings
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise SystemExit(f"token ids out of range [0, {vocab}): min {int(ids.min())}, max {int(ids.max())}")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is not None and bool((ids == pad_id).any()):
        # auto-round masks pad-token positions out of both the attention mask and the tuning loss.
        print(
            f"[runner] warning: calibration ids contain the pad token {pad_id}; auto-round will mask "
            "those positions",
            file=sys.stderr,
        )

    # One element per calibration forward, batch_size rows each (like auto-round's own dataloader).
    dataset = list(torch.split(ids, max(1, min(args.batch_size, nsamples)), dim=0))

    row_counter = _RowCounter()
    extra: dict[str, Any] = {}
    if multimodal:
        # auto-round's MLLM compressor asserts that it has a processor, even though text-only ids go
        # through its generic branch (each element is fed to the model as input_ids) and never reach
        # it; like ours, it then tunes the text blocks only. The model's own processor cannot be
        # built here: Qwen2-VL's owns a video processor, which needs torchvision, whose PyPI wheels
        # do not load with the CPU torch. The tokenizer stands in, with the PIL image processor.
        extra["processor"] = tokenizer
        extra["image_processor"] = transformers.AutoImageProcessor.from_pretrained(str(args.model))
    ar = AutoRound(
        model,
        tokenizer,
        **extra,
        bits=args.bits,
        group_size=args.group_size,
        sym=not args.asym,
        iters=args.iters,
        nsamples=nsamples,
        seqlen=seqlen,
        batch_size=args.batch_size,
        seed=args.seed,
        dataset=dataset,
        device_map="cpu",
    )
    # auto-round may replace the model object (dtype casts, patched modules): hook the one it holds.
    ar_model = getattr(getattr(ar, "model_context", None), "model", None) or model
    hook = ar_model.get_input_embeddings().register_forward_pre_hook(row_counter)

    # Timers around auto-round's own phases; quantize_and_save calls self.quantize() and then
    # self.save_quantized(), so instance attributes shadowing them see exactly those calls.
    export_timer = _ExportTimer()
    phases = {"quantize_s": 0.0, "export_in_quantize_s": 0.0, "save_s": 0.0}

    def timed(fn: Callable[..., Any], key: str, track_export: bool) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            export_before = export_timer.seconds
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[key] += time.perf_counter() - start
                if track_export:
                    phases["export_in_quantize_s"] += export_timer.seconds - export_before

        return wrapper

    ar.quantize = timed(ar.quantize, "quantize_s", track_export=True)
    ar.save_quantized = timed(ar.save_quantized, "save_s", track_export=False)
    args.output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with export_timer.installed():
        _, folders = ar.quantize_and_save(str(args.output), format=args.format)
    total_s = time.perf_counter() - start
    hook.remove()

    if isinstance(folders, (list, tuple)):
        output: str | list[str] = [str(Path(f).resolve()) for f in folders]
        if len(output) == 1:
            output = output[0]
    else:
        output = str(Path(folders).resolve())

    model_context = getattr(ar, "model_context", None)
    amp_dtype = getattr(model_context, "amp_dtype", None)
    return {
        "autoround_version": auto_round.__version__,
        "wall_s": None,  # filled in by main() just before printing
        "tune_s": phases["quantize_s"] - phases["export_in_quantize_s"],
        "peak_rss_gb": None,  # idem
        "blocks": capture.blocks,
        "output": output,
        # Extra context, so a surprising number can be traced without rerunning.
        "quantize_s": phases["quantize_s"],
        "export_in_quantize_s": phases["export_in_quantize_s"],
        "save_s": phases["save_s"],
        "quantize_and_save_s": total_s,
        "autoround_reported_tune_s": capture.reported_tune_s,
        "torch_compile": bool(getattr(ar, "enable_torch_compile", False)),
        "amp": bool(getattr(model_context, "amp", False)),
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else None,
        "calib_rows_forwarded": row_counter.rows,
        "multimodal": multimodal,
        "nsamples": nsamples,
        "seqlen": seqlen,
        "bits": args.bits,
        "group_size": args.group_size,
        "sym": not args.asym,
        "iters": args.iters,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "format": args.format,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "safetensors_version": safetensors.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    """Run, then print the single JSON line on the real stdout."""
    args = parse_args(argv)
    with stdout_to_stderr():
        report = run(args)
    report["wall_s"] = time.perf_counter() - _PROCESS_START
    report["peak_rss_gb"] = peak_rss_gb()
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
