"""The Triton kernel against the torch dequantize path, on the CPU through Triton's interpreter
(the compiled kernel needs a CUDA device; the interpreter runs the same program semantics)."""

import logging

import pytest
import torch

from auto_round_mllm.export.layouts import (
    dequantize,
    pack_awq,
    pack_compressed_tensors,
    pack_gptq,
    unpack_awq,
    unpack_gptq,
)
from auto_round_mllm.inference import triton_matmul
from auto_round_mllm.inference.qlinear import PackedLayout, QuantLinear, set_backend
from auto_round_mllm.quant.tunable import QuantizedWeight

pytest.importorskip("triton")

LAYOUTS = [  # (kind, bits, zero_offset)
    ("gptq", 2, 1),
    ("gptq", 4, 1),
    ("gptq", 4, 0),
    ("gptq", 8, 1),
    ("awq", 4, 0),
]


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def random_layer(kind, bits, zero_offset, *, out_features=96, in_features=128, group_size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    groups = in_features // group_size
    qw = QuantizedWeight(
        codes=torch.randint(0, 2**bits, (out_features, in_features), generator=generator).to(torch.uint8),
        scale=torch.rand(out_features, groups, generator=generator) * 0.05 + 0.01,
        zp=torch.randint(zero_offset, 2**bits, (out_features, groups), generator=generator).to(torch.int32),
        bits=bits,
        group_size=group_size,
        sym=False,
        bias=torch.randn(out_features, generator=generator),
    )
    if kind == "awq":
        tensors = pack_awq(qw)
        weight = dequantize(*unpack_awq(tensors))
    else:
        tensors = pack_gptq(qw, zero_offset=zero_offset)
        weight = dequantize(*unpack_gptq(tensors, bits=bits, zero_offset=zero_offset))
    return tensors, weight


@pytest.mark.parametrize(("kind", "bits", "zero_offset"), LAYOUTS)
@pytest.mark.parametrize("rows", [1, 17, 70])
def test_kernel_matches_dequantize_then_matmul_fp32(interpreter, kind, bits, zero_offset, rows):
    tensors, weight = random_layer(kind, bits, zero_offset)
    x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(1))
    out = triton_matmul.packed_linear(
        x, tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["bias"],
        kind=kind, bits=bits, group_size=32, zero_offset=zero_offset,
    )  # fmt: skip
    expected = torch.nn.functional.linear(x, weight, tensors["bias"].float())
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_half_precision_inputs_keep_shape_and_dtype(interpreter, dtype):
    tensors, weight = random_layer("gptq", 4, 1, group_size=128)
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(2)).to(dtype)
    out = triton_matmul.packed_linear(
        x, tensors["qweight"], tensors["qzeros"], tensors["scales"], None,
        kind="gptq", bits=4, group_size=-1, zero_offset=1,
    )  # fmt: skip
    assert out.shape == (2, 3, 96) and out.dtype == dtype
    expected = x.float() @ weight.t()
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.02)


def test_kernel_refuses_layouts_it_does_not_read():
    tensors, _ = random_layer("gptq", 4, 1)
    with pytest.raises(ValueError, match="not gptq 3-bit"):
        triton_matmul.packed_linear(
            torch.zeros(1, 128), tensors["qweight"], tensors["qzeros"], tensors["scales"], None,
            kind="gptq", bits=3, group_size=32, zero_offset=1,
        )  # fmt: skip


def loaded_layer(kind, bits, zero_offset, backend, *, g_idx=None):
    tensors, weight = random_layer(kind, bits, zero_offset)
    layout = PackedLayout(
        kind=kind, bits=bits, group_size=32, zero_offset=zero_offset, has_g_idx=kind == "gptq"
    )
    layer = QuantLinear(128, 96, layout=layout, bias=True, backend=backend)
    for name, value in tensors.items():
        getattr(layer, name).copy_(value)
    if kind == "gptq":
        layer.g_idx.copy_(torch.arange(128) // 32 if g_idx is None else g_idx)
    return layer, weight


def test_auto_backend_uses_the_kernel_under_the_interpreter(interpreter, monkeypatch):
    layer, weight = loaded_layer("awq", 4, 0, "auto")
    calls = []
    real = triton_matmul.packed_linear
    monkeypatch.setattr(triton_matmul, "packed_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(4, 128)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, weight, layer.bias.float()))
    assert calls == [1]


def test_auto_backend_takes_the_torch_path_on_a_plain_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer, weight = loaded_layer("gptq", 4, 1, "auto")
    assert "CUDA" in layer.kernel_unusable_reason(torch.zeros(1))
    x = torch.randn(4, 128)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, weight, layer.bias.float()))


def test_forced_triton_backend_says_why_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer, _ = loaded_layer("gptq", 4, 1, "triton")
    with pytest.raises(RuntimeError, match="backend='triton' cannot run this layer: the kernel runs on CUDA"):
        layer(torch.randn(1, 128))


def test_act_order_g_idx_stays_on_the_torch_path_and_is_honoured(interpreter):
    g_idx = torch.randperm(128, generator=torch.Generator().manual_seed(3)) // 32
    layer, _ = loaded_layer("gptq", 4, 1, "auto", g_idx=g_idx)
    assert layer.kernel_unusable_reason(torch.zeros(1)) == "act-order g_idx reorders the input columns"
    codes, zeros, scales = unpack_gptq(
        {"qweight": layer.qweight, "qzeros": layer.qzeros, "scales": layer.scales}, bits=4, zero_offset=1
    )
    index = g_idx.long()
    expected_weight = scales.float()[:, index] * (codes.float() - zeros.float()[:, index])
    torch.testing.assert_close(layer.dequantized_weight(), expected_weight)


@pytest.mark.parametrize("sym", [True, False])
def test_a_compressed_tensors_layer_stays_on_the_torch_path_and_says_why(interpreter, sym):
    """The kernel reads GPTQ and AWQ words; compressed-tensors' rows of a dense bitstream it
    declines, naming the layout, and the torch path computes the layer."""
    generator = torch.Generator().manual_seed(4)
    qw = QuantizedWeight(
        codes=torch.randint(0, 16, (40, 96), generator=generator).to(torch.uint8),
        scale=(torch.rand(40, 3, generator=generator) * 0.05 + 0.01).to(torch.float16),
        zp=torch.full((40, 3), 8, dtype=torch.int32)
        if sym
        else torch.randint(0, 16, (40, 3), generator=generator),
        bits=4,
        group_size=32,
        sym=sym,
        bias=torch.randn(40, generator=generator),
    )
    layout = PackedLayout(kind="compressed_tensors", bits=4, group_size=32, sym=sym)
    layer = QuantLinear(96, 40, layout=layout, bias=True, backend="auto")
    for name, value in pack_compressed_tensors(qw).items():
        getattr(layer, name).copy_(value)
    assert layer.kernel_unusable_reason(torch.zeros(1)) == (
        "the kernel reads GPTQ 2/4/8-bit and AWQ 4-bit, not compressed_tensors 4-bit"
    )
    x = torch.randn(3, 96, generator=generator)
    assert torch.equal(layer.dequantized_weight(), qw.dequantize())
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, qw.dequantize(), layer.bias.float()))
    layer.backend = "triton"
    with pytest.raises(RuntimeError, match="not compressed_tensors 4-bit"):
        layer(x)


def test_a_kernel_that_fails_falls_back_to_torch_once(interpreter, monkeypatch, caplog):
    layer, weight = loaded_layer("gptq", 4, 1, "auto")

    def broken(*args, **kwargs):
        raise RuntimeError("PTX compile failed")

    monkeypatch.setattr(triton_matmul, "packed_linear", broken)
    x = torch.randn(2, 128)
    with caplog.at_level(logging.WARNING):
        out = layer(x)
    assert "PTX compile failed" in caplog.text and layer.backend == "torch"
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight, layer.bias.float()))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="choose one of auto, torch, triton"):
        set_backend(torch.nn.Linear(2, 2), "cuda")


@pytest.mark.parametrize(("fmt", "bits", "asym"), [("auto_gptq", 2, False), ("auto_awq", 4, True)])
def test_whole_model_through_the_kernel_matches_the_torch_path(
    interpreter, tiny_qwen2_vl, tmp_path, fmt, bits, asym
):
    from auto_round_mllm import api
    from auto_round_mllm.flags import job_from_flags
    from auto_round_mllm.inference.loader import load_quantized
    from auto_round_mllm.models.loading import load_model

    job = job_from_flags(
        model=str(tiny_qwen2_vl), bits=bits, group_size=64, asym=asym, iters=1, nsamples=2, seqlen=16,
        batch_size=2, format=fmt, output_dir=str(tmp_path), device="cpu",
    )  # fmt: skip
    tuned = api.tune(job, load_model(job.model))
    api.write_formats(tuned, job, {fmt: tmp_path / "ckpt"}, lambda facts: {"test": True})
    ids = torch.randint(3, 1900, (1, 6), generator=torch.Generator().manual_seed(0))
    fast = load_quantized(tmp_path / "ckpt", dtype=torch.float32, backend="triton")
    slow = load_quantized(tmp_path / "ckpt", dtype=torch.float32, backend="torch")
    with torch.no_grad():
        torch.testing.assert_close(fast(input_ids=ids).logits, slow(input_ids=ids).logits, atol=1e-4, rtol=0)
