"""``NeelNanda/pile-10k``: auto-round's default text set, read through ``datasets``.

Offline, ``datasets.load_dataset`` falls back to its own cache (``HF_DATASETS_CACHE``) only when
it believes it is offline; with no network but no ``HF_HUB_OFFLINE`` it first spends its retry
budget on the hub (tens of seconds). So when the hub is unreachable we switch both libraries to
offline mode for the one call: the cache answers in milliseconds, or the user gets a one-line
error naming the local alternatives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from auto_round_mllm.data.context import SourceContext
from auto_round_mllm.data.sample import Sample, SourceSamples
from auto_round_mllm.data.source_registry import register_dataset
from auto_round_mllm.errors import DatasetError

PILE = "NeelNanda/pile-10k"
LOCAL_ALTERNATIVES = (
    "use --dataset embedded (shipped, offline), or a local .txt/.jsonl/.json/.parquet file; "
    f"or cache it once on a connected machine with datasets.load_dataset({PILE!r})"
)


def datasets_cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


def pile_cached() -> bool:
    """True when a prepared copy sits in the datasets cache (the layout ``load_dataset`` reuses
    offline: ``<cache>/NeelNanda___pile-10k/<config>/<version>/<hash>/dataset_info.json``)."""
    namespace, name = PILE.split("/")
    return any((datasets_cache_dir() / f"{namespace}___{name}").glob("*/*/*/dataset_info.json"))


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Make ``datasets`` and ``huggingface_hub`` behave as under ``HF_HUB_OFFLINE=1`` for a while."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _ready(ctx: SourceContext) -> bool:
    return pile_cached() or ctx.hub_is_available()


@register_dataset(PILE, aliases=("pile-10k", "pile10k"), ready=_ready)
def pile_10k(ctx: SourceContext) -> SourceSamples:
    """10k documents of the Pile (text), from the hub or the datasets cache."""
    import datasets

    online = ctx.hub_is_available()
    try:
        with contextlib.nullcontext() if online else offline_hub():
            table = datasets.load_dataset(PILE, split="train")
    except Exception as exc:  # ConnectionError, FileNotFoundError, hub errors: all mean "not readable"
        if online:
            problem = f"hub dataset {PILE!r} could not be loaded ({type(exc).__name__}: {exc})"
        else:
            problem = (
                f"hub dataset {PILE!r} is not in the datasets cache ({datasets_cache_dir()}) "
                "and the hub cannot be reached"
            )
        raise DatasetError(" ".join(problem.split()), fix=LOCAL_ALTERNATIVES) from exc
    if "text" not in table.column_names:
        raise DatasetError(
            f"the cached {PILE!r} has columns {table.column_names}, not 'text'",
            fix=f"delete it from {datasets_cache_dir()} and load it again, or {LOCAL_ALTERNATIVES}",
        )
    samples = []
    for text in table["text"]:
        if isinstance(text, str) and text.strip():
            samples.append(Sample(text=text, source=PILE))
            if ctx.limit is not None and len(samples) >= ctx.limit:
                break
    return SourceSamples(label=PILE, samples=samples)
