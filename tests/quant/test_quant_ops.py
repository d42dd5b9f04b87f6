"""AutoRound quantizer semantics: sign rule, ranges, bit-exact code round trips, accuracy, gradients."""

from __future__ import annotations

import pytest
import torch

from auto_round_mllm.quant.ops import (
    fake_quant,
    from_codes,
    from_groups,
    qparams,
    round_ste,
    scale_eps,
    sqnr_db,
    to_codes,
    to_groups,
)

BITS = (2, 3, 4, 8)
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _gaussian(out_features: int = 256, in_features: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed)) * 0.02


def test_groups_layout_and_inverse() -> None:
    w = torch.arange(2 * 8, dtype=torch.float32).reshape(2, 8)
    g = to_groups(w, 4)
    assert g.shape == (4, 4)
    assert g[1].tolist() == [4, 5, 6, 7]  # row 0, group 1
    assert g[2].tolist() == [8, 9, 10, 11]  # row 1, group 0
    assert torch.equal(from_groups(g, 2), w)
    assert to_groups(w, -1).shape == (2, 8)
    with pytest.raises(ValueError):
        to_groups(w, 3)


def test_round_ste_forward_and_identity_gradient() -> None:
    x = torch.tensor([-1.5, -0.4, 0.5, 0.6, 2.49, 7.5], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y.detach(), x.detach().round())
    (y * torch.arange(6.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0))


@pytest.mark.parametrize("bits", BITS)
def test_sym_sign_rule(bits: int) -> None:
    maxq = 2 ** (bits - 1)
    groups = torch.tensor(
        [
            [0.9, -0.3, 0.1, 0.0],  # positive side dominates -> negative scale
            [-0.9, 0.3, 0.1, 0.0],  # negative side dominates -> positive scale
            [0.5, -0.5, 0.2, 0.1],  # tie -> negative scale
        ]
    )
    scale, zp = qparams(groups, bits, sym=True, scale_dtype=torch.float32)
    assert scale[0] < 0 and scale[1] > 0 and scale[2] < 0
    assert torch.allclose(scale.abs(), torch.tensor([0.9, 0.9, 0.5]) / maxq)
    assert zp.dtype == torch.float32 and torch.equal(zp, torch.full((3,), float(maxq)))
    codes = to_codes(groups, scale, zp, bits)
    assert codes[0, 0] == 0 and codes[1, 0] == 0 and codes[2, 0] == 0  # the dominant extreme is code 0
    assert codes[2, 1] == 2**bits - 1  # the other side of a tie clamps to the top code
    deq = from_codes(codes, scale, zp)
    assert torch.allclose(deq[:2, 0], groups[:2, 0])


def test_sym_all_zero_group_gets_positive_eps() -> None:
    scale, _ = qparams(torch.zeros(2, 8), 4, sym=True)
    assert scale.dtype == torch.float16
    assert torch.equal(scale, torch.full((2,), 1e-5, dtype=torch.float16))
    assert scale_eps(torch.float32) == 1e-8


@pytest.mark.parametrize("bits", BITS)
def test_asym_zero_point_and_codes_in_range(bits: int) -> None:
    groups = to_groups(_gaussian(64, 256) + 0.01, 32)
    groups[0] = groups[0].abs()  # all positive: wmin clamps to 0, zp must be 0
    groups[1] = -groups[1].abs()  # all negative: zp must be maxq
    scale, zp = qparams(groups, bits, sym=False)
    maxq = 2**bits - 1
    assert (scale > 0).all()
    assert ((zp >= 0) & (zp <= maxq)).all() and torch.equal(zp, zp.round())
    assert zp[0] == 0 and zp[1] == maxq
    codes = to_codes(groups, scale, zp, bits)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= maxq


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES)
def test_codes_round_trip_is_bit_exact(bits: int, sym: bool, scale_dtype: torch.dtype) -> None:
    groups = to_groups(_gaussian(32, 256, seed=bits), 64)
    gen = torch.Generator().manual_seed(1)
    v = (torch.rand(groups.shape, generator=gen) - 0.5) * 0.8
    min_scale = 0.7 + 0.3 * torch.rand(groups.shape[0], generator=gen)
    max_scale = 0.7 + 0.3 * torch.rand(groups.shape[0], generator=gen)
    scale, zp = qparams(groups, bits, sym, min_scale, max_scale, scale_dtype=scale_dtype)
    assert scale.dtype == scale_dtype
    codes = to_codes(groups, scale, zp, bits, v)
    assert int(codes.max()) <= 2**bits - 1
    assert torch.equal(from_codes(codes, scale, zp), fake_quant(groups, scale, zp, bits, v))
    assert torch.equal(from_codes(codes, scale, zp.to(torch.int32)), fake_quant(groups, scale, zp, bits, v))


# Measured on this 256x512 gaussian (sym, asym): 2b g128 7.4/5.9, 3b g128 13.6/13.3, 4b g128 19.7/19.9,
# 8b g128 43.8/44.5, 4b g32 21.3/21.8, 4b per-channel 18.5/18.6, 2b per-channel 6.4/4.6. Floors ~1.5 dB below.
SQNR_FLOORS = {
    (2, 128): (6.0, 4.5),
    (3, 128): (12.0, 12.0),
    (4, 128): (18.0, 18.0),
    (8, 128): (42.0, 42.5),
    (4, 32): (20.0, 20.0),
    (4, -1): (17.0, 17.0),
    (2, -1): (5.0, 3.0),
}


@pytest.mark.parametrize(("bits", "group_size"), list(SQNR_FLOORS))
@pytest.mark.parametrize("sym", [True, False])
def test_sqnr_on_gaussian_weights(bits: int, group_size: int, sym: bool) -> None:
    w = _gaussian()
    groups = to_groups(w, group_size)
    scale, zp = qparams(groups, bits, sym)
    approx = from_groups(fake_quant(groups, scale, zp, bits), w.shape[0])
    assert approx.shape == w.shape
    sym_floor, asym_floor = SQNR_FLOORS[(bits, group_size)]
    assert sqnr_db(w, approx) > (sym_floor if sym else asym_floor)


def test_sqnr_of_identical_tensors_is_infinite() -> None:
    w = _gaussian(4, 8)
    assert sqnr_db(w, w.clone()) == float("inf")


@pytest.mark.parametrize("sym", [True, False])
def test_gradients_reach_v_and_minmax(sym: bool) -> None:
    groups = to_groups(_gaussian(16, 128), 32)
    v = torch.zeros_like(groups, requires_grad=True)
    min_scale = torch.ones(groups.shape[0], requires_grad=True)
    max_scale = torch.ones(groups.shape[0], requires_grad=True)
    scale, zp = qparams(groups, 4, sym, min_scale, max_scale)
    loss = (fake_quant(groups, scale, zp, 4, v) - groups.flip(-1)).pow(2).sum()
    loss.backward()
    for t in (v, min_scale, max_scale):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_minmax_scales_are_clamped_to_unit_interval() -> None:
    groups = to_groups(_gaussian(4, 64), 32)
    s1, z1 = qparams(groups, 4, False, torch.full((8,), 1.7), torch.full((8,), 3.0))
    s2, z2 = qparams(groups, 4, False)
    assert torch.equal(s1, s2) and torch.equal(z1, z2)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fused_fake_quant_matches_autograd_of_the_reference(sym, bits):
    """The hand-written backward gives autograd's gradients: v exactly, the clipping multipliers to
    fp16 rounding (the reference casts each partial gradient to the fp16 scale, we cast once)."""
    from auto_round_mllm.quant.ops import _dequantize, _quantize, group_range, qparams_from_range

    generator = torch.Generator().manual_seed(bits + 10 * sym)
    groups = torch.randn(48, 32, generator=generator)
    wmin, wmax = group_range(groups)
    target = torch.randn(48, 32, generator=generator)
    v0 = torch.rand(48, 32, generator=generator) - 0.5
    scales0 = torch.rand(2, 48, generator=generator) * 0.3 + 0.7

    def run(fused: bool):
        v = v0.clone().requires_grad_()
        lo, hi = (s.clone().requires_grad_() for s in scales0)
        scale, zp = qparams_from_range(wmin, wmax, bits, sym, lo.clamp(0, 1), hi.clamp(0, 1))
        if fused:
            out = fake_quant(groups, scale, zp, bits, v)
        else:
            out = _dequantize(_quantize(groups, scale, zp, bits, v), scale, zp)
        (out - target).pow(2).sum().backward()
        return out.detach(), v.grad, lo.grad, hi.grad

    ref, fused = run(False), run(True)
    assert torch.equal(fused[0], ref[0])
    assert torch.equal(fused[1], ref[1])
    for got, want in zip(fused[2:], ref[2:], strict=True):
        assert torch.allclose(got, want, rtol=1e-2, atol=1e-3 * want.abs().max())


def test_tuning_saves_no_fp32_copy_of_the_weight_for_backward():
    """What a wrapped bf16 Linear keeps alive between forward and backward beyond its own tensors
    (weight, v): the bf16 fake-quantized weight the matmul needs, not the fp32 intermediates
    (four weight-sized copies) that autograd would keep through the quantizer."""
    from auto_round_mllm.config import QuantScheme
    from auto_round_mllm.quant.tunable import TunableLinear

    layer = torch.nn.Linear(256, 512, bias=False).to(torch.bfloat16)
    tunable = TunableLinear(layer, QuantScheme(bits=4, group_size=64))
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    own = {t.untyped_storage().data_ptr() for t in (layer.weight, tunable.v, x)}
    extra: list[int] = []

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in own:
            extra.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tunable(x).float().sum().backward()
    weight_bytes = layer.weight.numel() * layer.weight.element_size()
    assert sum(extra) <= 1.2 * weight_bytes, f"{sum(extra) / weight_bytes:.1f}x the bf16 weight saved"
    assert tunable.v.grad is not None and tunable.min_scale.grad is not None
