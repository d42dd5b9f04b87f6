from auto_round_mllm.config import TuningConfig
from auto_round_mllm.export.auto_round import tuning_settings


def test_defaults_are_stripped_like_auto_round():
    assert tuning_settings(TuningConfig(), None) == {"dataset": "embedded"}


def test_differences_are_kept():
    settings = tuning_settings(TuningConfig(iters=50, nsamples=32, amp=False, lr=0.01), "calib.jsonl")
    assert settings == {
        "iters": 50,
        "nsamples": 32,
        "amp": False,
        "lr": 0.01,
        "minmax_lr": 0.01,
        "dataset": "calib.jsonl",
    }
    # lr = 1/iters is auto-round's default for any iters, so it is not written
    assert "lr" not in tuning_settings(TuningConfig(iters=50), None)


def test_rtn_writes_only_iters():
    assert tuning_settings(TuningConfig(iters=0, nsamples=3), "x") == {"iters": 0}
