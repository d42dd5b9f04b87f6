"""Phi-3-V processor (stand-in for Phi-3.5-vision's processing_phi3_v.py).

Images are named in the text as ``<|image_1|>``, ``<|image_2|>`` ...; each tag becomes
``num_img_tokens`` copies of the negative id ``-N``, which the model fills with image features.
"""

import re
from typing import ClassVar

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

IMAGE_TAG = r"<\|image_\d+\|>"


class Phi3VProcessor(ProcessorMixin):
    attributes: ClassVar[list[str]] = ["image_processor", "tokenizer"]
    image_processor_class = "Phi3VImageProcessor"
    tokenizer_class = ("LlamaTokenizer", "LlamaTokenizerFast")

    def __init__(self, image_processor, tokenizer, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, text=None, images=None, return_tensors="pt", **kwargs):
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        image_inputs = self.image_processor(images) if images else {}
        if isinstance(text, (list, tuple)):
            if len(text) != 1:
                raise ValueError("this processor takes one prompt at a time, like the released one")
            text = text[0]
        num_img_tokens = list(image_inputs.get("num_img_tokens", []))
        chunks = [
            self.tokenizer(chunk, add_special_tokens=False).input_ids for chunk in re.split(IMAGE_TAG, text)
        ]
        image_ids = [int(tag[2:-2].split("_")[-1]) for tag in re.findall(IMAGE_TAG, text)]
        if image_ids and sorted(set(image_ids)) != list(range(1, len(num_img_tokens) + 1)):
            raise ValueError(f"image tags {image_ids} do not match the {len(num_img_tokens)} images given")
        input_ids = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        for index, chunk in enumerate(chunks):
            input_ids.extend(chunk)
            if index < len(image_ids):
                input_ids.extend([-image_ids[index]] * num_img_tokens[image_ids[index] - 1])
        ids = torch.tensor(input_ids, dtype=torch.long)[None]
        data = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if images:
            data["pixel_values"] = image_inputs["pixel_values"]
            data["image_sizes"] = image_inputs["image_sizes"]
        return BatchFeature(data=data)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "image_sizes"]
