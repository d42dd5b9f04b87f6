"""The ``auto_gptq`` format (``quant_method: "gptq"``): GPTQ tensors that vLLM, transformers
(through optimum or GPTQModel) and GPTQModel load.

``auto_gptq`` is symmetric only, in the v1 convention (``checkpoint_format: "gptq"``: stored zero =
real zero - 1), the one vLLM and every GPTQ kernel load. Asymmetric zeros cannot use it (a real zero
of 0 cannot be stored minus one: GPTQModel reports up to 13% of asymmetric v1 zeros overflowing), and
vLLM does not load the exact-zero ``gptq_v2`` convention (``Unsupported quantization config:
bits=4, sym=False``), so ``auto_gptq --asym`` is refused before loading and ``--format gptq_v2``
writes that convention on request, for GPTQModel and our loader. ``desc_act`` is false
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
from auto_round_mllm.errors import IncompatibleScheme
from auto_round_mllm.export.base import ExportInput, check_int_weights, register_exporter
from auto_round_mllm.export.checkpoint import Namer, both_conventions, fp_modules_outside, write_checkpoint
from auto_round_mllm.export.layouts import gptq_g_idx, gptq_layer_problem, pack_gptq


class GPTQExporter:
    scale_storage = "float16"
    per_layer_schemes = True
    quantized_head = True

    def __init__(self, name: str, *, exact_zeros: bool) -> None:
        self.name = name
        self.exact_zeros = exact_zeros
        """``gptq_v2``: zeros stored as they are (any scheme); else v1, zero minus one (sym only)."""

    def check(self, scheme: QuantScheme) -> None:
        check_int_weights(scheme, self.name)
        if not scheme.sym and not self.exact_zeros:
            raise IncompatibleScheme(
                "auto_gptq stores symmetric weights only: asymmetric GPTQ needs the gptq_v2 convention, "
                "which vLLM does not load",
                fix=_asym_fix(scheme.bits),
            )

    def layer_problem(
        self, layer: nn.Linear, scheme: QuantScheme, job_scheme: QuantScheme | None = None
    ) -> str | None:
        if not scheme.sym and not self.exact_zeros:
            return "asymmetric: auto_gptq stores zeros minus one (--format gptq_v2 stores them exactly)"
        return gptq_layer_problem(layer, scheme)

    def quantization_config(self, data: ExportInput, name_for: Namer) -> dict[str, Any]:
        scheme = data.job.scheme
        checkpoint_format = self.checkpoint_format
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
        # vLLM treats every Linear whose name contains an entry of modules_in_block_to_quantize as
        # quantized (a substring test), so a CLIP vision tower's self_attn.q_proj would be built as
        # a GPTQ layer and its 16-bit weight fail to load: skip the 16-bit subtrees by name.
        for name in both_conventions(name_for, fp_subtrees(data)):
            dynamic[f"-:{re.escape(name)}(\\.|$)"] = {}
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

    @property
    def checkpoint_format(self) -> str:
        return "gptq_v2" if self.exact_zeros else "gptq"

    def write(self, data: ExportInput, folder: Path) -> dict[str, Any]:
        offset = 0 if self.exact_zeros else 1

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
            "checkpoint_format": self.checkpoint_format,
            "not_marlin": data.not_marlin,
        }


def fp_subtrees(data: ExportInput) -> list[str]:
    """The subtrees that hold only 16-bit Linears (vision tower, projector), lm_head aside: vLLM
    decides a head's quantization by ``lm_head`` alone."""
    get_head = getattr(data.model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return [
        name
        for name in fp_modules_outside(data.model, set(data.qweights))
        if data.model.get_submodule(name) is not head
    ]


def _blocks(data: ExportInput) -> list[str]:
    """Every tuned block (``model.language_model.layers.3``), from the layer plan."""
    return sorted({decision.block for decision in data.decisions.values()})


def _asym_fix(bits: int) -> str:
    if bits == 4:
        return (
            "use --format auto_round (asymmetric 4-bit in AWQ packing) or auto_awq, which vLLM loads; "
            "--format gptq_v2 for GPTQModel; or drop --asym"
        )
    return (
        f"drop --asym, or use --format gptq_v2 (GPTQModel) or auto_round (auto-round's loader): "
        f"vLLM loads no asymmetric {bits}-bit format"
    )


register_exporter("auto_gptq", GPTQExporter("auto_gptq", exact_zeros=False), aliases=("gptq",))
register_exporter("gptq_v2", GPTQExporter("gptq_v2", exact_zeros=True), aliases=("auto_gptq:gptq_v2",))
