"""The ``auto_round`` format (``quant_method: "auto-round"``), as auto-round, transformers and vLLM read it.

Symmetric schemes are written with ``packing_format: "auto_round:auto_gptq"``: GPTQ v1 tensors
(``qweight`` packed along the input dimension, ``qzeros`` packed along the output dimension with the
zero point minus one, fp16 ``scales``), which vLLM and every GPTQ kernel load. Asymmetric schemes use
auto-round's native ``auto_round`` packing: the same layout with exact zero points, read by
auto-round and GPTQModel but not by vLLM (a warning says so).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auto_round_mllm import __version__
from auto_round_mllm.config import QuantScheme, TuningConfig
from auto_round_mllm.errors import IncompatibleScheme
from auto_round_mllm.export.base import ExportInput, register_exporter
from auto_round_mllm.export.naming import checkpoint_namer, module_checkpoint_name
from auto_round_mllm.export.writer import copy_processing_files, write_json, write_safetensors
from auto_round_mllm.quant.packing import chunk_shape, pack_cols, pack_rows
from auto_round_mllm.quant.tunable import QuantizedWeight

log = logging.getLogger(__name__)

# The auto-round release whose on-disk contract we follow (its loader reads this key).
AUTOROUND_FORMAT_VERSION = "0.16.1"
GPTQ_PACKING = "auto_round:auto_gptq"
NATIVE_PACKING = "auto_round"


def pack_gptq(qw: QuantizedWeight, *, zero_offset: int) -> dict[str, torch.Tensor]:
    """GPTQ tensors of one layer. ``zero_offset`` is 1 for the v1 "zero minus one" convention."""
    tensors = {
        "qweight": pack_rows(qw.codes.to(torch.int32).t().contiguous(), qw.bits),
        "qzeros": pack_cols((qw.zp.t() - zero_offset).contiguous(), qw.bits),
        "scales": qw.scale.t().contiguous().to(torch.float16),
    }
    if qw.bias is not None:
        tensors["bias"] = qw.bias.to(torch.float16)
    return tensors


def gptq_layer_problem(layer: nn.Linear, scheme: QuantScheme) -> str | None:
    """GPTQ packing needs whole int32 words along both dimensions."""
    values, _ = chunk_shape(scheme.bits)
    if layer.in_features % values:
        return f"in_features {layer.in_features} is not a multiple of {values} ({scheme.bits}-bit packing)"
    if layer.out_features % values:
        return f"out_features {layer.out_features} is not a multiple of {values} ({scheme.bits}-bit packing)"
    return None


def both_conventions(name_for, module_names: list[str]) -> list[str]:
    """Checkpoint names first, then transformers 5 module names where they differ.

    Loaders disagree on which convention ``block_name_to_quantize`` uses: vLLM and the checkpoint
    tensors use the checkpoint's, auto-round's loader matches the live module names. auto-round lists
    both for Qwen2-VL; prefix tests in either convention then find the text blocks and nothing else.
    """
    names: list[str] = []
    for module in module_names:
        for name in (module_checkpoint_name(name_for, module), module):
            if name not in names:
                names.append(name)
    return names


TUNING_KEYS = (
    "iters",
    "nsamples",
    "seqlen",
    "batch_size",
    "gradient_accumulate_steps",
    "amp",
    "enable_minmax_tuning",
    "enable_quanted_input",
    "scale_dtype",
)


def tuning_settings(tuning: TuningConfig, dataset: str | None) -> dict[str, Any]:
    """Tuning hyper-parameters that differ from auto-round's defaults (auto-round strips defaults)."""
    if tuning.iters == 0:
        return {"iters": 0}  # round-to-nearest: nothing else was used
    defaults = TuningConfig()
    settings: dict[str, Any] = {
        k: getattr(tuning, k) for k in TUNING_KEYS if getattr(tuning, k) != getattr(defaults, k)
    }
    for key, value in (("lr", tuning.effective_lr), ("minmax_lr", tuning.effective_minmax_lr)):
        if value != 1.0 / tuning.iters:  # auto-round's default for both is 1/iters
            settings[key] = value
    settings["dataset"] = dataset or "embedded"
    return settings


@register_exporter("auto_round", aliases=("auto-round", GPTQ_PACKING))
class AutoRoundExporter:
    name = "auto_round"

    def check(self, scheme: QuantScheme) -> None:
        if scheme.data_type != "int":
            raise IncompatibleScheme(
                f"the auto_round format stores int weights, not {scheme.data_type}", fix="use --data_type int"
            )

    def layer_problem(self, layer: nn.Linear, scheme: QuantScheme) -> str | None:
        return gptq_layer_problem(layer, scheme)

    def packing_format(self, scheme: QuantScheme) -> str:
        return GPTQ_PACKING if scheme.sym else NATIVE_PACKING

    def quantization_config(self, data: ExportInput, name_for) -> dict[str, Any]:
        scheme = data.job.scheme
        blocks = both_conventions(name_for, data.block_groups)
        config: dict[str, Any] = {
            "quant_method": "auto-round",
            "packing_format": self.packing_format(scheme),
            "bits": scheme.bits,
            "group_size": scheme.group_size,
            "sym": scheme.sym,
            "data_type": scheme.data_type,
            "autoround_version": AUTOROUND_FORMAT_VERSION,
            "block_name_to_quantize": ",".join(blocks),
            "provider": f"auto-round-mllm {__version__}",
        }
        fp_layers = [d.name for d in data.decisions.values() if not d.quantized]
        extra = {name: {"bits": 16, "data_type": "float"} for name in both_conventions(name_for, fp_layers)}
        if extra:
            config["extra_config"] = dict(sorted(extra.items()))
        config.update(tuning_settings(data.job.tuning, data.job.data.dataset))
        return config

    def write(self, data: ExportInput, folder: Path) -> dict[str, Any]:
        scheme = data.job.scheme
        if not scheme.sym:
            log.warning(
                "asymmetric %d-bit weights use auto-round's native packing: auto-round and GPTQModel load it, "
                "vLLM does not",
                scheme.bits,
            )
        zero_offset = 1 if scheme.sym else 0
        name_for = checkpoint_namer(data.model, data.source_dir)
        tensors = model_tensors(data.model, skip_modules=set(data.qweights))
        out = {name_for(name): tensor for name, tensor in tensors.items()}
        for module_name, qw in data.qweights.items():
            prefix = module_checkpoint_name(name_for, module_name)
            for suffix, tensor in pack_gptq(qw, zero_offset=zero_offset).items():
                out[f"{prefix}.{suffix}"] = tensor
        shards = write_safetensors(out, folder, max_shard_size=data.job.export.max_shard_size)

        quant_config = self.quantization_config(data, name_for)
        data.model.config.save_pretrained(str(folder))
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["quantization_config"] = quant_config
        write_json(config_path, config)
        write_json(folder / "quantization_config.json", quant_config)
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
        return {"packing_format": quant_config["packing_format"], "shards": shards, "tensors": len(out)}


def model_tensors(model: nn.Module, *, skip_modules: set[str]) -> dict[str, torch.Tensor]:
    """The model's state dict without tied duplicates and without the quantized Linears' weights."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    skipped = {f"{module}.{suffix}" for module in skip_modules for suffix in ("weight", "bias")}
    return {name: tensor for name, tensor in state.items() if name not in skipped}
