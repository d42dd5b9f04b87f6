"""--device_map: a block's children spread over devices, with the same results as one device.

There is no GPU here, so the hooks are exercised with a device map of CPU devices (numerically a
no-op, which is what makes the comparison exact), and the plan itself with CUDA device names
(planning allocates nothing).
"""

from __future__ import annotations

import pytest
import torch

from auto_round_mllm.errors import UserError
from auto_round_mllm.models.loading import load_model
from auto_round_mllm.pipeline.placement import BlockPlacement, parse_device_map, plan_placement

CPU = torch.device("cpu")
GPUS = [torch.device(f"cuda:{i}") for i in range(3)]


def test_parse_device_map():
    assert parse_device_map(None) is None
    assert parse_device_map("cpu") is None  # one device: nothing to spread
    assert parse_device_map("cpu, cpu") == [CPU, CPU]
    if torch.cuda.device_count() < 2:
        assert parse_device_map("auto") is None
    with pytest.raises(UserError, match="not a device"):
        parse_device_map("gpu0,gpu1")
    if torch.cuda.device_count() < 2:
        with pytest.raises(UserError, match="not available"):
            parse_device_map("0,1")


@pytest.fixture(scope="module")
def block(tiny_llama):
    return load_model(str(tiny_llama)).model.model.layers[0]


def test_plan_is_contiguous_balanced_and_never_splits_a_child(block):
    plan = plan_placement(block, GPUS[:2])
    children = [name for name, child in block.named_children() if any(True for _ in child.parameters())]
    assert list(plan) == children  # every child with parameters, in module order, none split
    order = [plan[name].index for name in children]
    assert order == sorted(order) and set(order) == {0, 1}
    assert plan["self_attn"] != plan["mlp"]  # the two big children land apart


def test_one_huge_child_gets_a_device_of_its_own():
    block = torch.nn.Module()
    block.a = torch.nn.Linear(4, 4)
    block.b = torch.nn.Linear(400, 400)
    block.c = torch.nn.Linear(4, 4)
    plan = plan_placement(block, GPUS)
    assert plan["a"] != plan["b"] and plan["c"] != plan["b"]


def test_hooks_give_the_same_output_and_come_off(block):
    width = block.self_attn.q_proj.in_features
    hidden = torch.randn(2, 5, width, generator=torch.Generator().manual_seed(0)).to(
        block.mlp.up_proj.weight.dtype
    )
    rotary = load_rotary(block, hidden)
    expected = block(hidden, position_embeddings=rotary, attention_mask=None)[0]
    placement = BlockPlacement([CPU, CPU])
    placement.attach(block)
    assert hasattr(block.self_attn, "_hf_hook") and hasattr(block.mlp, "_hf_hook")
    got = block(hidden, position_embeddings=rotary, attention_mask=None)[0]
    BlockPlacement.detach(block)
    assert not any(hasattr(m, "_hf_hook") for m in block.modules())
    assert torch.equal(got, expected)


def load_rotary(block, hidden):
    head_dim = block.self_attn.head_dim
    positions = torch.arange(hidden.shape[1]).float()
    freqs = torch.outer(positions, 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)))
    emb = torch.cat([freqs, freqs], dim=-1)[None]
    return emb.cos().to(hidden.dtype), emb.sin().to(hidden.dtype)
