"""The loss-aware sensitivity of mixed bits: each weight's diagonal Fisher information under the
model's own predictions, measured block by block so that streamed models never sit in memory.

Why not the layer's own error: a layer's output error says nothing of how it grows through the
blocks after it, and the allocation then buys bits where they change the output least (measured:
on SmolLM2 the local error ranked a W2/W4 mix below uniform W3, docs/benchmarks.md). The KL of the
quantized model's next-token distribution from the full-precision one is, to second order,
``1/2 d^T F d`` with ``d`` the weight change and ``F`` the Fisher information of the model's
predictive distribution. Its diagonal, per weight, is the expected square of the gradient of
``log p(y | x)`` with ``y`` drawn from the model itself, so no labels are needed (image tokens, chat
templates and padding need no special case), and the gradients of different positions' draws are
uncorrelated, so one backward of their summed loss per sample estimates it without bias.

The pass: the chosen text blocks' inputs are captured and carried forward in full precision
(each block's input kept in the run's activation cache), the model's final norm and ``lm_head``
turn the last hidden states into logits, a token is drawn at every position, and the gradient of
their log-likelihood runs back through the blocks one at a time, each recomputed from its stored
input. Per sample, a layer's weight gradient is ``g^T x``; its square, summed over samples, is the
layer's Fisher diagonal, which weighs the squared rounding error of every candidate scheme.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.models.streaming import StreamedWeights
from auto_round_mllm.pipeline.blockwise import forward_all, place_outside_blocks, put_away
from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.pipeline.capture import capture_block_inputs
from auto_round_mllm.pipeline.head import final_norm, output_head
from auto_round_mllm.tuning.block_inputs import BlockInputs, run_block
from auto_round_mllm.tuning.mixed_bits import quantization_error
from auto_round_mllm.tuning.signround import InputMeanSquares
from auto_round_mllm.utils.device import Precision

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OutputHead:
    """What turns the last block's hidden states into logits: the decoder's final norm
    (:func:`~auto_round_mllm.pipeline.head.final_norm`), the output embeddings, and Gemma's final
    logit soft-capping."""

    norm: nn.Module
    lm_head: nn.Linear
    softcap: float | None = None

    @classmethod
    def find(cls, model: nn.Module, group: str) -> OutputHead | None:
        """None when the model has no output embeddings (an encoder) or the block list's parent
        has no final norm we can name: then the caller measures each layer's own error."""
        head, norm = output_head(model), final_norm(model, group)
        if head is None or norm is None:
            return None
        config = getattr(model, "config", None)
        text_config = getattr(config, "text_config", None) or config
        softcap = getattr(text_config, "final_logit_softcapping", None)
        return cls(norm, head[1], float(softcap) if softcap else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.lm_head(self.norm(hidden)).float()
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


class PerSampleFisher:
    """Hooks on a block's chosen layers: the forward hook keeps the layer's input, a hook on its
    output's gradient adds each sample's squared weight gradient ``(g_s^T x_s)^2``."""

    def __init__(self, layers: dict[str, nn.Linear]) -> None:
        self.layers = layers
        self.fisher = {
            name: torch.zeros(layer.weight.shape, dtype=torch.float32, device=layer.weight.device)
            for name, layer in layers.items()
        }
        self.handles: list = []

    def __enter__(self) -> PerSampleFisher:
        self.handles = [layer.register_forward_hook(self._hook(name)) for name, layer in self.layers.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _hook(self, name: str):
        def forward_hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not output.requires_grad:
                return
            x = args[0].detach()

            def gradient_hook(grad: torch.Tensor) -> None:
                target = self.fisher[name]
                for sample in range(grad.shape[0]):  # one matmul per sample: memory stays one weight
                    g = grad[sample].reshape(-1, grad.shape[-1]).float()
                    xs = x[sample].reshape(-1, x.shape[-1]).float()
                    target.add_((g.t() @ xs).pow_(2))

            output.register_hook(gradient_hook)

        return forward_hook


def onload(
    model: nn.Module, block_name: str, weights: StreamedWeights | None, device: torch.device
) -> nn.Module:
    """A block on the compute device, read from disk first when it streams."""
    if weights is not None:
        weights.materialize(model, block_name)
    return model.get_submodule(block_name).to(device)


def measured_layers(block: nn.Module, block_name: str, candidates: dict) -> dict[str, nn.Linear]:
    """The block's Linears that have candidate schemes, by name inside the block."""
    return {
        rel: module
        for rel, module in block.named_modules()
        if isinstance(module, nn.Linear) and f"{block_name}.{rel}" in candidates
    }


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No weight gradients: the pass needs gradients of activations only (the hooks build the
    per-sample weight gradients themselves), and ``.grad`` buffers would cost a model's worth."""
    params = [p for module in modules for p in module.parameters()]
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, state in zip(params, states, strict=True):
            p.requires_grad_(state)


@dataclasses.dataclass
class FisherPass:
    model: nn.Module
    head: OutputHead
    device: torch.device
    precision: Precision
    cache: CachePlacement
    scale_dtype: torch.dtype
    weights: StreamedWeights | None
    seed: int = 42

    kind = "fisher"

    def group(
        self,
        group: str,
        block_names: list[str],
        samples: list,
        candidates: dict[str, list[QuantScheme]],
        batch_size: int,
    ) -> dict[str, dict[QuantScheme, float]]:
        """Fisher-weighted errors of every candidate of every layer in ``block_names``. The
        forward starts at the block list's first block (unchosen blocks shape the gradient too)
        and the backward stops at the first chosen block."""
        everything = [f"{group}.{i}" for i in range(len(self.model.get_submodule(group)))]
        chosen = set(block_names)
        first = min(everything.index(name) for name in chosen)
        place_outside_blocks(self.model, [group], self.device)
        template = capture_block_inputs(
            self.model, self.model.get_submodule(everything[0]), samples, device=self.device, cache=self.cache
        )
        inputs = template
        stored: dict[str, list[torch.Tensor]] = {}
        stats: dict[str, torch.Tensor] = {}
        for index, block_name in enumerate(everything):
            block = onload(self.model, block_name, self.weights, self.device)
            if index >= first:
                stored[block_name] = inputs.hidden
            layers = measured_layers(block, block_name, candidates)
            with InputMeanSquares(layers) as recorder:  # type: ignore[arg-type]
                outputs = forward_all(
                    block, inputs, self.device, self.precision, batch_size, self.cache, recorder
                )
            stats.update({f"{block_name}.{rel}": value for rel, value in recorder.result().items()})
            inputs = inputs.with_hidden(outputs)
            put_away(self.model, block_name, self.weights)
        grads = self.head_gradients(inputs)
        errors: dict[str, dict[QuantScheme, float]] = {}
        for block_name in reversed(everything[first:]):
            block = onload(self.model, block_name, self.weights, self.device)
            layers = measured_layers(block, block_name, candidates) if block_name in chosen else {}
            block_inputs = template.with_hidden(stored.pop(block_name))
            with frozen(block), PerSampleFisher(layers) as fisher:
                grads = self.backward_block(block, block_inputs, grads, batch_size)
            for rel, layer in layers.items():
                name = f"{block_name}.{rel}"
                errors[name] = {
                    scheme: quantization_error(
                        layer.weight,
                        scheme,
                        stats.get(name),
                        self.scale_dtype,
                        element_weights=fisher.fisher[rel],
                    )
                    for scheme in candidates[name]
                }
            put_away(self.model, block_name, self.weights)
        return errors

    def head_gradients(self, last: BlockInputs) -> list[torch.Tensor]:
        """Per sample, the gradient of ``sum_t log p(y_t)`` (``y_t`` drawn from the model's own
        distribution at position t, padding left out) with respect to the last hidden states."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        grads = []
        with frozen(self.head.lm_head, self.head.norm):
            for index, hidden in enumerate(last.hidden):
                hidden = hidden.to(self.device).detach().requires_grad_(True)
                with torch.enable_grad():
                    with self.precision.context():
                        logits = self.head.logits(hidden)
                    flat = logits.reshape(-1, logits.shape[-1])
                    with torch.no_grad():
                        drawn = torch.multinomial(flat.softmax(-1), 1, generator=generator).squeeze(-1)
                    nll = F.cross_entropy(flat, drawn, reduction="none")
                    mask = last.masks[index] if last.masks else None
                    if mask is not None and mask.numel() == nll.numel():
                        nll = nll * mask.reshape(-1).to(nll.device)
                    nll.sum().backward()
                grads.append(self.cache.store(hidden.grad.to(hidden.dtype)))
        return grads

    def backward_block(
        self, block: nn.Module, inputs: BlockInputs, grads: list[torch.Tensor], batch_size: int
    ) -> list[torch.Tensor]:
        """Recompute the block on its stored inputs and pull the output gradients back through
        it: the gradients at its input, per sample."""
        out_grads: list[torch.Tensor | None] = [None] * len(inputs)
        for bucket in inputs.shape_buckets():
            for start in range(0, len(bucket), batch_size):
                indices = bucket[start : start + batch_size]
                hidden, args, kwargs = inputs.batch(indices, self.device)
                hidden = hidden.detach().requires_grad_(True)
                with torch.enable_grad():
                    with self.precision.context():
                        out = run_block(block, hidden, args, kwargs)
                    upstream = torch.cat([grads[i] for i in indices], dim=0).to(self.device, out.dtype)
                    out.backward(upstream)
                sizes = [inputs.hidden[i].shape[0] for i in indices]
                for i, part in zip(indices, torch.split(hidden.grad, sizes), strict=True):
                    out_grads[i] = self.cache.store(part.detach())
        return out_grads  # type: ignore[return-value]
