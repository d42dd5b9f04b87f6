"""Read our packed checkpoints (every format but ``fake``) back into a plain full-precision
transformers model.

The packed tensors are unpacked and dequantized (``W = scales * (q - zero)``) under their checkpoint
names, written to a scratch folder beside the original config minus ``quantization_config``, and
loaded with ``from_pretrained``, so transformers applies its own checkpoint-to-model renaming
exactly as it does for the original model. A naming or packing slip in the exporter therefore shows
up as wrong logits (or unexpected keys), not as a silently random layer.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from auto_round_mllm.export.layouts import dequantize, unpack
from auto_round_mllm.inference.layer_config import layer_scheme

PACKED_PARTS = {
    "gptq": ("qweight", "qzeros", "scales"),
    "awq": ("qweight", "qzeros", "scales"),
    "compressed_tensors": ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point"),
}
"""Each layout's tensors of one packed layer, the one that marks it first (the zero point of a
symmetric compressed-tensors layer is absent)."""
GROUP_INDEXES = (".g_idx", ".weight_g_idx")


def layout_of(quant_config: dict) -> tuple[str, int]:
    """(``"gptq"``, ``"awq"`` or ``"compressed_tensors"``, zero offset) of a checkpoint's packed tensors."""
    method = quant_config.get("quant_method")
    if method == "auto-round":
        packing = quant_config.get("packing_format", "auto_round:auto_gptq")
        if packing == "auto_round:auto_awq":
            return "awq", 0
        return "gptq", 1 if packing in ("auto_round:auto_gptq", "auto_round:gptq") else 0
    if method == "gptq":
        return "gptq", 0 if quant_config.get("checkpoint_format") == "gptq_v2" else 1
    if method == "awq":
        return "awq", 0
    if method == "compressed-tensors":
        return "compressed_tensors", 0
    raise ValueError(f"cannot read quant_method {method!r}")


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[name] = handle.get_tensor(name)
    return tensors


def dequantized_state_dict(folder: Path, quant_config: dict | None) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, with each packed layer turned back into ``<layer>.weight``."""
    tensors = read_tensors(folder)
    if quant_config is None:
        return tensors
    layout, offset = layout_of(quant_config)
    marker, *others = PACKED_PARTS[layout]
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith((*(f".{part}" for part in others), *GROUP_INDEXES)):
            continue
        if not name.endswith(f".{marker}"):
            out[name] = tensor
            continue
        prefix = name.removesuffix(f".{marker}")
        parts = {key: tensors[f"{prefix}.{key}"] for key in (marker, *others) if f"{prefix}.{key}" in tensors}
        bits = 4 if layout == "awq" else layer_scheme(quant_config, prefix)["bits"]
        out[f"{prefix}.weight"] = dequantize(*unpack(layout, parts, bits=bits, zero_offset=offset))
    return out


def load_dequantized(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    model_class: type | None = None,
    trust_remote_code: bool = False,
):
    """A transformers model whose quantized Linears hold the dequantized weights, in ``dtype``.

    Models that ship their own code (their ``.py`` files sit beside the weights) need
    ``trust_remote_code=True``, as they do for the original checkpoint.
    """
    from auto_round_mllm.models.architecture import model_class_for

    folder = Path(path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    quant_config = config.pop("quantization_config", None)
    state = {
        name: t.to(dtype) if t.is_floating_point() else t
        for name, t in dequantized_state_dict(folder, quant_config).items()
    }
    model_class = model_class or model_class_for(config, trust_remote_code=trust_remote_code)
    with tempfile.TemporaryDirectory(prefix="arm-dequant-") as scratch:
        scratch_dir = Path(scratch)
        (scratch_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
        for extra in [folder / "generation_config.json", *folder.glob("*.py")]:
            if extra.is_file():
                shutil.copy2(extra, scratch_dir)
        save_file(state, str(scratch_dir / "model.safetensors"), metadata={"format": "pt"})
        model = model_class.from_pretrained(scratch_dir, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()
