"""Crash-safe progress of a run, so a killed job resumes at its first unfinished block.

After every tuned block the run commits, atomically: the block's quantized weights, its report,
and both activation streams entering the next block (the only state the loop carries forward:
everything else a block sees is recaptured identically from the same model and data). A resumed
run restores the finished blocks' weights into the model, swaps the saved streams in, and goes on;
since tuning seeds per block, the result is bit-identical to an uninterrupted run.

Layout (a hidden sibling of the output folder, removed once the checkpoint is written)::

    .<output name>.resume/
      job.json                 fingerprint of the job, the model files and the calibration data
      progress.json            finished blocks, in order, with their reports (the commit record)
      <block>.safetensors      one per finished block: codes/scale/zp/bias of its Linears
      streams-<block>.safetensors  activations leaving the latest finished block

Every file is written to a temporary name and renamed, and ``progress.json`` is renamed last, so a
kill at any moment leaves either the previous commit or the new one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from auto_round_mllm.config import QuantJob
from auto_round_mllm.errors import UserError
from auto_round_mllm.quant.tunable import QuantizedWeight

log = logging.getLogger(__name__)

PROGRESS = "progress.json"
JOB = "job.json"
TUNED = "tuned."
"""Prefix of a block file's tuned 16-bit tensors (quantized layers' keys are module names)."""


def _streams_file(block: str) -> str:
    return f"streams-{block}.safetensors"


def resume_dir_for(output: Path) -> Path:
    return output.with_name(f".{output.name}.resume")


def open_progress(job: QuantJob, model_dir: Path, output: Path, *, resume: bool) -> ResumeState:
    """The progress folder of ``output``, the job's checkpoint folder. Output-only settings
    (--force, shard size) may change between the killed run and its resumption; everything that
    shapes the tuning may not. How the run fits in memory may change too: a run killed while
    streaming may resume without, and the other way."""
    identity = job.to_dict()
    identity["export"] = {k: v for k, v in identity["export"].items() if k not in ("force", "max_shard_size")}
    identity.pop("memory")
    fingerprint = {"job": identity, "model": model_fingerprint(model_dir)}
    folder = resume_dir_for(output)
    if resume and not (folder / JOB).is_file():
        log.info("--resume: no unfinished run in %s; starting one", folder)
    return ResumeState.open(folder, fingerprint, resume=resume, force=job.export.force)


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """config.json's hash and every weight file's name and size: cheap, and it changes when the
    model folder is swapped or re-downloaded differently."""
    config = hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()
    weights = sorted(
        (p.name, p.stat().st_size)
        for p in model_dir.iterdir()
        if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")
    )
    return {"config_sha256": config, "weights": weights}


def samples_fingerprint(samples: list[dict[str, torch.Tensor]] | None) -> str:
    """Hash of every calibration tensor: the same flags on an edited dataset give other samples."""
    digest = hashlib.sha256()
    for sample in samples or []:
        for key in sorted(sample):
            value = sample[key]
            if isinstance(value, torch.Tensor):
                digest.update(key.encode())
                digest.update(str(value.dtype).encode() + str(tuple(value.shape)).encode())
                digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(
        path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    )


class StoredQuantizedWeight:
    """A :class:`QuantizedWeight` that stays in its progress file: a streamed run of a 70B model
    cannot hold every layer's codes in memory until export. Reading ``codes``, ``scale``, ``zp`` or
    ``bias`` reads that tensor; the exporter packs one layer at a time."""

    on_disk = True

    def __init__(self, file: Path, name: str, bits: int, group_size: int, sym: bool) -> None:
        self.file, self.name = file, name
        self.bits, self.group_size, self.sym = bits, group_size, sym

    def _read(self, suffix: str) -> torch.Tensor | None:
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as handle:
            key = f"{self.name}.{suffix}"
            return handle.get_tensor(key) if key in handle.keys() else None  # noqa: SIM118

    @property
    def codes(self) -> torch.Tensor:
        return self._read("codes")  # type: ignore[return-value]

    @property
    def scale(self) -> torch.Tensor:
        return self._read("scale")  # type: ignore[return-value]

    @property
    def zp(self) -> torch.Tensor:
        return self._read("zp")  # type: ignore[return-value]

    @property
    def bias(self) -> torch.Tensor | None:
        return self._read("bias")

    @functools.cached_property
    def shape(self) -> tuple[int, int]:
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as handle:
            out, inp = handle.get_slice(f"{self.name}.codes").get_shape()
        return int(out), int(inp)

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    def load(self) -> QuantizedWeight:
        return QuantizedWeight(
            codes=self.codes,
            scale=self.scale,
            zp=self.zp,
            bits=self.bits,
            group_size=self.group_size,
            sym=self.sym,
            bias=self.bias,
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.load().dequantize(dtype)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        return self.load().to(device)


@dataclass
class ResumeState:
    """The progress folder of one output. ``job`` is the fingerprint a resume must match."""

    folder: Path
    job: dict[str, Any]
    discard_other_data: bool = False
    """--force without --resume: progress computed on other calibration samples is dropped."""
    samples: str | None = None
    """Fingerprint of the calibration samples, written with the first commit of a fresh run."""

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: Path, job: dict[str, Any], *, resume: bool, force: bool) -> ResumeState:
        """Continue a matching unfinished run, or start a fresh progress folder.

        A run of a different job there is refused (its hours of tuning are not thrown away
        silently) unless ``force``, which discards it; ``resume`` insists that the jobs match.
        """
        job = json.loads(json.dumps(job))  # compare as it reads back: tuples become lists
        saved = cls._read(folder / JOB)
        if saved is not None and saved != job:
            changed = sorted(k for k in set(saved) | set(job) if saved.get(k) != job.get(k))
            if resume or not force:
                raise UserError(
                    f"{folder} holds an unfinished run of a different job ({', '.join(changed)} differ)",
                    fix="run with the same model, scheme, data and flags to resume it, or pass --force "
                    "(without --resume) to discard it and start again",
                )
            log.warning("discarding the unfinished run in %s (%s differ)", folder, ", ".join(changed))
            shutil.rmtree(folder)
        state = cls(folder, job, discard_other_data=force and not resume)
        if state.done:
            log.info("resuming: %d blocks already done in %s", len(state.done), folder)
        return state

    @staticmethod
    def _read(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    # -- reading -----------------------------------------------------------------------------
    @property
    def progress(self) -> dict[str, Any]:
        return self._read(self.folder / PROGRESS) or {"blocks": []}

    @property
    def done(self) -> list[dict[str, Any]]:
        return self.progress["blocks"]

    def check_data(self, fingerprint: str) -> None:
        """The calibration samples must be the ones the saved progress was computed on."""
        self.samples = fingerprint
        saved = self.progress.get("samples")
        if saved is None or saved == fingerprint:
            return
        if not self.discard_other_data:
            raise UserError(
                f"{self.folder} holds an unfinished run on other calibration data (the samples differ)",
                fix="restore the dataset it used to resume, or pass --force (without --resume) to discard that run",
            )
        log.warning("discarding the unfinished run in %s (the calibration samples differ)", self.folder)
        self.remove()

    def finished(self, group: str) -> list[dict[str, Any]]:
        return [entry for entry in self.done if entry["block"].startswith(group + ".")]

    def stored_qweights(self, block: str) -> dict[str, StoredQuantizedWeight]:
        """A finished block's quantized Linears, left on disk until something reads them."""
        entry = next(e for e in self.done if e["block"] == block)
        file = self.folder / f"{block}.safetensors"
        return {
            f"{block}.{meta['name']}": StoredQuantizedWeight(
                file, meta["name"], meta["bits"], meta["group_size"], meta["sym"]
            )
            for meta in entry["layers"]
        }

    def stored_tensors(self, block: str) -> dict[str, torch.Tensor]:
        """A finished block's tuned 16-bit tensors (``--enable_norm_bias_tuning``), by full name."""
        entry = next(e for e in self.done if e["block"] == block)
        if not entry.get("tensors"):
            return {}
        with safe_open(self.folder / f"{block}.safetensors", "pt") as handle:
            return {name: handle.get_tensor(f"{TUNED}{name}") for name in entry["tensors"]}

    def load_streams(self, block: str) -> tuple[list[torch.Tensor], list[torch.Tensor] | None] | None:
        """(full, quantized) hidden states entering the block after ``block``; quantized is None
        when both streams are one (``--disable_quanted_input``)."""
        progress = self.progress
        if progress.get("streams_after") != block:
            return None
        tensors = load_file(self.folder / _streams_file(block))
        count = progress["stream_samples"]
        full = [tensors[f"full.{i}"] for i in range(count)]
        if "quantized.0" not in tensors:
            return full, None
        return full, [tensors[f"quantized.{i}"] for i in range(count)]

    # -- committing --------------------------------------------------------------------------
    def commit(
        self,
        blocks: list[tuple[str, dict[str, QuantizedWeight], dict[str, Any]]],
        streams: tuple[list[torch.Tensor], list[torch.Tensor] | None] | None,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Record finished blocks (one, or a ``--nblocks`` unit tuned together): each block's
        weights (keyed by name inside the block) and report, the streams leaving the last, then
        the progress, in one write: a unit is finished whole or not at all. The folder appears
        with the first commit: a run that fails before finishing a block leaves nothing behind.
        ``tensors``: tuned 16-bit tensors by full name, each kept with its block."""
        if not (self.folder / JOB).is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_json(self.folder / JOB, self.job)
        entries = []
        for block, qweights, report in blocks:
            files: dict[str, torch.Tensor] = {}
            layers = []  # a list: module order is the export's tensor order (JSON is written sorted)
            for name, qw in qweights.items():
                files[f"{name}.codes"] = qw.codes.contiguous()
                files[f"{name}.scale"] = qw.scale.contiguous()
                files[f"{name}.zp"] = qw.zp.contiguous()
                if qw.bias is not None:
                    files[f"{name}.bias"] = qw.bias.contiguous()
                layers.append({"name": name, "bits": qw.bits, "group_size": qw.group_size, "sym": qw.sym})
            own = {name: t for name, t in (tensors or {}).items() if name.startswith(f"{block}.")}
            for name, value in own.items():
                files[f"{TUNED}{name}"] = value.contiguous()
            _write_atomic(self.folder / f"{block}.safetensors", lambda tmp, t=files: save_file(t, tmp))
            entries.append({"block": block, "report": report, "layers": layers, "tensors": sorted(own)})
        last = blocks[-1][0]
        progress = self.progress
        progress["samples"] = self.samples
        previous = progress.get("streams_after")
        if streams is not None:
            full, quantized = streams
            saved = {f"full.{i}": t.detach().cpu().contiguous() for i, t in enumerate(full)}
            for i, t in enumerate(quantized or []):
                saved[f"quantized.{i}"] = t.detach().cpu().contiguous()
            _write_atomic(self.folder / _streams_file(last), lambda tmp: save_file(saved, tmp))
            progress.update(streams_after=last, stream_samples=len(full))
        progress["blocks"] = [*progress["blocks"], *entries]
        _write_json(self.folder / PROGRESS, progress)
        if streams is not None and previous:  # only now is the older file no longer the commit's
            (self.folder / _streams_file(previous)).unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
