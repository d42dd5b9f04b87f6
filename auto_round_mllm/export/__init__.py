"""Exporters store tuned weights; importing this package registers the built-in formats."""

from auto_round_mllm.export import auto_round, awq, compressed_tensors, fake, gptq
from auto_round_mllm.export.base import EXPORTERS, Exporter, ExportInput, register_exporter

__all__ = [
    "EXPORTERS",
    "ExportInput",
    "Exporter",
    "auto_round",
    "awq",
    "compressed_tensors",
    "fake",
    "gptq",
    "register_exporter",
]
