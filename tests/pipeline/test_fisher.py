"""The Fisher pass predicts what quantizing one layer does to the model's output: its weighted
error, halved, is the KL that layer alone adds, layer by layer, where each layer's own error is
not (the reason mixed bits uses it)."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from auto_round_mllm.config import PRESETS
from auto_round_mllm.pipeline.cache import CachePlacement
from auto_round_mllm.pipeline.fisher import FisherPass, OutputHead
from auto_round_mllm.pipeline.mixed import MeasurePass
from auto_round_mllm.tuning.mixed_bits import rounded_start
from auto_round_mllm.tuning.signround import InputMeanSquares
from auto_round_mllm.utils.device import Precision

CPU = torch.device("cpu")
SCHEME = dataclasses.replace(PRESETS["W2A16"], group_size=64)


def spearman(a, b):
    def ranks(values):
        return torch.argsort(torch.argsort(torch.tensor(values))).double()

    ra, rb = ranks(a), ranks(b)
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.fixture(scope="module")
def measured(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    samples = []
    for index in range(12):
        mask = torch.ones(1, 48, dtype=torch.long)
        if index == 3:
            mask[0, :10] = 0  # a left-padded sample: its padding draws no token
        samples.append(
            {"input_ids": torch.randint(3, 1900, (1, 48), generator=generator), "attention_mask": mask}
        )
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    candidates = {name: [SCHEME] for name in names}
    blocks = [f"model.layers.{i}" for i in range(4)]
    head = OutputHead.find(model, "model.layers")
    fisher = FisherPass(model, head, CPU, Precision(CPU, None), CachePlacement(CPU), torch.float16, None)
    predicted = fisher.group("model.layers", blocks, samples, candidates, 4)
    local = MeasurePass(model, CPU, Precision(CPU, None), CachePlacement(CPU), torch.float16, None).group(
        "model.layers", blocks, samples, candidates, 4
    )
    return model, samples, names, predicted, local


def kl_of_each_layer_alone(model, samples, names):
    """sum over tokens of KL(fp || model with one layer rounded), per layer."""
    modules = dict(model.named_modules())
    kept = [s for s in samples if bool(s["attention_mask"].all())]
    ids = torch.cat([s["input_ids"] for s in kept])
    with InputMeanSquares({n: modules[n] for n in names}) as recorder, torch.no_grad():
        reference = model(input_ids=ids).logits.log_softmax(-1)
    mean_squares = recorder.result()
    out = {}
    for name in names:
        weight = modules[name].weight.data.clone()
        with torch.no_grad():
            modules[name].weight.copy_(rounded_start(weight, SCHEME, mean_squares[name], torch.float16))
            rounded = model(input_ids=ids).logits.log_softmax(-1)
            modules[name].weight.copy_(weight)
        out[name] = float((reference.exp() * (reference - rounded)).sum()) * len(samples) / len(kept)
    return out


def test_the_fisher_weighted_error_ranks_layers_as_their_measured_kl(measured):
    model, samples, names, predicted, local = measured
    kl = kl_of_each_layer_alone(model, samples, names)
    truth = [kl[n] for n in names]
    fisher_rank = spearman(truth, [predicted[n][SCHEME] for n in names])
    local_rank = spearman(truth, [local[n][SCHEME] for n in names])
    assert fisher_rank > 0.95
    assert local_rank < fisher_rank - 0.3  # each layer's own error misses how it grows downstream
    # and in size: half the weighted error is the second-order KL (the largest errors overshoot it)
    ratios = sorted(0.5 * predicted[n][SCHEME] / kl[n] for n in names)
    assert 0.7 < ratios[len(ratios) // 2] < 1.5


def test_every_measured_layer_has_a_positive_error_and_the_weights_are_left_alone(measured, tiny_llama):
    model, _, names, predicted, _ = measured
    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    for (name, param), (_, original) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(param, original), name
        assert param.grad is None and param.requires_grad
    assert set(predicted) == set(names)
    assert all(predicted[n][SCHEME] > 0 for n in names)


def test_a_model_without_a_final_norm_has_no_head():
    from torch import nn

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4)])

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Decoder()
            self.lm_head = nn.Linear(4, 8)

        def get_output_embeddings(self):
            return self.lm_head

    assert OutputHead.find(Model(), "model.layers") is None
    model = Model()
    model.model.norm = nn.LayerNorm(4)
    assert OutputHead.find(model, "model.layers").lm_head is model.lm_head
