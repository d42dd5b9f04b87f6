"""SignRound on a toy two-block model: it must beat round-to-nearest, deterministically."""

import copy

import pytest
import torch
from torch import nn

from auto_round_mllm.config import QuantScheme, TuningConfig
from auto_round_mllm.models.layer_plan import plan_layers
from auto_round_mllm.pipeline.blockwise import quantize_blocks
from auto_round_mllm.tuning import tuner_for
from auto_round_mllm.tuning.signround import CyclicBatchSampler
from auto_round_mllm.utils.device import Precision

HIDDEN = 64


class ToyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(HIDDEN, 4 * HIDDEN)
        self.down = nn.Linear(4 * HIDDEN, HIDDEN)

    def forward(self, hidden, attention_mask=None):
        return hidden + self.down(torch.nn.functional.silu(self.up(hidden)))


class ToyModel(nn.Module):
    """Embeddings with correlated, unevenly scaled channels (like real activations), two blocks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(100, HIDDEN)
        mixing = torch.randn(HIDDEN, HIDDEN) * torch.logspace(-1, 0.5, HIDDEN)
        self.embed.weight.data = self.embed.weight.data @ mixing
        self.layers = nn.ModuleList([ToyBlock(), ToyBlock()])

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=attention_mask)
        return hidden


def samples(n=16, length=24):
    gen = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 100, (1, length), generator=gen)} for _ in range(n)]


class UncorrelatedToyModel(ToyModel):
    """Unevenly scaled but independent channels: the clipping search's diagonal importance
    weighting is then the layer's true output error."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed.weight.data = torch.randn(100, HIDDEN) * torch.logspace(-1, 0.5, HIDDEN)


def run(config: TuningConfig, scheme=QuantScheme(2, 32), calibration=None, model_class=None):
    model = (model_class or ToyModel)()
    blocks = ["layers.0", "layers.1"]
    decisions = plan_layers(model, blocks, scheme, keep_patterns=(), checks=[])
    result = quantize_blocks(
        model,
        group="layers",
        block_names=blocks,
        decisions=decisions,
        tuner=tuner_for(config),
        config=config,
        samples=calibration or samples(),
        device=torch.device("cpu"),
        precision=Precision(torch.device("cpu"), None),
    )
    return model, result


def test_signround_beats_rtn_on_every_block():
    _, result = run(TuningConfig(iters=60, batch_size=4))
    for report in result.blocks:
        assert report.final_loss < 0.9 * report.rtn_loss, report
        assert report.best_loss <= report.first_loss


def test_rtn_needs_no_data_and_reports_no_losses():
    model, result = run(TuningConfig(iters=0))
    assert len(result.qweights) == 4
    assert all(r.rtn_loss is None for r in result.blocks)
    # the model now holds exactly the dequantized weights
    qw = result.qweights["layers.0.up"]
    assert torch.equal(model.layers[0].up.weight, qw.dequantize(model.layers[0].up.weight.dtype))


def test_same_seed_gives_identical_codes():
    config = TuningConfig(iters=10, batch_size=4)
    _, first = run(config)
    _, second = run(config)
    for name, qw in first.qweights.items():
        assert torch.equal(qw.codes, second.qweights[name].codes)
        assert torch.equal(qw.scale, second.qweights[name].scale)


def test_best_iteration_is_restored_and_not_use_best_mse_keeps_the_last():
    """With a learning rate far too large every step makes things worse, so the best parameters
    are the initial (RTN, without the clipping search) ones; --not_use_best_mse keeps the damaged
    last ones instead."""
    rtn = run(TuningConfig(iters=0))[1]
    best = run(TuningConfig(iters=6, batch_size=4, lr=3.0, clip_search=False))[1]
    last = run(TuningConfig(iters=6, batch_size=4, lr=3.0, use_best_mse=False, clip_search=False))[1]
    assert best.blocks[0].best_iter == 0
    assert torch.equal(best.qweights["layers.0.up"].codes, rtn.qweights["layers.0.up"].codes)
    assert not torch.equal(last.qweights["layers.0.up"].codes, rtn.qweights["layers.0.up"].codes)
    assert last.blocks[0].final_loss > best.blocks[0].final_loss


def test_not_use_best_mse_keeps_the_last_evaluated_step_not_an_unevaluated_update():
    """auto-round keeps the parameters the last step ran with; the update after it was never run."""
    from auto_round_mllm.quant.tunable import wrap_linears
    from auto_round_mllm.tuning.base import TuneContext
    from auto_round_mllm.tuning.block_inputs import BlockInputs
    from auto_round_mllm.tuning.signround import SignRoundTuner

    torch.manual_seed(0)
    block = ToyBlock()
    hidden = [torch.randn(1, 8, HIDDEN) for _ in range(4)]
    with torch.no_grad():
        targets = [block(h) for h in hidden]
    inputs = BlockInputs.from_captures([(h, (), {}) for h in hidden])
    wrapped = wrap_linears(block, lambda name: QuantScheme(2, 32))
    seen = []  # each forward's tunables: the last entry is what the last step evaluated
    hook = block.register_forward_pre_hook(lambda module, args: seen.append(wrapped["up"].snapshot()))
    ctx = TuneContext(inputs, targets, torch.device("cpu"), Precision(torch.device("cpu"), None), seed=0)
    config = TuningConfig(iters=5, batch_size=4, use_best_mse=False, clip_search=False)
    SignRoundTuner(config).tune_block(block, wrapped, ctx)
    hook.remove()
    kept = wrapped["up"].snapshot()
    assert len(seen) == 5
    assert all(torch.equal(kept[key], seen[-1][key]) for key in kept)
    assert not torch.equal(seen[-1]["v"], seen[-2]["v"])  # the steps did move the parameters


def test_quantized_stream_feeds_next_block():
    """With quantized inputs the second block's RTN loss includes the first block's error."""
    with_q = run(TuningConfig(iters=1, batch_size=4))[1]
    without_q = run(TuningConfig(iters=1, batch_size=4, enable_quanted_input=False))[1]
    assert with_q.blocks[1].rtn_loss > without_q.blocks[1].rtn_loss


def test_minmax_disabled_keeps_full_range():
    config = TuningConfig(iters=5, batch_size=4, enable_minmax_tuning=False)
    _, result = run(config, scheme=QuantScheme(4, 64))
    reference = copy.deepcopy(ToyModel().layers[0].up)
    from auto_round_mllm.quant.tunable import TunableLinear

    scale_full = TunableLinear(reference, QuantScheme(4, 64), enable_minmax_tuning=False).finalize().scale
    assert torch.equal(result.qweights["layers.0.up"].scale, scale_full)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_cyclic_sampler_visits_every_sample(batch_size):
    sampler = CyclicBatchSampler([list(range(8)), [8, 9, 10]], batch_size, seed=0)
    seen = set()
    for _ in range(20):
        batch = sampler.next()
        assert len(batch) <= batch_size
        assert all(i < 8 for i in batch) or all(i >= 8 for i in batch)  # never mixes shapes
        seen.update(batch)
    assert seen == set(range(11))


def test_best_step_is_judged_on_the_largest_same_shape_group():
    sampler = CyclicBatchSampler([[0], [1, 2, 3, 4], [5, 6]], batch_size=2, seed=0)
    assert sampler.reference == 1
    assert sampler.bucket_of == {0: 0, 1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2}


def test_a_batch_of_another_shape_never_decides_the_best_step():
    """A zero-input sample's loss is exactly 0 whatever the rounding (the output is the bias): if its
    batch could compete, the best loss would be 0 and the best step an accident of sampling."""
    from auto_round_mllm.quant.tunable import wrap_linears
    from auto_round_mllm.tuning.base import TuneContext
    from auto_round_mllm.tuning.block_inputs import BlockInputs
    from auto_round_mllm.tuning.signround import SignRoundTuner

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(16, 32))
    hidden = [torch.randn(1, 8, 16) @ torch.randn(16, 16) for _ in range(7)] + [torch.zeros(1, 2, 16)]
    with torch.no_grad():
        targets = [block(h) for h in hidden]
    inputs = BlockInputs.from_captures([(h, (), {}) for h in hidden])
    wrapped = wrap_linears(block, lambda name: QuantScheme(2, 16))
    ctx = TuneContext(inputs, targets, torch.device("cpu"), Precision(torch.device("cpu"), None), seed=0)
    outcome = SignRoundTuner(TuningConfig(iters=40, batch_size=2)).tune_block(block, wrapped, ctx)
    assert outcome.best_loss is not None and outcome.best_loss > 0


def test_the_clipping_search_gives_a_better_start_than_round_to_nearest():
    """Step 0 is evaluated before any update: with the whole set in one batch its loss is the
    starting point's loss on the calibration set, which the search makes lower than RTN's."""
    searched = run(TuningConfig(iters=1, batch_size=16), model_class=UncorrelatedToyModel)[1]
    plain = run(TuningConfig(iters=1, batch_size=16, clip_search=False), model_class=UncorrelatedToyModel)[1]
    for with_search, without in zip(searched.blocks, plain.blocks, strict=True):
        assert without.first_loss == pytest.approx(without.rtn_loss, rel=1e-5)
        assert with_search.first_loss < with_search.rtn_loss


def test_the_clipping_search_weights_columns_by_the_unpadded_inputs():
    """Padding positions carry garbage activations: they must not steer the clipping."""
    from auto_round_mllm.pipeline.cache import CachePlacement
    from auto_round_mllm.pipeline.capture import capture_block_inputs
    from auto_round_mllm.quant.tunable import wrap_linears
    from auto_round_mllm.tuning.base import TuneContext
    from auto_round_mllm.tuning.signround import input_mean_squares

    model = ToyModel()
    padded = [
        {"input_ids": s["input_ids"], "attention_mask": torch.ones_like(s["input_ids"])} for s in samples(4)
    ]
    padded[0]["attention_mask"][0, -6:] = 0
    cpu = torch.device("cpu")
    inputs = capture_block_inputs(model, model.layers[0], padded, device=cpu, cache=CachePlacement(cpu))
    block = model.layers[0]
    wrapped = wrap_linears(block, lambda name: QuantScheme(2, 32))
    ctx = TuneContext(inputs=inputs, targets=[], device=cpu, precision=Precision(cpu, None), seed=0)
    stats = input_mean_squares(block, wrapped, ctx, batch_size=4)
    kept = torch.cat([inputs.hidden[0][0, :-6], *[inputs.hidden[i][0] for i in range(1, 4)]])
    torch.testing.assert_close(stats["up"], kept.pow(2).mean(dim=0))
    assert set(stats) == {"up", "down"} and stats["down"].shape == (4 * HIDDEN,)


def test_the_pipeline_records_the_clipping_statistics_in_its_rtn_pass(monkeypatch):
    """The RTN MSE pass and the clipping search's statistics pass ran the same batches on the same
    weights: one pass now gives both, with the statistics (hence the tuned weights) unchanged."""
    from auto_round_mllm.tuning import signround

    passes = {"n": 0}
    real = signround.input_mean_squares

    def counted(*args, **kwargs):
        passes["n"] += 1
        return real(*args, **kwargs)

    config = TuningConfig(iters=5, batch_size=4)
    monkeypatch.setattr(signround, "input_mean_squares", counted)
    model, result = run(config)
    assert passes["n"] == 0, "the tuner made a statistics pass of its own"
    monkeypatch.setattr(signround.SignRoundTuner, "input_recorder", lambda self, wrapped: None)
    separate_model, separate = run(config)
    assert passes["n"] == 2, "without a recorder the tuner should make its own pass per block"
    for one, other in zip(result.blocks, separate.blocks, strict=True):
        assert (one.rtn_loss, one.first_loss, one.final_loss) == (
            other.rtn_loss,
            other.first_loss,
            other.final_loss,
        )
    for (name, a), (_, b) in zip(
        model.state_dict().items(), separate_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_dynamic_max_gap_stops_a_block_that_stopped_improving():
    """With a learning rate far too large the best step is the first: a gap of 3 stops each block
    after step 3 with the first step's parameters, which a full run keeps too."""
    full = run(TuningConfig(iters=12, batch_size=4, lr=3.0, clip_search=False))[1]
    early = run(TuningConfig(iters=12, batch_size=4, lr=3.0, clip_search=False, dynamic_max_gap=3))[1]
    assert [b.steps for b in full.blocks] == [12, 12]
    assert [b.steps for b in early.blocks] == [4, 4]
    assert [b.best_iter for b in early.blocks] == [0, 0]
    for name, qw in full.qweights.items():
        assert torch.equal(qw.codes, early.qweights[name].codes)
    # never with --not_use_best_mse (auto-round's rule), and never while the loss keeps improving
    last = run(TuningConfig(iters=12, batch_size=4, lr=3.0, use_best_mse=False, dynamic_max_gap=3))[1]
    assert [b.steps for b in last.blocks] == [12, 12]


def test_optimized_rtn_is_the_weighted_clipping_search_without_steps():
    """On independent input channels the search's diagonal weighting is the layer's true output
    error, so each block's loss must drop below plain RTN's on the same data."""
    rtn = run(TuningConfig(iters=0), model_class=UncorrelatedToyModel)[1]
    opt = run(TuningConfig(iters=0, opt_rtn=True), model_class=UncorrelatedToyModel)[1]
    assert all(b.steps == 0 and b.best_iter is None for b in opt.blocks)
    assert all(b.final_loss < b.rtn_loss for b in opt.blocks)  # the same data's plain-RTN loss
    assert any(not torch.equal(qw.scale, rtn.qweights[name].scale) for name, qw in opt.qweights.items())
    with pytest.raises(Exception, match="--enable_opt_rtn"):
        TuningConfig(iters=0, opt_rtn=True, clip_search=False)


def test_momentum_steps_take_the_sign_of_the_running_sum_of_gradients():
    """auto-round's SignSGD: buffer = grad at first, then momentum * buffer + grad; p -= lr * sign(buffer)."""
    from auto_round_mllm.tuning.signround import ParameterSteps

    p = torch.zeros(3, requires_grad=True)
    steps = ParameterSteps([p], momentum=0.9)
    for grad in ([1.0, -1.0, 1.0], [-0.5, -1.0, -2.0]):
        p.grad = torch.tensor(grad)
        steps.step(0.1)
        assert p.grad is None
    # buffers: [1, -1, 1] then [0.4, -1.9, -1.1]: signs [+, -, -] on the second step
    assert torch.allclose(p.detach(), torch.tensor([-0.2, 0.2, 0.0]))
    plain = torch.zeros(3, requires_grad=True)
    plain_steps = ParameterSteps([plain])
    for grad in ([1.0, -1.0, 1.0], [-0.5, -1.0, -2.0]):
        plain.grad = torch.tensor(grad)
        plain_steps.step(0.1)
    assert torch.allclose(plain.detach(), torch.tensor([0.0, 0.2, 0.0]))


@pytest.mark.parametrize("options", [{"enable_adam": True}, {"momentum": 0.5}], ids=["adam", "momentum"])
def test_adam_and_momentum_tune_the_same_parameters_and_beat_rtn(options):
    config = TuningConfig(iters=20, batch_size=4, clip_search=False, **options)
    tuned = run(config)[1]
    sign = run(TuningConfig(iters=20, batch_size=4, clip_search=False))[1]
    for block in tuned.blocks:
        assert block.final_loss < block.rtn_loss
    assert any(
        not torch.equal(qw.codes, sign.qweights[name].codes) for name, qw in tuned.qweights.items()
    )  # a different optimizer, not the sign steps under another name


def test_adam_with_momentum_is_refused():
    from auto_round_mllm.errors import UserError

    with pytest.raises(UserError, match="--enable_adam replaces them with AdamW"):
        TuningConfig(enable_adam=True, momentum=0.9)
