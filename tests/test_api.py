"""The Python API as auto-round's MLLM README uses it, with only the import changed."""

import json
from pathlib import Path

import pytest
import torch

from auto_round_mllm.errors import UserError


def test_readme_usage_on_loaded_objects(tiny_qwen2_vl, tmp_path):
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from auto_round_mllm import AutoRoundMLLM, load_dequantized
    from auto_round_mllm.models.processor_loading import load_processor

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2_vl, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    processor = load_processor(tiny_qwen2_vl).processor
    bits, group_size, sym = 4, 128, True
    autoround = AutoRoundMLLM(
        model, tokenizer, processor, bits=bits, group_size=group_size, sym=sym, iters=2, nsamples=4, seqlen=32
    )
    returned, layer_config = autoround.quantize()
    assert returned is model
    assert layer_config["model.language_model.layers.0.mlp.down_proj"]["bits"] == 4
    out = tmp_path / "qwen-int4"
    autoround.save_quantized(out, format="auto_round", inplace=True)

    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["bits"] == 4 and config["sym"] is True
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids).logits, load_dequantized(out, dtype=model.dtype)(input_ids=ids).logits
        )


def test_path_and_cli_keyword_names(tiny_llava, tmp_path):
    from auto_round_mllm import AutoRoundMLLM

    autoround = AutoRoundMLLM(
        str(tiny_llava), asym=True, bits=2, group_size=64, iters=0, disable_amp=True, fp_layers="down_proj"
    )
    assert autoround.job.scheme.sym is False and autoround.job.tuning.amp is False
    _, layer_config = autoround.quantize()
    down = layer_config["model.language_model.layers.0.mlp.down_proj"]
    assert down["bits"] == 16 and "fp_layers" in down["reason"]
    autoround.save_quantized(tmp_path / "o")
    extra = json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"]["extra_config"]
    assert extra["language_model.model.layers.0.mlp.down_proj"] == {"bits": 16, "data_type": "float"}
    assert "model.language_model.layers.0.mlp.down_proj" in extra  # the module-name convention too


def test_bad_keyword_values_are_user_errors():
    from auto_round_mllm import AutoRoundMLLM

    with pytest.raises(UserError, match="bits=5"):
        AutoRoundMLLM("unused", bits=5)


def test_to_quant_block_names_tunes_a_subset(tiny_qwen2_vl, tmp_path):
    from auto_round_mllm import AutoRoundMLLM, load_dequantized

    autoround = AutoRoundMLLM(
        str(tiny_qwen2_vl),
        iters=2,
        nsamples=4,
        seqlen=32,
        batch_size=2,
        to_quant_block_names="layers\\.[23]$",
    )
    model, layer_config = autoround.quantize()
    assert sorted({name.split(".mlp")[0].split(".self_attn")[0] for name in layer_config}) == [
        "model.language_model.layers.2",
        "model.language_model.layers.3",
    ]
    assert [b.name for b in autoround.tuned.blocks] == [
        "model.language_model.layers.2",
        "model.language_model.layers.3",
    ]
    autoround.save_quantized(tmp_path / "o")
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        actual = load_dequantized(tmp_path / "o", dtype=model.dtype)(input_ids=ids).logits
    assert torch.equal(expected, actual)


def test_auto_round_keyword_names_map_onto_flags(tiny_llava):
    from auto_round_mllm import AutoRoundMLLM

    job = AutoRoundMLLM(
        str(tiny_llava), sym=False, amp=False, enable_minmax_tuning=False, enable_quanted_input=False, iters=0
    ).job
    assert job.scheme.sym is False
    assert (job.tuning.amp, job.tuning.enable_minmax_tuning, job.tuning.enable_quanted_input) == (
        False,
        False,
        False,
    )
    with pytest.raises(TypeError, match="no_such_option"):
        AutoRoundMLLM(str(tiny_llava), no_such_option=1)


READ_SIGNATURES = """
import inspect, json
from auto_round import AutoRound
from auto_round.compressors.base import BaseCompressor
print(json.dumps({
    "AutoRound": list(inspect.signature(AutoRound.__new__).parameters),
    "quantize_and_save": list(inspect.signature(BaseCompressor.quantize_and_save).parameters),
}))
"""


def test_every_keyword_of_auto_rounds_constructors_and_quantize_and_save_is_known():
    """Read from the installed peer in a process of its own (importing it patches transformers):
    each keyword is one of ours, or one of auto-round's flags we accept or refuse in one line."""
    import importlib.util
    import inspect
    import subprocess
    import sys

    from auto_round_mllm.api import AutoRoundMLLM
    from auto_round_mllm.autoround_flags import FOREIGN_FLAGS
    from auto_round_mllm.flags import keywords

    if importlib.util.find_spec("auto_round") is None:
        pytest.skip("auto-round (a test extra) is not installed")
    done = subprocess.run(
        [sys.executable, "-c", READ_SIGNATURES], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(theirs["AutoRound"]) > 15  # the signature was really read
    ours = set(keywords()) | {spelling for flag in FOREIGN_FLAGS for spelling in flag.spellings}
    ours |= set(inspect.signature(AutoRoundMLLM.__init__).parameters)
    variadic = {"self", "cls", "args", "kwargs"}
    assert sorted(set(theirs["AutoRound"]) - ours - variadic) == []
    save = set(inspect.signature(AutoRoundMLLM.quantize_and_save).parameters)
    assert sorted(set(theirs["quantize_and_save"]) - save - variadic) == []


def test_auto_rounds_autoscheme_and_scheme_dicts_as_scheme(tiny_llama):
    from auto_round_mllm import AutoRound, AutoScheme
    from auto_round_mllm.flags import job_from_keywords

    job, _ = job_from_keywords("m", {"scheme": AutoScheme(3.0, ["W2A16", "W4A16"])}, caller="t")
    assert job.mixed.schemes == ("W2A16", "W4A16") and job.mixed.avg_bits == 3.0
    job, _ = job_from_keywords("m", {"scheme": {"bits": 2, "group_size": 64, "sym": False}}, caller="t")
    assert (job.scheme.bits, job.scheme.group_size, job.scheme.sym) == (2, 64, False)
    with pytest.raises(UserError, match="is not understood"):
        job_from_keywords("m", {"scheme": {"nonsense": 1}}, caller="t")
    assert AutoRound is __import__("auto_round_mllm").AutoRoundMLLM


def test_quantize_and_save_tunes_and_writes_every_format(tiny_llama, tmp_path):
    from auto_round_mllm import AutoRound

    autoround = AutoRound(str(tiny_llama), iters=1, nsamples=2, seqlen=32, batch_size=2, device="cpu")
    model, folders = autoround.quantize_and_save(tmp_path / "out", format="auto_round,fake")
    assert model is autoround.model and len(folders) == 2
    for folder in folders:
        assert json.loads((Path(folder) / "config.json").read_text())["architectures"]
