"""What every exporter writes the same way: tensors under the source checkpoint's names, sharded,
``config.json`` with the format's ``quantization_config``, and the processing files beside them.
An exporter contributes only its tensor layout and its config."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from auto_round_mllm.export.base import ExportInput
from auto_round_mllm.export.naming import checkpoint_namer, module_checkpoint_name
from auto_round_mllm.export.writer import copy_processing_files, write_json, write_safetensors
from auto_round_mllm.quant.tunable import QuantizedWeight
from auto_round_mllm.utils.tensor_files import LazyTensor, TensorLike

Namer = Callable[[str], str]
Packer = Callable[[QuantizedWeight], dict[str, torch.Tensor]]


def model_tensors(model: nn.Module, *, skip_modules: set[str]) -> dict[str, torch.Tensor]:
    """The model's state dict without tied duplicates and without the quantized Linears' weights."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    skipped = {f"{module}.{suffix}" for module in skip_modules for suffix in ("weight", "bias")}
    return {name: tensor for name, tensor in state.items() if name not in skipped}


def both_conventions(name_for: Namer, module_names: list[str]) -> list[str]:
    """Checkpoint names first, then transformers 5 module names where they differ.

    Loaders disagree on which convention a module list uses: vLLM and the checkpoint tensors use the
    checkpoint's, auto-round's and transformers' loaders match the live module names. Listing both,
    as auto-round does for Qwen2-VL, makes either kind of prefix test find exactly these modules.
    """
    names: list[str] = []
    for module in module_names:
        for name in (module_checkpoint_name(name_for, module), module):
            if name not in names:
                names.append(name)
    return names


def write_checkpoint(
    data: ExportInput,
    folder: Path,
    *,
    pack: Packer | None,
    make_config: Callable[[Namer], dict[str, Any] | None],
    config_files: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write one checkpoint into ``folder``. ``pack`` None keeps the (fake-quantized) weights."""
    name_for = checkpoint_namer(data.model, data.source_dir)
    quantized = set(data.qweights) if pack is not None else set()
    tensors: dict[str, TensorLike] = {
        name_for(name): t
        for name, t in unstreamed(data, model_tensors(data.model, skip_modules=quantized)).items()
    }
    for name, tuned in data.tensors.items():  # a quantized layer's bias travels in its packed parts
        if name_for(name) in tensors:
            tensors[name_for(name)] = tuned.to(tensors[name_for(name)].dtype)
    spill = folder / ".packing"
    try:
        if pack is not None:
            on_disk = any(is_on_disk(qw) for qw in data.qweights.values())
            packed = packed_tensors(data.qweights, pack, spill if on_disk else None)
            for module_name, parts in packed.items():
                prefix = module_checkpoint_name(name_for, module_name)
                tensors.update({f"{prefix}.{suffix}": t for suffix, t in parts.items()})
        shards = write_safetensors(tensors, folder, max_shard_size=data.job.export.max_shard_size)
    finally:
        shutil.rmtree(spill, ignore_errors=True)

    quant_config = make_config(name_for)
    data.model.config.save_pretrained(str(folder))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    if quant_config is not None:
        config["quantization_config"] = quant_config
        for name in config_files:
            write_json(folder / name, quant_config)
    write_json(config_path, config)
    generation_config = getattr(data.model, "generation_config", None)
    if data.source_dir is None and generation_config is not None:
        generation_config.save_pretrained(str(folder))
    copy_processing_files(
        folder,
        source_dir=data.source_dir,
        tokenizer=data.tokenizer,
        processor=data.processor,
        image_processor=data.image_processor,
    )
    facts: dict[str, Any] = {"shards": shards, "tensors": len(tensors)}
    if quant_config is not None:
        facts["quant_method"] = quant_config.get("quant_method")
    return facts


def unstreamed(data: ExportInput, state: dict[str, torch.Tensor]) -> dict[str, TensorLike]:
    """Streamed blocks' tensors are meta in the model: read them from the source shards as they
    are written, and a quantized Linear's weight (the fake format) from its quantized values."""
    if data.streamed is None:
        return dict(state)
    out: dict[str, TensorLike] = {}
    for name, tensor in state.items():
        if tensor.device.type != "meta":
            out[name] = tensor
            continue
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module in data.qweights:
            qw, dtype = data.qweights[module], tensor.dtype
            out[name] = LazyTensor(
                dtype, tuple(tensor.shape), lambda qw=qw, dtype=dtype: qw.dequantize(dtype)
            )
        else:
            out[name] = data.streamed.lazy(name, tensor.dtype)
    return out


SPILL_BYTES = 64 * 2**20


def is_on_disk(qw: object) -> bool:
    """A quantized layer left in the progress folder (``StoredQuantizedWeight``), read on demand."""
    return getattr(qw, "on_disk", False)


def packed_tensors(
    qweights: dict[str, QuantizedWeight], pack: Packer, spill: Path | None
) -> dict[str, dict[str, TensorLike]]:
    """Each quantized Linear's packed tensors. With ``spill`` (quantized values that wait on disk
    in the progress folder), layers are packed one at a time and written to scratch files of about
    ``SPILL_BYTES``, read back when the checkpoint is written: memory holds one chunk, not the model."""
    if spill is None:
        return {name: dict(pack(qw)) for name, qw in qweights.items()}
    spill.mkdir(exist_ok=True)
    out: dict[str, dict[str, TensorLike]] = {}
    chunk: dict[str, torch.Tensor] = {}
    files = itertools.count()

    def flush() -> None:
        file = spill / f"{next(files):05d}.safetensors"
        save_file(chunk, str(file))
        for key, tensor in chunk.items():
            module, _, suffix = key.rpartition(".")
            out.setdefault(module, {})[suffix] = LazyTensor(
                tensor.dtype, tuple(tensor.shape), lambda file=file, key=key: _read(file, key)
            )
        chunk.clear()

    for name, qw in qweights.items():
        loaded = qw.load() if is_on_disk(qw) else qw  # one read per layer, not one per tensor
        chunk.update({f"{name}.{suffix}": t.contiguous() for suffix, t in pack(loaded).items()})
        if sum(t.numel() * t.element_size() for t in chunk.values()) >= SPILL_BYTES:
            flush()
    if chunk:
        flush()
    return {name: out[name] for name in qweights}


def _read(file: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(key)


def fp_modules_outside(model: nn.Module, quantized: set[str]) -> list[str]:
    """The largest subtrees holding Linears but no quantized Linear (vision tower, projector,
    lm_head ...): AWQ's ``modules_to_not_convert`` and similar lists."""
    out: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            names = [
                f"{path}.{n}" if n else path for n, m in child.named_modules() if isinstance(m, nn.Linear)
            ]
            if not names:
                continue
            if not any(n in quantized for n in names):
                out.append(path)
            else:
                walk(child, path)

    walk(model, "")
    return out
