"""Shared fixtures: an offline hub for every test, and tiny models built once per session."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO_ROOT / "scripts"
# make_tiny_models and the benchmark scripts live in scripts/ (their helpers in scripts/bench_support/),
# not in the package
for _folder in (SCRIPTS_DIR / "bench_support", SCRIPTS_DIR):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# huggingface_hub reads these when it is imported, which test modules may do while being collected,
# before any fixture runs; so set them here too.
os.environ.update(OFFLINE_ENV)


@pytest.fixture(scope="session", autouse=True)
def offline_hub():
    """No test reaches the Hugging Face hub."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFLINE_ENV.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tmp_path_factory) -> Path:
    """Folder of a tiny Qwen2-VL checkpoint (see scripts/make_tiny_models.py). Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """Folder of a tiny LLaVA-1.5 checkpoint (see scripts/make_tiny_models.py). Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tmp_path_factory) -> Path:
    """Folder of a tiny Qwen2.5-VL checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2-5-vl"))


@pytest.fixture(scope="session")
def tiny_qwen3_vl(tmp_path_factory) -> Path:
    """Folder of a tiny Qwen3-VL checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny-qwen3-vl"))


@pytest.fixture(scope="session")
def tiny_llava_next(tmp_path_factory) -> Path:
    """Folder of a tiny LLaVA-NeXT (v1.6, Mistral text) checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava-next"))


@pytest.fixture(scope="session")
def tiny_mllama(tmp_path_factory) -> Path:
    """Folder of a tiny Llama-3.2-Vision (mllama) checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_mllama(tmp_path_factory.mktemp("tiny-mllama"))


@pytest.fixture(scope="session")
def tiny_idefics3(tmp_path_factory) -> Path:
    """Folder of a tiny Idefics3 checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_idefics3(tmp_path_factory.mktemp("tiny-idefics3"))


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory) -> Path:
    """Folder of a tiny SmolVLM checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm"))


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> Path:
    """Folder of a tiny Gemma 3 checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.fixture(scope="session")
def tiny_mistral3(tmp_path_factory) -> Path:
    """Folder of a tiny Mistral 3 (Mistral-Small-3.1) checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_mistral3(tmp_path_factory.mktemp("tiny-mistral3"))


@pytest.fixture(scope="session")
def tiny_phi3_v(tmp_path_factory) -> Path:
    """Folder of a tiny Phi-3.5-vision stand-in (remote code: trust_remote_code=True) checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_phi3_v(tmp_path_factory.mktemp("tiny-phi3-v"))


@pytest.fixture(scope="session")
def tiny_cogvlm2(tmp_path_factory) -> Path:
    """Folder of a tiny CogVLM2 stand-in (remote code: trust_remote_code=True) checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_cogvlm2(tmp_path_factory.mktemp("tiny-cogvlm2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Folder of a tiny Llama 3 style text-only causal LM checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    """Folder of a tiny Qwen2 text-only causal LM checkpoint. Do not modify it."""
    import make_tiny_models

    return make_tiny_models.make_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_models(tiny_qwen2_vl, tiny_llava) -> dict[str, Path]:
    return {"qwen2_vl": tiny_qwen2_vl, "llava": tiny_llava}


def quantize_tiny(model_dir: Path, out_dir: Path, *, scheme=None, iters: int = 2, **tuning):
    """Tune a tiny model through the API (small budget) and export it; returns (tuned, folder).

    The tuned model keeps its fake-quantized weights, which is what exported checkpoints must
    reproduce.
    """
    from auto_round_mllm import api
    from auto_round_mllm.config import ExportConfig, QuantJob, QuantScheme, TuningConfig
    from auto_round_mllm.export.outputs import format_dirs
    from auto_round_mllm.models.loading import load_model

    settings = {"iters": iters, "nsamples": 4, "seqlen": 32, "batch_size": 2, **tuning}
    job = QuantJob(
        model=str(model_dir),
        scheme=scheme or QuantScheme(),
        tuning=TuningConfig(**settings),
        export=ExportConfig(output_dir=str(out_dir)),
        device="cpu",
    )
    loaded = load_model(job.model)
    tuned = api.tune(job, loaded)
    dirs = format_dirs(out_dir / "ckpt", job.export.formats)
    api.write_formats(tuned, job, dirs, lambda facts: {"test": True})
    return tuned, dirs["auto_round"]


def fake_quant_fp32(tuned):
    """The tuned model in fp32 with every quantized Linear holding its exact dequantized weight:
    the reference an exported checkpoint must reproduce."""
    import torch
    from torch import nn

    model = tuned.loaded.model
    nn.Module.float(model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, qw in tuned.qweights.items():
            modules[name].weight.copy_(qw.dequantize(torch.float32))
    return model


LM_EVAL_CHOICES = [
    {"question": "The sky is", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "Two plus two is", "choices": ["three", "four", "five"], "answer": 1},
    {"question": "Water is", "choices": ["dry", "wet", "red"], "answer": 1},
    {"question": "Fire is", "choices": ["cold", "hot", "blue"], "answer": 1},
    {"question": "Ice is", "choices": ["cold", "hot", "soft"], "answer": 0},
    {"question": "Grass is", "choices": ["purple", "green", "loud"], "answer": 1},
]
LM_EVAL_TEXTS = [
    "The sky is blue and the grass is green.",
    "Two plus two is four, said the teacher.",
    "Water is wet; fire is hot; ice is cold.",
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_lm_eval_tasks(folder: Path) -> Path:
    """A multiple-choice task and a rolling-loglikelihood task over local JSONL files: lm-eval's
    ``dataset_path: json`` reads them offline."""
    folder.mkdir(parents=True, exist_ok=True)
    choices = write_jsonl(folder / "choices.jsonl", LM_EVAL_CHOICES)
    texts = write_jsonl(folder / "texts.jsonl", [{"text": t} for t in LM_EVAL_TEXTS])
    common = "dataset_path: json\ntest_split: test\n"
    (folder / "tiny_choice.yaml").write_text(
        f"task: tiny_choice\n{common}dataset_kwargs:\n  data_files:\n    test: {choices}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        encoding="utf-8",
    )
    (folder / "tiny_rolling.yaml").write_text(
        f"task: tiny_rolling\n{common}dataset_kwargs:\n  data_files:\n    test: {texts}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n  - metric: byte_perplexity\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="session")
def lm_eval_task_dir(tmp_path_factory) -> Path:
    """A folder of two local lm-eval tasks (see :func:`write_lm_eval_tasks`). Do not modify it."""
    return write_lm_eval_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))
