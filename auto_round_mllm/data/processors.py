"""Processors: one calibration :class:`Sample` plus a chat template -> model inputs.

A processor returns the keyword arguments of the model's forward for one sample (batch size 1,
unpadded); padding and selection are :mod:`auto_round_mllm.data.calib_set`'s job. Register your
own with :func:`register_processor` (a subclass of :class:`CalibrationProcessor`), then name it in
a template's ``processor`` field; nothing in the package needs editing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from auto_round_mllm.data.sample import IMAGE_PLACEHOLDER, Sample, normalize_role
from auto_round_mllm.registry import Registry

if TYPE_CHECKING:
    from auto_round_mllm.data.templates import ChatTemplate
    from auto_round_mllm.models.loading import LoadedModel

log = logging.getLogger(__name__)


class SampleError(Exception):
    """This sample cannot be turned into inputs (unreadable image, too many image tokens ...)."""


class CalibrationProcessor:
    """Base class: text samples through the tokenizer, conversations through the template."""

    name = "base"
    handles_images = False
    needs_images = False
    """True when every sample must carry an image (text samples are then skipped, and counted)."""

    def __init__(
        self,
        *,
        tokenizer: Any,
        template: ChatTemplate | None = None,
        processor: Any = None,
        model: Any = None,
        image_processor: Any = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.processor = processor
        self.template = template
        self.model = model
        self.image_processor = image_processor or getattr(processor, "image_processor", None)

    def encode(self, sample: Sample, *, seqlen: int) -> dict[str, torch.Tensor]:
        if self.needs_images and not sample.images:
            raise SampleError(f"{self.name} needs an image in every calibration sample")
        if sample.messages is None:
            return self.encode_text(sample.text or "", seqlen=seqlen)
        if sample.images and self.handles_images:
            return self.encode_multimodal(sample)
        return self.encode_text(self.render_text_only(sample), seqlen=seqlen)

    def encode_text(self, text: str, *, seqlen: int) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:seqlen]
        if not ids:
            raise SampleError("empty text")
        input_ids = torch.tensor([ids], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def render_text_only(self, sample: Sample) -> str:
        """The conversation as one prompt without images (placeholders removed)."""
        messages = [
            {
                "role": normalize_role(m["role"]),
                "content": m["content"].replace(IMAGE_PLACEHOLDER, "").strip(),
            }
            for m in sample.messages or []
        ]
        if getattr(self.tokenizer, "chat_template", None) and not (
            self.template and self.template.extra_encode
        ):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        if self.template is None:
            return "\n".join(m["content"] for m in messages)
        return self.template.render(messages)

    def encode_multimodal(self, sample: Sample) -> dict[str, torch.Tensor]:
        raise SampleError(f"processor {self.name!r} cannot use images")


PROCESSORS: Registry[type[CalibrationProcessor]] = Registry("processor")


def register_processor(
    name: str, *, aliases: tuple[str, ...] = (), replace: bool = False
) -> Callable[[type[CalibrationProcessor]], type[CalibrationProcessor]]:
    def decorator(cls: type[CalibrationProcessor]) -> type[CalibrationProcessor]:
        cls.name = name
        return PROCESSORS.add(name, cls, aliases=aliases, replace=replace)

    return decorator


@register_processor("text")
class TextProcessor(CalibrationProcessor):
    """Tokenizer only: for text models, or to calibrate a VLM on the text of conversations."""


def load_image(path: Any):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise SampleError(f"cannot read image {path}: {exc}") from exc


def structured_messages(messages: list[dict[str, str]], template: ChatTemplate) -> list[dict[str, Any]]:
    """Role/content turns -> the processor chat-template form, ``<image>`` becoming image parts."""
    out = []
    for message in template.to_messages(messages, apply_replacements=False):
        parts: list[dict[str, Any]] = []
        pieces = message["content"].split(IMAGE_PLACEHOLDER)
        for index, piece in enumerate(pieces):
            if index > 0:
                parts.append({"type": "image"})
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        out.append({"role": message["role"], "content": parts})
    return out


@register_processor("hf", aliases=("llava",))
class HFProcessor(CalibrationProcessor):
    """The model's own processor and chat template (Qwen2-VL, LLaVA, Gemma 3, Idefics3 ...).

    Conversations are rendered by the processor's chat template (or by the template's own
    ``format_*`` fields when ``extra_encode`` is set, or when the processor has none), then the
    processor expands image placeholders and computes pixel values.
    """

    handles_images = True

    def prompt(self, sample: Sample) -> str:
        messages = sample.messages or []
        if self.template is None:
            raise SampleError("no chat template to render the conversation with")
        if not self.template.extra_encode:
            structured = structured_messages(messages, self.template)
            # SmolVLM's processor template reads a video processor that an assembled processor lacks;
            # the tokenizer carries the same chat template.
            for owner in (self.processor, self.tokenizer):
                if getattr(owner, "chat_template", None):
                    try:
                        return owner.apply_chat_template(structured, tokenize=False)
                    except (AttributeError, TypeError, ValueError):
                        continue
        return self.template.render(messages)

    def encode_multimodal(self, sample: Sample) -> dict[str, torch.Tensor]:
        if self.processor is None:
            raise SampleError("the model has no image processor")
        images = [load_image(path) for path in sample.images]
        try:
            inputs = self.processor(text=[self.prompt(sample)], images=images, return_tensors="pt")
        except (ValueError, RuntimeError, IndexError) as exc:
            raise SampleError(f"the processor rejected the sample: {str(exc).splitlines()[0][:160]}") from exc
        return self.complete(dict(inputs))

    def complete(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for model-specific extra inputs."""
        return inputs


@register_processor("qwen2_vl")
class Qwen2VLCalibrationProcessor(HFProcessor):
    """Qwen2-VL / Qwen2.5-VL: the hf processor plus the image-token mask transformers 5 asks for.

    transformers 5 wants ``mm_token_type_ids`` (1 at image tokens) next to ``pixel_values`` and
    ``image_grid_thw``; the processor does not always return it.
    """

    def complete(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "mm_token_type_ids" not in inputs and self.accepts("mm_token_type_ids"):
            image_token = getattr(self.processor, "image_token", "<|image_pad|>")
            image_id = self.tokenizer.convert_tokens_to_ids(image_token)
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).long()
        return inputs

    def accepts(self, name: str) -> bool:
        return self.model is not None and name in inspect.signature(self.model.forward).parameters


@register_processor("mllama")
class MllamaCalibrationProcessor(HFProcessor):
    """Llama-3.2-Vision: its cross-attention layers need an image, so text samples are refused."""

    needs_images = True


@register_processor("mistral3")
class Mistral3CalibrationProcessor(HFProcessor):
    """Mistral 3 (Pixtral vision): the hf processor, or without torchvision its token layout here.

    transformers' PixtralProcessor cannot be built without torchvision, but its PIL image processor
    works; each ``[IMG]`` then becomes, per image, rows of ``[IMG]`` patch tokens separated by
    ``[IMG_BREAK]`` and closed by ``[IMG_END]``, as PixtralProcessor writes them.
    """

    image_token, break_token, end_token = "[IMG]", "[IMG_BREAK]", "[IMG_END]"

    def encode_multimodal(self, sample: Sample) -> dict[str, torch.Tensor]:
        if self.processor is not None:
            return super().encode_multimodal(sample)
        if self.image_processor is None or self.model is None:
            raise SampleError("the model has no image processor")
        config = self.model.config
        patch = config.vision_config.patch_size * getattr(config, "spatial_merge_size", 1)
        pixels = self.image_processor(
            [load_image(path) for path in sample.images], patch_size=patch, return_tensors="pt"
        )
        pieces = self.prompt(sample).split(self.image_token)
        if len(pieces) - 1 != len(sample.images):
            raise SampleError(
                f"the prompt has {len(pieces) - 1} image tokens for {len(sample.images)} images"
            )
        text = pieces[0]
        for (height, width), piece in zip(pixels["image_sizes"].tolist(), pieces[1:], strict=True):
            row = self.image_token * (width // patch) + self.break_token
            text += (row * (height // patch))[: -len(self.break_token)] + self.end_token + piece
        ids = self.tokenizer(text, return_tensors="pt")
        return {**dict(ids), "pixel_values": pixels["pixel_values"], "image_sizes": pixels["image_sizes"]}


@register_processor("cogvlm2")
class CogVLM2CalibrationProcessor(CalibrationProcessor):
    """CogVLM2: no HF processor; its remote code builds inputs (``build_conversation_input_ids``).

    One image per sample, the prompt rendered by the template (``Question: ... Answer: ...``) and
    passed with ``template_version="base"`` so the model adds no second template.
    """

    handles_images = True

    def encode_multimodal(self, sample: Sample) -> dict[str, Any]:
        if len(sample.images) != 1:
            raise SampleError("CogVLM2 takes exactly one image per sample")
        if self.model is None or not hasattr(self.model, "build_conversation_input_ids"):
            raise SampleError(
                "the model has no build_conversation_input_ids (load it with --trust_remote_code)"
            )
        query = self.template.render(sample.messages or []) if self.template else ""
        built = self.model.build_conversation_input_ids(
            self.tokenizer,
            query=query,
            history=[],
            images=[load_image(sample.images[0])],
            template_version="base",
        )
        dtype = next(self.model.parameters()).dtype
        return {
            "input_ids": built["input_ids"][None],
            "token_type_ids": built["token_type_ids"][None],
            "attention_mask": built["attention_mask"][None],
            "images": [[built["images"][0].to(dtype)]],
        }


def processor_for(name: str, loaded: LoadedModel, template: ChatTemplate) -> CalibrationProcessor:
    """The registered processor ``name`` for a loaded model."""
    return PROCESSORS.get(name)(
        tokenizer=loaded.tokenizer,
        template=template,
        processor=loaded.processor,
        model=loaded.model,
        image_processor=loaded.image_processor,
    )
