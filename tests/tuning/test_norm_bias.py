"""--enable_norm_bias_tuning's offsets: they move a norm weight or a bias by at most half a 4-bit
step of its range, take gradients, and leave the tuned value behind when removed."""

import torch
from torch import nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.quant.tunable import wrap_linears
from auto_round_mllm.tuning.norm_bias import attach_offsets


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 8, bias=True)
        self.out = nn.Linear(8, 8, bias=True)

    def forward(self, x):
        return self.out(self.proj(self.input_layernorm(x)))


def test_offsets_cover_norms_and_every_bias_by_their_full_names():
    torch.manual_seed(0)
    block = Block()
    wrap_linears(block, lambda name: QuantScheme(4, 8) if name == "proj" else None)
    offsets = attach_offsets(block, "model.layers.3")
    assert sorted(offsets.attached) == [
        "model.layers.3.input_layernorm.weight",  # a norm's weight (auto-round leaves its bias)
        "model.layers.3.out.bias",
        "model.layers.3.proj.bias",  # inside the wrapped layer, named as the checkpoint names it
    ]


def test_a_step_moves_the_tensor_within_its_bound_and_finish_keeps_it():
    torch.manual_seed(0)
    block = Block()
    with torch.no_grad():
        block.input_layernorm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    original_weight = block.input_layernorm.weight.detach().clone()
    original_bias = block.out.bias.detach().clone()
    offsets = attach_offsets(block, "b")
    block(torch.randn(4, 8)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in offsets.parameters)
    with torch.no_grad():
        for p in offsets.parameters:
            p.add_(torch.sign(p.grad))  # a full step: the clamp keeps half of it
    tuned = offsets.finish()
    step = (2.0 - 0.5) / 15
    moved = block.input_layernorm.weight.detach() - original_weight
    assert torch.allclose(moved.abs(), torch.full_like(moved, 0.5 * step), atol=1e-6)
    assert not torch.equal(block.out.bias.detach(), original_bias)
    assert torch.equal(tuned["b.input_layernorm.weight"], block.input_layernorm.weight.detach())
    assert not nn.utils.parametrize.is_parametrized(block.input_layernorm)
    assert isinstance(block.input_layernorm.weight, nn.Parameter)
