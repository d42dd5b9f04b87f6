"""The measuring pass of mixed bits (``--schemes``): every chosen block runs once in full precision
on the calibration set, block by block like the tuning pass (streamed blocks are read from disk
and dropped again), while hooks record each quantizable layer's input mean square per column;
with the block's weights at hand, each candidate scheme's error is measured
(:mod:`auto_round_mllm.tuning.mixed_bits`). The allocation then rewrites the layer plan before
any block is tuned, so the tuning, the report and every export see one plan.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch
from torch import nn

from auto_round_mllm.config import QuantJob, QuantScheme
from auto_round_mllm.layer_config import matching_entry
from auto_round_mllm.models.layer_plan import LayerDecision
from auto_round_mllm.models.streaming import StreamedWeights
from auto_round_mllm.pipeline.blockwise import forward_all, place_outside_blocks, put_away
from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.pipeline.capture import capture_block_inputs
from auto_round_mllm.tuning.mixed_bits import LayerOptions, Option, allocate, quantization_error
from auto_round_mllm.tuning.signround import InputMeanSquares
from auto_round_mllm.utils.device import Precision, torch_dtype

log = logging.getLogger(__name__)

PlanFor = Callable[[QuantScheme], dict[str, LayerDecision]]
"""The layer plan the job would have with one scheme for every layer."""


@dataclasses.dataclass
class MeasurePass:
    model: nn.Module
    device: torch.device
    precision: Precision
    cache: CachePlacement
    scale_dtype: torch.dtype
    weights: StreamedWeights | None

    def group(
        self,
        group: str,
        block_names: list[str],
        samples: list,
        candidates: dict[str, list[QuantScheme]],
        batch_size: int,
    ) -> dict[str, dict[QuantScheme, float]]:
        """Errors of every candidate of every layer in ``block_names`` (members of ``group``)."""
        errors: dict[str, dict[QuantScheme, float]] = {}
        place_outside_blocks(self.model, [group], self.device)
        first = self.model.get_submodule(block_names[0])
        inputs = capture_block_inputs(
            self.model, first, samples, device=self.device, cache=self.cache, skip_unreached=True
        )
        for block_name in block_names:
            block = self.model.get_submodule(block_name)
            if self.weights is not None:
                self.weights.materialize(self.model, block_name)
            block.to(self.device)
            layers = {
                rel: module
                for rel, module in block.named_modules()
                if isinstance(module, nn.Linear) and f"{block_name}.{rel}" in candidates
            }
            with InputMeanSquares(layers) as recorder:  # type: ignore[arg-type]
                outputs = forward_all(
                    block, inputs, self.device, self.precision, batch_size, self.cache, recorder
                )
            stats = recorder.result()
            for rel, module in layers.items():
                name = f"{block_name}.{rel}"
                errors[name] = {
                    scheme: quantization_error(module.weight, scheme, stats.get(rel), self.scale_dtype)
                    for scheme in candidates[name]
                }
            inputs = inputs.with_hidden(outputs)
            put_away(self.model, block_name, self.weights)
        return errors


def mixed_decisions(
    job: QuantJob,
    decisions: dict[str, LayerDecision],
    plan_for: PlanFor,
    groups: dict[str, tuple[list[str], int]],
    measure: MeasurePass,
    samples: list,
) -> tuple[dict[str, LayerDecision], str]:
    """The plan with each free layer on its allocated scheme, and the summary's note. A layer is
    free when the job quantizes it and ``--layer_config`` does not fix it; its candidates are the
    schemes the plan can store it with (each with its group-size fallback)."""
    plans = {scheme: plan_for(scheme) for scheme in job.mixed.options(job.scheme.sym)}
    candidates: dict[str, list[QuantScheme]] = {}
    for name, decision in decisions.items():
        if decision.quantized and matching_entry(name, job.layer_config) is None:
            fitting = [plan[name].scheme for plan in plans.values() if plan[name].quantized]
            if fitting:
                candidates[name] = list(dict.fromkeys(fitting))  # type: ignore[arg-type]
    errors: dict[str, dict[QuantScheme, float]] = {}
    for group, (block_names, batch_size) in groups.items():
        chosen = [b for b in block_names if any(name.startswith(b + ".") for name in candidates)]
        if chosen:
            errors.update(measure.group(group, chosen, samples, candidates, batch_size))
    layers = [
        LayerOptions(
            name,
            decisions[name].in_features * decisions[name].out_features,
            tuple(
                Option(scheme, error, job.mixed.bits_per_weight(scheme, decisions[name].in_features))
                for scheme, error in errors[name].items()
            ),
        )
        for name in candidates
        if name in errors
    ]
    chosen_options = allocate(layers, float(job.mixed.avg_bits or 0))
    out = dict(decisions)
    for name, option in chosen_options.items():
        source = plans[next(s for s, plan in plans.items() if plan[name].scheme == option.scheme)][name]
        out[name] = dataclasses.replace(
            source, note=f"{option.scheme.label} by --schemes" + (f"; {source.note}" if source.note else "")
        )
    return out, mixed_note(layers, chosen_options, job)


def mixed_note(layers: list[LayerOptions], chosen: dict[str, Option], job: QuantJob) -> str:
    weights = sum(layer.weights for layer in layers)
    average = sum(chosen[layer.name].bits * layer.weights for layer in layers) / max(weights, 1)
    counts: dict[str, int] = {}
    for option in chosen.values():
        counts[option.scheme.label] = counts.get(option.scheme.label, 0) + 1
    spread = ", ".join(f"{n} at {label}" for label, n in sorted(counts.items()))
    accounting = "weights only" if job.mixed.ignore_scale_zp_bits else "scales included"
    return (
        f"mixed bits: {average:.3f} bits per weight ({accounting}) against a budget of "
        f"{job.mixed.avg_bits:g} over {len(chosen)} layers: {spread}"
    )


def measure_pass(
    job: QuantJob,
    model: nn.Module,
    device: torch.device,
    precision: Precision,
    cache: CachePlacement,
    weights: StreamedWeights | None,
) -> MeasurePass:
    return MeasurePass(model, device, precision, cache, torch_dtype(job.tuning.scale_dtype), weights)
