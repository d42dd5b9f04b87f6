import pytest
import torch

from auto_round_mllm.errors import UserError
from auto_round_mllm.utils import device as devices
from auto_round_mllm.utils import dtype_policy
from auto_round_mllm.utils.device import choose_precision, resolve_device


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else resolve_device("auto").type
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu0"])
def test_unknown_specs(spec):
    with pytest.raises(UserError, match="not understood"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "xpu", "hpu", "0"])
def test_missing_accelerators_are_user_errors(spec):
    with pytest.raises(UserError):
        resolve_device(spec)


def test_precision_rules(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert choose_precision(cpu, torch.float32, amp=True).autocast == torch.bfloat16
    assert choose_precision(cpu, torch.bfloat16, amp=False).autocast is None
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert choose_precision(cpu, torch.bfloat16, amp=True).autocast is None
    assert choose_precision(gpu, torch.float16, amp=True).autocast == torch.float16
    assert choose_precision(gpu, torch.bfloat16, amp=True).autocast == torch.bfloat16
    assert choose_precision(gpu, torch.float32, amp=True).autocast is None


def test_autocast_context_runs_in_bf16_on_cpu():
    precision = devices.Precision(torch.device("cpu"), torch.bfloat16)
    with precision.context():
        out = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert out.dtype == torch.bfloat16 and precision.label == "bfloat16"


def test_tuning_dtype_casts_fp32_to_bf16_only_where_amp_computes_in_bf16(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert dtype_policy.tuning_dtype(cpu, torch.float32, amp=True) == torch.bfloat16
    assert dtype_policy.tuning_dtype(cpu, torch.float32, amp=False) == torch.float32  # --disable_amp
    assert dtype_policy.tuning_dtype(cpu, torch.float16, amp=True) == torch.float16  # 16-bit stays
    assert dtype_policy.tuning_dtype(cpu, torch.bfloat16, amp=True) == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert dtype_policy.tuning_dtype(cpu, torch.float32, amp=True) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dtype_policy.tuning_dtype(gpu, torch.float32, amp=True) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # V100, T4
    assert dtype_policy.tuning_dtype(gpu, torch.float32, amp=True) == torch.float32


def test_deterministic_algorithms_are_on_for_the_run_and_restored_after():
    import torch

    from auto_round_mllm.utils.device import deterministic_algorithms

    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_a_run_under_deterministic_algorithms_writes_the_same_checkpoint(
    tiny_qwen2_vl, tmp_path, monkeypatch
):
    """The run switches torch's deterministic mode on and back off; every operation of a tuning
    run has a deterministic kernel (none fails), and on the CPU the result is the one the run
    gives anyway."""
    import torch

    from tests.conftest import quantize_tiny

    switched, original = [], torch.use_deterministic_algorithms
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on: (switched.append(on), original(on)))
    plain, _ = quantize_tiny(tiny_qwen2_vl, tmp_path / "plain", iters=2)
    assert switched == []
    strict, _ = quantize_tiny(tiny_qwen2_vl, tmp_path / "strict", iters=2, deterministic=True)
    assert switched == [True, False] and not torch.are_deterministic_algorithms_enabled()
    for name, qw in plain.qweights.items():
        assert torch.equal(qw.codes, strict.qweights[name].codes)
