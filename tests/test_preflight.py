"""Checks of the job alone, before any weight is read."""

import pytest

from auto_round_mllm.config import ExportConfig, QuantJob, TuningConfig
from auto_round_mllm.errors import UserError
from auto_round_mllm.preflight import check_job


def job(scale_dtype: str, *formats: str) -> QuantJob:
    return QuantJob(
        model="unused",
        tuning=TuningConfig(scale_dtype=scale_dtype),
        export=ExportConfig(formats=formats),
        device="cpu",
    )


@pytest.mark.parametrize("fmt", ["auto_round", "auto_round:auto_awq", "auto_gptq", "auto_awq"])
def test_fp32_scales_are_refused_by_the_formats_that_store_fp16(fmt):
    with pytest.raises(UserError, match=f"--scale_dtype float32 cannot be stored by --format {fmt}"):
        check_job(job("fp32", fmt))


@pytest.mark.parametrize(
    ("scale_dtype", "formats"), [("fp32", ("fake",)), ("bf16", ("auto_round", "auto_awq"))]
)
def test_scales_the_formats_hold_exactly_are_accepted(scale_dtype, formats):
    check_job(job(scale_dtype, *formats))
