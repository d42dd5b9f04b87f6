"""Local calibration files: ``.txt``, ``.jsonl``, ``.json`` (LLaVA), ``.parquet``, and image folders.

Image names in a file are looked up relative to the file's folder, or in the ``--extra_data_dir``
image folder when one is given (see :meth:`SourceContext.image_folder`). Errors name the file and
the line, item or row, and say what a valid record looks like.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from auto_round_mllm.data.context import SourceContext
from auto_round_mllm.data.records import RECORD_FIX, Dropped, record_to_sample
from auto_round_mllm.data.sample import IMAGE_PLACEHOLDER, Sample, SourceSamples
from auto_round_mllm.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_FILES = ("metadata.jsonl", "captions.jsonl")
CAPTION_PROMPT = "Describe the image."
CAPTION_FIX = 'write one {"file_name": "<image file>", "text": "<caption>"} per line'
FILE_FIX = "use --dataset embedded, or a .txt, .jsonl, .json, .parquet file or an image folder"


def read_local(path: Path, ctx: SourceContext) -> SourceSamples:
    """Read one local file or folder; an error when it is missing, of an unknown type, or empty."""
    if path.is_dir():
        samples = read_image_folder(path, ctx)
    elif not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist", fix="check the --dataset path")
    elif path.suffix.lower() not in READERS:
        raise DatasetError(
            f"dataset file {path} has an unsupported type {path.suffix!r}",
            fix=f"use a {', '.join(READERS)} file, an image folder, or --dataset embedded",
        )
    else:
        samples = READERS[path.suffix.lower()](path, ctx)
    return SourceSamples(label=str(path), samples=samples)


def read_txt(path: Path, ctx: SourceContext) -> list[Sample]:
    """Paragraphs separated by blank lines; a file without blank lines is one text."""
    content = path.read_text(encoding="utf-8")
    samples = [Sample(text=part.strip(), source=str(path)) for part in content.split("\n\n") if part.strip()]
    return _not_empty(samples, path, ctx)


def read_jsonl(path: Path, ctx: SourceContext) -> list[Sample]:
    """One record per line (see :mod:`records`); blank lines are skipped, errors name the line."""

    def records() -> Iterable[tuple[str, Any]]:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}: line {number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(
                        f"{path}: line {number} is not valid JSON ({exc.msg})",
                        fix='write one object per line, e.g. {"text": "..."}',
                    ) from exc

    return _not_empty(_convert(records(), path, ctx), path, ctx)


def read_json(path: Path, ctx: SourceContext) -> list[Sample]:
    """A JSON list of records: the LLaVA layout (``conversation_58k.json``) or any :mod:`records` shape."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})", fix="fix the file, or use .jsonl"
        ) from exc
    if not isinstance(data, list):
        raise DatasetError(
            f"{path} holds a JSON {type(data).__name__}, not a list of records", fix=RECORD_FIX
        )
    items = ((f"{path}: item {i}", item) for i, item in enumerate(data))
    return _not_empty(_convert(items, path, ctx), path, ctx)


def read_parquet(path: Path, ctx: SourceContext) -> list[Sample]:
    """A ``text`` column, or ``messages`` with ``images`` (file names), or LLaVA columns."""
    import pyarrow.parquet as pq  # installed with `datasets`; imported here to keep startup light

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged or foreign file
        raise DatasetError(f"{path} is not a readable parquet file ({exc})", fix=FILE_FIX) from exc
    columns = set(table.column_names)
    if not columns & {"text", "messages", "conversations"}:
        raise DatasetError(
            f"{path} has columns {sorted(columns)} but none of 'text', 'messages', 'conversations'",
            fix=RECORD_FIX,
        )
    for column in ("images", "image"):
        if column in columns and _holds_bytes(table.column(column).type):
            raise DatasetError(
                f"{path}: column {column!r} holds image bytes, not file names",
                fix="save the images as files and store their names (relative to the parquet file) in the column",
            )
    rows = ((f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist()))
    return _not_empty(_convert(rows, path, ctx), path, ctx)


def _holds_bytes(kind: Any) -> bool:
    import pyarrow as pa

    while pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    if pa.types.is_struct(kind):
        return any(_holds_bytes(kind.field(i).type) for i in range(kind.num_fields))
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def read_image_folder(folder: Path, ctx: SourceContext) -> list[Sample]:
    """Images with captions, as an image-to-caption conversation each.

    Captions come from ``metadata.jsonl`` / ``captions.jsonl`` (``{"file_name", "text"}`` per line,
    the Hugging Face imagefolder layout) or, without one, from a ``<stem>.txt`` beside each image.
    A caption whose image is absent counts as a missing image; an image without a caption is
    named in an error, since it means the folder is not what the user thinks it is.
    """
    source = str(folder)
    for name in CAPTION_FILES:
        if (folder / name).is_file():
            return _not_empty(_captions_from_jsonl(folder / name, folder, ctx, source), folder / name, ctx)
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    captions = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
    if not images and not captions:
        raise DatasetError(
            f"dataset folder {folder} holds no images with captions",
            fix=f"put image files with same-name .txt captions in it, or a {CAPTION_FILES[0]}",
        )
    stems = {caption.stem for caption in captions}
    uncaptioned = [image.name for image in images if image.stem not in stems]
    if uncaptioned:
        raise DatasetError(
            f"dataset folder {folder}: {len(uncaptioned)} image(s) have no caption file, e.g. {uncaptioned[0]}",
            fix=f"add {Path(uncaptioned[0]).stem}.txt (same name as the image), or a {CAPTION_FILES[0]}",
        )
    by_stem = {image.stem: image for image in images}
    samples = []
    for caption in captions:
        text = caption.read_text(encoding="utf-8").strip()
        if not text:
            raise DatasetError(
                f"caption file {caption} is empty", fix="write the caption into it, or remove it"
            )
        image = by_stem.get(caption.stem)
        ctx.images.referenced += 1
        if image is None:
            ctx.images.add_missing(folder / f"{caption.stem}.*")
            continue
        samples.append(_caption_sample(image, text, source))
    return samples


def _captions_from_jsonl(path: Path, folder: Path, ctx: SourceContext, source: str) -> list[Sample]:
    samples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where} is not valid JSON ({exc.msg})", fix=CAPTION_FIX) from exc
            if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
                raise DatasetError(f"{where} has no string field 'file_name'", fix=CAPTION_FIX)
            text = record.get("text", record.get("caption"))
            if not isinstance(text, str) or not text.strip():
                raise DatasetError(f"{where} has no caption in 'text'", fix=CAPTION_FIX)
            image = ctx.resolve_image(record["file_name"], ctx.image_folder(folder), where=where)
            if image is not None:
                samples.append(_caption_sample(image, text.strip(), source))
    return samples


def _caption_sample(image: Path, caption: str, source: str) -> Sample:
    messages = [
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{CAPTION_PROMPT}"},
        {"role": "assistant", "content": caption},
    ]
    return Sample(messages=messages, images=[image], source=source)


def _convert(records: Iterable[tuple[str, Any]], path: Path, ctx: SourceContext) -> list[Sample]:
    """Records -> samples, stopping once ``ctx.limit`` samples are found (missing images skipped)."""
    folder = ctx.image_folder(path.parent)
    samples: list[Sample] = []
    for where, record in records:
        sample = record_to_sample(record, where=where, ctx=ctx, image_folder=folder, source=str(path))
        if sample is not None and not isinstance(sample, Dropped):
            samples.append(sample)
            if ctx.limit is not None and len(samples) >= ctx.limit:
                break
    return samples


def _not_empty(samples: list[Sample], path: Path, ctx: SourceContext) -> list[Sample]:
    """An empty file is an error; a file whose samples all lost their image is reported by the
    missing-image check in :func:`load_samples` instead, which names the folder searched."""
    if not samples and not ctx.images.missing:
        raise DatasetError(
            f"dataset file {path} holds no text or conversations",
            fix="add some records, or use --dataset embedded",
        )
    return samples


READERS: dict[str, Callable[[Path, SourceContext], list[Sample]]] = {
    ".txt": read_txt,
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".parquet": read_parquet,
}
