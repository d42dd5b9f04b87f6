from torch import nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.export.layouts import gptq_layer_problem
from auto_round_mllm.models.layer_plan import plan_layers


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(256, 256)
        self.odd = nn.Linear(576, 256)  # 576 is not a multiple of 128
        self.narrow = nn.Linear(256, 20)  # 20 outputs cannot fill 4-bit qzeros words
        self.lm_like = nn.Linear(256, 256)


def test_every_linear_gets_a_decision_with_a_reason():
    model = nn.Module()
    model.layers = nn.ModuleList([Block()])
    decisions = plan_layers(
        model, ["layers.0"], QuantScheme(4, 128), keep_patterns=("lm_like",), checks=[gptq_layer_problem]
    )
    assert decisions["layers.0.q_proj"].quantized
    assert "not a multiple of group_size 128" in decisions["layers.0.odd"].reason
    assert "out_features 20" in decisions["layers.0.narrow"].reason
    assert "--fp_layers" in decisions["layers.0.lm_like"].reason
    assert all(d.block == "layers.0" for d in decisions.values())
