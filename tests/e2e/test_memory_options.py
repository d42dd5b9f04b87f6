"""--low_gpu_mem_usage, --cache_dir and --device_map change where things live, never the result."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
import torch
from accelerate.hooks import AlignDevicesHook
from torch import nn

from auto_round_mllm.pipeline import blockwise
from auto_round_mllm.pipeline import cache as cache_module
from auto_round_mllm.pipeline import placement as placement_module
from auto_round_mllm.pipeline.placement import BlockPlacement
from auto_round_mllm.tuning.signround import SignRoundTuner
from tests.e2e.runs import comparable, run

COMMON = [
    "--iters",
    "2",
    "--nsamples",
    "3",
    "--seqlen",
    "24",
    "--batch_size",
    "2",
    "--format",
    "auto_round,fake",
]


@pytest.fixture(scope="module")
def reference(tiny_qwen2_vl, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert run(["--model", str(tiny_qwen2_vl), *COMMON, "--output_dir", str(out)]) == 0
    return comparable(out)


def test_low_gpu_mem_usage(tiny_qwen2_vl, tmp_path, reference):
    assert (
        run(["--model", str(tiny_qwen2_vl), *COMMON, "--output_dir", str(tmp_path), "--low_gpu_mem_usage"])
        == 0
    )
    assert comparable(tmp_path) == reference


def test_cache_dir_spills_activations_to_mapped_files(tiny_qwen2_vl, tmp_path, reference, monkeypatch):
    mapped = []
    real = cache_module._map_to_file

    def spy(tensor, folder):
        out = real(tensor, folder)
        mapped.append(out)
        return out

    monkeypatch.setattr(cache_module, "_map_to_file", spy)
    spill = tmp_path / "spill"
    out = tmp_path / "out"
    args = ["--model", str(tiny_qwen2_vl), *COMMON, "--output_dir", str(out), "--cache_dir", str(spill)]
    assert run(args) == 0
    assert comparable(out) == reference
    assert len(mapped) >= 3 * 4  # every sample's hidden states, block after block
    assert list(spill.iterdir()) == []  # files are unlinked once mapped


@dataclass
class PlacedBlock:
    """What one block went through while it was spread over the device map."""

    block: nn.Module
    plan: dict[str, torch.device]  # child -> device, tagged with its entry's index (see below)
    hooked: dict[str, object] = field(default_factory=dict)  # child -> its _hf_hook right after attach
    calls: Counter = field(default_factory=Counter)  # (phase, child) -> placement hook runs
    block_calls: Counter = field(default_factory=Counter)  # phase -> forwards of the whole block
    ran_on: dict[str, set] = field(default_factory=dict)  # child -> execution devices its hook used
    passes: int = 0  # forward_all passes so far (pass0: the full-precision targets)
    tuned: bool = False
    put_away: int = 0
    left_hooked: list[str] = field(default_factory=list)  # modules still hooked after put_away


def test_device_map_of_cpu_devices_places_every_child_of_every_block(
    tiny_qwen2_vl, tmp_path, reference, monkeypatch
):
    """The placement hooks are observed, not just survived: ``cpu,cpu`` is numerically a no-op,
    so the output check alone would pass with hooks that do nothing.

    Both entries of ``cpu,cpu`` are ``torch.device("cpu")``, so the plan is made distinguishable:
    the real planner is given the entries tagged by index (``cpu:0``, ``cpu:1``; the same memory,
    tensors sent to either land on ``cpu``) and its plan is what attach then uses. Every child's
    hook must carry its own entry, and run with it, in the target pass and while tuning.
    """
    placed: list[PlacedBlock] = []
    owners: dict[int, tuple[PlacedBlock, str]] = {}  # id(child) -> its block and name
    phase: list[str | None] = [None]
    handles = []
    models = []

    real_plan = placement_module.plan_placement

    def tagged_plan(block, devices):
        assert devices == [torch.device("cpu")] * 2, devices
        tags = [torch.device("cpu", index) for index in range(len(devices))]
        plan = real_plan(block, tags)
        # untagged, it is exactly the plan the real entries give
        assert {name: devices[d.index] for name, d in plan.items()} == real_plan(block, devices)
        return plan

    monkeypatch.setattr(placement_module, "plan_placement", tagged_plan)

    real_attach = BlockPlacement.attach

    def attach(self, block):
        plan = real_attach(self, block)
        record = PlacedBlock(block, dict(plan))
        placed.append(record)
        for name, child in block.named_children():
            record.hooked[name] = getattr(child, "_hf_hook", None)
            owners[id(child)] = (record, name)
            record.ran_on[name] = set()

        def count(module, args):
            record.block_calls[phase[0]] += 1

        handles.append(block.register_forward_pre_hook(count))
        return plan

    monkeypatch.setattr(BlockPlacement, "attach", attach)

    real_pre_forward = AlignDevicesHook.pre_forward

    def pre_forward(self, module, *args, **kwargs):
        owner = owners.get(id(module))
        if owner is not None:
            record, name = owner
            record.calls[phase[0], name] += 1
            record.ran_on[name].add(self.execution_device)
        return real_pre_forward(self, module, *args, **kwargs)

    monkeypatch.setattr(AlignDevicesHook, "pre_forward", pre_forward)

    real_forward_all = blockwise.forward_all

    def forward_all(block, *args, **kwargs):
        record = placed[-1]
        assert block is record.block
        phase[0] = f"pass{record.passes}"
        record.passes += 1
        try:
            return real_forward_all(block, *args, **kwargs)
        finally:
            phase[0] = None

    monkeypatch.setattr(blockwise, "forward_all", forward_all)

    real_tune_block = SignRoundTuner.tune_block

    def tune_block(self, block, wrapped, ctx):
        record = placed[-1]
        assert block is record.block
        record.tuned = True
        phase[0] = "tune"
        try:
            return real_tune_block(self, block, wrapped, ctx)
        finally:
            phase[0] = None

    monkeypatch.setattr(SignRoundTuner, "tune_block", tune_block)

    real_put_away = blockwise.put_away

    def put_away(model, block_name, weights):
        real_put_away(model, block_name, weights)
        models.append(model)
        block = model.get_submodule(block_name)
        for record in placed:
            if record.block is block:
                record.put_away += 1
                record.left_hooked += [n for n, m in block.named_modules() if hasattr(m, "_hf_hook")]

    monkeypatch.setattr(blockwise, "put_away", put_away)

    args = ["--model", str(tiny_qwen2_vl), *COMMON, "--output_dir", str(tmp_path), "--device_map", "cpu,cpu"]
    try:
        assert run(args) == 0
    finally:
        for handle in handles:
            handle.remove()
    assert comparable(tmp_path) == reference  # the same bytes as without a device map

    assert len(placed) == 4 and len({id(r.block) for r in placed}) == 4  # each block once
    for record in placed:
        children = [n for n, c in record.block.named_children() if any(True for _ in c.parameters())]
        plan = record.plan
        assert list(plan) == children and {"self_attn", "mlp"} <= set(plan)
        # a contiguous split that uses both entries of the device map
        entries = [plan[name].index for name in children]
        assert entries == sorted(entries) and entries[0] == 0 and set(entries) == {0, 1}, plan

        # every planned child got its own hook, carrying its own entry; nothing else was hooked
        for name, hook in record.hooked.items():
            if name in plan:
                assert isinstance(hook, AlignDevicesHook), (name, hook)
                assert hook.execution_device == plan[name] and hook.io_same_device
            else:
                assert hook is None, name

        # the hooks ran, with the planned device, for every forward of the block: in the
        # full-precision target pass and in every tuning step
        assert record.tuned and record.passes >= 1
        for name in children:
            assert record.ran_on[name] == {plan[name]}, (name, record.ran_on[name], plan[name])
        for when in ("pass0", "tune"):
            assert record.block_calls[when] > 0, when
            for name in children:
                assert record.calls[when, name] == record.block_calls[when], (when, name, record.calls)

        # and came off when the block was put away
        assert record.put_away == 1 and record.left_hooked == []

    assert models and all(m is models[0] for m in models)
    assert [n for n, m in models[0].named_modules() if hasattr(m, "_hf_hook")] == []
