import torch

from auto_round_mllm.tuning.block_inputs import BlockInputs, run_block


def capture(seed: int, *, mask_value: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, 5, 8, generator=gen)
    cos = torch.arange(3 * 5 * 4, dtype=torch.float32).reshape(3, 1, 5, 4)  # mrope-like [3, B, L, D]
    mask = torch.full((1, 1, 5, 5), mask_value)
    return hidden, (), {"position_embeddings": (cos, cos + 1), "attention_mask": mask, "use_cache": False}


def test_identical_kwargs_are_stored_once_and_varying_ones_per_sample():
    inputs = BlockInputs.from_captures([capture(0), capture(1, mask_value=-1.0), capture(2)])
    assert set(inputs.shared) == {"position_embeddings", "use_cache"}
    assert [set(p) for p in inputs.per_sample] == [{"attention_mask"}] * 3


def test_batch_expands_shared_tensors_along_their_batch_dim():
    inputs = BlockInputs.from_captures([capture(0), capture(1, mask_value=-1.0), capture(2)])
    hidden, args, kwargs = inputs.batch([2, 0], torch.device("cpu"))
    assert hidden.shape == (2, 5, 8)
    assert torch.equal(hidden[0], inputs.hidden[2][0])
    cos, sin = kwargs["position_embeddings"]
    assert cos.shape == (3, 2, 5, 4) and sin.shape == (3, 2, 5, 4)
    assert kwargs["attention_mask"].shape == (2, 1, 5, 5)
    assert kwargs["use_cache"] is False and args == ()


def test_masks_are_concatenated_in_batch_order():
    inputs = BlockInputs.from_captures([capture(0), capture(1, mask_value=-1.0)])
    _, _, kwargs = inputs.batch([1, 0], torch.device("cpu"))
    assert kwargs["attention_mask"][0].eq(-1).all() and kwargs["attention_mask"][1].eq(0).all()


def test_shape_buckets_keep_different_lengths_apart():
    long = (torch.zeros(1, 7, 8), (), {})
    inputs = BlockInputs.from_captures([(*capture(0)[:2], {}), long, (*capture(1)[:2], {})])
    assert sorted(map(sorted, inputs.shape_buckets())) == [[0, 2], [1]]


def test_with_hidden_keeps_kwargs():
    inputs = BlockInputs.from_captures([capture(0), capture(1)])
    nxt = inputs.with_hidden([h + 1 for h in inputs.hidden])
    assert nxt.shared is inputs.shared and torch.equal(nxt.hidden[0], inputs.hidden[0] + 1)


def test_run_block_unwraps_tuples():
    class TupleBlock(torch.nn.Module):
        def forward(self, hidden, scale=1.0):
            return (hidden * scale, None)

    out = run_block(TupleBlock(), torch.ones(1, 2), (), {"scale": 3.0})
    assert torch.equal(out, torch.full((1, 2), 3.0))


def test_masked_mse_ignores_padding():
    from auto_round_mllm.tuning.block_inputs import masked_mse

    out, target = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    assert torch.allclose(masked_mse(out, target, None), torch.nn.functional.mse_loss(out, target))
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    noisy = target.clone()
    noisy[0, 2:] += 1000  # garbage at padded positions
    assert torch.allclose(masked_mse(out, target, mask), masked_mse(out, noisy, mask))
    expected = ((out - target).pow(2)[mask.bool()]).mean()
    assert torch.allclose(masked_mse(out, target, mask), expected)


def test_loss_mask_batches_padded_and_unpadded_samples():
    captures = [capture(0), capture(1)]
    inputs = BlockInputs.from_captures(captures, [torch.tensor([[1.0, 1, 1, 0, 0]]), None])
    assert inputs.loss_mask([1], torch.device("cpu")) is None
    mask = inputs.loss_mask([0, 1], torch.device("cpu"))
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert inputs.with_hidden(inputs.hidden).masks is inputs.masks
