"""One record (a JSONL line, a JSON list item, a parquet row) -> one :class:`Sample`.

Every file format goes through :func:`record_to_sample`, so a record means the same thing in
``.jsonl``, ``.json`` and ``.parquet``, and its errors read the same. Three record shapes:

- ``{"text": "..."}``: plain text;
- ``{"messages": [{"role", "content"}], "images": [...]}``: a chat, ``content`` a string with
  ``<image>`` placeholders or an OpenAI-style list of ``{"type": "text"|"image"}`` parts;
- ``{"image": "...", "conversations": [{"from": "human"|"gpt", "value"}]}``: LLaVA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auto_round_mllm.data.context import SourceContext
from auto_round_mllm.data.sample import IMAGE_PLACEHOLDER, ROLES, Sample, normalize_role
from auto_round_mllm.errors import DatasetError

RECORD_FIX = (
    'use {"text": ...}, {"messages": [{"role", "content"}], "images": [...]} '
    'or LLaVA {"image", "conversations": [{"from", "value"}]}'
)
IMAGE_PART_TYPES = ("image", "image_url", "input_image")


class Dropped:
    """Marker: the record was valid but its image is missing (already counted by the context)."""


DROPPED = Dropped()


def record_to_sample(
    record: Any, *, where: str, ctx: SourceContext, image_folder: Path, source: str
) -> Sample | Dropped | None:
    """``None`` for an empty text (skipped, as blank lines are); :data:`DROPPED` for a missing image."""
    if isinstance(record, dict):
        if isinstance(record.get("text"), str) and "messages" not in record and "conversations" not in record:
            text = record["text"]
            return Sample(text=text, source=source) if text.strip() else None
        if isinstance(record.get("messages"), list):
            messages = [_chat_turn(turn, where, index) for index, turn in enumerate(record["messages"])]
            names = _image_names(record, where)
            return _with_images(messages, names, where, ctx, image_folder, source, llava=False)
        if isinstance(record.get("conversations"), list):
            messages = [_llava_turn(turn, where, index) for index, turn in enumerate(record["conversations"])]
            names = _image_names(record, where)
            return _with_images(messages, names, where, ctx, image_folder, source, llava=True)
    raise DatasetError(
        f"{where} has no string field 'text' and no list field 'messages' or 'conversations'", fix=RECORD_FIX
    )


def _image_names(record: dict, where: str) -> list[Any]:
    images = record.get("images", record.get("image"))
    if images is None:
        return []
    if isinstance(images, str):
        return [images]
    if isinstance(images, list | tuple):
        return list(images)
    raise DatasetError(f"{where}: 'images' must be a list of file names", fix=RECORD_FIX)


def _chat_turn(turn: Any, where: str, index: int) -> dict[str, str]:
    if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
        raise DatasetError(f"{where}: message {index} needs 'role' and 'content'", fix=RECORD_FIX)
    return {"role": _role(turn["role"], where, index), "content": _content(turn["content"], where, index)}


def _llava_turn(turn: Any, where: str, index: int) -> dict[str, str]:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
        raise DatasetError(
            f"{where}: conversation turn {index} needs 'from' and a string 'value'", fix=RECORD_FIX
        )
    return {"role": _role(turn["from"], where, index), "content": turn["value"]}


def _role(value: Any, where: str, index: int) -> str:
    role = normalize_role(value) if isinstance(value, str) else None
    if role not in ROLES:
        raise DatasetError(
            f"{where}: turn {index} has role {value!r}", fix=f"use one of {', '.join(ROLES)} (or human/gpt)"
        )
    return role


def _content(value: Any, where: str, index: int) -> str:
    """A string as is; a list of parts joined, each image part becoming one ``<image>``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        pieces = []
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in IMAGE_PART_TYPES:
                pieces.append(IMAGE_PLACEHOLDER)
            elif kind == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            else:
                raise DatasetError(f"{where}: message {index} has a content part {part!r}", fix=RECORD_FIX)
        return "\n".join(pieces)
    raise DatasetError(f"{where}: message {index} content is not text", fix=RECORD_FIX)


def _with_images(
    messages: list[dict[str, str]],
    names: list[Any],
    where: str,
    ctx: SourceContext,
    image_folder: Path,
    source: str,
    *,
    llava: bool,
) -> Sample | Dropped | None:
    if not messages:
        raise DatasetError(f"{where} has an empty conversation", fix=RECORD_FIX)
    placeholders = sum(turn["content"].count(IMAGE_PLACEHOLDER) for turn in messages)
    if llava and placeholders == 0 and len(names) == 1:
        # LLaVA items are meant to carry "<image>" in their first human turn; LLaVA's own
        # preprocessing puts it there when it is absent, and so do we.
        first_user = next((turn for turn in messages if turn["role"] == "user"), messages[0])
        first_user["content"] = f"{IMAGE_PLACEHOLDER}\n{first_user['content']}"
        placeholders = 1
    if placeholders != len(names):
        raise DatasetError(
            f"{where} has {len(names)} image(s) but {placeholders} {IMAGE_PLACEHOLDER} placeholder(s)",
            fix=f"put one {IMAGE_PLACEHOLDER} in the text for each image, in order",
        )
    images = [ctx.resolve_image(name, image_folder, where=where) for name in names]
    if any(image is None for image in images):
        return DROPPED
    return Sample(messages=messages, images=[image for image in images if image is not None], source=source)
