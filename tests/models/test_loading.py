import pytest
import torch

from auto_round_mllm.utils.dtype_policy import checkpoint_dtype


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"dtype": "float32"}, torch.float32),
        ({"torch_dtype": "bfloat16"}, torch.bfloat16),  # transformers 4 configs
        ({"text_config": {"dtype": "float16"}}, torch.float16),  # a VLM that names it per tower
        ({"dtype": "auto"}, None),
        ({}, None),
    ],
)
def test_checkpoint_dtype_reads_what_config_json_names(config, expected):
    assert checkpoint_dtype(config) == expected
