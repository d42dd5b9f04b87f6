"""Phi-3-V image processor (stand-in for Phi-3.5-vision's image_processing_phi3_v.py).

The release resizes with torchvision; this stand-in does the same steps with PIL and NumPy, so it
runs where torchvision is missing: HD transform (scale the picture to up to ``num_crops`` crops of
``crop_size``, pad the height to whole crops with white), a global view resized to one crop, and
the crops; all normalised with CLIP's mean and std.
"""

import math
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def hd_transform(img, hd_num, crop):
    width, height = img.size
    transposed = width < height
    if transposed:
        img = img.transpose(Image.TRANSPOSE)
        width, height = img.size
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * crop)
    new_h = int(new_w / ratio)
    img = img.resize((new_w, new_h), Image.BICUBIC)
    target_h = int(math.ceil(new_h / crop) * crop)
    top = (target_h - new_h) // 2
    padded = Image.new("RGB", (new_w, target_h), (255, 255, 255))
    padded.paste(img, (0, top))
    if transposed:
        padded = padded.transpose(Image.TRANSPOSE)
    return padded


class Phi3VImageProcessor(BaseImageProcessor):
    model_input_names: ClassVar[list[str]] = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops=1,
        crop_size=336,
        num_img_tokens_per_side=12,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_crops = num_crops
        self.crop_size = crop_size
        self.num_img_tokens_per_side = num_img_tokens_per_side  # (crop_size / patch / 2), 12 in the release
        self.image_mean = image_mean
        self.image_std = image_std
        self.do_convert_rgb = do_convert_rgb

    def calc_num_image_tokens_from_image_size(self, width, height):
        crop, side = self.crop_size, self.num_img_tokens_per_side
        h, w = height // crop, width // crop
        return int((h * w + 1) * side * side + 1 + (h + 1) * side)

    def _normalize(self, img):
        array = np.asarray(img, dtype=np.float32) / 255.0
        array = (array - np.array(self.image_mean, dtype=np.float32)) / np.array(
            self.image_std, dtype=np.float32
        )
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def preprocess(self, images, return_tensors=None, **kwargs):
        if not isinstance(images, (list, tuple)):
            images = [images]
        crop = self.crop_size
        pixel_values, sizes, tokens = [], [], []
        for image in images:
            if self.do_convert_rgb:
                image = image.convert("RGB")
            hd = hd_transform(image, self.num_crops, crop)
            width, height = hd.size
            global_view = self._normalize(hd.resize((crop, crop), Image.BICUBIC))
            full = self._normalize(hd)
            crops = full.reshape(3, height // crop, crop, width // crop, crop).permute(1, 3, 0, 2, 4)
            crops = crops.reshape(-1, 3, crop, crop)
            stacked = torch.cat([global_view[None], crops], dim=0)
            padding = torch.zeros(self.num_crops + 1 - stacked.shape[0], 3, crop, crop)
            pixel_values.append(torch.cat([stacked, padding], dim=0))
            sizes.append([height, width])
            tokens.append(self.calc_num_image_tokens_from_image_size(width, height))
        data = {
            "pixel_values": torch.stack(pixel_values),
            "image_sizes": torch.tensor(sizes),
            "num_img_tokens": tokens,
        }
        return BatchFeature(data=data, tensor_type=None)
