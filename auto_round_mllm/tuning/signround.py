"""SignRound: signed gradient descent on rounding offsets and clipping scales.

Per step: draw ``batch_size x gradient_accumulate_steps`` samples, run the block with fake-quantized
weights on the quantized stream, take the MSE against the full-precision block's output, and move
every parameter by ``-lr_t * sign(grad)`` with ``lr_t`` decaying linearly to 0. The parameters
evaluated at the lowest loss are kept, as in auto-round (the last update is never evaluated), or with
``--not_use_best_mse`` those of the last evaluated step; when samples come in several shapes, only
batches of the largest same-shape group compete.

Unlike auto-round, the clipping multipliers do not start at 1 but at the per-group ratio with the
least activation-weighted round-to-nearest error (``--disable_clip_search`` restores auto-round's
start): at 2 bits the sign steps then refine a good clip instead of spending their budget reaching
it (SmolLM2-135M W2G64, 50 iters: KL to fp 0.78-1.14 against 1.16-1.42 from 1; docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from auto_round_mllm.config import TuningConfig
from auto_round_mllm.quant.tunable import TunableLinear
from auto_round_mllm.tuning.base import TuneContext, TuneOutcome, register_tuner
from auto_round_mllm.tuning.block_inputs import masked_mse, run_block


class CyclicBatchSampler:
    """Shuffled batches of same-shape samples, reshuffled when exhausted (auto-round HEAD's sampler)."""

    def __init__(self, buckets: list[list[int]], batch_size: int, seed: int) -> None:
        self.buckets = buckets
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.queue: list[list[int]] = []
        self.bucket_of = {index: number for number, bucket in enumerate(buckets) for index in bucket}
        self.reference = max(range(len(buckets)), key=lambda number: len(buckets[number]))
        """The largest bucket: only its batches compete for the best step (see SignRoundTuner)."""

    def _refill(self) -> None:
        batches: list[list[int]] = []
        for bucket in self.buckets:
            order = torch.randperm(len(bucket), generator=self.generator).tolist()
            shuffled = [bucket[i] for i in order]
            size = min(self.batch_size, len(shuffled))
            batches.extend(shuffled[i : i + size] for i in range(0, len(shuffled) - size + 1, size))
        order = torch.randperm(len(batches), generator=self.generator).tolist()
        self.queue = [batches[i] for i in order]

    def next(self) -> list[int]:
        if not self.queue:
            self._refill()
        return self.queue.pop()


@torch.no_grad()
def sign_step(params: list[torch.Tensor], lr: float) -> None:
    """``p -= lr * sign(grad)`` for every parameter that received a gradient, then clear grads."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for p in params:  # one fused update per device (--device_map spreads a block over several)
        if p.grad is not None:
            by_device.setdefault(p.device, []).append(p)
    if lr > 0:
        for with_grad in by_device.values():
            signs = torch._foreach_sign([p.grad for p in with_grad])
            torch._foreach_add_(with_grad, signs, alpha=-lr)
    for p in params:
        p.grad = None


class ParameterSteps:
    """How SignRound moves its parameters: auto-round's signed gradient descent (optionally with
    momentum: the sign of a running sum of gradients, as its SignSGD takes it), or AdamW with
    auto-round's ``enable_adam`` settings (no weight decay). Either way the learning rate decays
    linearly to 0 over the block's iters."""

    def __init__(self, params: list[torch.Tensor], *, momentum: float = 0.0, adam: bool = False) -> None:
        self.params = params
        self.momentum = momentum
        self.buffers: dict[int, torch.Tensor] = {}
        self.adam = torch.optim.AdamW(params, lr=0.0, weight_decay=0.0) if adam and params else None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        if self.adam is not None:
            for group in self.adam.param_groups:
                group["lr"] = lr
            self.adam.step()
            self.adam.zero_grad(set_to_none=True)
        elif self.momentum:
            for p in self.params:
                if p.grad is None:
                    continue
                buffer = self.buffers.get(id(p))
                if buffer is None:
                    self.buffers[id(p)] = buffer = p.grad.detach().clone()
                else:
                    buffer.mul_(self.momentum).add_(p.grad)
                p.add_(buffer.sign(), alpha=-lr)
                p.grad = None
        else:
            sign_step(self.params, lr)


class InputMeanSquares:
    """Forward pre-hooks that accumulate each wrapped layer's input mean square per column,
    padding positions left out: the importance weights of the clipping search.

    The pipeline opens one around its round-to-nearest pass (the block's output there is the
    RTN MSE the summary reports), so the statistics cost no pass of their own; ``batch`` gives
    each batch's loss mask before it runs."""

    def __init__(self, wrapped: dict[str, TunableLinear]) -> None:
        self.wrapped = wrapped
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None
        self.handles: list = []

    def __enter__(self) -> InputMeanSquares:
        self.handles = [
            layer.register_forward_pre_hook(self._recorder(name)) for name, layer in self.wrapped.items()
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def batch(self, mask: torch.Tensor | None) -> None:
        self.mask = mask

    def _recorder(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            squared = x.pow(2)
            mask = self.mask
            weights = mask if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]) else None
            if weights is not None:
                squared = squared * weights.unsqueeze(-1)
                count = weights.sum()
            else:
                count = torch.tensor(float(x.numel() // x.shape[-1]), device=x.device)
            total = squared.reshape(-1, x.shape[-1]).sum(dim=0)
            self.sums[name] = self.sums[name] + total if name in self.sums else total
            self.counts[name] = self.counts[name] + count if name in self.counts else count

        return record

    def result(self) -> dict[str, torch.Tensor]:
        return {name: self.sums[name] / self.counts[name].clamp(min=1) for name in self.sums}


@torch.no_grad()
def input_mean_squares(
    block: nn.Module, wrapped: dict[str, TunableLinear], ctx: TuneContext, batch_size: int
) -> dict[str, torch.Tensor]:
    """:class:`InputMeanSquares` over the calibration set (the quantized stream the tuning sees),
    in a pass of its own: about a third of one tuning step per batch."""
    with InputMeanSquares(wrapped) as recorder:
        for bucket in ctx.inputs.shape_buckets():
            for start in range(0, len(bucket), batch_size):
                indices = bucket[start : start + batch_size]
                hidden, args, kwargs = ctx.inputs.batch(indices, ctx.device)
                recorder.batch(ctx.inputs.loss_mask(indices, ctx.device))
                with ctx.precision.context():
                    run_block(block, hidden, args, kwargs)
    return recorder.result()


@dataclass
class SignRoundTuner:
    config: TuningConfig
    name: str = "signround"
    needs_data: bool = True

    @property
    def wants_input_stats(self) -> bool:
        """The clipping search weighs its error by the layers' input mean squares."""
        return self.config.clip_search and self.config.enable_minmax_tuning

    def input_recorder(self, wrapped: dict[str, TunableLinear]) -> InputMeanSquares | None:
        """What the pipeline's RTN pass should record for this tuner (see :class:`TuneContext`)."""
        return InputMeanSquares(wrapped) if self.wants_input_stats else None

    def tune_block(
        self, block: nn.Module, wrapped: dict[str, TunableLinear], ctx: TuneContext | None
    ) -> TuneOutcome:
        assert ctx is not None, "SignRound needs calibration activations"
        cfg = self.config
        round_params = [p for layer in wrapped.values() for p in layer.round_parameters()]
        minmax_params = [p for layer in wrapped.values() for p in layer.minmax_parameters()]
        if self.wants_input_stats:
            stats = ctx.input_stats
            if stats is None:
                stats = input_mean_squares(block, wrapped, ctx, cfg.batch_size)
            for name, layer in wrapped.items():
                layer.start_from_best_clipping(stats.get(name))
        sampler = CyclicBatchSampler(ctx.inputs.shape_buckets(), cfg.batch_size, ctx.seed)
        outcome = TuneOutcome(iters=cfg.iters)
        bits = min(layer.bits for layer in wrapped.values())
        lr, minmax_lr = cfg.effective_lr(bits), cfg.effective_minmax_lr(bits)
        steps = {
            kind: ParameterSteps(params, momentum=cfg.momentum, adam=cfg.enable_adam)
            for kind, params in (("round", round_params), ("minmax", minmax_params), ("extra", ctx.extra))
        }
        best_loss, best_state = math.inf, None
        for step in range(cfg.iters):
            decay = 1.0 - step / cfg.iters
            step_loss = torch.zeros((), device=ctx.device)
            comparable = True
            for _ in range(cfg.gradient_accumulate_steps):
                indices = sampler.next()
                comparable &= sampler.bucket_of[indices[0]] == sampler.reference
                hidden, args, kwargs = ctx.inputs.batch(indices, ctx.device)
                target = torch.cat([ctx.targets[i] for i in indices]).to(ctx.device, non_blocking=True)
                with ctx.precision.context():
                    output = run_block(block, hidden, args, kwargs)
                mask = ctx.inputs.loss_mask(indices, ctx.device)
                loss = masked_mse(output, target, mask) / cfg.gradient_accumulate_steps
                loss.backward()
                step_loss += loss.detach()
            value = float(step_loss)
            if outcome.first_loss is None:
                outcome.first_loss = value
            # A short image conversation and a full text chunk have losses of different scales; the
            # best step is judged on batches of the largest same-shape group only (with one group,
            # every step, as in auto-round).
            if comparable and value < best_loss:
                best_loss, outcome.best_iter = value, step
                if cfg.use_best_mse:
                    best_state = snapshot(wrapped, ctx.extra)
            if not cfg.use_best_mse and step == cfg.iters - 1:
                # --not_use_best_mse keeps the last step that was evaluated, as auto-round does: the
                # update below would otherwise be kept without ever having been run
                best_state = snapshot(wrapped, ctx.extra)
            if cfg.stops_early and step - (outcome.best_iter or 0) >= cfg.dynamic_max_gap:
                outcome.iters = step + 1  # auto-round's dynamic_max_gap: no better step for that long
                break
            steps["round"].step(lr * decay)
            steps["minmax"].step(minmax_lr * decay)
            steps["extra"].step(lr * decay)
            with torch.no_grad():
                for param in ctx.extra:  # clamped in place, as the clipping multipliers are
                    param.clamp_(-0.5, 0.5)
            if ctx.on_step is not None:
                ctx.on_step(step)
        outcome.best_loss = best_loss if outcome.best_iter is not None else None
        if best_state is not None:
            layers, extra = best_state
            for name, layer in wrapped.items():
                layer.restore(layers[name])
            with torch.no_grad():
                for param, kept in zip(ctx.extra, extra, strict=True):
                    param.copy_(kept)
        return outcome


def snapshot(wrapped: dict[str, TunableLinear], extra: list[torch.Tensor]) -> tuple[dict, list[torch.Tensor]]:
    """The wrapped layers' parameters and copies of the extra ones, to restore the best step."""
    return {name: layer.snapshot() for name, layer in wrapped.items()}, [p.detach().clone() for p in extra]


register_tuner("signround")(SignRoundTuner)
