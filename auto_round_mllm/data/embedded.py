"""The offline set shipped in ``calibration/``: technical prose and image-text conversations.

``embedded`` holds both kinds, interleaved (one conversation, one text, ... then the remaining
texts), so that a count such as ``embedded:16`` still takes images as well as text.
``embedded-text`` and ``embedded-images`` hold one kind each. See calibration/README.md.
"""

from __future__ import annotations

import dataclasses
from itertools import zip_longest

from auto_round_mllm.data.context import ExtraDataDirs, SourceContext
from auto_round_mllm.data.local_files import read_json, read_jsonl
from auto_round_mllm.data.sample import Sample
from auto_round_mllm.data.source_registry import register_dataset
from auto_round_mllm.utils.assets import asset_dir

EMBEDDED = "embedded"
EMBEDDED_TEXT = "embedded-text"
EMBEDDED_IMAGES = "embedded-images"
TEXT_FILE = "text.jsonl"
CONVERSATIONS_FILE = "conversations.json"  # written by scripts/make_calibration_images.py


def _texts(ctx: SourceContext) -> list[Sample]:
    return read_jsonl(asset_dir("calibration") / TEXT_FILE, dataclasses.replace(ctx, limit=None))


def _conversations(ctx: SourceContext) -> list[Sample]:
    # The shipped images sit next to the JSON; --extra_data_dir is for the user's data, not ours.
    own = dataclasses.replace(ctx, extra=ExtraDataDirs(), limit=None)
    return read_json(asset_dir("calibration") / CONVERSATIONS_FILE, own)


def _interleave(first: list[Sample], second: list[Sample]) -> list[Sample]:
    return [sample for pair in zip_longest(first, second) for sample in pair if sample is not None]


@register_dataset(EMBEDDED, aliases=("default",))
def embedded(ctx: SourceContext) -> list[Sample]:
    """Shipped offline set: 79 technical texts and 24 image-text conversations (calibration/)."""
    return _interleave(_conversations(ctx), _texts(ctx))


@register_dataset(EMBEDDED_TEXT)
def embedded_text(ctx: SourceContext) -> list[Sample]:
    """Shipped offline set, texts only (calibration/text.jsonl)."""
    return _texts(ctx)


@register_dataset(EMBEDDED_IMAGES, aliases=("embedded-conversations",))
def embedded_images(ctx: SourceContext) -> list[Sample]:
    """Shipped offline set, image-text conversations only (calibration/conversations.json)."""
    return _conversations(ctx)
