"""Turn calibration samples into model inputs: selection, packing, padding and masks.

Plain texts are tokenized, joined with the end-of-text token in a seeded order and cut into samples
of exactly ``seqlen`` tokens: unlike auto-round, short texts are never dropped (they are joined), so
a small local file still calibrates. Conversations (with or without images) become one sample each,
right-padded to the longest conversation (at most ``seqlen``) with an attention mask of zeros, so
they share batches and the padding never enters the loss (the mask travels to the tuner). A conversation with
images that is longer than ``seqlen`` is kept whole: cutting it would cut image tokens. When the
source holds fewer than ``nsamples`` samples' worth, fewer are used and the notes say so.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import torch

from auto_round_mllm.data.processors import CalibrationProcessor, SampleError
from auto_round_mllm.data.sample import Sample, SourceSamples
from auto_round_mllm.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    samples: list[dict[str, torch.Tensor]]
    source: str
    seqlen: int
    requested: int
    notes: list[str] = field(default_factory=list)
    image_samples: int = 0
    skipped: int = 0

    @property
    def used(self) -> int:
        return len(self.samples)

    @property
    def tokens(self) -> int:
        """Real (unpadded) tokens over all samples."""
        return sum(int(s["attention_mask"].sum()) for s in self.samples)


def _separator_ids(tokenizer) -> list[int]:
    for attr in ("eos_token_id", "sep_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return [value]
    return []


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def pad_to(inputs: dict[str, torch.Tensor], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad every sequence-aligned tensor (``[1, L, ...]``: ids, masks, token types, mllama's
    ``cross_attention_mask``) to ``length``; ids with ``pad_id``, everything else with 0 (masked)."""
    current = inputs["input_ids"].shape[1]
    if current >= length:
        return inputs
    if "attention_mask" not in inputs:
        inputs = {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])}
    padded = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (1, current):
            fill = pad_id if key == "input_ids" else 0
            shape = (1, length - current, *value.shape[2:])
            value = torch.cat([value, value.new_full(shape, fill)], dim=1)
        padded[key] = value
    return padded


class _TextPacker:
    """Joins text token streams and emits full ``seqlen`` chunks."""

    def __init__(self, tokenizer, seqlen: int) -> None:
        self.tokenizer = tokenizer
        self.seqlen = seqlen
        self.stream: list[int] = []
        self.separator = _separator_ids(tokenizer)

    def add(self, text: str) -> list[dict[str, torch.Tensor]]:
        self.stream.extend(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        self.stream.extend(self.separator)
        chunks = []
        while len(self.stream) >= self.seqlen:
            ids = torch.tensor([self.stream[: self.seqlen]], dtype=torch.long)
            chunks.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
            del self.stream[: self.seqlen]
        return chunks


def build_calibration_set(
    source: SourceSamples,
    processor: CalibrationProcessor,
    *,
    seqlen: int,
    nsamples: int,
    seed: int,
) -> CalibrationSet:
    """Up to ``nsamples`` model-input dicts from ``source``, walked in a seeded order."""
    order = list(range(len(source.samples)))
    random.Random(seed).shuffle(order)
    tokenizer = processor.tokenizer
    packer = _TextPacker(tokenizer, seqlen)
    pad_id = _pad_id(tokenizer)
    samples: list[dict[str, torch.Tensor]] = []
    image_samples = skipped = 0
    conversations: list[int] = []
    reasons: dict[str, int] = {}
    for index in order:
        if len(samples) >= nsamples:
            break
        sample: Sample = source.samples[index]
        if sample.messages is None and not processor.needs_images:
            samples.extend(packer.add(sample.text or "")[: nsamples - len(samples)])
            continue
        try:
            inputs = processor.encode(sample, seqlen=seqlen)
        except SampleError as exc:
            skipped += 1
            reasons[str(exc)] = reasons.get(str(exc), 0) + 1
            continue
        image_samples += int(bool(sample.images) and processor.handles_images)
        samples.append(inputs)
        conversations.append(len(samples) - 1)
    # Conversations are padded to the longest one (at most seqlen), not to seqlen: same shapes for
    # batching without paying for thousands of padding tokens per sample.
    lengths = [samples[i]["input_ids"].shape[1] for i in conversations]
    target = min(seqlen, max((n for n in lengths if n <= seqlen), default=seqlen))
    for i in conversations:
        samples[i] = pad_to(samples[i], target, pad_id)
    notes = list(source.notes)
    if skipped:
        worst = max(reasons, key=reasons.__getitem__)
        notes.append(f"{skipped} samples of {source.label} were skipped (most often: {worst})")
    if not samples and packer.stream:
        ids = torch.tensor([packer.stream], dtype=torch.long)
        samples.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        notes.append(f"{source.label} holds only {ids.shape[1]} tokens; using one sample of that length")
    if not samples:
        why = f" ({skipped} skipped: {max(reasons, key=reasons.__getitem__)})" if reasons else ""
        raise DatasetError(
            f"calibration source {source.label} gave no usable sample{why}",
            fix="use a dataset this model can read (text, or image-text when its processor loads)",
        )
    if len(samples) < nsamples:
        notes.append(
            f"{source.label} gave {len(samples)} samples of up to {seqlen} tokens instead of {nsamples}"
        )
    for note in notes[len(source.notes) :]:
        log.warning(note)
    return CalibrationSet(
        samples=samples,
        source=source.label,
        seqlen=max(sample["input_ids"].shape[1] for sample in samples),
        requested=nsamples,
        notes=notes,
        image_samples=image_samples,
        skipped=skipped,
    )
