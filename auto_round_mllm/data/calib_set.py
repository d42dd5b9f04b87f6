"""Turn calibration texts into model inputs.

Texts are tokenized, joined with the end-of-text token in a seeded order and cut into samples of
exactly ``seqlen`` tokens. Unlike auto-round, short texts are never dropped (they are joined), so a
small local file still calibrates; when the corpus holds fewer than ``nsamples x seqlen`` tokens,
fewer samples are used and the report says so.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import torch

from auto_round_mllm.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    samples: list[dict[str, torch.Tensor]]
    source: str
    seqlen: int
    requested: int
    notes: list[str] = field(default_factory=list)

    @property
    def used(self) -> int:
        return len(self.samples)

    @property
    def tokens(self) -> int:
        return sum(int(s["input_ids"].numel()) for s in self.samples)


def _separator_ids(tokenizer) -> list[int]:
    for attr in ("eos_token_id", "sep_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return [value]
    return []


def build_text_calibration(
    texts: list[str], tokenizer, *, source: str, seqlen: int, nsamples: int, seed: int
) -> CalibrationSet:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    separator = _separator_ids(tokenizer)
    needed = seqlen * nsamples
    stream: list[int] = []
    for index in order:
        stream.extend(tokenizer(texts[index], add_special_tokens=False)["input_ids"])
        stream.extend(separator)
        if len(stream) >= needed:
            break
    notes: list[str] = []
    count = min(nsamples, len(stream) // seqlen)
    if count == 0:
        if not stream:
            raise DatasetError(
                f"calibration source {source} gave no tokens", fix="use a dataset with text in it"
            )
        notes.append(
            f"{source} holds only {len(stream)} tokens; using one sample of that length instead of {seqlen}"
        )
        seqlen, count = len(stream), 1
    elif count < nsamples:
        notes.append(
            f"{source} holds {len(stream)} tokens: {count} samples of {seqlen} tokens instead of {nsamples}"
        )
    for note in notes:
        log.warning(note)
    samples = []
    for i in range(count):
        ids = torch.tensor(stream[i * seqlen : (i + 1) * seqlen], dtype=torch.long).unsqueeze(0)
        samples.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return CalibrationSet(samples=samples, source=source, seqlen=seqlen, requested=nsamples, notes=notes)
