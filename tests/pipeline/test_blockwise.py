import torch

from auto_round_mllm.config import TuningConfig
from auto_round_mllm.pipeline.blockwise import quantizer_kernel
from auto_round_mllm.tuning.rtn import RTNTuner
from auto_round_mllm.tuning.signround import SignRoundTuner

CPU = torch.device("cpu")


def test_signround_compiles_its_quantizer_by_default_from_ten_iters():
    assert quantizer_kernel(TuningConfig(iters=10), CPU, SignRoundTuner(TuningConfig(iters=10))).compiled
    assert not quantizer_kernel(TuningConfig(iters=5), CPU, SignRoundTuner(TuningConfig(iters=5))).compiled


def test_round_to_nearest_never_compiles_unless_asked():
    assert not quantizer_kernel(TuningConfig(iters=0), CPU, RTNTuner(TuningConfig(iters=0))).compiled
    forced = TuningConfig(iters=0, torch_compile=True)
    assert quantizer_kernel(forced, CPU, RTNTuner(forced)).compiled


def test_the_user_can_switch_compilation_off():
    config = TuningConfig(iters=200, torch_compile=False)
    assert not quantizer_kernel(config, CPU, SignRoundTuner(config)).compiled
