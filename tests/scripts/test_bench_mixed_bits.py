"""The mixed-bits benchmark's layer-order mix covers every block once, at the intended widths."""

import bench_mixed_bits as bench

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.layer_config import entry_scheme, matching_entry, parse_layer_config


def test_the_first_half_of_the_blocks_is_wide_and_the_rest_narrow():
    config = parse_layer_config(bench.by_order_config(30, 4, 2))
    default = QuantScheme(3, 128)
    for block in range(30):
        key = matching_entry(f"model.layers.{block}.mlp.down_proj", config)
        assert entry_scheme(key, config[key], default).bits == (4 if block < 15 else 2), block
