"""The ``fake`` format: the model with its weights replaced by their dequantized values, in the
model dtype, loadable anywhere a plain checkpoint is (research, debugging, comparing kernels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.export.base import ExportInput, register_exporter
from auto_round_mllm.export.checkpoint import write_checkpoint


class FakeExporter:
    name = "fake"
    scale_storage = None
    per_layer_schemes = True
    quantized_head = True

    def check(self, scheme: QuantScheme) -> None:
        """Any scheme: nothing is packed."""

    def layer_problem(
        self, layer: nn.Linear, scheme: QuantScheme, job_scheme: QuantScheme | None = None
    ) -> str | None:
        return None

    def write(self, data: ExportInput, folder: Path) -> dict[str, Any]:
        return write_checkpoint(data, folder, pack=None, make_config=lambda name_for: None)


register_exporter("fake", FakeExporter())
