"""The ``auto_gptq`` format (``quant_method: "gptq"``): GPTQ tensors that vLLM, transformers
(through optimum or GPTQModel) and GPTQModel load.

Symmetric schemes use the v1 convention (``checkpoint_format: "gptq"``: stored zero = real zero - 1);
asymmetric ones go out as ``gptq_v2`` with exact zeros, because a real zero of 0 cannot be stored
minus one (GPTQModel reports up to 13% of asymmetric v1 zeros overflowing). ``desc_act`` is false
with a trivial ``g_idx`` (the safest layout for every kernel); ``sym``, ``desc_act``, ``bits`` and
``group_size`` are all written because vLLM needs them to pick Marlin. For vision-language models the
quantized modules are listed (``block_name_to_quantize``, ``modules_in_block_to_quantize``) and the
16-bit layers inside blocks get GPTQModel ``dynamic`` skip rules, so no loader builds quantized
layers for the vision tower.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from auto_round_mllm._version import __version__
from auto_round_mllm.config import QuantScheme
from auto_round_mllm.export.base import ExportInput, check_int_weights, register_exporter
from auto_round_mllm.export.checkpoint import Namer, both_conventions, write_checkpoint
from auto_round_mllm.export.layouts import gptq_g_idx, gptq_layer_problem, pack_gptq


class GPTQExporter:
    name = "auto_gptq"
    scale_storage = "float16"
    per_layer_schemes = True
    quantized_head = True

    def check(self, scheme: QuantScheme) -> None:
        check_int_weights(scheme, "auto_gptq")

    def layer_problem(
        self, layer: nn.Linear, scheme: QuantScheme, job_scheme: QuantScheme | None = None
    ) -> str | None:
        return gptq_layer_problem(layer, scheme)

    def quantization_config(self, data: ExportInput, name_for: Namer) -> dict[str, Any]:
        scheme = data.job.scheme
        checkpoint_format = "gptq" if scheme.sym else "gptq_v2"
        in_block = sorted(
            {
                name[len(block) + 1 :]
                for name in data.qweights
                for block in _blocks(data)
                if name.startswith(block + ".")
            }
        )
        fp_layers = [d.name for d in data.decisions.values() if not d.quantized]
        config: dict[str, Any] = {
            "quant_method": "gptq",
            "bits": scheme.bits,
            "group_size": scheme.group_size,
            "sym": scheme.sym,
            "desc_act": False,
            "static_groups": False,
            "true_sequential": False,
            "damp_percent": 0.01,
            "checkpoint_format": checkpoint_format,
            "format": checkpoint_format,
            "lm_head": bool(data.outside_blocks),  # GPTQModel's and vLLM's switch for a packed lm_head
            "pack_dtype": "int32",
            "provider": f"auto-round-mllm {__version__}",
            # One string of live (transformers 5) module names: optimum prefix-tests live names
            # with str.startswith, so a list crashes it and a checkpoint name silently matches
            # nothing (the packed weights would be dropped and the model run on random ones).
            "block_name_to_quantize": ",".join(data.block_groups),
            "modules_in_block_to_quantize": [in_block],
        }
        dynamic: dict[str, dict[str, Any]] = {
            f"-:{re.escape(name)}$": {} for name in both_conventions(name_for, fp_layers)
        }
        for layer, own in data.own_schemes.items():  # GPTQModel's and vLLM's per-layer overrides
            for name in both_conventions(name_for, [layer]):
                dynamic[f"+:{re.escape(name)}$"] = {
                    "bits": own.bits,
                    "group_size": own.group_size,
                    "sym": own.sym,
                    "desc_act": False,
                }
        if dynamic:
            config["dynamic"] = dynamic
        return config

    def write(self, data: ExportInput, folder: Path) -> dict[str, Any]:
        offset = 1 if data.job.scheme.sym else 0

        def pack(qw):
            return {**pack_gptq(qw, zero_offset=offset), "g_idx": gptq_g_idx(qw)}

        facts = write_checkpoint(
            data,
            folder,
            pack=pack,
            make_config=lambda name_for: self.quantization_config(data, name_for),
            config_files=("quantize_config.json",),
        )
        return {
            **facts,
            "checkpoint_format": "gptq" if offset else "gptq_v2",
            "not_marlin": data.not_marlin,
        }


def _blocks(data: ExportInput) -> list[str]:
    """Every tuned block (``model.language_model.layers.3``), from the layer plan."""
    return sorted({decision.block for decision in data.decisions.values()})


register_exporter("auto_gptq", GPTQExporter(), aliases=("gptq",))
