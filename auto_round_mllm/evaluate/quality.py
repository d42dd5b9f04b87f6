"""``auto-round-mllm eval``: does the quantized checkpoint still behave like the original?

Three cheap checks that need no benchmark download: perplexity on text, agreement of the next-token
distributions with the full-precision model on image-text prompts (KL divergence and top-1
agreement, over real tokens only), and a short greedy generation side by side. The quantized
checkpoint is read with our own reader, so every format we write can be evaluated without any
peer package.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from auto_round_mllm.data.calib_set import CalibrationSet, build_calibration_set
from auto_round_mllm.data.processors import processor_for
from auto_round_mllm.data.sources import load_samples
from auto_round_mllm.data.templates import resolve_template
from auto_round_mllm.inference.dequantize import load_dequantized
from auto_round_mllm.models.family import family_for_model_type
from auto_round_mllm.models.loading import LoadedModel, load_model, resolve_model_dir
from auto_round_mllm.models.processor_loading import load_processor

GENERATION_PROMPT = "Explain in one sentence what a Python decorator does."


@dataclass
class EvalReport:
    model: str
    baseline: str | None
    perplexity: float
    baseline_perplexity: float | None = None
    kl_divergence: float | None = None
    """Mean KL(baseline || quantized) per real token of the image-text prompts, in nats."""
    top1_agreement: float | None = None
    text_samples: int = 0
    image_samples: int = 0
    generation: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_for_eval(path: str, *, trust_remote_code: bool) -> LoadedModel:
    """A quantized checkpoint (any of our formats, dequantized) or a plain model, ready to run."""
    folder = resolve_model_dir(path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" not in config:  # fp32 like the dequantized checkpoints, for a fair comparison
        return load_model(str(folder), model_dtype="float32", trust_remote_code=trust_remote_code)
    model = load_dequantized(folder, dtype=torch.float32, trust_remote_code=trust_remote_code)
    procs = load_processor(folder, trust_remote_code=trust_remote_code)
    return LoadedModel(
        model=model,
        family=family_for_model_type(config.get("model_type", "")),
        source_dir=folder,
        tokenizer=procs.tokenizer,
        processor=procs.processor,
        image_processor=procs.image_processor,
        processor_notice=procs.notice,
    )


def samples_for(
    loaded: LoadedModel, dataset: str, *, nsamples: int, seqlen: int, seed: int
) -> CalibrationSet:
    family = loaded.family
    template, _ = resolve_template(None, family.template if family.model_types else loaded.model_type)
    processor = processor_for(family.processor, loaded, template)
    return build_calibration_set(
        load_samples(dataset), processor, seqlen=seqlen, nsamples=nsamples, seed=seed
    )


@torch.no_grad()
def logits_of(model: torch.nn.Module, sample: dict[str, Any]) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    inputs = {
        k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in sample.items()
    }
    return model(**inputs, use_cache=False).logits.float()


def perplexity(model: torch.nn.Module, samples: list[dict[str, Any]]) -> float:
    total, count = 0.0, 0
    for sample in samples:
        logits = logits_of(model, sample)[0, :-1]
        labels = sample["input_ids"][0, 1:]
        keep = sample["attention_mask"][0, 1:].bool()
        total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
        count += int(keep.sum())
    return math.exp(total / max(count, 1))


def agreement(
    model: torch.nn.Module, baseline: torch.nn.Module, samples: list[dict[str, Any]]
) -> tuple[float, float]:
    """(mean KL(baseline || model) per real token, top-1 agreement) over the samples."""
    kl_total, agree, count = 0.0, 0, 0
    for sample in samples:
        keep = sample["attention_mask"][0].bool()
        ours = logits_of(model, sample)[0][keep].log_softmax(-1)
        ref = logits_of(baseline, sample)[0][keep].log_softmax(-1)
        kl_total += float(F.kl_div(ours, ref, log_target=True, reduction="sum"))
        agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
        count += int(keep.sum())
    return kl_total / max(count, 1), agree / max(count, 1)


@torch.no_grad()
def generate(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> str:
    ids = loaded.tokenizer(prompt, return_tensors="pt")
    out = loaded.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return loaded.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def evaluate(
    model: str,
    *,
    baseline: str | None = None,
    text_dataset: str = "embedded-text",
    image_dataset: str = "embedded-images",
    nsamples: int = 8,
    seqlen: int = 512,
    seed: int = 1234,
    max_new_tokens: int = 24,
    trust_remote_code: bool = False,
) -> EvalReport:
    """The three checks; ``baseline`` (the original model) enables agreement and side-by-side output.
    The seed differs from calibration's default so held-out text is scored."""
    started = time.perf_counter()
    quantized = load_for_eval(model, trust_remote_code=trust_remote_code)
    text = samples_for(quantized, text_dataset, nsamples=nsamples, seqlen=seqlen, seed=seed)
    report = EvalReport(
        model=str(model), baseline=baseline, perplexity=perplexity(quantized.model, text.samples)
    )
    report.text_samples = text.used
    report.generation["quantized"] = generate(quantized, GENERATION_PROMPT, max_new_tokens)
    if baseline is not None:
        reference = load_for_eval(baseline, trust_remote_code=trust_remote_code)
        report.baseline_perplexity = perplexity(reference.model, text.samples)
        images = samples_for(quantized, image_dataset, nsamples=nsamples, seqlen=seqlen, seed=seed)
        report.image_samples = images.image_samples
        report.kl_divergence, report.top1_agreement = agreement(
            quantized.model, reference.model, images.samples
        )
        report.generation["baseline"] = generate(reference, GENERATION_PROMPT, max_new_tokens)
    report.seconds = time.perf_counter() - started
    return report
