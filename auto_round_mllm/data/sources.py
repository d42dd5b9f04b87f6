"""Calibration text sources: the embedded offline set and local files.

Each source returns plain texts; turning them into model inputs is
:mod:`auto_round_mllm.data.calib_set`'s job. Sources are registered by name; a value that is not a
registered name but an existing file is read as a local file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from auto_round_mllm.errors import DatasetError
from auto_round_mllm.registry import Registry
from auto_round_mllm.utils.assets import asset_dir

TextSource = Callable[[], list[str]]
DATASETS: Registry[TextSource] = Registry("dataset")
EMBEDDED = "embedded"
LOCAL_SUFFIXES = (".jsonl", ".txt")


def register_dataset(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[TextSource], TextSource]:
    return DATASETS.register(name, aliases=aliases)


def read_jsonl_texts(path: Path) -> list[str]:
    """One JSON object per line with a non-empty ``text`` field; errors name the line."""
    texts: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path}: line {number} is not valid JSON ({exc.msg})",
                    fix='write one object per line, e.g. {"text": "..."}',
                ) from exc
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DatasetError(
                    f"{path}: line {number} has no string field 'text'",
                    fix='write one object per line, e.g. {"text": "..."}',
                )
            if text.strip():
                texts.append(text)
    return texts


def read_txt_texts(path: Path) -> list[str]:
    """Paragraphs separated by blank lines; a file without blank lines is one text."""
    content = path.read_text(encoding="utf-8")
    return [part.strip() for part in content.split("\n\n") if part.strip()]


def read_local_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist", fix="check the --dataset path")
    if path.suffix not in LOCAL_SUFFIXES:
        raise DatasetError(
            f"dataset file {path} has an unsupported type {path.suffix!r}",
            fix=f"use a {' or '.join(LOCAL_SUFFIXES)} file, or --dataset {EMBEDDED}",
        )
    texts = read_jsonl_texts(path) if path.suffix == ".jsonl" else read_txt_texts(path)
    if not texts:
        raise DatasetError(
            f"dataset file {path} holds no text", fix="add some text, or use --dataset embedded"
        )
    return texts


@register_dataset(EMBEDDED, aliases=("default",))
def embedded_texts() -> list[str]:
    """The offline set shipped in ``calibration/`` (see calibration/README.md)."""
    return read_jsonl_texts(asset_dir("calibration") / "text.jsonl")


def load_texts(dataset: str | None) -> tuple[str, list[str]]:
    """Resolve ``--dataset`` to (label, texts). ``None`` means the embedded set."""
    spec = dataset or EMBEDDED
    if spec.startswith("local:"):
        spec = spec[len("local:") :]
    elif spec in DATASETS:
        return DATASETS.canonical(spec), DATASETS.get(spec)()
    path = Path(spec).expanduser()
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        return str(path), read_local_file(path)
    if "/" in spec:
        raise DatasetError(
            f"dataset {spec!r} is a hub dataset, which this version cannot read",
            fix=f"use --dataset {EMBEDDED} or a local .jsonl/.txt file",
        )
    DATASETS.get(spec)  # raises UnknownName listing the registered sources
    raise AssertionError("unreachable")
