"""Offline-first model loading: local folders, ``local:`` paths, or hub ids from the HF cache.

The network is touched only when the user named a hub id that is not cached, and then only
after a quick reachability check, so an offline machine gets a one-line error in seconds
instead of a minute of retries.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auto_round_mllm.errors import ModelNotFound, UserError
from auto_round_mllm.models.architecture import check_loading_info, model_class_for
from auto_round_mllm.models.family import ModelFamily, family_for_model_type
from auto_round_mllm.models.streaming import NotStreamable, StreamedWeights, load_streaming
from auto_round_mllm.utils.device import torch_dtype
from auto_round_mllm.utils.dtype_policy import checkpoint_dtype

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~", "/"))


def check_model_folder(folder: Path) -> None:
    """A one-line error naming the missing file when the folder is not a loadable model."""
    if not folder.is_dir():
        raise ModelNotFound(f"model folder {folder} does not exist", fix="check the --model path")
    if not (folder / "config.json").is_file():
        raise ModelNotFound(
            f"{folder} has no config.json",
            fix="point --model at the folder written by save_pretrained (it holds config.json and the weights)",
        )
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ModelNotFound(
            f"{folder} has no weights (*.safetensors or pytorch_model*.bin)",
            fix="download the full model folder, including its weight files",
        )


def resolve_model_dir(spec: str) -> Path:
    """Turn ``--model`` into a local folder, reading hub ids from the HF cache first."""
    raw = spec[len("local:") :] if spec.startswith("local:") else spec
    path = Path(raw).expanduser()
    if path.exists() or spec.startswith("local:") or not _looks_like_hub_id(raw):
        check_model_folder(path)
        return path.resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(raw, local_files_only=True))
    except Exception:
        pass
    if not hub_reachable():
        raise ModelNotFound(
            f"{raw} is not in the local Hugging Face cache and the hub cannot be reached",
            fix=f"download it on a connected machine (hf download {raw}) and pass --model /path/to/folder",
        )
    try:
        return Path(snapshot_download(raw))
    except Exception as exc:
        raise ModelNotFound(
            f"could not download {raw} from the hub ({type(exc).__name__})",
            fix="check the model id and your access rights, or pass a local folder",
        ) from exc


def read_config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelNotFound(
            f"{model_dir}/config.json is not valid JSON ({exc})", fix="re-download the model"
        ) from exc
    if not config.get("architectures"):
        raise UserError(
            f"{model_dir}/config.json has no 'architectures' entry",
            fix='add "architectures": ["<ModelClass>"] (e.g. Qwen2VLForConditionalGeneration) to config.json',
        )
    if "quantization_config" in config:
        raise UserError(
            f"{model_dir} is already quantized ({config['quantization_config'].get('quant_method', '?')})",
            fix="quantize the original full-precision model instead",
        )
    return config


def check_weight_files(model_dir: Path) -> None:
    """Read every safetensors header (cheap: no tensor data) so a truncated or corrupt file is named
    before loading starts, rather than surfacing as a deserializer exception."""
    from safetensors import SafetensorError, safe_open

    index = next(model_dir.glob("*.safetensors.index.json"), None)
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise ModelNotFound(
                f"{index} is not a valid weight index ({exc})", fix="re-download the model"
            ) from None
        for shard in shards:
            if not (model_dir / shard).is_file():
                raise ModelNotFound(
                    f"{index.name} lists {shard}, which is missing from {model_dir}",
                    fix="download the full model folder, including every weight shard",
                )
    for file in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise ModelNotFound(
                f"weight file {file} is truncated or corrupt ({str(exc).splitlines()[0][:120]})",
                fix="download it again (compare its size with the original)",
            ) from None


@dataclass
class LoadedModel:
    """A model ready for calibration, with what export needs to copy beside the weights."""

    model: torch.nn.Module
    family: ModelFamily
    source_dir: Path | None
    tokenizer: Any
    processor: Any = None
    image_processor: Any = None
    processor_notice: str | None = None
    streamed: StreamedWeights | None = None
    """Set when the decoder blocks stream from disk (see :mod:`auto_round_mllm.models.streaming`)."""
    checkpoint_dtype: torch.dtype | None = None
    """The dtype config.json names, whatever the model was loaded in (None: unknown)."""

    @property
    def model_type(self) -> str:
        return self.model.config.model_type


def load_model(
    spec: str,
    *,
    model_dtype: str = "auto",
    trust_remote_code: bool = False,
    stream_blocks: list[str] | None = None,
    config: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load model, tokenizer and processor offline-first, on the CPU; the pipeline places blocks.

    With ``stream_blocks``, those blocks stay on the meta device and are read from the shards when
    the pipeline reaches them, if the checkpoint allows it (else the model loads whole). ``config``
    is config.json as :func:`read_config` returned it, when the caller has read it already."""
    from auto_round_mllm.models.processor_loading import load_processor

    model_dir = resolve_model_dir(spec)
    config = config if config is not None else read_config(model_dir)
    family = family_for_model_type(config.get("model_type", ""))
    check_weight_files(model_dir)
    streamed = None
    if stream_blocks:
        try:
            model, streamed = load_streaming(
                model_dir,
                config,
                model_dtype=model_dtype,
                trust_remote_code=trust_remote_code,
                streamed_blocks=stream_blocks,
            )
        except NotStreamable as why:
            log.info("loading the whole model: it cannot stream (%s)", why)
    if streamed is None:
        model = _load_whole(model_dir, config, model_dtype=model_dtype, trust_remote_code=trust_remote_code)
    model.eval()
    try:
        procs = load_processor(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(
            f"cannot load a tokenizer or processor from {model_dir} ({str(exc).splitlines()[0][:160]})",
            fix="copy the model's tokenizer files (tokenizer.json, tokenizer_config.json ...) into the folder",
        ) from None
    return LoadedModel(
        model=model,
        family=family,
        source_dir=model_dir,
        tokenizer=procs.tokenizer,
        processor=procs.processor,
        image_processor=procs.image_processor,
        processor_notice=procs.notice,
        streamed=streamed,
        checkpoint_dtype=checkpoint_dtype(config),
    )


def _load_whole(
    model_dir: Path, config: dict[str, Any], *, model_dtype: str, trust_remote_code: bool
) -> torch.nn.Module:
    dtype: Any = "auto" if model_dtype == "auto" else torch_dtype(model_dtype)
    cls = model_class_for(config, trust_remote_code=trust_remote_code)
    try:
        # weights_only: a pickled .bin file can hold code; only tensors are read from it
        model, info = cls.from_pretrained(
            model_dir,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            weights_only=True,
            ignore_mismatched_sizes=True,  # reported below as one line, not transformers' table
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelNotFound(
            f"cannot load weights from {model_dir}: {str(exc).splitlines()[0][:200]}",
            fix="check that the weight files are complete and match config.json",
        ) from exc
    check_loading_info(model_dir, info)
    return model


def loaded_from_objects(model: Any, tokenizer: Any, processor: Any, image_processor: Any) -> LoadedModel:
    """A model the caller loaded, with its tokenizer (from the processor when not given)."""
    if tokenizer is None:
        tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise UserError(
            "AutoRoundMLLM needs a tokenizer with a loaded model",
            fix="pass tokenizer= (or a processor that has one)",
        )
    source = Path(getattr(model, "name_or_path", "") or ".")
    return LoadedModel(
        model=model,
        family=family_for_model_type(model.config.model_type),
        source_dir=source if (source / "config.json").is_file() else None,
        tokenizer=tokenizer,
        processor=processor,
        image_processor=image_processor or getattr(processor, "image_processor", None),
    )
