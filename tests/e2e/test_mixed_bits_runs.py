"""--schemes end to end: the measured allocation meets the budget, mixes widths, and the
checkpoint carries every layer's scheme to our loaders (and PyPI auto-round's); text-only and
vision-language models alike."""

import json

import pytest
import torch

from tests.e2e.runs import tune_export
from tests.e2e.test_group_size_fallback import same_logits

LEAVES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")


def tune_and_write(model, out, fmt, **flags):
    return tune_export(model, out, fmt, iters=1, **flags)


def average_bits(job, tuned, among=lambda name: True):
    weights = {
        name: d.in_features * d.out_features
        for name, d in tuned.decisions.items()
        if d.quantized and among(name)
    }
    spent = sum(job.mixed.bits_per_weight(tuned.decisions[n].scheme, tuned.decisions[n].in_features) * w
                for n, w in weights.items())  # fmt: skip
    return spent / sum(weights.values())


@pytest.mark.parametrize("fmt", ["auto_round", "auto_gptq"])
def test_a_text_model_mixes_widths_within_the_budget_and_reloads_exactly(tiny_llama, tmp_path, fmt):
    job, tuned, folder = tune_and_write(tiny_llama, tmp_path, fmt, schemes="W2A16,W4A16,W8A16", bits=3.5)
    widths = {qw.bits for qw in tuned.qweights.values()}
    assert len(widths) >= 2 and widths <= {2, 4, 8}
    assert 3.0 < average_bits(job, tuned) <= 3.5
    assert any(note.startswith("mixed bits: ") and "budget of 3.5" in note for note in tuned.notes)
    assert all((d.note or "").startswith(f"{d.scheme.label} by --schemes") for d in tuned.decisions.values())
    for block in range(4):  # the layers serving engines fuse share a scheme, or vLLM cannot load them
        bits = {leaf: tuned.qweights[f"model.layers.{block}.{leaf}"].bits for leaf in LEAVES}
        assert bits["self_attn.q_proj"] == bits["self_attn.k_proj"] == bits["self_attn.v_proj"]
        assert bits["mlp.gate_proj"] == bits["mlp.up_proj"]
    same_logits(tuned, folder, packed_layers=28)
    if fmt == "auto_round":
        import auto_round  # noqa: F401  (PyPI auto-round's loader reads the per-layer bits too)
        from torch import nn
        from transformers import AutoModelForCausalLM

        from tests.conftest import fake_quant_fp32

        peer = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
        nn.Module.float(peer)
        ids = torch.randint(3, 1900, (2, 24), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(
                peer(input_ids=ids).logits, fake_quant_fp32(tuned)(input_ids=ids).logits, atol=1e-4, rtol=0
            )


def test_the_layers_the_output_is_most_sensitive_to_get_the_bits(tiny_llama, tmp_path):
    """In the tiny Llama, rounding a layer of block 0 moves the output 20-100x more than one of
    block 3 (tests/pipeline/test_fisher.py measures it): the Fisher-weighted allocation gives
    block 0 the wide scheme and block 3 the narrow one."""
    _, tuned, _ = tune_and_write(tiny_llama, tmp_path, "auto_round", schemes="W2A16,W4A16", avg_bits=3.0)
    bits = {name: qw.bits for name, qw in tuned.qweights.items()}
    assert all(bits[f"model.layers.0.{leaf}"] == 4 for leaf in LEAVES)
    assert all(bits[f"model.layers.3.{leaf}"] == 2 for leaf in LEAVES)
    assert any("(sensitivity: Fisher-weighted error)" in note for note in tuned.notes)


def test_the_layers_with_the_largest_own_error_get_the_bits(tiny_llama, tmp_path):
    """--mixed_sensitivity local: scaling one layer's weights up by 10 scales its own error by 100:
    it must not be among the 2-bit ones."""
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.2.mlp.down_proj.weight"] *= 10
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    _, tuned, _ = tune_and_write(
        model,
        tmp_path / "out",
        "auto_round",
        schemes="W2A16,W4A16",
        avg_bits=2.6,
        shared_layers="o_proj,down_proj",
        mixed_sensitivity="local",
    )
    assert tuned.qweights["model.layers.2.mlp.down_proj"].bits == 4
    assert tuned.qweights["model.layers.2.self_attn.o_proj"].bits == 4  # shares down_proj's scheme
    assert sum(qw.bits == 2 for qw in tuned.qweights.values()) > 14


def test_a_vision_language_model_with_its_vision_tower(tiny_qwen2_vl, tmp_path):
    """auto-round refused AutoScheme for MLLMs for months (intel/auto-round #1273)."""
    job, tuned, folder = tune_and_write(
        tiny_qwen2_vl, tmp_path, "auto_round", schemes="W2A16,W4A16", bits=3.0, quant_nontext_module=True,
        dataset="embedded-images:4",
    )  # fmt: skip
    vision = {name: qw.bits for name, qw in tuned.qweights.items() if ".visual." in name}
    assert vision and len({qw.bits for qw in tuned.qweights.values()}) == 2
    assert average_bits(job, tuned) <= 3.0
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert len(config["extra_config"]) > 0
    # the decoder's Fisher-weighted errors and the tower's own errors do not compare: each list
    # meets the budget on its own
    assert any("Fisher-weighted error and each layer's own error" in note for note in tuned.notes)
    assert average_bits(job, tuned, lambda name: ".visual." not in name) <= 3.0
    assert average_bits(job, tuned, lambda name: ".visual." in name) <= 3.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--format", "auto_awq"], "--format auto_awq cannot store (one scheme for all layers)"),
        (["--asym"], "--schemes with --asym: --format auto_round packs asymmetric weights as AWQ"),
        (["--avg_bits", "1.0"], "--avg_bits 1 is below what the cheapest schemes cost"),
    ],
)
def test_what_cannot_be_mixed_is_refused(tiny_llama, tmp_path, capsys, flags, message):
    from tests.e2e.runs import run

    args = ["--model", str(tiny_llama), "--schemes", "W2A16,W4A16", "--iters", "0", "--nsamples", "2"]
    if "--avg_bits" not in flags:
        args += ["--bits", "3"]
    code = run([*args, "--seqlen", "32", *flags, "--output_dir", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 2
    assert message in capsys.readouterr().err
