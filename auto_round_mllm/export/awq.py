"""The ``auto_awq`` format (``quant_method: "awq"``, GEMM layout), read by vLLM's AWQ kernels,
transformers with autoawq or GPTQModel, and auto-round.

4-bit only. Zeros are stored exactly (``zero_point: true``; a symmetric scheme stores its constant
zero, 8). ``modules_to_not_convert`` lists every subtree without a quantized layer (vision tower,
projector, lm_head) and each 16-bit layer inside a block, in both naming conventions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from auto_round_mllm._version import __version__
from auto_round_mllm.config import QuantScheme
from auto_round_mllm.errors import IncompatibleScheme
from auto_round_mllm.export.base import ExportInput, register_exporter
from auto_round_mllm.export.checkpoint import Namer, both_conventions, fp_modules_outside, write_checkpoint
from auto_round_mllm.export.layouts import awq_layer_problem, pack_awq


class AWQExporter:
    name = "auto_awq"
    scale_storage = "float16"
    per_layer_schemes = False
    quantized_head = False

    def check(self, scheme: QuantScheme) -> None:
        if scheme.bits != 4 or scheme.data_type != "int":
            raise IncompatibleScheme(
                f"auto_awq stores 4-bit int weights only, not {scheme.bits}-bit {scheme.data_type}",
                fix="use --bits 4, or --format auto_round / auto_gptq for other widths",
            )

    def layer_problem(
        self, layer: nn.Linear, scheme: QuantScheme, job_scheme: QuantScheme | None = None
    ) -> str | None:
        return awq_layer_problem(layer, scheme)

    def quantization_config(self, data: ExportInput, name_for: Namer) -> dict[str, Any]:
        scheme = data.job.scheme
        keep = fp_modules_outside(data.model, set(data.qweights))
        keep += [d.name for d in data.decisions.values() if not d.quantized]
        return {
            "quant_method": "awq",
            "bits": 4,
            "group_size": scheme.group_size,
            "zero_point": True,
            "version": "gemm",
            "modules_to_not_convert": both_conventions(name_for, keep),
            "provider": f"auto-round-mllm {__version__}",
        }

    def write(self, data: ExportInput, folder: Path) -> dict[str, Any]:
        return write_checkpoint(
            data,
            folder,
            pack=pack_awq,
            make_config=lambda name_for: self.quantization_config(data, name_for),
        )


register_exporter("auto_awq", AWQExporter(), aliases=("awq",))
