import pytest

from auto_round_mllm.config import (
    PRESETS,
    ExportConfig,
    QuantJob,
    QuantScheme,
    TuningConfig,
    resolve_scheme,
)
from auto_round_mllm.errors import UserError


def test_presets_match_auto_round():
    assert PRESETS["W4A16"] == QuantScheme(4, 128, True)
    assert PRESETS["W2A16G64"] == QuantScheme(2, 64, True)
    assert PRESETS["W2A16G32"] == QuantScheme(2, 32, True)
    assert PRESETS["W3A16"].bits == 3 and PRESETS["W8A16"].bits == 8
    assert PRESETS["W2A16"] == QuantScheme(2, 128, True)


def test_flags_override_scheme():
    scheme = resolve_scheme("W2A16G64", bits=4, sym=False)
    assert scheme == QuantScheme(bits=4, group_size=64, sym=False)
    assert resolve_scheme("w4a16") == PRESETS["W4A16"]  # case-insensitive like auto-round


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"bits": 5}, "bits=5"),
        ({"bits": 1}, "bits=1"),
        ({"group_size": 0}, "group_size=0"),
        ({"group_size": -2}, "group_size=-2"),
        ({"data_type": "mx_fp"}, "data_type"),
    ],
)
def test_bad_scheme_is_user_error(kwargs, needle):
    with pytest.raises(UserError) as info:
        QuantScheme(**kwargs)
    assert needle in str(info.value)
    assert info.value.fix


def test_unknown_scheme_lists_presets():
    with pytest.raises(UserError, match="W4A16"):
        resolve_scheme("W5A16")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"iters": -1},
        {"nsamples": 0},
        {"seqlen": -5},
        {"batch_size": 0},
        {"gradient_accumulate_steps": 0},
        {"lr": 0.0},
    ],
)
def test_bad_tuning_values(kwargs):
    with pytest.raises(UserError):
        TuningConfig(**kwargs)


def test_learning_rates_follow_auto_round_defaults():
    assert TuningConfig().effective_lr(4) == pytest.approx(1 / 200)
    assert TuningConfig(iters=50).effective_minmax_lr(4) == pytest.approx(1 / 50)
    assert TuningConfig(lr=0.01).effective_minmax_lr(2) == 0.01
    assert TuningConfig(lr=0.01, minmax_lr=0.002).effective_minmax_lr(4) == 0.002
    # auto-round's rule: 2/iters from 1000 iters at 3 bits or fewer (its "best" recipe at W2/W3)
    assert TuningConfig(iters=1000).effective_lr(2) == pytest.approx(2 / 1000)
    assert TuningConfig(iters=1000).effective_lr(3) == pytest.approx(2 / 1000)
    assert TuningConfig(iters=1000).effective_lr(4) == pytest.approx(1 / 1000)
    assert TuningConfig(iters=999).effective_lr(2) == pytest.approx(1 / 999)


def test_dtype_spellings_are_normalized():
    assert TuningConfig(scale_dtype="fp16").scale_dtype == "float16"
    assert TuningConfig(scale_dtype="bf16").scale_dtype == "bfloat16"
    assert QuantJob(model="m", model_dtype="fp32").model_dtype == "float32"
    with pytest.raises(UserError, match="scale_dtype"):
        TuningConfig(scale_dtype="int8")


def test_job_round_trips_through_dict():
    job = QuantJob(
        model="x",
        scheme=QuantScheme(2, 64, False),
        tuning=TuningConfig(iters=3),
        export=ExportConfig(formats=("auto_round",), output_dir="o"),
        fp_layers=("lm_head",),
    )
    assert QuantJob.from_dict(job.to_dict()) == job


def test_group_fit():
    scheme = QuantScheme(4, 128)
    assert scheme.fits(256) and not scheme.fits(576)
    assert QuantScheme(4, -1).group_size_for(576) == 576
