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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from auto_round_mllm.errors import OutputExists, UserError

# Files of the source folder that are weights or configs we rewrite; everything else small is copied.
NOT_COPIED = re.compile(
    r"(^config\.json$|\.safetensors$|\.bin$|\.pt$|\.pth$|\.index\.json$|^quantization_config\.json$"
    r"|^quantize_config\.json$|^quantization_report\.json$|^\.)"
)
COPIED_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".py", ".tiktoken", ".vocab")


def check_output_dir(path: Path, *, force: bool) -> None:
    """Refuse an existing output unless ``--force``; check the parent is writable. Runs before loading."""
    if path.exists() and not force:
        raise OutputExists(
            f"output folder {path} already exists", fix="pass --force to replace it, or pick another"
        )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write under {parent}", fix="choose a writable --output_dir")


@contextlib.contextmanager
def atomic_output(final: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``final``, on failure it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield staging
        if final.exists():
            if not force:
                raise OutputExists(f"output folder {final} already exists", fix="pass --force to replace it")
            trash = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(trash)
            staging.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise UserError(f"shard size {size!r} is not understood", fix="use a size like 5GB or 500MB")
    units = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    return int(float(match.group(1)) * units.get((match.group(2) or "b").lower(), 1))


def write_safetensors(
    tensors: dict[str, torch.Tensor], folder: Path, *, max_shard_size: str | int
) -> list[str]:
    """Shard ``tensors`` (in name order) into files of at most ``max_shard_size`` bytes, with an index."""
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and sizes[-1] + nbytes > limit:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor
        sizes[-1] += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    for file_name, shard in zip(names, shards, strict=True):
        save_file(shard, str(folder / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file_name))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
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
