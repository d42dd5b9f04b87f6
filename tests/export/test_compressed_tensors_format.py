"""The llm_compressor format against compressed-tensors 0.20.0 itself: its packer writes our tensors
bit for bit, its decompressor turns our checkpoints back into exactly our dequantized weights, its
pydantic models accept our config, its matching gives each layer the scheme it was tuned with,
and transformers (through compressed-tensors) and our own loaders give the fake-quantized logits.

Exactness: the library dequantizes ``(q - zero) * scale`` in the scale's dtype. With the fp16
scale cast to fp32 first, every product of an fp16 scale and an integer below 2**8 is exact, so
the weight equals ``QuantizedWeight.dequantize()`` bit for bit; in fp16 the library rounds that
same exact product once, as ``dequantize(torch.float16)`` does, so that is bit-exact too.

compressed-tensors is a test extra: its absence is a failure, not a skip.
"""

import json
import types

import pytest
import torch
from compressed_tensors import __version__ as ct_version
from compressed_tensors.compressors import PackedQuantizationCompressor
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    apply_quantization_config,
)

from auto_round_mllm import preflight
from auto_round_mllm.config import QuantScheme
from auto_round_mllm.errors import IncompatibleScheme
from auto_round_mllm.export import EXPORTERS
from auto_round_mllm.export.compressed_tensors import weight_args
from auto_round_mllm.export.layouts import pack_compressed_tensors
from auto_round_mllm.export.naming import checkpoint_namer, module_checkpoint_name, source_tensor_names
from auto_round_mllm.flags import job_from_flags
from auto_round_mllm.inference.dequantize import read_tensors
from auto_round_mllm.inference.loader import load_quantized
from auto_round_mllm.models.architecture import model_class_for
from auto_round_mllm.quant.tunable import QuantizedWeight
from tests.conftest import fake_quant_fp32
from tests.e2e.runs import tune_export
from tests.e2e.test_group_size_fallback import odd_llama, same_logits  # noqa: F401
from tests.e2e.test_layer_config_runs import CONFIG as LAYER_CONFIG
from tests.export.test_real_client import image_inputs

FMT = "llm_compressor"
BITS = (2, 3, 4, 8)
GROUPS = (32, 128, -1)


def quant_config(folder):
    return json.loads((folder / "config.json").read_text())["quantization_config"]


def library_scheme(scheme: QuantScheme) -> QuantizationScheme:
    return QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs.model_validate(weight_args(scheme)),
        format="pack-quantized",
    )


def random_layer(bits, group_size, sym, *, out=40, inp=256, seed=0):
    """Codes over the full range; fp16 scales of both signs (full-range symmetric scales may be
    negative); 40 outputs make a zero-point column of 40 * bits / 32 words, 3.75 at 3 bits."""
    gen = torch.Generator().manual_seed(seed)
    groups = inp // (inp if group_size == -1 else group_size)
    zp = torch.randint(0, 2**bits, (out, groups), generator=gen, dtype=torch.int32)
    return QuantizedWeight(
        codes=torch.randint(0, 2**bits, (out, inp), generator=gen).to(torch.uint8),
        scale=((torch.rand(out, groups, generator=gen) - 0.5) / 50).to(torch.float16),
        zp=torch.full_like(zp, 2 ** (bits - 1)) if sym else zp,
        bits=bits,
        group_size=inp if group_size == -1 else group_size,
        sym=sym,
    )


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize(
    ("group_size", "inp"), [(32, 256), (128, 256), (-1, 72)], ids=["g32", "g128", "channel"]
)
def test_the_library_packs_our_codes_and_decompresses_our_tensors(bits, sym, group_size, inp):
    """Both directions on one layer: compressing our dequantized weight with our scales and zero
    points gives our tensors; decompressing our tensors gives our weight (72 inputs: a padded
    last word)."""
    qw = random_layer(bits, group_size, sym, inp=inp)
    scheme = library_scheme(QuantScheme(bits, group_size, sym))
    ours = pack_compressed_tensors(qw)
    assert set(ours) == set(PackedQuantizationCompressor.compression_param_names(scheme))

    inputs = {"weight": qw.dequantize(torch.float32), "weight_scale": qw.scale.float()}
    if not sym:  # the library's zero points are signed: ours minus 2**(bits-1)
        inputs["weight_zero_point"] = (qw.zp - 2 ** (bits - 1)).to(torch.int8)
    theirs = PackedQuantizationCompressor.compress(inputs, scheme)
    assert set(theirs) == set(ours)
    for name in ("weight_packed", "weight_shape", "weight_zero_point"):
        if name in ours:
            assert torch.equal(theirs[name], ours[name]), name

    fp32 = PackedQuantizationCompressor.decompress({**ours, "weight_scale": qw.scale.float()}, scheme)
    assert fp32["weight"].dtype == torch.float32 and torch.equal(fp32["weight"], qw.dequantize(torch.float32))
    fp16 = PackedQuantizationCompressor.decompress(ours, scheme)["weight"]
    assert fp16.dtype == torch.float16 and torch.equal(fp16, qw.dequantize(torch.float16))


def library_schemes(source, config) -> dict[str, QuantizationScheme]:
    """The scheme compressed-tensors' own matching (targets, ``ignore``) gives each module of the
    source model, by live module name (on a meta copy)."""
    model_config = json.loads((source / "config.json").read_text())
    cls = model_class_for(model_config)
    with torch.device("meta"):
        model = cls._from_config(cls.config_class.from_pretrained(source))
    apply_quantization_config(model, QuantizationConfig.model_validate(config), show_progress=False)
    return {
        name: m.quantization_scheme for name, m in model.named_modules() if hasattr(m, "quantization_scheme")
    }


def check_library_reads(tuned, source, folder):
    """Every quantized layer, and no other, gets its tuned scheme from the library's matching, and
    the library decompresses its tensors to exactly its dequantized weight."""
    schemes = library_schemes(source, quant_config(folder))
    assert set(schemes) == set(tuned.qweights)
    tensors = read_tensors(folder)
    name_for = checkpoint_namer(tuned.loaded.model, source)
    for name, qw in tuned.qweights.items():
        weights = schemes[name].weights
        group_size = -1 if weights.strategy == "channel" else weights.group_size
        assert (weights.num_bits, weights.symmetric) == (qw.bits, qw.sym), name
        assert (qw.in_features if group_size == -1 else group_size) == qw.group_size, name
        prefix = module_checkpoint_name(name_for, name) + "."
        parts = {key.removeprefix(prefix): t for key, t in tensors.items() if key.startswith(prefix)}
        parts["weight_scale"] = parts["weight_scale"].float()
        weight = PackedQuantizationCompressor.decompress(parts, schemes[name])["weight"]
        assert torch.equal(weight, qw.dequantize(torch.float32)), name
    return schemes


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("group_size", GROUPS, ids=["g32", "g128", "channel"])
def test_the_library_decompresses_our_checkpoint(tiny_qwen2_vl, tmp_path, bits, sym, group_size):
    _, tuned, folder = tune_export(
        tiny_qwen2_vl, tmp_path, FMT, iters=0, bits=bits, group_size=group_size, asym=not sym
    )
    config = quant_config(folder)
    (group,) = config["config_groups"].values()
    assert group["targets"] == ["Linear"] and group["weights"] == {
        "num_bits": bits,
        "type": "int",
        "symmetric": sym,
        "group_size": None if group_size == -1 else group_size,
        "strategy": "channel" if group_size == -1 else "group",
        "dynamic": False,
    }
    check_library_reads(tuned, tiny_qwen2_vl, folder)
    zero_points = [n for n in read_tensors(folder) if n.endswith(".weight_zero_point")]
    assert len(zero_points) == (0 if sym else 28)


def test_the_config_is_what_the_library_writes(tiny_qwen2_vl, tmp_path):
    _, _, folder = tune_export(tiny_qwen2_vl, tmp_path, FMT, iters=0)
    config = quant_config(folder)
    assert (config["quant_method"], config["format"], config["quantization_status"]) == (
        "compressed-tensors",
        "pack-quantized",
        "compressed",
    )
    assert config["version"] == ct_version == "0.20.0"
    assert config["kv_cache_scheme"] is None and config["global_compression_ratio"] is None
    assert config["config_groups"]["group_0"]["format"] == "pack-quantized"
    dumped = QuantizationConfig.model_validate(config).model_dump()  # pydantic: valid, and unchanged
    assert dumped == {key: config[key] for key in dumped}
    assert not (folder / "quantization_config.json").exists()  # config.json only, as llm-compressor
    tensors = read_tensors(folder)
    scales = [t for n, t in tensors.items() if n.endswith(".weight_scale")]
    assert len(scales) == 28 and all(t.dtype == torch.float16 for t in scales)
    assert not any(n.endswith((".weight_g_idx", ".qweight", ".scales")) for n in tensors)
    biased = "model.layers.0.self_attn.q_proj.bias"  # Qwen2's q/k/v biases travel unchanged
    assert tensors[biased].dtype == tensors["model.embed_tokens.weight"].dtype


IGNORED = {  # checkpoint name -> transformers 5 name of a few Linears kept in 16 bit
    "qwen2_vl": {
        "visual.blocks.0.attn.qkv": "model.visual.blocks.0.attn.qkv",
        "visual.merger.mlp.0": "model.visual.merger.mlp.0",
        "lm_head": "lm_head",
    },
    "llava": {
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj": (
            "model.vision_tower.encoder.layers.0.self_attn.q_proj"
        ),
        "multi_modal_projector.linear_1": "model.multi_modal_projector.linear_1",
        "language_model.lm_head": "lm_head",
    },
}


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_the_ignore_list_names_every_16_bit_linear_by_its_checkpoint_name(family, tiny_models, tmp_path):
    """vLLM maps the checkpoint's names; compressed-tensors under transformers 5 matches the live
    ones, which are listed after them where they differ."""
    source = tiny_models[family]
    _, tuned, folder = tune_export(source, tmp_path, FMT, iters=0)
    ignore = quant_config(folder)["ignore"]
    model = tuned.loaded.model
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    kept = linears - set(tuned.qweights)
    name_for = checkpoint_namer(model, source)
    on_disk = {module_checkpoint_name(name_for, name) for name in kept}
    source_names = source_tensor_names(source)
    assert all(f"{name}.weight" in source_names for name in on_disk)
    assert set(ignore) == on_disk | kept and len(ignore) == len(set(ignore))
    for checkpoint_name, live in IGNORED[family].items():
        assert checkpoint_name in on_disk and live in kept
        assert ignore.index(checkpoint_name) <= ignore.index(live)
    quantized = {module_checkpoint_name(name_for, name) for name in tuned.qweights} | set(tuned.qweights)
    assert not quantized & set(ignore)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_transformers_with_compressed_tensors_gives_the_fake_quant_logits(family, tiny_models, tmp_path):
    """The library's own loading path (targets and ignore matched on the live model, compressed
    modules, decompression on the first forward), on text and on an image. Symmetric only: for
    asymmetric schemes compressed-tensors 0.20.0 builds the modules on the meta device without
    packing their zero points, so transformers refuses the checkpoint's packed ones (the layout
    the library's own ``compress`` writes, checked above)."""
    from transformers import AutoModelForImageTextToText

    _, tuned, folder = tune_export(tiny_models[family], tmp_path, FMT, iters=2, group_size=32)
    reference = fake_quant_fp32(tuned)
    peer, info = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info
    quantized = {name for name, m in peer.named_modules() if hasattr(m, "quantization_scheme")}
    assert quantized == set(tuned.qweights)  # the vision tower, projector and lm_head stay 16 bit
    ids = torch.randint(3, 1900, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for batch in ({"input_ids": ids}, image_inputs(tuned.loaded)):
            assert torch.equal(peer(**batch).logits, reference(**batch).logits)
    same_logits(tuned, folder, packed_layers=28)  # and our loaders: load_dequantized, load_quantized


def peer_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    peer = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return peer(input_ids=ids).logits


def check_groups_name_their_layers(config):
    """Beside a group of its own, every group names its layers: no ``Linear`` class target, no name
    in two groups (vLLM matches a fused qkv_proj by class before its shards' names in releases
    before mid-2026; compressed-tensors prefers the exact name)."""
    targets = [target for group in config["config_groups"].values() for target in group["targets"]]
    assert "Linear" not in targets and len(targets) == len(set(targets))


def test_layers_with_their_own_scheme_get_their_own_group(odd_llama, tmp_path):  # noqa: F811
    """--layer_config (8-bit down_proj, 2-bit g32 q/k in layer 1, one v_proj in 16 bit) on a model
    whose 192-wide layers fall back to group 64: one group per distinct scheme."""
    _, tuned, folder = tune_export(odd_llama, tmp_path, FMT, iters=0, layer_config=LAYER_CONFIG)
    config = quant_config(folder)
    check_groups_name_their_layers(config)
    by_scheme = {(qw.bits, qw.group_size) for qw in tuned.qweights.values()}
    assert by_scheme == {(8, 128), (2, 32), (4, 64)}  # no layer has the job's w4g128
    assert len(config["config_groups"]) == 3
    assert config["ignore"] == ["model.layers.0.self_attn.v_proj", "lm_head"]
    schemes = check_library_reads(tuned, odd_llama, folder)
    assert schemes["model.layers.1.self_attn.q_proj"].weights.num_bits == 2
    assert schemes["model.layers.0.mlp.down_proj"].weights.num_bits == 8
    assert schemes["model.layers.0.self_attn.q_proj"].weights.group_size == 64  # the fallback group
    expected = same_logits(tuned, folder, packed_layers=13)
    ids = torch.randint(3, 1900, (2, 24), generator=torch.Generator().manual_seed(0))  # same_logits' ids
    assert torch.equal(peer_logits(folder, ids), expected)


@pytest.mark.parametrize("head", ["W4A16", "W8A16"])
def test_a_quantized_lm_head_is_named_in_a_group(tiny_llama, tmp_path, head):
    """vLLM's ParallelLMHead is no Linear: only a name target quantizes it. With the job's scheme
    it is named in group_0, with its own in a group of its own."""
    _, tuned, folder = tune_export(
        tiny_llama, tmp_path, FMT, iters=0, quant_lm_head=True, layer_config=json.dumps({"lm_head": head})
    )
    config = quant_config(folder)
    assert "lm_head" not in config["ignore"] and tuned.qweights["lm_head"].bits == int(head[1])
    check_groups_name_their_layers(config)
    assert len(config["config_groups"]) == (1 if head == "W4A16" else 2)
    groups = [g for g in config["config_groups"].values() if "lm_head" in g["targets"]]
    assert len(groups) == 1 and groups[0]["weights"]["num_bits"] == int(head[1])
    assert (groups[0]["targets"] == ["lm_head"]) == (head == "W8A16")
    assert library_schemes(tiny_llama, config)["lm_head"].weights.num_bits == int(head[1])
    check_library_reads(tuned, tiny_llama, folder)
    expected = same_logits(tuned, folder, packed_layers=29)
    ids = torch.randint(3, 1900, (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(peer_logits(folder, ids), expected)


def test_fp_layers_are_ignored_and_the_rest_stay_one_group(tiny_llama, tmp_path):
    _, tuned, folder = tune_export(tiny_llama, tmp_path, FMT, iters=0, fp_layers="layers.1.mlp")
    config = quant_config(folder)
    assert [g["targets"] for g in config["config_groups"].values()] == [["Linear"]]
    kept = ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    assert config["ignore"] == [*kept, "lm_head"]
    assert len(check_library_reads(tuned, tiny_llama, folder)) == 25  # 4 blocks of 7, less 3


def test_the_aliases_name_the_same_exporter(tiny_llama, tmp_path):
    for alias in ("compressed-tensors", "auto_round:llm_compressor", "llm-compressor"):
        assert EXPORTERS.get(alias) is EXPORTERS.get(FMT)
        job = job_from_flags(model=str(tiny_llama), format=alias, output_dir=str(tmp_path), device="cpu")
        preflight.check_job(job)


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (types.SimpleNamespace(bits=4, data_type="fp"), "stores int weights, not fp"),
        (types.SimpleNamespace(bits=16, data_type="int"), "stores 1 to 8 bits per weight, not 16"),
    ],
)
def test_schemes_the_layout_cannot_hold_are_refused(scheme, message):
    with pytest.raises(IncompatibleScheme, match=message):
        EXPORTERS.get(FMT).check(scheme)


def test_mixed_bits_asymmetric_get_one_group_per_width(tiny_llama, tmp_path):
    _, tuned, folder = tune_export(
        tiny_llama, tmp_path, FMT, iters=0, schemes="W2A16,W4A16,W8A16", bits=3.5, asym=True
    )
    widths = {qw.bits for qw in tuned.qweights.values()}
    config = quant_config(folder)
    assert len(widths) >= 2 and len(config["config_groups"]) == len(widths)
    check_groups_name_their_layers(config)
    assert not any(g["weights"]["symmetric"] for g in config["config_groups"].values())
    check_library_reads(tuned, tiny_llama, folder)
    same_logits(tuned, folder, packed_layers=28)


def test_quantized_vision_blocks_load_everywhere(tiny_qwen2_vl, tmp_path):
    """--quant_nontext_module: the vision blocks are packed too (the merger and lm_head stay 16 bit)."""
    from transformers import AutoModelForImageTextToText

    _, tuned, folder = tune_export(
        tiny_qwen2_vl, tmp_path, FMT, iters=0, group_size=64, quant_nontext_module=True
    )
    assert len(tuned.qweights) == 36 and quant_config(folder)["ignore"] == [
        "visual.merger.mlp.0",
        "model.visual.merger.mlp.0",
        "visual.merger.mlp.2",
        "model.visual.merger.mlp.2",
        "lm_head",
    ]
    check_library_reads(tuned, tiny_qwen2_vl, folder)
    reference = fake_quant_fp32(tuned)
    peer = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    ours = load_quantized(folder, dtype=torch.float32)
    batch = image_inputs(tuned.loaded)
    with torch.no_grad():
        expected = reference(**batch).logits
        assert torch.equal(peer(**batch).logits, expected)
        torch.testing.assert_close(ours(**batch).logits, expected, atol=1e-5, rtol=0)
    same_logits(tuned, folder, packed_layers=36)
