import logging

import pytest
import torch

from auto_round_mllm.quant import kernel as kernel_module
from auto_round_mllm.quant.kernel import QdqKernel, compile_by_default, qdq
from auto_round_mllm.quant.ops import group_range


def layer_inputs(bits: int, seed: int = 0) -> tuple[list[torch.Tensor], dict]:
    """A bf16 weight in groups of 32 with tuned-looking parameters (v off zero, clipping below 1)."""
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(48, 128, generator=generator) * 0.02).to(torch.bfloat16)
    groups = weight.reshape(-1, 32)
    wmin, wmax = group_range(groups)
    v = ((torch.rand(groups.shape, generator=generator) - 0.5) * 0.6).requires_grad_()
    low = (0.8 + 0.2 * torch.rand(groups.shape[0], generator=generator)).requires_grad_()
    high = (0.8 + 0.2 * torch.rand(groups.shape[0], generator=generator)).requires_grad_()
    options = {"bits": bits, "scale_dtype": torch.float16, "out_features": 48, "dtype": torch.bfloat16}
    return [groups, wmin, wmax, v, low, high], options


def forward_backward(function, bits: int, sym: bool) -> tuple[torch.Tensor, ...]:
    tensors, options = layer_inputs(bits)
    out = function(*tensors, sym=sym, **options)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype))
    return out.detach(), tensors[3].grad, tensors[4].grad, tensors[5].grad


@pytest.mark.parametrize(("bits", "sym"), [(4, True), (2, False)])
def test_compiled_kernel_reproduces_the_eager_quantizer(bits, sym):
    eager = forward_backward(qdq, bits, sym)
    kernel = QdqKernel(compiled=True)
    compiled = forward_backward(kernel, bits, sym)
    assert kernel.active, "the compiler is available here: the compiled path must have run"
    # the stored scale's fp16 rounding is emulated, so the weight and every rounding decision match
    assert torch.equal(compiled[0], eager[0])
    assert torch.equal(compiled[1], eager[1])
    # per-group sums may add up in another order
    for fused, reference in zip(compiled[2:], eager[2:], strict=True):
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-6)


def test_a_failed_compilation_warns_once_and_continues_eagerly(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("InductorError: no working C++ compiler\nsecond line")

    monkeypatch.setattr(kernel_module.torch, "compile", lambda function, **kw: broken)
    kernel = QdqKernel(compiled=True)
    with caplog.at_level(logging.WARNING, logger="auto_round_mllm.quant.kernel"):
        first = forward_backward(kernel, 4, True)
        second = forward_backward(kernel, 4, True)
    eager = forward_backward(qdq, 4, True)
    assert not kernel.active
    assert all(torch.equal(a, b) for a, b in zip(first, eager, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(second, eager, strict=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no working C++ compiler" in warnings[0] and "second line" not in warnings[0]
    assert "--disable_torch_compile" in warnings[0]


def test_calls_without_gradients_and_disabled_kernels_never_compile(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile must not be reached")

    monkeypatch.setattr(kernel_module.torch, "compile", refuse)
    tensors, options = layer_inputs(4)
    with torch.no_grad():
        QdqKernel(compiled=True)(*tensors, sym=True, **options)
    QdqKernel(compiled=False)(*tensors, sym=True, **options)


def test_compiling_by_default_only_where_it_pays():
    assert compile_by_default(torch.device("cpu"), iters=200)
    assert compile_by_default(torch.device("cuda", 0), iters=10)
    assert not compile_by_default(torch.device("cpu"), iters=9)
    assert not compile_by_default(torch.device("hpu"), iters=200)


def test_a_backward_that_fails_to_compile_is_caught_before_tuning_uses_it(monkeypatch, caplog):
    class BackwardFails(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward compilation failed")

    monkeypatch.setattr(
        kernel_module.torch,
        "compile",
        lambda function, **kw: lambda *a, **k: BackwardFails.apply(qdq(*a, **k)),
    )
    kernel = QdqKernel(compiled=True)
    with caplog.at_level(logging.WARNING, logger="auto_round_mllm.quant.kernel"):
        result = forward_backward(kernel, 4, True)  # the real backward runs eagerly: no exception
    assert not kernel.active
    assert all(torch.equal(a, b) for a, b in zip(result, forward_backward(qdq, 4, True), strict=True))
    assert "backward compilation failed" in caplog.text
