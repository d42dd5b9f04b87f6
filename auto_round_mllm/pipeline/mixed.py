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
import re
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from auto_round_mllm.config import QuantJob, QuantScheme
from auto_round_mllm.layer_config import matching_entry, to_standard_regex
from auto_round_mllm.models.layer_plan import LayerDecision
from auto_round_mllm.models.streaming import StreamedWeights
from auto_round_mllm.pipeline.blockwise import forward_all, place_outside_blocks, put_away
from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.pipeline.capture import capture_block_inputs
from auto_round_mllm.pipeline.fisher import FisherPass, OutputHead, measured_layers, onload
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

    kind = "local"

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
            block = onload(self.model, block_name, self.weights, self.device)
            layers = measured_layers(block, block_name, candidates)
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


FUSED_TOGETHER = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Layers of one block that vLLM (and SGLang) load as one fused matrix: they must share a scheme,
or the checkpoint does not load there. Always grouped; ``--shared_layers`` adds groups."""


class Measure(Protocol):
    kind: str
    """``local`` (each layer's own output error) or ``fisher`` (the model's output, pipeline/fisher.py)."""

    def group(
        self,
        group: str,
        block_names: list[str],
        samples: list,
        candidates: dict[str, list[QuantScheme]],
        batch_size: int,
    ) -> dict[str, dict[QuantScheme, float]]: ...


def mixed_decisions(
    job: QuantJob,
    decisions: dict[str, LayerDecision],
    plan_for: PlanFor,
    groups: dict[str, tuple[list[str], int]],
    measures: dict[str, Measure],
    samples: list,
) -> tuple[dict[str, LayerDecision], str]:
    """The plan with each free layer on its allocated scheme, and the summary's note. A layer is
    free when the job quantizes it and ``--layer_config`` does not fix it; its candidates are the
    options the plan can store it with (each with its group-size fallback). Layers that must share
    a scheme are allocated as one unit, on the options they all take. Errors measured two ways
    (a vision tower's own errors beside the decoder's Fisher-weighted ones) do not compare, so
    then each block list meets the budget on its own."""
    options = job.mixed.options(job.scheme.sym)
    plans = {option: plan_for(option) for option in options}
    candidates: dict[str, dict[QuantScheme, QuantScheme]] = {}  # layer -> option -> its scheme there
    for name, decision in decisions.items():
        if decision.quantized and matching_entry(name, job.layer_config) is None:
            fitting = {option: plan[name].scheme for option, plan in plans.items() if plan[name].quantized}
            if fitting:
                candidates[name] = fitting  # type: ignore[assignment]
    concrete = {name: list(dict.fromkeys(fitting.values())) for name, fitting in candidates.items()}
    errors: dict[str, dict[QuantScheme, float]] = {}
    measured: dict[str, list[str]] = {}  # group -> its measured layers
    for group, (block_names, batch_size) in groups.items():
        chosen = [b for b in block_names if any(name.startswith(b + ".") for name in candidates)]
        if chosen:
            found = measures[group].group(group, chosen, samples, concrete, batch_size)
            errors.update(found)
            measured[group] = list(found)
    units = shared_units([n for n in candidates if n in errors], decisions, job.mixed.shared_layers)
    layers = [unit_options(unit, candidates, errors, decisions, job) for unit in units]
    layers = [layer for layer in layers if layer.options]
    kinds = {measures[group].kind for group in measured}
    if len(kinds) > 1:
        group_of = {name: group for group, names in measured.items() for name in names}
        chosen_options: dict[str, Option] = {}
        for group in measured:
            part = [layer for layer in layers if group_of[layer.name.split("+")[0]] == group]
            chosen_options.update(allocate(part, float(job.mixed.avg_bits or 0)))
    else:
        chosen_options = allocate(layers, float(job.mixed.avg_bits or 0))
    out = dict(decisions)
    for unit in units:
        option = chosen_options.get(unit_name(unit))
        for name in unit if option else []:
            source = plans[option.scheme][name]
            label = candidates[name][option.scheme].label
            out[name] = dataclasses.replace(
                source, note=f"{label} by --schemes" + (f"; {source.note}" if source.note else "")
            )
    return out, mixed_note(layers, chosen_options, job, sorted(kinds))


def unit_name(unit: list[str]) -> str:
    return "+".join(unit)


def shared_units(
    names: list[str], decisions: dict[str, LayerDecision], shared: tuple[tuple[str, ...], ...]
) -> list[list[str]]:
    """``names`` grouped into units that share a scheme: within each block, the layers vLLM fuses
    and the layers each ``--shared_layers`` group matches (a pattern per member, as a substring
    or a regex, auto-round's rule); every other layer is a unit of its own."""
    patterns = [[rf"\.{leaf}$" for leaf in group] for group in FUSED_TOGETHER]
    patterns += [[to_standard_regex(p) for p in group] for group in shared]
    unit_of: dict[str, int] = {}
    units: list[list[str]] = []
    by_block: dict[str, list[str]] = {}
    for name in names:
        by_block.setdefault(decisions[name].block, []).append(name)
    for members in by_block.values():
        for group in patterns:
            matched = [n for n in members if any(re.search(p, n) for p in group)]
            joined = sorted({unit_of[n] for n in matched if n in unit_of})
            if len(matched) < 2:
                continue
            if joined:  # overlapping groups merge
                target = joined[0]
                for other in joined[1:]:
                    for n in units[other]:
                        unit_of[n] = target
                    units[target] += units[other]
                    units[other] = []
            else:
                target = len(units)
                units.append([])
            for n in matched:
                if unit_of.get(n) != target:
                    unit_of[n] = target
                    units[target].append(n)
    grouped = [sorted(unit) for unit in units if unit]
    return grouped + [[n] for n in names if n not in unit_of]


def unit_options(
    unit: list[str],
    candidates: dict[str, dict[QuantScheme, QuantScheme]],
    errors: dict[str, dict[QuantScheme, float]],
    decisions: dict[str, LayerDecision],
    job: QuantJob,
) -> LayerOptions:
    """One allocation unit: the options every member takes, with the members' errors summed and
    their bits per weight averaged by size."""
    common = [o for o in candidates[unit[0]] if all(o in candidates[n] for n in unit)]
    sizes = {n: decisions[n].in_features * decisions[n].out_features for n in unit}
    total = sum(sizes.values())
    options = []
    for option in common:
        error = sum(errors[n][candidates[n][option]] for n in unit)
        bits = sum(
            job.mixed.bits_per_weight(candidates[n][option], decisions[n].in_features) * sizes[n]
            for n in unit
        )
        options.append(Option(option, error, bits / total))
    return LayerOptions(unit_name(unit), total, tuple(options))


def mixed_note(layers: list[LayerOptions], chosen: dict[str, Option], job: QuantJob, kinds: list[str]) -> str:
    weights = sum(layer.weights for layer in layers)
    average = sum(chosen[layer.name].bits * layer.weights for layer in layers) / max(weights, 1)
    counts: dict[str, int] = {}
    for layer in layers:
        label = chosen[layer.name].scheme.label
        counts[label] = counts.get(label, 0) + layer.name.count("+") + 1
    spread = ", ".join(f"{n} at {label}" for label, n in sorted(counts.items()))
    accounting = "weights only" if job.mixed.ignore_scale_zp_bits else "scales included"
    return (
        f"mixed bits: {average:.3f} bits per weight ({accounting}) against a budget of "
        f"{job.mixed.avg_bits:g} over {sum(counts.values())} layers: {spread} "
        f"(sensitivity: {' and '.join(SENSITIVITY_WORDS[kind] for kind in kinds)})"
    )


SENSITIVITY_WORDS = {"fisher": "Fisher-weighted error", "local": "each layer's own error"}


def measures_for(
    job: QuantJob,
    model: nn.Module,
    groups: list[str],
    text_group: str,
    device: torch.device,
    precision: Precision,
    cache: CachePlacement,
    weights: StreamedWeights | None,
) -> dict[str, Measure]:
    """How each block list's layers are measured: the text decoder by the Fisher information of
    the model's output when ``--mixed_sensitivity fisher`` (the default) and the model has a head
    we can run, everything else by each layer's own error."""
    scale_dtype = torch_dtype(job.tuning.scale_dtype)
    local = MeasurePass(model, device, precision, cache, scale_dtype, weights)
    out: dict[str, Measure] = {group: local for group in groups}
    if job.mixed.sensitivity == "fisher":
        head = OutputHead.find(model, text_group)
        if head is None:
            log.warning(
                "mixed bits: no final norm and lm_head found after %s; each layer's own error ranks the schemes",
                text_group,
            )
        else:
            out[text_group] = FisherPass(
                model, head, device, precision, cache, scale_dtype, weights, seed=job.tuning.seed
            )
    return out
