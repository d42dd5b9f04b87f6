"""CogVLM2 configuration (stand-in for THUDM/cogvlm2-llama3-chat-19B's configuration_cogvlm.py)."""

from transformers.configuration_utils import PretrainedConfig


class CogVLMConfig(PretrainedConfig):
    model_type = "cogvlm2"

    def __init__(
        self,
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_multi_query_heads=8,
        hidden_act="silu",
        max_position_embeddings=8192,
        initializer_range=0.02,
        rms_norm_eps=1e-05,
        template_version="chat",
        pad_token_id=128002,
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=False,
        use_cache=True,
        vision_config=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_multi_query_heads = num_multi_query_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.template_version = template_version
        self.use_cache = use_cache
        # EVA2-CLIP-E in the release: 63 layers, 1792 wide, 1344 x 1344 images, patch 14.
        self.vision_config = vision_config or {
            "dropout_prob": 0.0,
            "hidden_act": "gelu",
            "in_channels": 3,
            "num_hidden_layers": 63,
            "hidden_size": 1792,
            "patch_size": 14,
            "num_heads": 16,
            "intermediate_size": 15360,
            "layer_norm_eps": 1e-06,
            "num_positions": 9217,
            "image_size": 1344,
        }
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
