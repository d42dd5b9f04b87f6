"""Load a model's processor, and assemble it when transformers cannot build it without torchvision.

Why this exists: in transformers 5 a processor that owns a video processor (Qwen2-VL, Qwen2.5-VL,
SmolVLM, ...) cannot be constructed or loaded without torchvision, because video processors need
it. On CPU-only machines torchvision is often absent (the PyPI wheels are CUDA builds that break
the CPU torch), yet calibration and export need only the tokenizer, the image processor (which
falls back to its PIL backend) and the chat template. When ``AutoProcessor`` fails for that reason
we load those parts separately and build the model's *own* processor class without its video
argument, so token expansion, ``image_grid_thw`` and the chat template are the library's code, not
ours. Videos are not supported by such a processor; the notice says so.

Saving the assembled processor writes the tokenizer files, the chat template,
``processor_config.json`` (``processor_class`` is the real class name), ``preprocessor_config.json``
and, when the source had one, ``video_preprocessor_config.json``. transformers 5 derives a missing
video processor from ``preprocessor_config.json``, so the folder loads on a machine with
torchvision too; without that file it would not.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"
# What transformers says when a processor needs a video processor and torchvision is missing.
_VIDEO_FAILURE_MARKERS = ("torchvision", "_extra_content", "videoprocessor", "video_processor")


@dataclass
class LoadedProcessor:
    """A model's processor and its parts.

    ``processor`` is None for text-only models; ``notice`` is a one-line message for the user when
    the processor had to be assembled (None when transformers built it normally).
    """

    processor: Any | None
    tokenizer: Any
    image_processor: Any | None = None
    notice: str | None = None


def load_processor(model_dir: str | Path, *, trust_remote_code: bool = False) -> LoadedProcessor:
    """The processor of ``model_dir`` (a folder or hub id), assembled without video if need be."""
    from transformers import AutoProcessor, PreTrainedTokenizerBase

    source = str(model_dir)
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:  # anything but the missing-torchvision case is re-raised
        if not _missing_video_backend(exc):
            raise
        return _assemble_without_video(source, trust_remote_code=trust_remote_code, cause=exc)
    if isinstance(processor, PreTrainedTokenizerBase):  # text-only: AutoProcessor fell back to it
        return LoadedProcessor(processor=None, tokenizer=processor)
    return LoadedProcessor(
        processor=processor,
        tokenizer=getattr(processor, "tokenizer", None),
        image_processor=getattr(processor, "image_processor", None),
    )


def _missing_video_backend(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is transformers failing for want of torchvision."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return False
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{type(seen).__name__} {seen}".lower()
        if any(marker in text for marker in _VIDEO_FAILURE_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _assemble_without_video(source: str, *, trust_remote_code: bool, cause: BaseException) -> LoadedProcessor:
    from transformers import AutoImageProcessor, AutoTokenizer

    base = _processor_class(source, trust_remote_code=trust_remote_code)
    if base is None:
        raise cause
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    try:
        image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError):
        image_processor = None
    try:
        name = base.__name__
        # Without a video processor to leave out (Phi-3.5-vision's remote code), AutoProcessor failed on
        # its class lookup alone, and building the class from its parts works.
        cls = image_only_processor_class(base)
        processor_dict, _ = base.get_processor_dict(source)
        accepted = inspect.signature(cls.__init__).parameters
        extra = {
            key: value
            for key, value in processor_dict.items()
            if key in accepted and key not in ("self", "image_processor", "tokenizer", "chat_template")
        }
        if "chat_template" in accepted:
            extra["chat_template"] = processor_dict.get("chat_template") or tokenizer.chat_template
        processor = cls(image_processor=image_processor, tokenizer=tokenizer, **extra)
    except Exception as exc:  # SmolVLM's num2words, Pixtral's torchvision-only processor class
        reason = " ".join(str(exc).split())[:160]
        notice = (
            f"cannot build the processor here ({type(exc).__name__}: {reason}); using its tokenizer and "
            "image processor on their own (image samples need a calibration processor that can)"
        )
        return LoadedProcessor(None, tokenizer, image_processor, notice)
    if cls is base:
        notice = f"AutoProcessor cannot build {name} here; built it from its tokenizer and image processor"
        return LoadedProcessor(processor, tokenizer, image_processor, notice)
    processor.video_processor_config = processor_dict.get("video_processor") or _read_json(
        source, VIDEO_PROCESSOR_FILE
    )
    notice = (
        f"torchvision is not installed, so transformers cannot build {name} (it owns a video "
        f"processor); assembled it from the tokenizer and the PIL image processor: images work, videos do not"
    )
    return LoadedProcessor(processor, tokenizer, image_processor, notice)


def _processor_class(source: str, *, trust_remote_code: bool) -> type | None:
    """The processor class AutoProcessor would pick: named in the saved files, else by model type."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    for filename in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        data = _read_json(source, filename) or {}
        remote = (data.get("auto_map") or {}).get("AutoProcessor")
        if remote and trust_remote_code:
            from transformers.dynamic_module_utils import get_class_from_dynamic_module

            return get_class_from_dynamic_module(remote, source)
        class_name = data.get("processor_class")
        if class_name and hasattr(transformers, class_name):
            return getattr(transformers, class_name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        return PROCESSOR_MAPPING[type(config)]
    except (OSError, ValueError, KeyError):
        return None


@functools.cache
def image_only_processor_class(base: type) -> type:
    """``base`` (a ProcessorMixin subclass) without its ``video_processor`` argument.

    ProcessorMixin finds a processor's parts in its ``__init__`` signature; with ``video_processor``
    gone it neither asks for one nor checks its class, and everything else (placeholder expansion,
    chat template, ``to_dict``) is ``base``'s own code. The class keeps ``base``'s name, so saved
    files name the real processor.
    """
    signature = inspect.signature(base.__init__)
    if "video_processor" not in signature.parameters:
        return base
    reduced = signature.replace(
        parameters=[p for n, p in signature.parameters.items() if n != "video_processor"]
    )

    def __init__(self, *args, **kwargs):
        bound = reduced.bind(self, *args, **kwargs)
        call: dict[str, Any] = {}
        for arg_name, value in list(bound.arguments.items())[1:]:
            if reduced.parameters[arg_name].kind is inspect.Parameter.VAR_KEYWORD:
                call.update(value)
            else:
                call[arg_name] = value
        self.video_processor_config = None
        base.__init__(self, video_processor=None, **call)

    __init__.__signature__ = reduced

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = base.save_pretrained(self, save_directory, *args, **kwargs)
        # transformers 5 writes the image processor only inside processor_config.json; a machine with
        # torchvision builds the video processor from preprocessor_config.json when no video config exists.
        files = list(files or []) + list(self.image_processor.save_pretrained(save_directory) or [])
        if self.video_processor_config:
            path = Path(save_directory) / VIDEO_PROCESSOR_FILE
            path.write_text(json.dumps(self.video_processor_config, indent=2, sort_keys=True) + "\n")
            files.append(str(path))
        return files

    cls = type(
        base.__name__,
        (base,),
        {
            "__init__": __init__,
            "save_pretrained": save_pretrained,
            "__module__": __name__,
            "__qualname__": base.__qualname__,
            "__doc__": f"{base.__name__} without a video processor (assembled by auto_round_mllm).",
        },
    )
    return cls


def _read_json(source: str, filename: str) -> dict | None:
    """``filename`` of a folder or hub repo (as cached or fetched like the processor), or None."""
    from transformers.utils import cached_file

    try:
        resolved = cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    return json.loads(Path(resolved).read_text()) if resolved else None
