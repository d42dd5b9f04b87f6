"""The built-in model families: one short, data-only registration each.

Paths are transformers 5 module names. ``text_blocks`` / ``vision_blocks`` list candidates; the
first that exists in the model is used. Where a released checkpoint stores a tower one level
deeper (``vision_tower.vision_model.encoder``), transformers 5 builds it without that level; the
module path comes first and the checkpoint-style path stays as a fallback. scripts/make_tiny_models.py
builds a tiny checkpoint of each family.
"""

from auto_round_mllm.models.family import ModelFamily, register_family

register_family(
    ModelFamily(
        name="qwen2_vl",
        model_types=("qwen2_vl",),
        text_blocks=("model.language_model.layers",),
        vision_blocks=("model.visual.blocks",),
        template="qwen2_vl",
        processor="qwen2_vl",
    )
)
register_family(
    ModelFamily(
        name="qwen2_5_vl",
        model_types=("qwen2_5_vl",),
        text_blocks=("model.language_model.layers",),
        vision_blocks=("model.visual.blocks",),
        ignore=("lm_head", "visual.merger"),
        template="qwen2_5_vl",
        processor="qwen2_vl",
    )
)
register_family(
    ModelFamily(
        name="qwen3_vl",
        model_types=("qwen3_vl",),
        text_blocks=("model.language_model.layers",),
        vision_blocks=("model.visual.blocks",),
        ignore=("lm_head", "visual.merger", "visual.deepstack_merger_list"),
        template="qwen2_5_vl",
        processor="qwen2_vl",
    )
)
register_family(
    ModelFamily(
        name="llava",
        model_types=("llava",),
        text_blocks=("model.language_model.layers",),
        vision_blocks=("model.vision_tower.encoder.layers", "model.vision_tower.vision_model.encoder.layers"),
        template="llava",
        processor="hf",
    )
)
register_family(
    ModelFamily(
        name="llava_next",
        model_types=("llava_next",),
        text_blocks=("model.language_model.layers",),
        vision_blocks=("model.vision_tower.encoder.layers", "model.vision_tower.vision_model.encoder.layers"),
        ignore=("lm_head", "multi_modal_projector"),
        template="llava",
        processor="hf",
    )
)
register_family(
    ModelFamily(
        name="mllama",
        model_types=("mllama",),
        # One list holds the self-attention and the cross-attention decoder layers.
        text_blocks=("model.language_model.layers",),
        vision_blocks=(
            "model.vision_model.transformer.layers",
            "model.vision_model.global_transformer.layers",
        ),
        ignore=("lm_head", "multi_modal_projector"),
        template="mllama",
        processor="mllama",
        text_only_calibration=False,  # cross-attention layers are skipped without an image
    )
)
register_family(
    ModelFamily(
        name="idefics3",
        model_types=("idefics3",),
        text_blocks=("model.text_model.layers",),
        vision_blocks=("model.vision_model.encoder.layers",),
        ignore=("lm_head", "connector"),
        template="idefics3",
        processor="hf",
    )
)
register_family(
    ModelFamily(
        name="smolvlm",
        model_types=("smolvlm",),
        text_blocks=("model.text_model.layers",),
        vision_blocks=("model.vision_model.encoder.layers",),
        ignore=("lm_head", "connector"),
        template="smolvlm",
        processor="hf",
    )
)
register_family(
    ModelFamily(
        name="gemma3",
        model_types=("gemma3",),
        text_blocks=("model.language_model.layers",),
        vision_blocks=("model.vision_tower.encoder.layers", "model.vision_tower.vision_model.encoder.layers"),
        ignore=("lm_head", "multi_modal_projector"),
        template="gemma3",
        processor="hf",
    )
)
register_family(
    ModelFamily(
        name="mistral3",
        model_types=("mistral3",),
        text_blocks=("model.language_model.layers",),
        vision_blocks=("model.vision_tower.transformer.layers",),
        ignore=("lm_head", "multi_modal_projector"),
        template="mistral3",
        processor="mistral3",
    )
)
register_family(
    ModelFamily(
        name="phi3_v",
        model_types=("phi3_v",),
        text_blocks=("model.layers",),
        vision_blocks=(
            "model.vision_embed_tokens.img_processor.encoder.layers",
            "model.vision_embed_tokens.img_processor.vision_model.encoder.layers",
        ),
        ignore=("lm_head", "img_projection"),
        template="phi3_v",
        processor="hf",
    )
)
register_family(
    ModelFamily(
        name="cogvlm2",
        model_types=("cogvlm2",),
        text_blocks=("model.layers",),
        vision_blocks=("model.vision.transformer.layers",),
        ignore=("lm_head", "model.vision.linear_proj"),
        template="cogvlm2",
        processor="cogvlm2",
        # the vision-expert Linears of every text layer see only image tokens: text alone tunes nothing
        text_only_calibration=False,
    )
)
register_family(
    ModelFamily(
        name="causal_lm",
        model_types=("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gemma2"),
        text_blocks=("model.layers",),
        processor="text",
    )
)
