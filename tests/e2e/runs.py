"""Helpers shared by the end-to-end tests that compare whole output folders."""

import pytest

from auto_round_mllm.cli.app import main


def run(args):
    """The CLI in-process; returns its exit code."""
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    return info.value.code


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def comparable(folder):
    """The folder's files; the reports name their own output folder, which differs by design."""
    files = snapshot(folder)
    for name in files:
        if name.endswith("quantization_report.json"):
            files[name] = files[name].replace(str(folder).encode(), b"OUT")
    return files


def tune_export(model, out, fmt, *, iters=2, **flags):
    """Tune a tiny model through the API with a small budget and write ``fmt`` to ``out/ckpt``;
    returns (job, tuned, folder)."""
    from auto_round_mllm import api
    from auto_round_mllm.flags import job_from_flags
    from auto_round_mllm.models.loading import load_model

    job = job_from_flags(
        model=str(model), iters=iters, nsamples=4, seqlen=32, batch_size=2, format=fmt, output_dir=str(out),
        device="cpu", **flags,
    )  # fmt: skip
    tuned = api.tune(job, load_model(job.model))
    folder = out / "ckpt"
    api.write_formats(tuned, job, {fmt: folder}, lambda facts: {"test": True})
    return job, tuned, folder
