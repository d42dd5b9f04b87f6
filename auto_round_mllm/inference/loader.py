"""Load our checkpoints as quantized transformers models, with no peer package installed.

A transformers quantizer for ``quant_method: "auto-round"`` (every packing we write), ``"gptq"``,
``"awq"`` and ``"compressed-tensors"`` (``pack-quantized``, what ``llm_compressor`` writes) replaces
the quantized Linears with :class:`QuantLinear` before the weights load, so transformers itself
reads the packed tensors under its usual checkpoint renaming. ``load_quantized(path)`` uses it
directly. ``register_with_transformers()`` (run when ``auto_round_mllm.AutoRoundConfig`` is
imported) makes a plain ``from_pretrained`` use it too, but only when the ``auto-round`` package is
absent: where it is installed, its own quantizer keeps the name.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from auto_round_mllm.inference.layer_config import excluded, layer_scheme
from auto_round_mllm.inference.qlinear import PackedLayout, QuantLinear, check_backend, set_backend

METHODS = ("auto-round", "awq", "gptq", "compressed-tensors")


def layout_for(config: dict[str, Any], name: str) -> PackedLayout:
    """How layer ``name`` is packed: the format's layout with the layer's own scheme."""
    from auto_round_mllm.inference.dequantize import layout_of

    kind, offset = layout_of(config)
    scheme = layer_scheme(config, name)
    return PackedLayout(
        kind=kind,
        bits=scheme["bits"],
        group_size=scheme["group_size"],
        zero_offset=offset,
        has_g_idx=config.get("quant_method") == "gptq",
        sym=scheme["sym"],
    )


class PackedQuantizationConfig(QuantizationConfigMixin):
    """The checkpoint's quantization_config as it is: transformers' own GPTQConfig needs ``optimum``
    just to be built, and none of its checks matter for reading our tensors."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


def quantized_linear_names(model: nn.Module, config: dict[str, Any]) -> list[str]:
    """The Linears the checkpoint stores packed, by the config's module lists. Block prefixes are
    tested on the live module names; a config that names no block that exists here (no key, as
    auto-round's GPTQ export writes, or checkpoint-convention names only) falls back to the
    family's text decoder blocks, the only ones such configs quantize."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if config.get("quant_method") == "compressed-tensors":  # config groups and ignore name them all
        return [name for name in linears if not excluded(config, name)]
    if config.get("quant_method") == "awq":
        keep = config.get("modules_to_not_convert") or []
        return [name for name in linears if not any(name == k or name.startswith(k + ".") for k in keep)]
    blocks = config.get("block_name_to_quantize") or config.get("to_quant_block_names") or ""
    prefixes = [b.strip() for b in (blocks.split(",") if isinstance(blocks, str) else blocks) if b.strip()]

    def in_blocks(prefixes: list[str]) -> list[str]:
        patterns = [re.compile(rf"{re.escape(prefix)}\.\d+\.") for prefix in prefixes]
        return [
            name for name in linears if any(p.match(name) for p in patterns) and not excluded(config, name)
        ]

    found = in_blocks(prefixes)
    if not found:
        from auto_round_mllm.models.family import family_for_model_type, text_block_list

        found = in_blocks([text_block_list(model, family_for_model_type(model.config.model_type))])
    return found + [name for name in packed_heads(model, config) if name not in found]


def packed_heads(model: nn.Module, config: dict[str, Any]) -> list[str]:
    """Packed Linears outside the block lists (lm_head, quantized with ``--quant_lm_head``):
    GPTQ's ``lm_head: true`` names the output embeddings; auto-round's ``extra_config`` names
    each one with a scheme of 8 bits or fewer."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if config.get("quant_method") == "gptq":
        if not config.get("lm_head") or not isinstance(head, nn.Linear):
            return []
        return [name for name, module in model.named_modules() if module is head]
    if config.get("quant_method") != "auto-round":
        return []
    extra = config.get("extra_config") or {}
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name in extra and not excluded(config, name)
    ]


def replace_linears(model: nn.Module, config: dict[str, Any]) -> int:
    names = quantized_linear_names(model, config)
    for name in names:
        layout = layout_for(config, name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        setattr(
            parent,
            child,
            QuantLinear(linear.in_features, linear.out_features, layout=layout, bias=linear.bias is not None),
        )
    return len(names)


class PackedWeightQuantizer(HfQuantizer):
    """Inference-only quantizer for the checkpoints ``auto_round_mllm`` writes."""

    requires_calibration = True

    def validate_environment(self, *args, **kwargs) -> None:
        """Nothing to check: the torch path needs no extra package."""

    def _process_model_before_weight_loading(self, model, **kwargs):
        config = self.quantization_config.to_dict()
        if not replace_linears(model, config):
            raise ValueError(
                "the quantization config names no Linear of this model (block names do not match)"
            )
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        return model

    def is_serializable(self, *args, **kwargs) -> bool:
        return False

    @property
    def is_trainable(self) -> bool:
        return False


@contextlib.contextmanager
def our_quantizer(methods: tuple[str, ...] = METHODS) -> Iterator[None]:
    """Route these quant methods to our config and quantizer for the duration."""
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    saved = [
        (mapping, dict(mapping)) for mapping in (AUTO_QUANTIZER_MAPPING, AUTO_QUANTIZATION_CONFIG_MAPPING)
    ]
    AUTO_QUANTIZER_MAPPING.update(dict.fromkeys(methods, PackedWeightQuantizer))
    AUTO_QUANTIZATION_CONFIG_MAPPING.update(dict.fromkeys(methods, PackedQuantizationConfig))
    try:
        yield
    finally:
        for mapping, before in saved:
            mapping.clear()
            mapping.update(before)


def register_with_transformers() -> bool:
    """Serve ``quant_method: "auto-round"`` from transformers when the auto-round package is absent.
    Returns whether our quantizer is now the one transformers uses."""
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
    from transformers.utils import is_auto_round_available

    if is_auto_round_available():
        return False
    AUTO_QUANTIZER_MAPPING["auto-round"] = PackedWeightQuantizer
    return True


def load_quantized(
    path: str | Path,
    *,
    dtype: torch.dtype | str = "auto",
    trust_remote_code: bool = False,
    backend: str = "auto",
    **kwargs,
):
    """A transformers model with packed :class:`QuantLinear` layers, for any ``auto_round``,
    ``auto_gptq``, ``auto_awq`` or ``llm_compressor`` checkpoint we write. ``backend``: see
    :class:`QuantLinear`."""
    check_backend(backend)
    from auto_round_mllm.models.architecture import model_class_for

    folder = Path(path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method not in METHODS:
        raise ValueError(f"load_quantized reads quant_method {' or '.join(METHODS)}, not {method!r}")
    cls = model_class_for(config, trust_remote_code=trust_remote_code)
    with our_quantizer():
        model = cls.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    set_backend(model, backend)
    return model.eval()
