"""Calibration sources: resolve ``--dataset`` into :class:`Sample` objects.

``--dataset`` is one source or a comma list of them, each optionally with a count
(``embedded:64,./mine.jsonl:32``). A source is a registered name (see ``DATASETS``: the embedded
set, ``NeelNanda/pile-10k``, the ``liuhaotian/llava_*`` sets, or one a user registered), or a
local file or folder (``local:PATH`` forces the file reading when a path looks like a name).

Ordering and counts: sources are concatenated in the order given; a count takes the *first* N
usable samples of its source in the source's own order (file order; samples whose image is
missing do not count). Shuffling is the calibration builder's job, with its seed, so the same
``--dataset`` always yields the same samples.

Missing images are never filled in silently: each is counted in ``SourceSamples.missing_images``,
named in a note, and its sample is dropped; when more than ``max_missing_images`` (a fraction,
default 0.1) of a source's image references are missing, loading fails with a
:class:`DatasetError`, because the image folder is then most likely the wrong one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Built-in sources register themselves on import; `sources` is the module callers import.
from auto_round_mllm.data import embedded as _embedded
from auto_round_mllm.data import llava as _llava
from auto_round_mllm.data import pile as _pile
from auto_round_mllm.data.context import (
    DEFAULT_MAX_MISSING_IMAGES,
    SourceContext,
    parse_extra_data_dir,
)
from auto_round_mllm.data.local_files import READERS, read_local
from auto_round_mllm.data.sample import SourceSamples
from auto_round_mllm.data.source_registry import (
    DATASETS,
    DatasetSource,
    SourceLoader,
    register_dataset,
)
from auto_round_mllm.errors import DatasetError

__all__ = [
    "DATASETS",
    "DEFAULT_MAX_MISSING_IMAGES",
    "EMBEDDED",
    "PILE",
    "DatasetSource",
    "SourceContext",
    "SourceLoader",
    "SourceSpec",
    "default_dataset_for",
    "load_samples",
    "parse_dataset_spec",
    "register_dataset",
]

EMBEDDED = _embedded.EMBEDDED
EMBEDDED_IMAGES = _embedded.EMBEDDED_IMAGES
PILE = _pile.PILE
LLAVA_FILES = _llava.LLAVA_FILES
LOCAL_PREFIX = "local:"
_COUNT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class SourceSpec:
    """One entry of ``--dataset``: a source name or path, and how many samples to take from it."""

    name: str
    count: int | None = None

    def __str__(self) -> str:
        return self.name if self.count is None else f"{self.name}:{self.count}"


def parse_dataset_spec(spec: str) -> list[SourceSpec]:
    """``name[:count][,name[:count]...]``. A trailing ``:<integer>`` is a count; any other colon
    belongs to the name (``local:./x.jsonl``). Paths containing commas are not supported."""
    entries = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise DatasetError(
                f"--dataset {spec!r} has an empty entry", fix="write name[:count],name[:count]"
            )
        name, sep, tail = part.rpartition(":")
        if sep and name and _COUNT.fullmatch(tail.strip()):
            count = int(tail)
            if count <= 0:
                raise DatasetError(
                    f"--dataset entry {part!r} asks for {count} samples", fix="use a positive count"
                )
            entries.append(SourceSpec(name.strip(), count))
        else:
            entries.append(SourceSpec(part))
    return entries


def load_samples(
    spec: str | None,
    *,
    extra_data_dir: str | os.PathLike[str] | None = None,
    max_missing_images: float = DEFAULT_MAX_MISSING_IMAGES,
    hub_available: bool | None = None,
) -> SourceSamples:
    """Resolve ``--dataset`` (``None``: :func:`default_dataset_for`) into samples with their accounting.

    ``extra_data_dir``: ``DIR`` or ``image=DIR,video=DIR,audio=DIR``, where image names of LLaVA
    and local files are looked up (and the LLaVA JSON files). ``hub_available``: ``None`` checks
    quickly (``HF_HUB_OFFLINE``, then a 3-second connect), only if a source needs the hub.
    """
    if not 0.0 <= max_missing_images <= 1.0:
        raise DatasetError(
            f"max_missing_images is {max_missing_images}", fix="give a fraction between 0 and 1 (default 0.1)"
        )
    ctx = SourceContext(parse_extra_data_dir(extra_data_dir), hub_available, None, max_missing_images)
    if spec is None or not spec.strip():
        spec = _default_source(None, ctx)
    parts = parse_dataset_spec(spec)
    loaded = []
    for entry in parts:
        entry_ctx = ctx.fresh(entry.count)
        loaded.append(_load_entry(entry, entry_ctx))
        ctx.hub_available = entry_ctx.hub_available  # ask the network at most once per call
    if len(loaded) == 1:
        return loaded[0]
    result = SourceSamples(label=",".join(str(entry) for entry in parts), samples=[])
    for part in loaded:
        result.samples.extend(part.samples)
        result.missing_images += part.missing_images
        result.notes.extend(part.notes)
    return result


def _load_entry(entry: SourceSpec, ctx: SourceContext) -> SourceSamples:
    part = _read_source(entry.name, ctx)
    label = part.label
    tally = ctx.images
    if tally.missing:
        part.missing_images += tally.missing
        share = tally.missing / max(tally.referenced, 1)
        seen = f"{tally.missing} of {tally.referenced} images ({share:.0%})"
        if share > ctx.max_missing_images:
            raise DatasetError(
                f"{label}: {seen} are missing, more than the {ctx.max_missing_images:.0%} allowed "
                f"(e.g. {tally.examples[0]})",
                fix=(
                    "point --extra_data_dir (DIR or image=DIR) at the folder that holds them (COCO train2017 "
                    "for the LLaVA sets), or raise max_missing_images"
                ),
            )
        part.notes.append(
            f"{label}: {seen} were not found and their samples dropped (e.g. {', '.join(tally.examples)})"
        )
    if not part.samples:
        raise DatasetError(
            f"dataset {label} gave no samples", fix="check the source, or use --dataset embedded"
        )
    if entry.count is not None:
        if len(part.samples) < entry.count:
            part.notes.append(f"{label}: asked for {entry.count} samples, it has {len(part.samples)}")
        del part.samples[entry.count :]
    for sample in part.samples:
        sample.source = label
    return part


def _read_source(name: str, ctx: SourceContext) -> SourceSamples:
    if name.startswith(LOCAL_PREFIX):
        return read_local(Path(name.removeprefix(LOCAL_PREFIX)).expanduser(), ctx)
    if name in DATASETS:
        return DATASETS.get(name).load(ctx)
    path = Path(name).expanduser()
    if path.exists() or path.suffix.lower() in READERS:
        return read_local(path, ctx)
    if "/" in name or os.sep in name:
        raise DatasetError(
            f"dataset {name!r} is neither a registered source nor an existing file or folder "
            "(a hub dataset must be one of the registered sources)",
            fix=f"choose one of: {', '.join(DATASETS.names())}; or give the path of a local file or folder",
        )
    DATASETS.get(name)  # raises UnknownName listing the registered sources and the closest one
    raise AssertionError("unreachable")


def default_dataset_for(
    template_default: str | None,
    *,
    extra_data_dir: str | os.PathLike[str] | None = None,
    hub_available: bool | None = None,
) -> str:
    """The source to calibrate with when the user named none.

    Preference: the template's own default (``template_default``, e.g. a LLaVA set for a model
    whose template wants images), else ``NeelNanda/pile-10k`` like auto-round; but only when that
    source can be read now (for pile-10k: cached in the datasets cache, or the hub reachable; for
    LLaVA: its JSON found locally; local files: they exist). Otherwise the shipped ``embedded``
    set, so a run on an offline machine works with no flag instead of failing on a download.
    An unknown ``template_default`` name is an error (it is a bug in a template, not a reason to
    guess).
    """
    return _default_source(
        template_default, SourceContext(parse_extra_data_dir(extra_data_dir), hub_available)
    )


def _default_source(template_default: str | None, ctx: SourceContext) -> str:
    candidate = template_default or PILE
    if candidate in DATASETS:
        source = DATASETS.get(candidate)
        return source.name if source.is_ready(ctx) else EMBEDDED
    path = Path(candidate.removeprefix(LOCAL_PREFIX)).expanduser()
    if path.exists():
        return candidate
    if candidate.startswith(LOCAL_PREFIX) or "/" in candidate or path.suffix.lower() in READERS:
        return EMBEDDED  # the template's file or hub set is not on this machine
    DATASETS.get(candidate)  # an unknown name: UnknownName, listing the choices
    raise AssertionError("unreachable")
