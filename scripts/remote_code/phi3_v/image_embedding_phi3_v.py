"""Phi-3-V image embedding (stand-in for Phi-3.5-vision's image_embedding_phi3_v.py).

A CLIP tower (``img_processor``), the HD transform that tiles crops 2 x 2 into ``4 * image_dim_out``
features with learnable row (``sub_GN``) and global (``glb_GN``) separators, and a 2-layer MLP
projection (``img_projection.0`` / ``.2``). Token ids < 0 mark image positions; the features fill
them in order.
"""

import math

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

MAX_INPUT_ID = int(1e9)


class Phi3ImageEmbedding(nn.Module):
    def __init__(self, config, wte=None, **kwargs):
        super().__init__()
        hidden_size = config.hidden_size
        # The released module keeps a reference to the token embedding; it is not a submodule here,
        # so that the shared weight is saved once (as model.embed_tokens.weight).
        self.__dict__["wte"] = wte
        spec = config.img_processor
        self.clip_config = CLIPVisionConfig(
            hidden_size=spec["image_dim_out"],
            intermediate_size=spec.get("intermediate_size", 4 * spec["image_dim_out"]),
            num_hidden_layers=spec.get("num_hidden_layers", 24),
            num_attention_heads=spec.get("num_attention_heads", 16),
            image_size=spec.get("image_size", 336),
            patch_size=spec.get("patch_size", 14),
            projection_dim=spec.get("projection_dim", 768),
            hidden_act="quick_gelu",
        )
        self.img_processor = CLIPVisionModel(self.clip_config)
        self.image_dim_out = spec["image_dim_out"]
        self.num_img_tokens = spec["num_img_tokens"]
        self.crop_size = self.clip_config.image_size
        self.use_hd_transform = kwargs.get("use_hd_transform", False)
        self.with_learnable_separator = kwargs.get("with_learnable_separator", False)
        self.hd_transform_order = kwargs.get("hd_transform_order", "glb_sub")
        assert self.use_hd_transform and self.with_learnable_separator, (
            "this stand-in implements the HD path only"
        )
        self.glb_GN = nn.Parameter(torch.zeros([1, 1, self.image_dim_out * 4]))
        self.sub_GN = nn.Parameter(torch.zeros([1, 1, 1, self.image_dim_out * 4]))
        self.img_projection = nn.Sequential(
            nn.Linear(self.image_dim_out * 4, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.layer_idx = spec.get("layer_idx", -2)
        self.type_feature = spec.get("type_feature", "patch")

    def get_img_features(self, img_embeds):
        out = self.img_processor(img_embeds, output_hidden_states=True)
        features = out.hidden_states[self.layer_idx]
        return features[:, 1:] if self.type_feature == "patch" else features

    def hd_features(self, pixel_values, image_sizes):
        """One (tokens, hidden) tensor per image: sub-crops, then glb_GN, then the global view."""
        batch = pixel_values.shape[0]
        features = self.get_img_features(pixel_values.flatten(0, 1).to(self.glb_GN.dtype))
        side = int(math.sqrt(features.shape[1]))
        half = side // 2
        channels = self.image_dim_out
        features = features.view(batch, -1, side * side, channels)
        out = []
        for index in range(batch):
            h, w = (int(v) // self.crop_size for v in image_sizes[index])
            crops = h * w

            def merge(x, n):  # (n, side*side, C) -> (n, side/2, side/2, 4C): 2 x 2 neighbours side by side
                x = x.reshape(n, half, 2, half, 2, channels).permute(0, 1, 3, 2, 4, 5)
                return x.reshape(n, half, half, 4 * channels)

            glb = merge(features[index, :1], 1)
            glb = torch.cat([glb, self.sub_GN.repeat(1, half, 1, 1)], dim=2).reshape(1, -1, 4 * channels)
            sub = merge(features[index, 1 : 1 + crops], crops)
            sub = (
                sub.reshape(1, h, w, half, half, -1)
                .permute(0, 1, 3, 2, 4, 5)
                .reshape(1, h * half, w * half, -1)
            )
            sub = torch.cat([sub, self.sub_GN.repeat(1, h * half, 1, 1)], dim=2).reshape(1, -1, 4 * channels)
            if self.hd_transform_order == "glb_sub":
                parts = [glb, self.glb_GN, sub]
            else:
                parts = [sub, self.glb_GN, glb]
            out.append(self.img_projection(torch.cat(parts, dim=1))[0])
        return out

    def forward(self, input_ids, pixel_values=None, image_sizes=None):
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        positions = torch.nonzero((input_ids < 0) & (input_ids > -MAX_INPUT_ID), as_tuple=True)
        hidden_states = self.wte(input_ids.clamp(min=0))
        if pixel_values is not None and positions[0].numel() > 0:
            features = torch.cat(self.hd_features(pixel_values, image_sizes), dim=0)
            if features.shape[0] != positions[0].numel():
                raise ValueError(
                    f"{positions[0].numel()} image placeholder tokens but {features.shape[0]} image features"
                )
            hidden_states = hidden_states.index_put(positions, features.to(hidden_states.dtype))
        return hidden_states
