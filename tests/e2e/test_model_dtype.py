"""An fp32 checkpoint is tuned and written in the dtype AMP computes in, unless told otherwise."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from auto_round_mllm.models import loading
from auto_round_mllm.utils import device as devices
from auto_round_mllm.utils.dtype_policy import load_dtype_name
from tests.e2e.runs import comparable, run

SMALL = [
    "--iters",
    "2",
    "--nsamples",
    "2",
    "--seqlen",
    "32",
    "--batch_size",
    "2",
    "--device",
    "cpu",
    "--json",
]


@pytest.fixture(scope="module")
def fp32_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama saved in float32, as SmolLM2 and many fine-tunes ship."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("fp32-llama")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model.config.dtype = torch.float32
    model.save_pretrained(out)
    for file in tiny_llama.iterdir():
        if file.is_file() and not (out / file.name).exists():
            shutil.copy(file, out / file.name)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    return out


@pytest.fixture
def native_bf16(monkeypatch):
    """Pin the CPU check, so the default path is the one tested on any CI machine."""
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)


def written(folder):
    """(config dtype, dtype of the unquantized embedding, report)."""
    config = json.loads((folder / "config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        embedding = handle.get_slice("model.embed_tokens.weight").get_dtype()
    report = json.loads((folder / "quantization_report.json").read_text())
    return config["dtype"], embedding, report


def test_fp32_checkpoint_is_tuned_and_written_in_bf16_by_default(fp32_llama, tmp_path, native_bf16):
    assert run(["--model", str(fp32_llama), *SMALL, "--output_dir", str(tmp_path)]) == 0
    dtype, embedding, report = written(tmp_path / f"{fp32_llama.name}-w4g128")
    assert (dtype, embedding, report["model_dtype"], report["precision"]) == (
        "bfloat16",
        "BF16",
        "bfloat16",
        "bfloat16",
    )
    assert any("float32 checkpoint was tuned and is written in bfloat16" in n for n in report["notes"])


@pytest.mark.parametrize("flags", [["--model_dtype", "fp32"], ["--disable_amp"]])
def test_fp32_is_kept_when_asked_or_without_amp(fp32_llama, tmp_path, native_bf16, flags):
    assert run(["--model", str(fp32_llama), *SMALL, *flags, "--output_dir", str(tmp_path)]) == 0
    dtype, embedding, report = written(tmp_path / f"{fp32_llama.name}-w4g128")
    assert (dtype, embedding, report["model_dtype"]) == ("float32", "F32", "float32")
    assert not any("checkpoint was tuned" in n for n in report["notes"])


def test_the_checkpoint_is_loaded_in_the_tuning_dtype(native_bf16):
    """Loading fp32 and casting afterwards would hold the whole model in fp32 first."""
    cpu = torch.device("cpu")
    assert load_dtype_name("auto", cpu, {"dtype": "float32"}, amp=True) == "bfloat16"
    assert load_dtype_name("auto", cpu, {"dtype": "bfloat16"}, amp=True) == "auto"
    assert load_dtype_name("auto", cpu, {}, amp=True) == "auto"  # unknown: tune() casts after loading
    assert load_dtype_name("float32", cpu, {"dtype": "float32"}, amp=True) == "float32"
    assert load_dtype_name("auto", cpu, {"dtype": "float32"}, amp=False) == "auto"  # --disable_amp: as stored


def test_a_model_handed_in_is_cast_and_its_config_follows(fp32_llama, tmp_path, native_bf16):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from auto_round_mllm import AutoRoundMLLM

    model = AutoModelForCausalLM.from_pretrained(fp32_llama, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(fp32_llama)
    autoround = AutoRoundMLLM(model, tokenizer, iters=2, nsamples=2, seqlen=32, device="cpu")
    autoround.quantize()
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16 and model.config.dtype == torch.bfloat16
    autoround.save_quantized(tmp_path / "o", format="auto_round")
    assert json.loads((tmp_path / "o" / "config.json").read_text())["dtype"] == "bfloat16"


def test_streamed_blocks_are_read_in_the_tuning_dtype(fp32_llama, tmp_path, native_bf16, monkeypatch):
    """The streamed skeleton is built in bf16 and each block is cast as it is read: the bytes match
    a whole-model run's."""
    streamed = []
    real = loading.load_streaming

    def spy(*args, **kwargs):
        streamed.append(kwargs["model_dtype"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load_streaming", spy)
    base = ["--model", str(fp32_llama), *SMALL]
    assert run([*base, "--output_dir", str(tmp_path / "whole"), "--disable_streaming"]) == 0
    assert run([*base, "--output_dir", str(tmp_path / "streamed")]) == 0
    assert streamed == ["bfloat16"]
    whole, stream = comparable(tmp_path / "whole"), comparable(tmp_path / "streamed")
    assert sorted(whole) == sorted(stream)
    assert [name for name in whole if whole[name] != stream[name]] == []
