"""The ``llm_compressor`` format: compressed-tensors ``pack-quantized`` checkpoints
(``quant_method: "compressed-tensors"``), what llm-compressor writes for weight-only int schemes,
following the contract of compressed-tensors 0.20.0 (written here by hand: the library is no
runtime dependency; the tests validate the config with its pydantic models and decompress our
tensors with it).

Tensors per quantized Linear: ``weight_packed``, ``weight_scale`` (fp16), ``weight_shape`` and, for
asymmetric schemes, ``weight_zero_point`` (see :func:`layouts.pack_compressed_tensors`); no
``weight_g_idx`` (no act-order); the bias unchanged.

``config_groups``: ``group_0`` holds the job's scheme and targets the class name ``Linear``, as
llm-compressor writes it; ``ignore`` names every Linear left in 16 bit. Layers with a scheme of
their own (``--layer_config``, ``--schemes``, a smaller group size where the job's does not divide
the width) get one more group per distinct scheme, naming them, and so does a quantized lm_head
(``--quant_lm_head``: vLLM's ``ParallelLMHead`` is no Linear, only a name finds it). Then every
group names its layers, ``group_0`` included: compressed-tensors picks an exact name over a class
target, but vLLM releases before mid-2026 match a fused layer (``qkv_proj``, ``gate_up_proj``) by
its class name before its shards' names, which would give a ``q_proj`` with its own scheme the
job's. Targets that do not overlap leave every reader one answer.

Module names are the source checkpoint's, followed by the transformers 5 module name where it
differs (:func:`both_conventions`): vLLM maps the checkpoint's through its ``hf_to_vllm_mapper``
(the live ones map to the same modules or to none), while compressed-tensors, loaded by
transformers, matches targets and ``ignore`` against the live module names, and without them
would quantize a renamed vision tower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from auto_round_mllm._version import __version__
from auto_round_mllm.config import QuantScheme
from auto_round_mllm.errors import IncompatibleScheme
from auto_round_mllm.export.base import ExportInput, check_int_weights, register_exporter
from auto_round_mllm.export.checkpoint import Namer, both_conventions, write_checkpoint
from auto_round_mllm.export.layouts import pack_compressed_tensors

COMPRESSED_TENSORS_VERSION = "0.20.0"
"""The compressed-tensors release whose on-disk contract we follow (written as ``version``)."""
PACK_QUANTIZED = "pack-quantized"
PACKED_BITS = range(1, 9)
"""Widths ``pack_to_int32`` packs (densely: 32 values in ``bits`` words)."""
CLASS_TARGET = "Linear"


def weight_args(scheme: QuantScheme) -> dict[str, Any]:
    """The ``weights`` entry of a config group, as compressed-tensors' ``QuantizationArgs`` dumps it."""
    channel = scheme.group_size == -1
    return {
        "num_bits": scheme.bits,
        "type": "int",
        "symmetric": scheme.sym,
        "group_size": None if channel else scheme.group_size,
        "strategy": "channel" if channel else "group",
        "dynamic": False,
    }


def layer_groups(data: ExportInput) -> dict[QuantScheme, list[str]]:
    """The quantized layers by scheme, the job's first (empty if no layer has it)."""
    groups: dict[QuantScheme, list[str]] = {data.job.scheme: []}
    for name in data.qweights:
        decision = data.decisions.get(name)
        scheme = decision.scheme if decision is not None and decision.scheme is not None else data.job.scheme
        groups.setdefault(scheme, []).append(name)
    return {scheme: names for scheme, names in groups.items() if names}


class CompressedTensorsExporter:
    name = "llm_compressor"
    scale_storage = "float16"
    per_layer_schemes = True
    quantized_head = True

    def check(self, scheme: QuantScheme) -> None:
        check_int_weights(scheme, "llm_compressor's pack-quantized layout")
        if scheme.bits not in PACKED_BITS:
            raise IncompatibleScheme(
                f"llm_compressor's pack-quantized layout stores 1 to 8 bits per weight, not {scheme.bits}",
                fix="use --bits 2, 3, 4 or 8",
            )

    def layer_problem(
        self, layer: nn.Linear, scheme: QuantScheme, job_scheme: QuantScheme | None = None
    ) -> str | None:
        """None: the dense packing pads the last word of a row (and of a zero-point column), and
        ``weight_shape`` keeps the true width, so any layer the scheme fits is stored."""
        return None

    def quantization_config(self, data: ExportInput, name_for: Namer) -> dict[str, Any]:
        groups = layer_groups(data)
        by_class = len(groups) == 1 and data.job.scheme in groups and not data.outside_blocks
        config_groups = {
            f"group_{index}": {
                "targets": [CLASS_TARGET] if by_class else both_conventions(name_for, names),
                "weights": weight_args(scheme),
                "input_activations": None,
                "output_activations": None,
                "format": PACK_QUANTIZED,
            }
            for index, (scheme, names) in enumerate(groups.items())
        }
        kept = [
            name
            for name, module in data.model.named_modules()
            if isinstance(module, nn.Linear) and name not in data.qweights
        ]
        return {
            "quant_method": "compressed-tensors",
            "format": PACK_QUANTIZED,
            "quantization_status": "compressed",
            "config_groups": config_groups,
            "ignore": both_conventions(name_for, kept),
            "kv_cache_scheme": None,
            "global_compression_ratio": None,
            "moe_sparsity_config": None,
            "sparsity_config": {},
            "transform_config": {},
            "version": COMPRESSED_TENSORS_VERSION,
            "provider": f"auto-round-mllm {__version__}",
        }

    def write(self, data: ExportInput, folder: Path) -> dict[str, Any]:
        facts = write_checkpoint(
            data,
            folder,
            pack=pack_compressed_tensors,
            make_config=lambda name_for: self.quantization_config(data, name_for),
        )
        return {**facts, "config_groups": len(layer_groups(data))}


register_exporter(
    "llm_compressor",
    CompressedTensorsExporter(),
    aliases=("auto_round:llm_compressor", "compressed-tensors"),
)
