"""The exporter protocol and registry.

An exporter stores values a tuner chose; it never chooses them. It can refuse a scheme before any
weight is loaded (:meth:`Exporter.check`), say which layers it cannot store before tuning starts
(:meth:`Exporter.layer_problem`), and write a checkpoint folder (:meth:`Exporter.write`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from auto_round_mllm.config import QuantJob, QuantScheme
from auto_round_mllm.errors import IncompatibleScheme
from auto_round_mllm.export.layouts import marlin_problem
from auto_round_mllm.models.layer_plan import LayerDecision
from auto_round_mllm.quant.tunable import QuantizedWeight
from auto_round_mllm.registry import Registry

if TYPE_CHECKING:
    from auto_round_mllm.models.streaming import StreamedWeights


@dataclass
class ExportInput:
    """Everything an exporter may read: the tuned model (its quantized Linears hold dequantized
    weights), the quantized values, the layer plan and the files to copy."""

    model: nn.Module
    qweights: dict[str, QuantizedWeight]
    decisions: dict[str, LayerDecision]
    block_groups: list[str]
    job: QuantJob
    source_dir: Path | None
    tokenizer: Any = None
    processor: Any = None
    image_processor: Any = None
    streamed: StreamedWeights | None = None
    """Blocks whose tensors are on disk (meta in ``model``): read one at a time while writing."""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """16-bit tensors the tuning changed (``--enable_norm_bias_tuning``), by module name: written
    instead of the model's (a streamed block's would be read from the source again)."""

    @functools.cached_property
    def own_schemes(self) -> dict[str, QuantScheme]:
        """Quantized layers whose scheme is not the job's (a smaller group size where the job's
        does not divide the width): the per-layer exceptions each format's config must carry."""
        return {
            name: d.scheme
            for name, d in self.decisions.items()
            if d.scheme is not None and d.scheme != self.job.scheme
        }

    @functools.cached_property
    def outside_blocks(self) -> dict[str, QuantScheme]:
        """Quantized layers outside every block list (lm_head, with ``--quant_lm_head``): configs
        name them one by one, since their block lists do not cover them."""
        prefixes = tuple(f"{group}." for group in self.block_groups)
        return {
            name: d.scheme
            for name, d in self.decisions.items()
            if d.scheme is not None and not name.startswith(prefixes)
        }

    @functools.cached_property
    def not_marlin(self) -> dict[str, str]:
        """Layers vLLM's Marlin kernels cannot take (they then run on slower GPTQ/AWQ kernels):
        found once per run, whichever Marlin formats are written."""
        return {name: why for name, qw in self.qweights.items() if (why := marlin_problem(qw))}


class Exporter(Protocol):
    name: str
    scale_storage: str | None
    per_layer_schemes: bool
    quantized_head: bool
    """Whether the format's loaders read a quantized lm_head (AWQ's keep it in 16 bit)."""
    """Whether the format's config can give single layers their own scheme (auto_round's
    ``extra_config``, GPTQ's ``dynamic``); AWQ's holds one for all."""
    """The dtype this format's files store scales in (``float16``), or None when it stores no
    scales (``fake``). Tuning must round scales to a dtype this one holds exactly."""

    def check(self, scheme: QuantScheme) -> None:
        """Raise IncompatibleScheme for schemes this format cannot store."""
        ...

    def layer_problem(
        self, layer: nn.Linear, scheme: QuantScheme, job_scheme: QuantScheme | None = None
    ) -> str | None:
        """Why this layer cannot be stored quantized with ``scheme`` in this format (in a
        checkpoint of ``job_scheme``, when it has its own), or None."""
        ...

    def write(self, data: ExportInput, folder: Path) -> dict[str, Any]:
        """Write the checkpoint into ``folder`` (a staging folder); return facts for the report."""
        ...


EXPORTERS: Registry[Exporter] = Registry("export format")


def check_int_weights(scheme: QuantScheme, stores: str) -> None:
    """Refuse a data type other than int for a format (``stores``: who stores them, in words)."""
    if scheme.data_type != "int":
        raise IncompatibleScheme(
            f"{stores} stores int weights, not {scheme.data_type}", fix="use --data_type int"
        )


def register_exporter(name: str, exporter: Exporter, *, aliases: tuple[str, ...] = ()) -> Exporter:
    """Make ``exporter`` available as ``--format name``."""
    return EXPORTERS.add(name, exporter, aliases=aliases)
