"""Runs inside the vLLM engine venv (never the project's): load each checkpoint of a job file in
vLLM, score fixed prompts teacher-forced, and write what vLLM said.

Usage (``scripts/check_engines.py`` does this): ``python vllm_runner.py JOBS.json RESULTS.json``.
``JOBS.json``: ``{"dtype": "float16", "checkpoints": [{"id", "path", "prompts": [{"token_ids"} or
{"text", "image"}]}]}``. Every checkpoint is loaded in this one process, one after the other (the
vLLM import alone takes 10-15 s here). A checkpoint that fails to load is recorded with the last
line of its error; the others still run.

Only the standard library, torch and vLLM are imported: this file must run on vLLM's own
transformers, not the project's.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the models are tiny
os.environ.setdefault("VLLM_CPU_INT4_W4A8", "0")  # never quantize activations behind our back

import torch

EMULATED_OPS: list[str] = []


def provide_missing_wna16_kernel() -> None:
    """vLLM-CPU builds its W4A16 GEMM (``_C::cpu_gemm_wna16``) for AVX-512 only: on an AVX2
    machine every int4 checkpoint dies in the first forward with ``no attribute
    'cpu_gemm_wna16'``. Where the op is missing, register a plain torch version of it, so that
    vLLM's own config parsing, weight loading and repacking (``CPUWNA16LinearKernel``) still run
    and only the last multiply is ours. The results file says so (``emulated_ops``).

    The op receives what ``CPUWNA16LinearKernel._process_gptq_weights_w4a16`` made: ``q_weight``
    ``[out/16, in*16/pack]`` (codes packed along the output dimension, 16 outputs per block),
    ``scales`` ``[groups, out]``, ``zeros`` ``[groups, out/pack]`` packed along the output
    dimension or None (then the type is uint4b8: zero 8).
    """
    import vllm._custom_ops  # noqa: F401  (loads vLLM's _C library first)

    if hasattr(torch.ops._C, "cpu_gemm_wna16"):
        return
    library = torch.library.Library("_C", "FRAGMENT")
    library.define(
        "cpu_gemm_wna16(Tensor input, Tensor q_weight, Tensor(a!) output, Tensor scales, "
        "Tensor? zeros, Tensor? bias, int pack_factor, str isa_hint) -> ()"
    )

    def cpu_gemm_wna16(input, q_weight, output, scales, zeros, bias, pack_factor, isa_hint):
        weight = repacked_weight(q_weight, scales, zeros, pack_factor, input.shape[-1])
        result = input.float() @ weight
        if bias is not None:
            result = result + bias.float()
        output.copy_(result.to(output.dtype))

    library.impl("cpu_gemm_wna16", cpu_gemm_wna16, "CPU")
    EMULATED_OPS.append("cpu_gemm_wna16")
    provide_missing_wna16_kernel.library = library  # keep the registration alive


def unpack_last_dim(packed: torch.Tensor, pack_factor: int) -> torch.Tensor:
    """int32 words to codes along the last dimension, least significant first (vLLM's
    ``unpack_quantized_values_into_int32``)."""
    bits = 32 // pack_factor
    mask = (1 << bits) - 1
    words = packed.to(torch.int64) & 0xFFFFFFFF
    out = torch.empty(*packed.shape[:-1], packed.shape[-1] * pack_factor, dtype=torch.int64)
    for i in range(pack_factor):
        out[..., i::pack_factor] = (words >> (bits * i)) & mask
    return out


def repacked_weight(
    q_weight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    pack_factor: int,
    in_features: int,
) -> torch.Tensor:
    """The fp32 ``[in, out]`` weight behind vLLM's repacked W4A16 tensors: undo the 16-output
    blocking, unpack along the output dimension, subtract the zero (8 for uint4b8) of each row's
    group and scale."""
    per_block = 16 // pack_factor
    blocks = q_weight.shape[0]
    packed = q_weight.view(blocks, in_features, per_block).permute(1, 0, 2).reshape(in_features, -1)
    codes = unpack_last_dim(packed, pack_factor).float()
    groups = scales.shape[0]
    group_of_row = torch.arange(in_features) // (in_features // groups)
    if zeros is None:
        zero = torch.full(scales.shape, float(1 << (32 // pack_factor - 1)))
    else:
        zero = unpack_last_dim(zeros, pack_factor).float()
    return (codes - zero[group_of_row]) * scales.float()[group_of_row]


def score(llm, prompts: list[dict]) -> list[dict]:
    """Teacher-forced: for every prompt position after the first, the logprob vLLM gives the
    prompt's own next token, and vLLM's top-1 token there."""
    from PIL import Image
    from vllm import SamplingParams
    from vllm.inputs import TextPrompt, TokensPrompt

    requests = []
    for prompt in prompts:
        if "token_ids" in prompt:
            requests.append(TokensPrompt(prompt_token_ids=prompt["token_ids"]))
        else:
            image = Image.open(prompt["image"]).convert("RGB")
            requests.append(TextPrompt(prompt=prompt["text"], multi_modal_data={"image": image}))
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    outputs = llm.generate(requests, params, use_tqdm=False)
    scored = []
    for output in outputs:
        ids = list(output.prompt_token_ids)
        logprobs, top1 = [], []
        for position in range(1, len(ids)):
            entry = output.prompt_logprobs[position]
            logprobs.append(float(entry[ids[position]].logprob))
            top1.append(int(next(token for token, lp in entry.items() if lp.rank == 1)))
        scored.append({"token_ids": ids, "logprobs": logprobs, "top1": top1})
    return scored


def run_one(checkpoint: dict, dtype: str) -> dict:
    from vllm import LLM

    started = time.time()
    kwargs = {}
    if any("image" in p for p in checkpoint["prompts"]):
        kwargs["limit_mm_per_prompt"] = {"image": 1}
    llm = LLM(
        model=checkpoint["path"],
        dtype=dtype,
        enforce_eager=True,
        max_model_len=checkpoint.get("max_model_len", 1024),
        gpu_memory_utilization=0.3,
        seed=0,
        **kwargs,
    )
    try:
        config = llm.llm_engine.vllm_config.model_config
        result = {
            "status": "loaded",
            "quantization": config.quantization,
            "dtype": str(config.dtype).removeprefix("torch."),
            "prompts": score(llm, checkpoint["prompts"]),
        }
    finally:
        del llm
        gc.collect()
    result["seconds"] = round(time.time() - started, 1)
    return result


def error_line(error: BaseException) -> str:
    """The most specific words: vLLM wraps loader errors (the innermost cause names the problem),
    and pydantic puts the reason on the lines after its first."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in f"{type(error).__name__}: {error}".splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("For further information")]
    return " ".join(lines)[:300] or type(error).__name__


def main(jobs_path: str, results_path: str) -> int:
    with open(jobs_path, encoding="utf-8") as handle:
        jobs = json.load(handle)
    provide_missing_wna16_kernel()
    import vllm

    results: dict = {"vllm": vllm.__version__, "torch": torch.__version__, "checkpoints": {}}
    for checkpoint in jobs["checkpoints"]:
        try:
            results["checkpoints"][checkpoint["id"]] = run_one(checkpoint, jobs.get("dtype", "float16"))
        except Exception as error:  # a checkpoint vLLM rejects is a result, not a crash
            traceback.print_exc()
            results["checkpoints"][checkpoint["id"]] = {"status": "failed", "error": error_line(error)}
        results["emulated_ops"] = list(EMULATED_OPS)
        with open(results_path, "w", encoding="utf-8") as handle:  # written as it goes
            json.dump(results, handle)
        print(
            f"[vllm_runner] {checkpoint['id']}: {results['checkpoints'][checkpoint['id']]['status']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
