"""Where activation caches live between blocks: the compute device, host memory, or files.

The caches hold :class:`~auto_round_mllm.tuning.block_inputs.BlockInputs` hidden states; this
module only decides where their tensors are stored.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auto_round_mllm.tuning.block_inputs import move


@dataclass(frozen=True)
class CachePlacement:
    """Where the activation caches live between blocks.

    The compute device is fastest. ``--low_gpu_mem_usage`` keeps them in host memory (pinned when
    the device is a GPU, so each micro-batch copies asynchronously); ``--cache_dir`` writes them to
    memory-mapped files, whose pages the kernel can drop and re-read, for calibration sets larger
    than host memory. Each file is unlinked as soon as it is mapped: it disappears with its last
    tensor, even when the process is killed.
    """

    device: torch.device
    folder: Path | None = None
    pin: bool = False

    @classmethod
    def for_run(cls, compute: torch.device, *, host: bool, folder: str | None) -> CachePlacement:
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            return cls(torch.device("cpu"), Path(folder))
        if host:
            return cls(torch.device("cpu"), pin=compute.type == "cuda")
        return cls(compute)

    def store(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` moved to where caches live (a mapped file for a disk cache)."""
        if self.folder is None:
            out = tensor.to(self.device)
            return out.pin_memory() if self.pin and not out.is_pinned() else out
        return _map_to_file(tensor.detach().to("cpu").contiguous(), self.folder)

    def place(self, value: Any) -> Any:
        """Keyword arguments and masks: small, kept in host or device memory, never on disk."""
        return move(value, self.device)


def _map_to_file(tensor: torch.Tensor, folder: Path) -> torch.Tensor:
    with tempfile.NamedTemporaryFile(
        dir=folder, prefix="activations-", suffix=".bin", delete=False
    ) as handle:
        if tensor.numel():
            handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
        path = handle.name
    try:
        mapped = torch.from_file(path, shared=False, size=tensor.numel(), dtype=tensor.dtype)
    finally:
        os.unlink(path)  # the mapping keeps the data; the name goes now
    return mapped.view(tensor.shape)
