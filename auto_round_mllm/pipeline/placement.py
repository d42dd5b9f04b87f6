"""``--device_map``: one block's layers spread over several devices.

A decoder block of a 72B model in fp16 plus SignRound's tuning state (rounding offsets, fp32
grouped weights, gradients) may not fit one GPU. The block's direct children (attention, MLP,
norms; the units that hold their own parameters) are assigned to the devices in order, balancing
parameter bytes, and each gets an accelerate ``AlignDevicesHook`` that moves its inputs to its
device and its outputs back to the caller's, so the residual stream, the loss and the activation
caches stay on the first device. A child is never split: attention's projections meet in one
matmul and must share a device.

The hooks are attached to the block as it is at the time (before tuning to compute the targets,
then again once its Linears are wrapped, so the tuning parameters are created on each layer's own
device) and removed before the block leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from auto_round_mllm.errors import UserError


def parse_device_map(spec: str | None) -> list[torch.device] | None:
    """``auto`` (every visible GPU), ``0,1,2``, ``cuda:0,cuda:1``, or CPU devices (``cpu,cpu``: the
    placement logic without GPUs). None or a single device: no device map."""
    if spec is None or not spec.strip():
        return None
    value = spec.strip().lower()
    if value == "auto":
        count = torch.cuda.device_count()
        return [torch.device(f"cuda:{i}") for i in range(count)] if count > 1 else None
    out = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        name = f"cuda:{part}" if part.isdigit() else part
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(
                f"--device_map {spec!r}: {part!r} is not a device", fix="use auto, or indices such as 0,1,2"
            ) from None
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise UserError(
                f"--device_map {spec}: {name} is not available ({torch.cuda.device_count()} CUDA device(s) visible)",
                fix="list only visible GPUs (see nvidia-smi / CUDA_VISIBLE_DEVICES), or use auto",
            )
        if device.type not in ("cuda", "cpu", "xpu"):
            raise UserError(
                f"--device_map {spec}: {name} cannot hold layers", fix="use CUDA indices such as 0,1"
            )
        out.append(device)
    return out if len(out) > 1 else None


def _units(block: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """The block's direct children that hold parameters, with their parameter bytes."""
    units = []
    for name, child in block.named_children():
        size = sum(p.numel() * p.element_size() for p in child.parameters())
        if size:
            units.append((name, child, size))
    return units


def plan_placement(block: nn.Module, devices: list[torch.device]) -> dict[str, torch.device]:
    """Child name -> device: contiguous runs in module order, each device taking about an equal
    share of the parameter bytes (a child larger than a share gets a device of its own)."""
    units = _units(block)
    total = sum(size for _, _, size in units)
    plan: dict[str, torch.device] = {}
    index, filled = 0, 0
    for name, _, size in units:
        share = total * (index + 1) / len(devices)
        if filled and filled + size / 2 > share and index < len(devices) - 1:
            index += 1
        plan[name] = devices[index]
        filled += size
    return plan


@dataclass
class BlockPlacement:
    """Attaches and removes the hooks that spread one block over ``devices``."""

    devices: list[torch.device]

    @property
    def main(self) -> torch.device:
        return self.devices[0]

    def attach(self, block: nn.Module) -> dict[str, torch.device]:
        from accelerate.hooks import AlignDevicesHook, add_hook_to_module

        plan = plan_placement(block, self.devices)
        block.to(self.main)  # norms and buffers outside the planned children
        for name, device in plan.items():
            child = block.get_submodule(name)
            child.to(device)
            add_hook_to_module(child, AlignDevicesHook(execution_device=device, io_same_device=True))
        return plan

    @staticmethod
    def detach(block: nn.Module) -> None:
        """Remove every placement hook (a no-op for a block that has none)."""
        from accelerate.hooks import remove_hook_from_module

        remove_hook_from_module(block, recurse=True)
