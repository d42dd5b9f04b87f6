"""The ``DATASETS`` registry: named calibration sources, built in or added by users.

A source is a function that takes a :class:`SourceContext` and returns a :class:`SourceSamples`
(or simply a list of :class:`Sample`/``str``); a zero-argument function is accepted too, so a
text list can be registered in three lines::

    from auto_round_mllm.data.sources import register_dataset

    @register_dataset("my-notes", aliases=("notes",))
    def my_notes(ctx):
        return ["first text", "second text"]

Image references should go through ``ctx.resolve_image(name, folder, where=...)``: it refuses
paths that leave the folder and counts missing files, which ``load_samples`` reports and checks
against ``max_missing_images``.

It lives in its own module so that the built-in sources can register themselves without
importing :mod:`auto_round_mllm.data.sources`, which imports them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from auto_round_mllm.data.context import SourceContext
from auto_round_mllm.data.sample import Sample, SourceSamples
from auto_round_mllm.errors import DatasetError
from auto_round_mllm.registry import Registry

SourceResult = SourceSamples | Iterable[Sample | str]
SourceLoader = Callable[[SourceContext], SourceResult] | Callable[[], SourceResult]


@dataclass(frozen=True)
class DatasetSource:
    """A registered source: its display name, loader, and how to tell whether it can load now.

    ``ready`` answers "would loading work without the user doing anything?" (the data is cached,
    or the hub can be reached); ``None`` means the source is local and always ready. It drives
    :func:`auto_round_mllm.data.sources.default_dataset_for`.
    """

    name: str
    loader: SourceLoader
    description: str = ""
    ready: Callable[[SourceContext], bool] | None = None

    def load(self, ctx: SourceContext) -> SourceSamples:
        takes_context = bool(inspect.signature(self.loader).parameters)
        result = self.loader(ctx) if takes_context else self.loader()  # type: ignore[call-arg]
        return as_source_samples(result, self.name)

    def is_ready(self, ctx: SourceContext) -> bool:
        return True if self.ready is None else bool(self.ready(ctx))


DATASETS: Registry[DatasetSource] = Registry("dataset")


def register_dataset(
    name: str,
    *,
    aliases: tuple[str, ...] = (),
    description: str | None = None,
    ready: Callable[[SourceContext], bool] | None = None,
    replace: bool = False,
) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator: register ``loader`` under ``name`` (and ``aliases``); returns it unchanged."""

    def decorator(loader: SourceLoader) -> SourceLoader:
        summary = description if description is not None else (inspect.getdoc(loader) or "").split("\n")[0]
        DATASETS.add(name, DatasetSource(name, loader, summary, ready), aliases=aliases, replace=replace)
        return loader

    return decorator


def as_source_samples(result: SourceResult, label: str) -> SourceSamples:
    """Accept what a user's loader most naturally returns; anything else is their bug, said plainly."""
    if isinstance(result, SourceSamples):
        return result
    if isinstance(result, str | bytes) or not isinstance(result, Iterable):
        raise DatasetError(
            f"dataset source {label!r} returned {type(result).__name__}",
            fix="return a SourceSamples, or a list of Sample objects or strings",
        )
    samples = []
    for item in result:
        if isinstance(item, Sample):
            samples.append(item)
        elif isinstance(item, str):
            if item.strip():
                samples.append(Sample(text=item))
        else:
            raise DatasetError(
                f"dataset source {label!r} returned a {type(item).__name__} item",
                fix="return Sample objects or strings",
            )
    return SourceSamples(label=label, samples=samples)
