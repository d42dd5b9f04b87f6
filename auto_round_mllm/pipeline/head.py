"""``--quant_lm_head``: the output embeddings, quantized and tuned on their own after the blocks.

lm_head is no block: it is tuned as one layer (auto-round's layer-wise pass) on the final hidden
states of the quantized model, after the decoder's final norm, against what the full-precision
lm_head gives on the full-precision model's. Its outputs are logits: a vocabulary wide, so the
targets are computed batch by batch from a kept copy of the original weight, never stored for
the whole calibration set (128 x 2048 tokens of a 152k vocabulary would be 160 GB).

A tied lm_head shares the input embeddings' weight: quantizing it would quantize the embeddings
too, which no loader expects. ``--untie_embeddings`` gives it its own copy first (the checkpoint
then stores both and its config says ``tie_word_embeddings: false``); without it, preflight
refuses the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from auto_round_mllm.config import QuantJob
from auto_round_mllm.errors import UserError
from auto_round_mllm.models.layer_plan import LayerDecision, LayerRules
from auto_round_mllm.pipeline.blockwise import BlockReport, Streams
from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.quant.kernel import QdqKernel
from auto_round_mllm.quant.tunable import QuantizedWeight, unwrap_linears, wrap_linears
from auto_round_mllm.tuning.base import TuneContext, Tuner
from auto_round_mllm.tuning.block_inputs import BlockInputs, masked_mse
from auto_round_mllm.utils import device as devices
from auto_round_mllm.utils.device import Precision

log = logging.getLogger(__name__)

HEAD = "lm_head"
"""The wrapped layer's name inside :class:`HeadUnit`."""


def output_head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The output embeddings' module name and module, when they are a Linear."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Linear):
        return None
    name = next(name for name, module in model.named_modules() if module is head)
    return name, head


def is_tied(model: nn.Module) -> bool:
    head = output_head(model)
    get_input = getattr(model, "get_input_embeddings", None)
    embeddings = get_input() if callable(get_input) else None
    return head is not None and embeddings is not None and head[1].weight is embeddings.weight


def final_norm(model: nn.Module, group: str) -> nn.Module | None:
    """The norm between the last block of ``group`` and lm_head: an attribute ``norm`` of the
    module that holds the block list, as in every decoder transformers ships."""
    parent = model.get_submodule(group.rsplit(".", 1)[0]) if "." in group else model
    norm = getattr(parent, "norm", None)
    return norm if isinstance(norm, nn.Module) else None


def head_problem(model: nn.Module, job: QuantJob, group: str) -> UserError | None:
    """Why ``--quant_lm_head`` cannot run on ``model`` (a meta skeleton does): no Linear lm_head,
    no final norm we can name after the decoder blocks ``group``, or an lm_head tied to the input
    embeddings without ``--untie_embeddings``."""
    if output_head(model) is None:
        return UserError(
            f"--quant_lm_head: {type(model).__name__} has no Linear output embeddings (lm_head) to quantize",
            fix="leave --quant_lm_head out",
        )
    if final_norm(model, group) is None:
        return UserError(
            f"--quant_lm_head: no final norm found after {group} in {type(model).__name__}, so lm_head's "
            "inputs cannot be computed block by block",
            fix="leave --quant_lm_head out",
        )
    if is_tied(model) and not job.untie_embeddings:
        return UserError(
            "--quant_lm_head: lm_head shares its weight with the input embeddings (tie_word_embeddings), "
            "so quantizing it would quantize the embeddings too",
            fix="add --untie_embeddings (the checkpoint then stores both), or leave --quant_lm_head out",
        )
    return None


def untie(model: nn.Module) -> None:
    """Give lm_head its own copy of the tied weight, and say so in every config that ties."""
    _, head = output_head(model)  # type: ignore[misc]
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    configs = [getattr(model, "config", None)]
    configs.append(getattr(configs[0], "text_config", None))
    for config in configs:
        if config is not None and getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False


def head_decision(model: nn.Module, rules: LayerRules) -> LayerDecision:
    """lm_head's entry in the layer plan: its own block, the job's scheme unless ``--layer_config``
    or its width says otherwise (the family's own rule keeping lm_head in 16 bit is what
    ``--quant_lm_head`` lifts; ``--fp_layers`` still keeps it)."""
    name, head = output_head(model)  # type: ignore[misc]
    return rules.decide(name, name, head)


class HeadUnit(nn.Module):
    """lm_head as a one-layer block the tuner can call: hidden states in, logits out."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.add_module(HEAD, head)

    def forward(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.get_submodule(HEAD)(hidden)


class LazyTargets(Sequence[torch.Tensor]):
    """The full-precision lm_head's logits per sample, computed when the tuner asks for them."""

    def __init__(
        self,
        normed: list[torch.Tensor],
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        device: torch.device,
    ) -> None:
        self.normed, self.weight, self.bias, self.device = normed, weight, bias, device

    def __len__(self) -> int:
        return len(self.normed)

    def __getitem__(self, index):  # type: ignore[override]
        with torch.no_grad():
            hidden = self.normed[index].to(self.device)
            return F.linear(
                hidden,
                self.weight.to(hidden.dtype),
                None if self.bias is None else self.bias.to(hidden.dtype),
            )


def normed_states(
    norm: nn.Module,
    inputs: BlockInputs,
    device: torch.device,
    precision: Precision,
    cache: CachePlacement,
) -> BlockInputs:
    """lm_head's inputs: the final norm applied to each sample's last hidden states."""
    out = []
    with torch.no_grad():
        for hidden in inputs.hidden:
            with precision.context():
                normed = norm(hidden.to(device))
            out.append(cache.store(normed.to(hidden.dtype)))
    return BlockInputs(hidden=out, masks=inputs.masks)


def streamed_mse(
    unit: nn.Module,
    inputs: BlockInputs,
    targets: LazyTargets,
    device: torch.device,
    precision: Precision,
    batch_size: int,
) -> float:
    """The calibration set's MSE, a batch of same-shape samples at a time (logits are never all
    kept)."""
    total, count = 0.0, 0.0
    with torch.no_grad():
        for bucket in inputs.shape_buckets():
            for start in range(0, len(bucket), batch_size):
                indices = bucket[start : start + batch_size]
                hidden, _, _ = inputs.batch(indices, device)
                with precision.context():
                    logits = unit(hidden)
                target = torch.cat([targets[i] for i in indices])
                mask = inputs.loss_mask(indices, device)
                weight = float(mask.sum()) if mask is not None else float(logits.shape[0] * logits.shape[1])
                total += float(masked_mse(logits, target, mask)) * weight
                count += weight
    return total / max(count, 1.0)


def tune_head(
    model: nn.Module,
    decision: LayerDecision,
    norm: nn.Module,
    streams: Streams | None,
    *,
    tuner: Tuner,
    job: QuantJob,
    kernel: QdqKernel,
    device: torch.device,
    precision: Precision,
    cache: CachePlacement,
    seed: int,
    on_step: Callable[[int], None] | None = None,
) -> tuple[BlockReport, dict[str, QuantizedWeight]]:
    """Tune lm_head on the quantized model's final hidden states (``streams`` leave the last
    block; None for round-to-nearest) and write its quantized weight back. ``norm`` is the
    decoder's final norm (:func:`head_problem` refused a model without one)."""
    started = time.perf_counter()
    _, head = output_head(model)  # type: ignore[misc]
    head.to(device)
    head.requires_grad_(False)
    unit = HeadUnit(head)
    report = BlockReport(name=decision.name, quantized_layers=1, total_layers=1)
    ctx = None
    if streams is not None:
        norm.to(device)
        quantized = normed_states(norm, streams.quantized, device, precision, cache)
        full = (
            quantized
            if streams.quantized is streams.full
            else normed_states(norm, streams.full, device, precision, cache)
        )
        targets = LazyTargets(full.hidden, head.weight.detach().clone(), head.bias, device)
        ctx = TuneContext(
            inputs=quantized,
            targets=targets,
            device=device,
            precision=precision,
            seed=seed,
            on_step=on_step,  # type: ignore[arg-type]
        )
    wrapped = wrap_linears(
        unit,
        lambda rel: decision.scheme if rel == HEAD else None,
        enable_minmax_tuning=job.tuning.enable_minmax_tuning,
        scale_dtype=devices.torch_dtype(job.tuning.scale_dtype),
        kernel=kernel,
    )
    if ctx is not None:
        report.rtn_loss = streamed_mse(
            unit, ctx.inputs, ctx.targets, device, precision, job.tuning.batch_size
        )  # type: ignore[arg-type]
    outcome = tuner.tune_block(unit, wrapped, ctx)
    report.first_loss, report.best_loss, report.best_iter = (
        outcome.first_loss,
        outcome.best_loss,
        outcome.best_iter,
    )
    report.steps = outcome.iters
    qweights = unwrap_linears(unit, wrapped, write_back=True)
    if ctx is not None:
        report.final_loss = streamed_mse(
            unit, ctx.inputs, ctx.targets, device, precision, job.tuning.batch_size
        )  # type: ignore[arg-type]
    head.to("cpu")
    report.seconds = time.perf_counter() - started
    return report, {decision.name: qweights[HEAD].to("cpu")}
