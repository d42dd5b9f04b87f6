"""CogVLM2 model (stand-in for THUDM/cogvlm2-llama3-chat-19B's modeling_cogvlm.py).

A Llama-3 decoder whose attention and MLP have two experts each: tokens of the image go through
``vision_expert_*`` / ``vision_mlp``, text through ``language_expert_*`` / ``language_mlp``
(``token_type_ids`` says which is which). The image is encoded by the EVA2-CLIP tower in visual.py
and its features replace the placeholder tokens. ``build_conversation_input_ids`` prepares a
query and one image as the release does (PIL and NumPy instead of torchvision).
"""

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_cogvlm import CogVLMConfig
from .visual import EVA2CLIPModel

LANGUAGE_TOKEN_TYPE = 0
VISION_TOKEN_TYPE = 1
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def get_expert_mask(token_type_ids):
    """Vision expert for image tokens followed by another image token (the last one, eoi, is language)."""
    vision_token_mask = torch.zeros_like(token_type_ids, dtype=torch.bool)
    vision_token_mask[:, :-1] = (token_type_ids[:, :-1] == VISION_TOKEN_TYPE) & (
        token_type_ids[:, 1:] == VISION_TOKEN_TYPE
    )
    return vision_token_mask, ~vision_token_mask


def build_position_ids(x, attention_mask=None):
    """All image tokens but boi/eoi share one position; text counts up."""
    tmp = x.clone()
    if attention_mask is not None:
        tmp[~(attention_mask.bool())] = -1
    is_boi_eoi = torch.zeros_like(x, dtype=torch.bool)
    is_boi_eoi[:, 1:] |= (tmp[:, 1:] == VISION_TOKEN_TYPE) & (tmp[:, :-1] == LANGUAGE_TOKEN_TYPE)
    is_boi_eoi[:, 0] |= tmp[:, 0] == VISION_TOKEN_TYPE
    is_boi_eoi[:, :-1] |= (tmp[:, :-1] == VISION_TOKEN_TYPE) & (tmp[:, 1:] == LANGUAGE_TOKEN_TYPE)
    is_boi_eoi[:, -1] |= tmp[:, -1] == VISION_TOKEN_TYPE
    tmp[is_boi_eoi] = LANGUAGE_TOKEN_TYPE
    y = torch.zeros_like(x, dtype=torch.long)
    y[:, 1:] = (tmp[:, 1:] == LANGUAGE_TOKEN_TYPE) | (
        (tmp[:, 1:] == VISION_TOKEN_TYPE) & (tmp[:, :-1] == LANGUAGE_TOKEN_TYPE)
    )
    return y.cumsum(dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return (self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))).to(dtype)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class VisionExpertMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.language_mlp = MLP(config)
        self.vision_mlp = MLP(config)

    def forward(self, hidden_states, token_type_ids):
        output = torch.empty(hidden_states.shape, dtype=hidden_states.dtype, device=hidden_states.device)
        vision_token_mask, language_token_mask = get_expert_mask(token_type_ids)
        output[vision_token_mask] = self.vision_mlp(hidden_states[vision_token_mask])
        output[language_token_mask] = self.language_mlp(hidden_states[language_token_mask])
        return output


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim, base=500000.0):
        super().__init__()
        self.dim, self.base = dim, base
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self):
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2).float() / self.dim))

    @torch.no_grad()
    def forward(self, x, position_ids):
        freqs = position_ids[:, :, None].float() * self.inv_freq.float().to(x.device)[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]


class VisionExpertAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.num_multi_query_heads = config.num_multi_query_heads
        self.head_dim = self.hidden_size // self.num_attention_heads
        self.hidden_size_per_attention_head = self.head_dim
        self.stride = [self.num_attention_heads, self.num_multi_query_heads, self.num_multi_query_heads]
        self.qkv_size = self.hidden_size + self.head_dim * self.num_multi_query_heads * 2
        self.rotary_emb = RotaryEmbedding(self.head_dim)
        self.vision_expert_query_key_value = nn.Linear(self.hidden_size, self.qkv_size, bias=True)
        self.vision_expert_dense = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        self.language_expert_query_key_value = nn.Linear(self.hidden_size, self.qkv_size, bias=False)
        self.language_expert_dense = nn.Linear(self.hidden_size, self.hidden_size, bias=False)

    def forward(self, hidden_states, token_type_ids, position_ids, attention_mask=None, past_key_values=None):
        bsz, q_len, _ = hidden_states.shape
        vision_token_mask, language_token_mask = get_expert_mask(token_type_ids)
        shape = list(hidden_states.shape)
        shape[-1] = self.qkv_size
        mixed = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device)
        mixed[vision_token_mask] = self.vision_expert_query_key_value(hidden_states[vision_token_mask])
        mixed[language_token_mask] = self.language_expert_query_key_value(hidden_states[language_token_mask])
        kv_size = self.head_dim * self.num_multi_query_heads
        q, k, v = torch.split(mixed, [self.hidden_size, kv_size, kv_size], dim=-1)
        q = q.view(bsz, q_len, self.num_attention_heads, self.head_dim).transpose(1, 2)
        k = k.view(bsz, q_len, self.num_multi_query_heads, self.head_dim).transpose(1, 2)
        v = v.view(bsz, q_len, self.num_multi_query_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary_emb(v, position_ids)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        groups = self.num_attention_heads // self.num_multi_query_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        context = context.transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
        out = torch.empty(context.shape, dtype=hidden_states.dtype, device=hidden_states.device)
        out[vision_token_mask] = self.vision_expert_dense(context[vision_token_mask])
        out[language_token_mask] = self.language_expert_dense(context[language_token_mask])
        return out


class CogVLMDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = VisionExpertAttention(config, layer_idx)
        self.mlp = VisionExpertMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, hidden_states, token_type_ids, position_ids, attention_mask=None, past_key_values=None, **kwargs
    ):
        residual = hidden_states
        hidden_states = self.self_attn(
            self.input_layernorm(hidden_states), token_type_ids, position_ids, attention_mask, past_key_values
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states), token_type_ids)
        return (hidden_states,)  # released remote code returns a tuple


class CogVLMPreTrainedModel(PreTrainedModel):
    config_class = CogVLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules: ClassVar[list[str]] = ["CogVLMDecoderLayer", "TransformerLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(
            module, RotaryEmbedding
        ):  # transformers 5 leaves non-persistent buffers empty on load
            module.inv_freq.copy_(module.compute_inv_freq())
        elif isinstance(module, EVA2CLIPModel):
            module.boi.normal_(mean=0.0, std=std)
            module.eoi.normal_(mean=0.0, std=std)
            module.patch_embedding.cls_embedding.normal_(mean=0.0, std=std)


def causal_mask(attention_mask, q_len, past_len, device):
    """Boolean (batch, 1, q_len, kv_len) mask: causal, and padding from the 2-D ``attention_mask``."""
    kv_len = past_len + q_len
    positions = torch.arange(kv_len, device=device)
    mask = (positions[None, :] <= positions[past_len:, None])[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, -kv_len:].bool()
    return mask


class CogVLMModel(CogVLMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([CogVLMDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.vision = EVA2CLIPModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def encode_images(self, images):
        flat = [image for image_list in images for image in image_list]
        return self.vision(torch.stack(flat).to(self.vision.boi.dtype))

    def forward(
        self,
        input_ids=None,
        images=None,
        token_type_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if token_type_ids is None:
            token_type_ids = torch.full_like(input_ids, LANGUAGE_TOKEN_TYPE)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
            if past_len == 0 and images is not None and len(images) > 0:  # image features go in once
                features = self.encode_images(images)
                inputs_embeds = inputs_embeds.index_put(
                    [token_type_ids == VISION_TOKEN_TYPE],
                    features.reshape(-1, features.shape[-1]).to(inputs_embeds.dtype),
                )
            elif past_len == 0 and (token_type_ids == VISION_TOKEN_TYPE).any():
                raise ValueError("token_type_ids mark image tokens but no images were given")
        if position_ids is None:
            position_ids = build_position_ids(token_type_ids, attention_mask)
        q_len = inputs_embeds.shape[1]
        mask = causal_mask(attention_mask, q_len, past_len, inputs_embeds.device)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                attention_mask=mask,
                past_key_values=past_key_values if use_cache else None,
            )[0]
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, past_key_values=past_key_values if use_cache else None
        )


def _history_to_prompt(signal_type, history, query):
    if signal_type == "base":
        return query
    answer_format = {"vqa": "Short answer:", "chat": "Answer:"}[signal_type]
    prompt = ""
    for old_query, response in history:
        prompt += f"Question: {old_query} {answer_format} {response}\n"
    prompt += f"Question: {query} {answer_format}"
    return prompt


def _transform(image, size):
    """Resize((size, size), bicubic), ToTensor and Normalize(CLIP mean, std), without torchvision."""
    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


class CogVLMForCausalLM(CogVLMPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = CogVLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(
        self,
        input_ids=None,
        images=None,
        token_type_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        labels=None,
        logits_to_keep=0,
        **kwargs,
    ):
        outputs = self.model(
            input_ids=input_ids,
            images=images,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)

    def prepare_inputs_for_generation(
        self, input_ids, token_type_ids=None, images=None, past_key_values=None, attention_mask=None, **kwargs
    ):
        if token_type_ids is None:
            token_type_ids = torch.full_like(input_ids, LANGUAGE_TOKEN_TYPE)
        position_ids = build_position_ids(token_type_ids, attention_mask)
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            past_len = past_key_values.get_seq_length()
            input_ids = input_ids[:, past_len:]
            token_type_ids = token_type_ids[:, past_len:]
            position_ids = position_ids[:, past_len:]
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "images": images,
            "position_ids": position_ids,
            "past_key_values": past_key_values,
            "attention_mask": attention_mask,
            "use_cache": kwargs.get("use_cache", True),
        }

    def _update_model_kwargs_for_generation(
        self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1
    ):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        if model_kwargs.get("token_type_ids") is not None:  # generated tokens are language tokens
            model_kwargs["token_type_ids"][:, -num_new_tokens:] = LANGUAGE_TOKEN_TYPE
        return model_kwargs

    def build_conversation_input_ids(
        self, tokenizer, *, query, history=None, images=None, template_version=None, answer=None
    ):
        """input_ids, token_type_ids, attention_mask and images for one query (and at most one image)."""
        image_size = self.config.vision_config["image_size"]
        patch_size = self.config.vision_config["patch_size"]
        template_version = template_version or self.config.template_version
        assert images is None or len(images) <= 1, "not support multi images by now."
        history = history or []
        text = _history_to_prompt(template_version, history, query)
        input_ids = [tokenizer.bos_token_id]
        token_type_ids = [LANGUAGE_TOKEN_TYPE]
        if images is not None and len(images) == 1:
            images = [_transform(images[0], image_size)]
            vision_token_num = (image_size // patch_size // 2) * (image_size // patch_size // 2) + 2
            input_ids += [tokenizer.pad_token_id] * vision_token_num
            token_type_ids += [VISION_TOKEN_TYPE] * vision_token_num
        text_ids = tokenizer.encode(text, add_special_tokens=False)
        if answer is not None:
            answer_ids = tokenizer.encode(answer, add_special_tokens=False)
            answer_ids += [tokenizer.eos_token_id]
            text_ids += answer_ids
        input_ids += text_ids
        token_type_ids += [LANGUAGE_TOKEN_TYPE] * len(text_ids)
        attention_mask = [1] * len(input_ids)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "token_type_ids": torch.tensor(token_type_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
            "images": images,
        }
