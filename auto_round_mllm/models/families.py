"""The built-in model families: one short, data-only registration each.

Paths are transformers 5 module names. ``text_blocks`` / ``vision_blocks`` list candidates; the
first that exists in the model is used.
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
        name="llava",
        model_types=("llava",),
        text_blocks=("model.language_model.layers",),
        vision_blocks=("model.vision_tower.vision_model.encoder.layers",),
        template="llava",
        processor="hf",
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
