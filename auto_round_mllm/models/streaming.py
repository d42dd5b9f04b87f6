"""Streaming: the decoder blocks stay on the meta device and read their weights when reached.

A 72B model does not fit in host memory, and nothing in block-wise quantization needs it to: the
pipeline touches one block at a time. So the model is built on the meta device (shapes, no
memory), everything outside the streamed blocks (embeddings, vision tower, norms, head) is loaded
as ``from_pretrained`` would, and each block's tensors are read from the safetensors shards when the
pipeline materializes it and dropped again when it releases it. The export reads the blocks'
unquantized tensors (norms, biases, layers kept in full precision) from the shards too.

The loading rules are transformers' own: its init context (dtype, meta device), its checkpoint
renaming (``get_model_conversion_mapping``), its keep-in-fp32 plan, its initialization of buffers
that are computed rather than stored (rotary ``inv_freq``), and its weight tying; a test holds the
result equal, tensor for tensor, to ``from_pretrained``. A checkpoint that needs more than renaming
(fused or stacked expert weights), pickled ``.bin`` weights, or remote code is loaded whole instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auto_round_mllm.models.architecture import check_loading_info, model_class_for
from auto_round_mllm.utils.device import torch_dtype
from auto_round_mllm.utils.tensor_files import DTYPE_ORDER, LazyTensor

log = logging.getLogger(__name__)


class NotStreamable(Exception):
    """This checkpoint cannot be streamed; the message says why (the caller loads it whole)."""


@dataclass(frozen=True)
class TensorRef:
    """Where one model tensor lives on disk, and the dtype the model holds it in."""

    file: Path
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    def load(self) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as handle:
            tensor = handle.get_tensor(self.key)
        return tensor.to(self.dtype)

    def lazy(self, dtype: torch.dtype | None = None) -> LazyTensor:
        """The tensor as the exporter takes it: read when written, cast to ``dtype`` if given."""
        target = dtype or self.dtype
        return LazyTensor(target, self.shape, lambda: self.load().to(target))


def checkpoint_tensors(model_dir: Path) -> dict[str, tuple[Path, torch.dtype, tuple[int, ...]]]:
    """Every tensor of the safetensors checkpoint: its file, stored dtype and shape (headers only)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise NotStreamable("the checkpoint has no safetensors files")
    found: dict[str, tuple[Path, torch.dtype, tuple[int, ...]]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                piece = handle.get_slice(key)
                found[key] = (file, _safetensors_dtype(piece.get_dtype()), tuple(piece.get_shape()))
    return found


def _safetensors_dtype(name: str) -> torch.dtype:
    for stored, dtype in DTYPE_ORDER:
        if stored == name:
            return dtype
    raise NotStreamable(f"the checkpoint stores {name} tensors")


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace a parameter or buffer by name, keeping parameters as parameters."""
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        requires_grad = bool(old is not None and old.requires_grad)
        owner._parameters[leaf] = nn.Parameter(
            value, requires_grad=requires_grad and value.is_floating_point()
        )
    else:
        owner._buffers[leaf] = value


def _persistent_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers: what a checkpoint stores for ``module``."""
    yield from module.state_dict(keep_vars=True).items()


@dataclass
class StreamedWeights:
    """The on-disk half of a streamed model: where each streamed block's tensors are."""

    refs: dict[str, TensorRef]
    """Model state-dict name -> location, for every tensor of a streamed block."""
    blocks: tuple[str, ...]
    materialized: set[str] = field(default_factory=set)

    def is_streamed(self, block: str) -> bool:
        return block in self.blocks

    def materialize(self, model: nn.Module, block: str) -> None:
        """Read ``block``'s tensors into the model (on the CPU, in the model's dtypes)."""
        if block not in self.blocks or block in self.materialized:
            return
        module = model.get_submodule(block)
        for rel, empty in list(_persistent_tensors(module)):
            # the model's current dtype: --model_dtype may have cast the skeleton after loading
            _set_tensor(module, rel, self.refs[f"{block}.{rel}"].load().to(empty.dtype))
        self.materialized.add(block)

    def release(self, model: nn.Module, block: str) -> None:
        """Drop ``block``'s tensors back to the meta device (computed buffers stay)."""
        if block not in self.blocks:
            return
        module = model.get_submodule(block)
        for rel, tensor in list(_persistent_tensors(module)):
            _set_tensor(module, rel, torch.empty_like(tensor, device="meta"))
        self.materialized.discard(block)

    def lazy(self, name: str, dtype: torch.dtype | None = None) -> LazyTensor:
        return self.refs[name].lazy(dtype)


def resolve_dtype(
    hf_config: Any, model_dtype: str, stored: dict[str, tuple[Path, torch.dtype, tuple]]
) -> torch.dtype:
    """transformers' ``dtype="auto"`` rule: the config's dtype, else the first floating tensor's."""
    if model_dtype != "auto":
        return torch_dtype(model_dtype)
    configured = getattr(hf_config, "dtype", None)
    if isinstance(configured, str):
        configured = getattr(torch, configured, None)
    if isinstance(configured, torch.dtype):
        return configured
    for _, dtype, _ in stored.values():
        if dtype.is_floating_point:
            return dtype
    return torch.get_default_dtype()


def load_streaming(
    model_dir: Path,
    config: dict[str, Any],
    *,
    model_dtype: str,
    trust_remote_code: bool,
    streamed_blocks: list[str],
) -> tuple[nn.Module, StreamedWeights]:
    """Build the model with ``streamed_blocks`` on the meta device and everything else loaded.

    Raises :class:`NotStreamable` when the checkpoint needs a full load, and the loader's
    :class:`ModelNotFound` errors for missing or mis-shaped weights (the ones ``from_pretrained``
    would have initialized randomly)."""
    from transformers import AutoConfig, PreTrainedModel
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    from transformers.utils.generic import ContextManagers

    cls = model_class_for(config, trust_remote_code=trust_remote_code)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)) or config.get("auto_map"):
        raise NotStreamable("the model ships its own code")
    stored = checkpoint_tensors(model_dir)
    if any(p.suffix == ".bin" for p in model_dir.iterdir()):
        raise NotStreamable("the checkpoint mixes .bin and safetensors files")
    hf_config = AutoConfig.from_pretrained(model_dir)
    dtype = resolve_dtype(hf_config, model_dtype, stored)
    hf_config.dtype = dtype
    for key in hf_config.sub_configs:
        if (sub := getattr(hf_config, key, None)) is not None:
            sub.dtype = dtype
    with ContextManagers(cls.get_init_context(dtype, False, False, False)):
        model = cls(hf_config)
    try:
        from transformers.monkey_patching import patch_output_recorders

        patch_output_recorders(model)
    except ImportError:  # older transformers: nothing to patch
        pass

    conversions = get_model_conversion_mapping(model, None, None)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    meta_state = model.state_dict()
    locations: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
    for key, (file, _, shape) in stored.items():
        renamed, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta_state)
        if renamed not in meta_state and key in meta_state:
            renamed, pattern = rename_source_key(key, [], [], model.base_model_prefix, meta_state)
        if renamed not in meta_state:
            continue  # unexpected keys: from_pretrained ignores them too
        if pattern is not None:
            raise NotStreamable(f"{key} is converted, not only renamed, when loaded")
        locations[renamed] = (file, key, shape)
    model._weight_conversions = [c for c in conversions if c.was_used()]  # as from_pretrained leaves it

    dtype_for = _dtype_plan(model, dtype)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    refs: dict[str, TensorRef] = {}
    missing: list[str] = []
    mismatched: list[tuple[str, tuple, tuple]] = []
    for name, empty in meta_state.items():
        if name not in locations:
            if name not in tied:
                missing.append(name)
            continue
        file, key, shape = locations[name]
        if shape != tuple(empty.shape):
            mismatched.append((name, shape, tuple(empty.shape)))
        refs[name] = TensorRef(file, key, dtype_for(name, empty.dtype), shape)
    check_loading_info(model_dir, {"missing_keys": missing, "mismatched_keys": mismatched})

    prefixes = tuple(f"{block}." for block in streamed_blocks)
    for name, ref in refs.items():
        if not name.startswith(prefixes):
            _set_tensor(model, name, ref.load())
    for name, buffer in model.named_non_persistent_buffers():
        _set_tensor(model, name, torch.empty_like(buffer, device="cpu"))
    non_persistent = {name for name, _ in model.named_non_persistent_buffers()}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name not in non_persistent:
            tensor._is_hf_initialized = True  # loaded, or streamed: nothing to initialize
    model.initialize_weights()  # computes the non-persistent buffers (rotary inv_freq ...)
    model.tie_weights()
    streamed_refs = {name: ref for name, ref in refs.items() if name.startswith(prefixes)}
    log.info("streaming %d blocks from %s", len(streamed_blocks), model_dir)
    return model, StreamedWeights(streamed_refs, tuple(streamed_blocks))


def _dtype_plan(model: nn.Module, dtype: torch.dtype):
    """The dtype each tensor is loaded in: the keep-in-fp32 plan where it matches, else the dtype
    the model created the tensor with (integer buffers, fp32 gates)."""
    plan = model._get_dtype_plan(dtype) if hasattr(model, "_get_dtype_plan") else {}
    if not plan:
        return lambda _name, created: created
    from transformers.core_model_loading import build_glob_alternation

    pattern, by_group, _ = build_glob_alternation(list(plan))

    def dtype_for(name: str, created: torch.dtype) -> torch.dtype:
        match = pattern.search(name)
        return plan[by_group[match.lastgroup]] if match else created

    return dtype_for
