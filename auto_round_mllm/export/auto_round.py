"""The ``auto_round`` format (``quant_method: "auto-round"``), as auto-round, transformers and vLLM read it.

``--format auto_round`` picks the packing the way auto-round does: symmetric schemes are written as
``auto_round:auto_gptq`` (GPTQ v1 tensors, which vLLM and every GPTQ kernel load); asymmetric 4-bit
as ``auto_round:auto_awq`` (AWQ GEMM tensors with exact zeros, loadable by vLLM's AWQ kernels);
other asymmetric widths in auto-round's native packing (GPTQ layout with exact zeros: auto-round
and GPTQModel load it, vLLM does not, and a warning says so). ``auto_round:auto_gptq`` and
``auto_round:auto_awq`` name a packing explicitly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from auto_round_mllm._version import __version__
from auto_round_mllm.config import QuantScheme, TuningConfig
from auto_round_mllm.errors import IncompatibleScheme
from auto_round_mllm.export.base import ExportInput, check_int_weights, register_exporter
from auto_round_mllm.export.checkpoint import Namer, both_conventions, write_checkpoint
from auto_round_mllm.export.layouts import awq_layer_problem, gptq_layer_problem, pack_awq, pack_gptq

log = logging.getLogger(__name__)

# The auto-round release whose on-disk contract we follow (its loader reads this key).
AUTOROUND_FORMAT_VERSION = "0.16.1"
GPTQ_PACKING = "auto_round:auto_gptq"
AWQ_PACKING = "auto_round:auto_awq"
NATIVE_PACKING = "auto_round"

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
    "dynamic_max_gap",
    "enable_adam",
    "momentum",
)


def tuning_settings(tuning: TuningConfig, dataset: str | None, bits: int = 4) -> dict[str, Any]:
    """Tuning hyper-parameters that differ from auto-round's defaults (auto-round strips defaults)."""
    if tuning.iters == 0 and not tuning.opt_rtn:
        return {"iters": 0}  # round-to-nearest: nothing else was used
    if tuning.iters == 0:  # optimized round-to-nearest: the calibration data weighed the search
        return {
            "iters": 0,
            "disable_opt_rtn": False,
            "nsamples": tuning.nsamples,
            "seqlen": tuning.seqlen,
            "dataset": dataset or "embedded",
        }
    defaults = TuningConfig()
    settings: dict[str, Any] = {
        k: getattr(tuning, k) for k in TUNING_KEYS if getattr(tuning, k) != getattr(defaults, k)
    }
    default_lr = TuningConfig(iters=tuning.iters).effective_lr(bits)
    for key, value in (("lr", tuning.effective_lr(bits)), ("minmax_lr", tuning.effective_minmax_lr(bits))):
        if value != default_lr:  # auto-round's default for both
            settings[key] = value
    settings["dataset"] = dataset or "embedded"
    return settings


def packing_for(scheme: QuantScheme, requested: str | None) -> str:
    if requested is not None:
        return requested
    if scheme.sym:
        return GPTQ_PACKING
    return AWQ_PACKING if scheme.bits == 4 else NATIVE_PACKING


class AutoRoundExporter:
    scale_storage = "float16"
    per_layer_schemes = True

    def __init__(self, name: str, packing: str | None) -> None:
        self.name = name
        self.requested = packing
        # auto-round's loader reads a quantized lm_head from extra_config in every packing, but
        # auto_round:auto_awq asks for AutoAWQ-style loaders, which keep it in 16 bit
        self.quantized_head = packing != AWQ_PACKING

    def check(self, scheme: QuantScheme) -> None:
        check_int_weights(scheme, "the auto_round format")
        if self.requested == AWQ_PACKING and scheme.bits != 4:
            raise IncompatibleScheme(
                f"{AWQ_PACKING} stores 4-bit weights only, not {scheme.bits}-bit",
                fix="use --format auto_round (it picks a packing for any width) or --bits 4",
            )
        if self.requested == GPTQ_PACKING and not scheme.sym:
            raise IncompatibleScheme(
                f"{GPTQ_PACKING} stores zero points minus one, which asymmetric zeros of 0 cannot take",
                fix="use --format auto_round (exact zeros) or drop --asym",
            )

    def layer_problem(
        self, layer: nn.Linear, scheme: QuantScheme, job_scheme: QuantScheme | None = None
    ) -> str | None:
        """The packing is the checkpoint's, chosen by the job's scheme: a layer with its own
        scheme (--layer_config) is stored in it too."""
        if packing_for(job_scheme or scheme, self.requested) == AWQ_PACKING:
            return awq_layer_problem(layer, scheme)
        return gptq_layer_problem(layer, scheme)

    def quantization_config(self, data: ExportInput, name_for: Namer, packing: str) -> dict[str, Any]:
        scheme = data.job.scheme
        config: dict[str, Any] = {
            "quant_method": "auto-round",
            "packing_format": packing,
            "bits": scheme.bits,
            "group_size": scheme.group_size,
            "sym": scheme.sym,
            "data_type": scheme.data_type,
            "autoround_version": AUTOROUND_FORMAT_VERSION,
            "block_name_to_quantize": ",".join(both_conventions(name_for, data.block_groups)),
            "provider": f"auto-round-mllm {__version__}",
        }
        fp_layers = [d.name for d in data.decisions.values() if not d.quantized]
        extra = {name: {"bits": 16, "data_type": "float"} for name in both_conventions(name_for, fp_layers)}
        own_schemes = {**data.own_schemes, **data.outside_blocks}  # lm_head: auto-round's convention
        for layer, own in own_schemes.items():  # read by auto-round's loader, vLLM and ours
            for name in both_conventions(name_for, [layer]):
                extra[name] = {
                    "bits": own.bits,
                    "group_size": own.group_size,
                    "sym": own.sym,
                    "data_type": own.data_type,
                }
        if extra:
            config["extra_config"] = dict(sorted(extra.items()))
        config.update(tuning_settings(data.job.tuning, data.job.data.dataset, scheme.bits))
        return config

    def write(self, data: ExportInput, folder: Path) -> dict[str, Any]:
        scheme = data.job.scheme
        packing = packing_for(scheme, self.requested)
        if packing == NATIVE_PACKING:
            log.warning(
                "asymmetric %d-bit weights use auto-round's native packing: auto-round and GPTQModel load it, "
                "vLLM does not",
                scheme.bits,
            )
        if packing == AWQ_PACKING:
            pack = pack_awq
        else:
            offset = 1 if packing == GPTQ_PACKING else 0
            pack = lambda qw: pack_gptq(qw, zero_offset=offset)  # noqa: E731
        facts = write_checkpoint(
            data,
            folder,
            pack=pack,
            make_config=lambda name_for: self.quantization_config(data, name_for, packing),
            config_files=("quantization_config.json",),
        )
        return {**facts, "packing_format": packing, "not_marlin": data.not_marlin}


register_exporter("auto_round", AutoRoundExporter("auto_round", None), aliases=("auto-round",))
register_exporter(GPTQ_PACKING, AutoRoundExporter(GPTQ_PACKING, GPTQ_PACKING))
register_exporter(AWQ_PACKING, AutoRoundExporter(AWQ_PACKING, AWQ_PACKING))
