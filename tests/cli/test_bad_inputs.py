"""Bad input through the real CLI, table-driven: every case must give one line that names the
problem and the fix, exit code 2, no traceback, and leave nothing in the output location.

Each case builds what it needs under ``tmp_path`` and returns the CLI arguments; the common
contract is checked once, in one place, for all of them.
"""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from auto_round_mllm.cli.app import main

FAST = ["--iters", "1", "--nsamples", "2", "--seqlen", "32", "--batch_size", "2"]


@dataclass
class Case:
    id: str
    build: Callable[[Setup], list[str]]
    message: str  # a fragment of the expected one-line error
    keeps_progress: bool = False  # failed after tuning: the resumable progress folder stays


@dataclass
class Setup:
    tmp: Path
    model: Path  # a tiny Qwen2-VL, shared, never modified
    monkeypatch: pytest.MonkeyPatch

    def copy(self) -> Path:
        folder = self.tmp / "model-copy"
        shutil.copytree(self.model, folder)
        return folder

    def edit_config(self, **changes) -> Path:
        folder = self.copy()
        config = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def conversations(self, images: list[str]) -> tuple[Path, Path]:
        folder = self.tmp / "images"
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (56, 56), "red").save(folder / "have.png")
        records = [
            {"image": name, "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                               {"from": "gpt", "value": "Red."}]}
            for name in images
        ]  # fmt: skip
        return self.file("convs.json", json.dumps(records)), folder


def with_model(*extra: str) -> Callable[[Setup], list[str]]:
    return lambda s: ["--model", str(s.model), *extra]


def truncated(s: Setup) -> list[str]:
    folder = s.copy()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["--model", str(folder)]


def corrupt(s: Setup) -> list[str]:
    folder = s.copy()
    (folder / "model.safetensors").write_bytes(b"\x07not a safetensors file" * 64)
    return ["--model", str(folder)]


def missing_shard(s: Setup) -> list[str]:
    folder = s.copy()
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return ["--model", str(folder)]


def shapes_disagree(s: Setup) -> list[str]:
    config = json.loads((s.model / "config.json").read_text())
    text = dict(config["text_config"], intermediate_size=config["text_config"]["intermediate_size"] * 2)
    return ["--model", str(s.edit_config(text_config=text))]


def pickled_code(s: Setup) -> list[str]:
    """A .bin "checkpoint" whose unpickling would run a command: it must never run."""

    class Payload:
        def __reduce__(self):
            return (Path.touch, (s.tmp / "PWNED",))

    folder = s.copy()
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    return ["--model", str(folder)]


def resnet(s: Setup) -> list[str]:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)
    ResNetForImageClassification(config).save_pretrained(s.tmp / "resnet")
    return ["--model", str(s.tmp / "resnet")]


def remote_code(s: Setup) -> list[str]:
    remote = {
        "architectures": ["XForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"},
    }
    return ["--model", str(s.edit_config(**remote))]


def renamed_weights(s: Setup) -> list[str]:
    """Weights saved under other names (another architecture's checkpoint behind this config)."""
    from safetensors.torch import load_file, save_file

    folder = s.copy()
    tensors = load_file(folder / "model.safetensors")
    save_file({f"other.{name}": t for name, t in tensors.items()}, folder / "model.safetensors")
    return ["--model", str(folder)]


def template(content: str | bytes) -> Callable[[Setup], list[str]]:
    return lambda s: ["--model", str(s.model), "--template", str(s.file("template.json", content))]


def dataset(name: str, content: str) -> Callable[[Setup], list[str]]:
    return lambda s: ["--model", str(s.model), "--dataset", str(s.file(name, content))]


def images(names: list[str]) -> Callable[[Setup], list[str]]:
    def build(s: Setup) -> list[str]:
        data, folder = s.conversations(names)
        return ["--model", str(s.model), "--dataset", str(data), "--extra_data_dir", str(folder)]

    return build


def existing_output(s: Setup) -> list[str]:
    target = s.tmp / "out" / f"{s.model.name}-w4g128"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    return ["--model", str(s.model)]


def output_under_a_file(s: Setup) -> list[str]:
    return ["--model", str(s.model), "--output_dir", str(s.file("a-file", "x") / "sub")]


def read_only_output(s: Setup) -> list[str]:
    location = Path("/sys/fs/auto-round-mllm-test")  # read-only even for root in containers
    if not Path("/sys/fs").is_dir() or _writable(Path("/sys/fs")):
        pytest.skip("no read-only file system at /sys/fs on this machine")
    return ["--model", str(s.model), "--output_dir", str(location)]


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").mkdir()
    except OSError:
        return False
    (folder / ".probe").rmdir()
    return True


def disk_full(s: Setup) -> list[str]:
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    s.monkeypatch.setattr("auto_round_mllm.utils.tensor_files.write_file", no_space)
    return ["--model", str(s.model), "--format", "auto_round,fake"]


def other_unfinished_run(*extra: str) -> Callable[[Setup], list[str]]:
    """The progress folder of a killed run with other settings, where this run would resume."""

    def build(s: Setup) -> list[str]:
        folder = s.tmp / "out" / f".{s.model.name}-w4g128.resume"
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps({"job": {"iters": 999}, "model": {}}))
        (folder / "progress.json").write_text(json.dumps({"blocks": []}))
        return ["--model", str(s.model), *extra]

    return build


def hub_without_network(s: Setup) -> list[str]:
    import huggingface_hub.constants

    s.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(s.tmp / "empty-cache"))
    s.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return ["--model", "Qwen/Qwen2-VL-2B-Instruct"]


GOOD_TEMPLATE = json.loads((Path(__file__).parents[2] / "templates" / "qwen2_vl.json").read_text())

CASES = [
    # the model
    Case("missing-model-folder", lambda s: ["--model", str(s.tmp / "nope")], "does not exist"),
    Case("folder-without-config", lambda s: ["--model", str(s.tmp)], "has no config.json"),
    Case("config-without-architectures", lambda s: ["--model", str(s.edit_config(architectures=None))],
         "no 'architectures' entry"),
    Case("architecture-not-in-transformers",
         lambda s: ["--model", str(s.edit_config(architectures=["FooBarForCausalLM"]))], "not available in transformers"),
    Case("architecture-without-blocks", resnet, "has no transformer blocks"),
    Case("weights-of-another-architecture", renamed_weights, "weight(s) the architecture needs are not in"),
    Case("remote-code-without-trust", remote_code, "runs only with --trust_remote_code"),
    Case("truncated-safetensors", truncated, "is truncated or corrupt"),
    Case("corrupt-safetensors", corrupt, "is truncated or corrupt"),
    Case("index-names-a-missing-shard", missing_shard, "which is missing from"),
    Case("shapes-disagree-with-config", shapes_disagree, "have shapes that disagree with config.json"),
    Case("pickled-code-in-bin-weights", pickled_code, "cannot load weights"),
    Case("hub-id-without-network", hub_without_network, "hub cannot be reached"),
    # templates and processors
    Case("template-malformed-json", template("{not json"), "template"),
    Case("template-not-utf8", template(b"\xff\xfe\x00"), "pass a readable UTF-8 JSON file"),
    Case("template-unknown-name", with_model("--template", "no_such_template"), "unknown template 'no_such_template'"),
    Case("template-unknown-processor", template(json.dumps({**GOOD_TEMPLATE, "processor": "no_such_processor"})),
         "unknown processor 'no_such_processor'"),
    # calibration data
    Case("dataset-missing", with_model("--dataset", "missing.jsonl"), "does not exist"),
    Case("dataset-empty", dataset("empty.jsonl", ""), "holds no text or conversations"),
    Case("dataset-malformed-line", dataset("bad.jsonl", '{"text": "fine"}\n{"text": broken}\n'), "line 2 is not valid JSON"),
    Case("dataset-wrong-fields", dataset("fields.jsonl", '{"text": "fine"}\n{"content": "x"}\n'), "line 2 has no string field 'text'"),
    Case("dataset-on-the-hub", with_model("--dataset", "org/some-dataset"), "hub dataset"),
    Case("image-path-escapes-extra-data-dir", images(["have.png", "../../etc/passwd"]), "leaves the image folder"),
    Case("missing-images-above-threshold", images(["have.png", "gone1.png", "gone2.png"]), "are missing, more than"),
    # the scheme and tuning flags
    Case("bits-5", with_model("--bits", "5"), "bits=5 is not supported"),
    Case("bits-1", with_model("--bits", "1"), "bits=1 is not supported"),
    Case("unknown-scheme", with_model("--scheme", "W5A16"), "unknown scheme 'W5A16'"),
    Case("group-size-zero", with_model("--group_size", "0"), "group_size=0"),
    Case("group-size-fits-no-layer", with_model("--group_size", "4096"), "group_size=4096 fits no layer"),
    Case("nsamples-zero", with_model("--nsamples", "0"), "nsamples=0 must be > 0"),
    Case("nsamples-negative", with_model("--nsamples", "-4"), "nsamples=-4 must be > 0"),
    Case("seqlen-zero", with_model("--seqlen", "0"), "seqlen=0 must be > 0"),
    Case("seqlen-negative", with_model("--seqlen", "-1"), "seqlen=-1 must be > 0"),
    Case("iters-negative", with_model("--iters", "-3"), "iters=-3 must be >= 0"),
    Case("batch-size-zero", with_model("--batch_size", "0"), "batch_size=0 must be > 0"),
    Case("max-missing-images-not-a-fraction", with_model("--max_missing_images", "2"), "is not a fraction"),
    Case("scale-dtype-unknown", with_model("--scale_dtype", "int8"), "--scale_dtype 'int8'"),
    Case(
        "scale-dtype-the-format-cannot-store",
        with_model("--scale_dtype", "fp32"),
        "--scale_dtype float32 cannot be stored by --format auto_round",
    ),
    Case(
        "scale-dtype-llm-compressor-cannot-store",
        with_model("--format", "compressed-tensors", "--scale_dtype", "fp32"),
        "--scale_dtype float32 cannot be stored by --format compressed-tensors: it writes float16 scales",
    ),
    Case("blocks-match-nothing", with_model("--to_quant_block_names", "nothing_like_this"), "matches no block"),
    Case("device-unknown", with_model("--device", "tpu"), "--device 'tpu' is not understood"),
    Case("device-absent", with_model("--device", "cuda:0"), "not available on this machine"),
    # formats and the output
    Case("format-unknown", with_model("--format", "gguf"), "unknown export format 'gguf'"),
    Case("format-cannot-store-scheme", with_model("--format", "auto_awq", "--bits", "2"), "auto_awq"),
    # vLLM rejects gptq_v2 ("Unsupported quantization config: bits=4, sym=False"): say so before
    # tuning and name the formats it loads
    Case(
        "asym-gptq-vllm-cannot-load",
        with_model("--format", "auto_gptq", "--asym"),
        "which vLLM does not load; use --format auto_round (asymmetric 4-bit in AWQ packing) or auto_awq",
    ),
    Case("shard-size-not-understood", with_model("--max_shard_size", "lots"), "shard size 'lots' is not understood"),
    Case("existing-output-without-force", existing_output, "already exists"),
    Case("read-only-output-location", read_only_output, "cannot write under"),
    Case("output-under-a-file", output_under_a_file, "it is a file"),
    Case("disk-full-while-writing", disk_full, "No space left on device", keeps_progress=True),
    Case("resume-with-a-different-job", other_unfinished_run("--resume"), "unfinished run of a different job"),
    Case("unfinished-run-of-a-different-job", other_unfinished_run(), "pass --force"),
    Case("resume-and-force", with_model("--resume", "--force"), "contradict each other"),
    Case("conflicting-trust-flags", with_model("--trust_remote_code", "--disable_trust_remote_code"), "contradict each other"),
    Case("conflicting-compile-flags", with_model("--enable_torch_compile", "--disable_torch_compile"), "contradict each other"),
    Case("device-map-of-absent-gpus", with_model("--device_map", "0,1"), "is not available"),
    Case("device-map-not-devices", with_model("--device_map", "gpu0,gpu1"), "is not a device"),
    Case("cache-dir-is-a-file", lambda s: ["--model", str(s.model), "--cache_dir", str(s.file("cache", "x"))],
         "--cache_dir"),
]  # fmt: skip


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    return info.value.code, capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 30 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_line_exit_2_and_leaves_nothing(
    case, tiny_qwen2_vl, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    setup = Setup(tmp=tmp_path / "case", model=tiny_qwen2_vl, monkeypatch=monkeypatch)
    setup.tmp.mkdir()
    args = case.build(setup)
    out = tmp_path / "case" / "out"
    if "--output_dir" not in args:
        args += ["--output_dir", str(out)]
    before = snapshot(out) if out.exists() else None

    code, err = run_cli([*FAST, *args], capsys)  # the case's own flags win

    assert code == 2, err
    # progress lines may precede it (failures after loading); the error itself is one last line
    error = err.strip().splitlines()[-1]
    assert error.startswith("error: ") and err.count("error: ") == 1, err
    assert case.message in error, err
    assert "; " in error, f"no fix named: {error}"
    assert "Traceback" not in err
    after = snapshot(out) if out.exists() else None
    if case.keeps_progress:
        assert after and all(name.startswith(f".{tiny_qwen2_vl.name}-w4g128.resume/") for name in after), (
            after
        )
    else:
        assert after == before  # nothing written, nothing removed
    assert not list(tmp_path.rglob(".*.tmp-*")), "a staging folder was left behind"
    assert not (setup.tmp / "PWNED").exists()


def test_debug_shows_the_traceback(tiny_qwen2_vl, tmp_path):
    from auto_round_mllm.errors import UserError

    with pytest.raises(UserError, match="bits=5"):
        main(["--model", str(tiny_qwen2_vl), "--bits", "5", "--output_dir", str(tmp_path / "o"), "--debug"])
