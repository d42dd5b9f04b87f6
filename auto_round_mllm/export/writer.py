"""Writing a checkpoint folder: atomic output, sharded safetensors, processing files.

Everything is written into a temporary sibling folder and renamed into place at the very end, so an
interrupted or failed run never leaves a half-written checkpoint where a loader would find it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from auto_round_mllm.config import parse_size
from auto_round_mllm.errors import OutputExists, UserError
from auto_round_mllm.utils.tensor_files import TensorLike, write_sharded

# Files of the source folder that are weights or configs we rewrite; everything else small is copied.
NOT_COPIED = re.compile(
    r"(^config\.json$|\.safetensors$|\.bin$|\.pt$|\.pth$|\.index\.json$|^quantization_config\.json$"
    r"|^quantize_config\.json$|^quantization_report\.json$|^\.)"
)
COPIED_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".py", ".tiktoken", ".vocab")


def existing_ancestor(path: Path) -> Path:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    return parent


def check_output_dir(path: Path, *, force: bool) -> None:
    """Refuse an existing output unless ``--force``, and a location we cannot write. Runs before
    loading, so a read-only or mistyped --output_dir fails in a second, not after tuning."""
    if path.exists() and not force:
        raise OutputExists(
            f"output folder {path} already exists", fix="pass --force to replace it, or pick another"
        )
    parent = existing_ancestor(path)
    if not parent.is_dir():
        raise UserError(f"cannot write under {parent}: it is a file", fix="choose a folder for --output_dir")
    try:  # a real probe: os.access says yes to root even on a read-only file system
        tempfile.TemporaryDirectory(prefix=".write-probe-", dir=parent).cleanup()
    except OSError as exc:
        raise UserError(
            f"cannot write under {parent} ({exc.strerror or exc})", fix="choose a writable --output_dir"
        ) from None


@contextlib.contextmanager
def atomic_outputs(finals: list[Path], *, force: bool) -> Iterator[list[Path]]:
    """Yield one temporary folder per final folder; only when every one has been written do they
    replace their finals, so several formats land together or not at all. On any failure the
    temporary folders go, and so do the parent folders this call created. A failed write (disk
    full, quota) becomes a one-line user error."""
    created = sorted(
        {p for final in finals for p in final.parents if not p.exists()}, key=lambda p: len(p.parts)
    )
    stagings: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            stagings.append(Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent)))
        yield stagings
        for final in finals:
            if final.exists() and not force:
                raise OutputExists(f"output folder {final} already exists", fix="pass --force to replace it")
        for final, staging in zip(finals, stagings, strict=True):
            if final.exists():
                trash = final.with_name(f".{final.name}.old-{os.getpid()}")
                final.rename(trash)
                staging.rename(final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                staging.rename(final)
        for final in finals:
            remove_leftovers(final)
    except BaseException as exc:
        for staging in stagings:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        if isinstance(exc, OSError):
            raise UserError(
                f"writing {', '.join(map(str, finals))} failed ({exc.strerror or exc}); nothing was left there",
                fix="free disk space (or pick another --output_dir) and run again",
            ) from exc
        raise


def remove_leftovers(final: Path) -> None:
    """Temporary folders of earlier runs of this output that were killed (SIGKILL, power loss)
    before they could clean up: once this run's output is in place they are garbage. (Two runs
    writing one output at the same time would overwrite each other anyway.)"""
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
        for leftover in final.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def write_safetensors(
    tensors: Mapping[str, TensorLike], folder: Path, *, max_shard_size: str | int
) -> list[str]:
    """Shard ``tensors`` (in name order) into files of at most ``max_shard_size`` bytes, with an
    index when there are several. Lazy tensors are materialized one at a time, as they are written."""
    names, weight_map, total = write_sharded(tensors, folder, limit=parse_size(max_shard_size))
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(folder / "model.safetensors.index.json", index)
    return names


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def copy_processing_files(
    folder: Path, *, source_dir: Path | None, tokenizer: Any, processor: Any, image_processor: Any
) -> None:
    """Tokenizer, processor, image processor, chat template and generation config beside the weights.

    Files of the source folder are copied verbatim (the most faithful copy, readable with or without
    torchvision); objects passed in without a source folder are saved with ``save_pretrained``.
    """
    if source_dir is not None:
        for path in sorted(source_dir.iterdir()):
            if path.is_file() and path.suffix in COPIED_SUFFIXES and not NOT_COPIED.search(path.name):
                shutil.copy2(path, folder / path.name)
        return
    for item in (tokenizer, image_processor, processor):
        if item is not None and hasattr(item, "save_pretrained"):
            item.save_pretrained(str(folder))
