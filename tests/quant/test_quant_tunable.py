"""TunableLinear / wrap / unwrap: RTN at init, exact finalize, state handling, and that tuning helps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.quant.ops import fake_quant, from_groups, qparams, to_groups
from auto_round_mllm.quant.tunable import QuantizedWeight, TunableLinear, unwrap_linears, wrap_linears

W4G32 = QuantScheme(bits=4, group_size=32, sym=True)


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(64, 64, bias=True)
        self.o_proj = nn.Linear(64, 64, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(torch.relu(self.q_proj(x)))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = _Attn()
        self.mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
        self.norm = nn.LayerNorm(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.self_attn(self.norm(x)))


def _seeded_linear(in_features: int = 128, out_features: int = 64, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias)


def _rtn_weight(layer: nn.Linear, scheme: QuantScheme, scale_dtype: torch.dtype) -> torch.Tensor:
    groups = to_groups(layer.weight.detach().float(), scheme.group_size_for(layer.in_features))
    scale, zp = qparams(groups, scheme.bits, scheme.sym, scale_dtype=scale_dtype)
    return from_groups(fake_quant(groups, scale, zp, scheme.bits), layer.out_features)


def _perturb(tunable: TunableLinear, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tunable.v.copy_((torch.rand(tunable.v.shape, generator=gen) - 0.5) * 0.9)
        if tunable.enable_minmax_tuning:
            tunable.min_scale.copy_(0.8 + 0.3 * torch.rand(tunable.min_scale.shape, generator=gen))
            tunable.max_scale.copy_(0.8 + 0.3 * torch.rand(tunable.max_scale.shape, generator=gen))


@pytest.mark.parametrize(
    "scheme", [W4G32, QuantScheme(bits=2, group_size=64, sym=False), QuantScheme(bits=8, group_size=-1)]
)
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_initial_output_is_rtn(scheme: QuantScheme, scale_dtype: torch.dtype) -> None:
    layer = _seeded_linear()
    tunable = TunableLinear(layer, scheme, scale_dtype=scale_dtype)
    rtn = _rtn_weight(layer, scheme, scale_dtype)
    assert torch.equal(tunable.qdq_weight(), rtn)
    x = torch.randn(5, 128)
    assert torch.equal(tunable(x), F.linear(x, rtn, layer.bias))


def test_init_state() -> None:
    layer = _seeded_linear()
    tunable = TunableLinear(layer, W4G32)
    assert tunable.layer is layer and not layer.weight.requires_grad
    assert tunable.v.shape == (64 * 4, 32) and not tunable.v.any()
    assert tunable.min_scale.shape == (256,) and torch.equal(tunable.max_scale, torch.ones(256))
    assert tunable.round_parameters() == [tunable.v]
    assert tunable.minmax_parameters() == [tunable.min_scale, tunable.max_scale]
    assert tunable.group_size == 32


def test_disabled_minmax_has_no_minmax_parameters() -> None:
    tunable = TunableLinear(_seeded_linear(), W4G32, enable_minmax_tuning=False)
    assert tunable.minmax_parameters() == []
    trainable = {name for name, p in tunable.named_parameters() if p.requires_grad}
    assert "min_scale" not in trainable and "max_scale" not in trainable and "v" in trainable
    assert torch.equal(tunable.min_scale, torch.ones(256))


@pytest.mark.parametrize("scheme", [W4G32, QuantScheme(bits=3, group_size=32, sym=False)])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_finalize_dequantizes_to_qdq_weight_exactly(scheme: QuantScheme, scale_dtype: torch.dtype) -> None:
    tunable = TunableLinear(_seeded_linear(), scheme, scale_dtype=scale_dtype)
    _perturb(tunable)
    qw = tunable.finalize()
    assert isinstance(qw, QuantizedWeight)
    assert qw.codes.dtype == torch.uint8 and qw.codes.shape == (64, 128)
    assert qw.scale.dtype == scale_dtype and qw.scale.shape == (64, 4)
    assert qw.zp.dtype == torch.int32 and qw.zp.shape == (64, 4)
    assert (qw.out_features, qw.in_features, qw.group_size, qw.bits) == (64, 128, 32, scheme.bits)
    assert torch.equal(qw.dequantize(), tunable.qdq_weight())
    assert qw.dequantize(torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(qw.bias, tunable.layer.bias) and qw.bias is not tunable.layer.bias


def test_per_channel_finalize_reports_effective_group_size() -> None:
    tunable = TunableLinear(_seeded_linear(bias=False), QuantScheme(bits=4, group_size=-1))
    qw = tunable.finalize()
    assert qw.group_size == 128 and qw.scale.shape == (64, 1) and qw.bias is None
    assert torch.equal(qw.dequantize(), tunable.qdq_weight())


def test_snapshot_and_restore() -> None:
    tunable = TunableLinear(_seeded_linear(), W4G32)
    before = tunable.snapshot()
    reference = tunable.qdq_weight().detach()
    _perturb(tunable)
    assert not torch.equal(tunable.qdq_weight(), reference)
    assert torch.equal(before["v"], torch.zeros_like(tunable.v))  # snapshot is a copy, not a view
    v_param = tunable.v
    tunable.restore(before)
    assert tunable.v is v_param  # restored in place
    assert torch.equal(tunable.qdq_weight(), reference)
    assert set(before) == {"v", "min_scale", "max_scale"}


def test_gradients_flow_to_tunables_only() -> None:
    tunable = TunableLinear(_seeded_linear(), W4G32)
    tunable(torch.randn(8, 128)).pow(2).sum().backward()
    assert tunable.layer.weight.grad is None
    for p in tunable.round_parameters() + tunable.minmax_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_forward_follows_input_dtype() -> None:
    tunable = TunableLinear(_seeded_linear(), W4G32)
    assert tunable(torch.randn(3, 128, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_wrap_and_unwrap_block() -> None:
    torch.manual_seed(0)
    block = _Block()
    originals = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
    weights = {name: m.weight.detach().clone() for name, m in originals.items()}
    x = torch.randn(4, 64)

    wrapped = wrap_linears(block, lambda name: None if name == "self_attn.o_proj" else W4G32)
    assert set(wrapped) == {"self_attn.q_proj", "mlp.0", "mlp.2"}
    assert isinstance(block.self_attn.q_proj, TunableLinear) and isinstance(block.mlp[2], TunableLinear)
    assert type(block.self_attn.o_proj) is nn.Linear
    second = wrap_linears(block, lambda name: W4G32)  # already wrapped layers are left alone
    assert second == {"self_attn.o_proj": block.self_attn.o_proj}
    unwrap_linears(block, second, write_back=False)
    for t in wrapped.values():
        _perturb(t)
    with torch.no_grad():
        tuned_out = block(x)

    results = unwrap_linears(block, wrapped)
    assert set(results) == set(wrapped)
    for name, module in block.named_modules():
        assert not isinstance(module, TunableLinear), name
    for name, layer in originals.items():
        assert block.get_submodule(name) is layer
        assert layer.weight.requires_grad
    assert torch.equal(block.self_attn.o_proj.weight, weights["self_attn.o_proj"])
    for name, qw in results.items():
        assert torch.equal(originals[name].weight, qw.dequantize())
    with torch.no_grad():
        assert torch.equal(block(x), tuned_out)


def test_unwrap_without_write_back_keeps_weights_and_casts_on_write_back() -> None:
    block = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).to(torch.bfloat16)
    original = [block[0].weight.detach().clone(), block[2].weight.detach().clone()]
    wrapped = wrap_linears(block, lambda name: W4G32)
    assert set(wrapped) == {"0", "2"}
    results = unwrap_linears(block, wrapped, write_back=False)
    assert torch.equal(block[0].weight, original[0]) and torch.equal(block[2].weight, original[1])

    wrapped = wrap_linears(block, lambda name: W4G32)
    results = unwrap_linears(block, wrapped)
    assert block[0].weight.dtype == torch.bfloat16
    assert torch.equal(block[0].weight, results["0"].dequantize(torch.bfloat16))


@pytest.mark.parametrize(("bits", "minmax"), [(2, False), (4, True)])
def test_sign_sgd_reduces_output_mse(bits: int, minmax: bool) -> None:
    """On correlated inputs RTN is not optimal; a few SignRound steps must find a better rounding.

    (On whitened inputs RTN already minimizes the output MSE, so that case would prove nothing.)
    """
    layer = _seeded_linear()
    gen = torch.Generator().manual_seed(100)
    mix = torch.randn(128, 128, generator=gen) / 128**0.5 + torch.eye(128)
    x = torch.randn(256, 128, generator=gen) @ mix * torch.linspace(0.2, 3.0, 128)
    with torch.no_grad():
        target = layer(x)
    tunable = TunableLinear(layer, QuantScheme(bits=bits, group_size=32), enable_minmax_tuning=minmax)

    def loss() -> torch.Tensor:
        return F.mse_loss(tunable(x), target)

    initial = best = loss().item()
    best_state = tunable.snapshot()
    steps, lr = 30, 5e-3
    for step in range(steps):
        current = loss()
        if current.item() < best:
            best, best_state = current.item(), tunable.snapshot()
        tunable.zero_grad()
        current.backward()
        with torch.no_grad():
            for p in tunable.round_parameters() + tunable.minmax_parameters():
                p -= lr * (1 - step / steps) * p.grad.sign()
    tunable.restore(best_state)
    with torch.no_grad():
        assert loss().item() == pytest.approx(best)
    assert best < 0.97 * initial


def test_a_multiplier_stepped_past_one_comes_back_below_one() -> None:
    """A sign step that leaves a clipping multiplier above 1 must not freeze it: the stored value is
    clamped back to 1 before the next forward, where it gets a gradient and can move down again."""
    from auto_round_mllm.tuning.signround import sign_step

    layer = _seeded_linear(bias=False)
    tunable = TunableLinear(layer, QuantScheme(bits=2, group_size=32, sym=False))
    with torch.no_grad():
        tunable.max_scale.fill_(1.05)  # as a sign step of lr 0.05 from 1 would leave it
        tunable.min_scale.fill_(1.05)
    x = torch.randn(16, 128, generator=torch.Generator().manual_seed(3))
    target = F.linear(x, layer.weight.detach())
    for _ in range(3):  # at 2 bits the full range is too coarse: the loss wants the range shrunk
        loss = (tunable(x) - target).pow(2).mean()
        loss.backward()
        assert tunable.max_scale.grad is not None and tunable.max_scale.grad.abs().sum() > 0
        sign_step(tunable.minmax_parameters(), 0.05)
    assert bool((tunable.max_scale < 1).any()) and bool((tunable.min_scale < 1).any())
    tunable.clamp_multipliers()
    assert float(tunable.max_scale.max()) <= 1.0 and float(tunable.min_scale.min()) >= 0.0


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sym", [True, False])
def test_the_fp16_scales_a_checkpoint_stores_give_exactly_the_tuned_weight(scale_dtype, sym) -> None:
    """Packed formats store fp16 scales. Tuned with bf16 scales, the stored fp16 value (and the zero
    point computed from the tuned scale) must still dequantize to the tuned weight, also for groups
    so small that their scale sits at the floor."""
    from auto_round_mllm.export.layouts import dequantize, pack_gptq, unpack_gptq

    layer = _seeded_linear(bias=False)
    with torch.no_grad():  # rows of ever smaller magnitude, down to scales below fp16's normals
        layer.weight.mul_(torch.logspace(0, -6, 64)[:, None])
    tunable = TunableLinear(layer, QuantScheme(bits=4, group_size=32, sym=sym), scale_dtype=scale_dtype)
    _perturb(tunable)
    tuned = tunable.qdq_weight()
    codes, zeros, scales = unpack_gptq(pack_gptq(tunable.finalize(), zero_offset=0), bits=4, zero_offset=0)
    assert torch.equal(dequantize(codes, zeros, scales), tuned)
