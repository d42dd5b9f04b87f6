import torch

from auto_round_mllm.config import QuantScheme
from auto_round_mllm.quant.clip_search import RATIOS, best_clip_ratios
from auto_round_mllm.quant.ops import fake_quant, group_range, qparams_from_range
from auto_round_mllm.quant.tunable import TunableLinear


def rtn_error(groups, ratios, bits, sym, weights=None):
    wmin, wmax = group_range(groups)
    scale, zp = qparams_from_range(wmin, wmax, bits, sym, ratios, ratios, scale_dtype=torch.float16)
    squared = (fake_quant(groups, scale, zp, bits) - groups).pow(2)
    return (squared if weights is None else squared * weights).sum(dim=1)


def heavy_tailed(rows=64, gs=32, seed=0):
    """Weights with a few outliers per group: where clipping pays off at 2 bits."""
    generator = torch.Generator().manual_seed(seed)
    groups = torch.randn(rows, gs, generator=generator) * 0.02
    groups[:, 0] *= 6
    return groups


def test_the_chosen_ratio_is_the_best_candidate_for_every_group():
    groups = heavy_tailed()
    wmin, wmax = group_range(groups)
    chosen = best_clip_ratios(groups, wmin, wmax, bits=2, sym=True, scale_dtype=torch.float16)
    errors = torch.stack([rtn_error(groups, torch.full((64,), r), 2, True) for r in RATIOS])
    assert torch.equal(rtn_error(groups, chosen, 2, True), errors.min(dim=0).values)
    assert (chosen < 1).float().mean() > 0.5, "most outlier-heavy groups are clipped at 2 bits"


def test_never_worse_than_no_clipping_and_ties_keep_the_full_range():
    groups = heavy_tailed(seed=1)
    wmin, wmax = group_range(groups)
    for bits, sym in ((2, True), (4, False), (8, True)):
        chosen = best_clip_ratios(groups, wmin, wmax, bits=bits, sym=sym, scale_dtype=torch.float16)
        assert (rtn_error(groups, chosen, bits, sym) <= rtn_error(groups, torch.ones(64), bits, sym)).all()
    exact = torch.tensor([[-2.0, -1.0, 0.0, 1.0]])  # representable at 2 bits: no ratio below 1 helps
    chosen = best_clip_ratios(exact, *group_range(exact), bits=2, sym=True, scale_dtype=torch.float32)
    assert chosen.tolist() == [1.0]


def test_column_weights_steer_the_choice_towards_important_inputs():
    groups = torch.tensor(
        [[-0.125, 0.018, -0.026, -0.022], [0.146, 0.023, -0.021, -0.002], [-0.109, 0.007, 0.011, -0.02]]
    )
    wmin, wmax = group_range(groups)
    outlier_matters = torch.tensor([[100.0, 1.0, 1.0, 1.0]])
    outlier_ignored = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    protect = best_clip_ratios(
        groups, wmin, wmax, bits=2, sym=True, scale_dtype=torch.float16, column_weights=outlier_matters
    )
    ignore = best_clip_ratios(
        groups, wmin, wmax, bits=2, sym=True, scale_dtype=torch.float16, column_weights=outlier_ignored
    )
    assert (protect > ignore).all()  # an important outlier is kept, an unimportant one clipped


def test_the_search_is_chunked_without_changing_the_answer(monkeypatch):
    from auto_round_mllm.quant import clip_search

    groups = heavy_tailed(rows=50)
    wmin, wmax = group_range(groups)
    weights = torch.rand(1, 32) + 0.5
    whole = best_clip_ratios(
        groups, wmin, wmax, bits=2, sym=False, scale_dtype=torch.float16, column_weights=weights
    )
    monkeypatch.setattr(clip_search, "CHUNK_ROWS", 7)
    chunked = best_clip_ratios(
        groups, wmin, wmax, bits=2, sym=False, scale_dtype=torch.float16, column_weights=weights
    )
    assert torch.equal(whole, chunked)


def test_a_tunable_layer_starts_from_the_searched_clipping():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 16, bias=False)
    with torch.no_grad():
        linear.weight[:, ::16] *= 8
    tunable = TunableLinear(linear, QuantScheme(2, 32, True))
    before = (tunable.qdq_weight() - linear.weight).pow(2).sum()
    tunable.start_from_best_clipping(torch.ones(64))
    assert torch.equal(tunable.min_scale, tunable.max_scale) and (tunable.min_scale < 1).any()
    assert (tunable.qdq_weight() - linear.weight).pow(2).sum() < before
    frozen = TunableLinear(torch.nn.Linear(64, 16), QuantScheme(2, 32, True), enable_minmax_tuning=False)
    frozen.start_from_best_clipping()
    assert (frozen.min_scale == 1).all()  # --disable_minmax_tuning: clipping stays off
