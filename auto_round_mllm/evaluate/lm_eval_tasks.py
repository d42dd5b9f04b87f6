"""``--tasks``: lm-eval (EleutherAI's harness) on a checkpoint we wrote, read by our own loader.

lm-eval's own ``model="hf"`` loads a folder with ``from_pretrained``, which cannot read our packed
checkpoints unless a peer package (auto-round, gptqmodel, autoawq) is installed and agrees with our
layout. So the checkpoint is loaded here, by :func:`~auto_round_mllm.inference.loader.load_quantized`
for the packed formats and by plain transformers for ``fake`` and unquantized folders, and lm-eval
gets the model instance wrapped in its ``HFLM``. What is scored is the checkpoint on disk, through
the same reader our users load it with.

Everything that can be checked without weights, :func:`prepare` checks: the package is installed,
each task is known to lm-eval or is a local task YAML, the numbers and dtype make sense. The command
calls it before quantizing, so a typo in ``--tasks`` costs seconds, not a two-hour run.

A task is an lm-eval name (``hellaswag``, ``arc_*``), or a path to a task YAML or a folder of them,
whose folder is added to lm-eval's ``include_path``: local tasks over local data files run offline.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from auto_round_mllm.config import MODEL_DTYPES, normalize_dtype, split_list
from auto_round_mllm.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
"""auto-round's batch size when it hands lm-eval a model instance (its ``eval_bs`` default of "auto"
probes by running out of memory, which on a CPU means the process is killed, not an exception)."""
OLDEST_LM_EVAL = "0.4.13"
"""The release this was built and tested with (its task index API is recent)."""
INSTALL_FIX = "pip install lm-eval (or the test extra: pip install -e '.[test]'), or leave --tasks out"
TASK_SUFFIXES = (".yaml", ".yml")
"""What a task path ends with; lm-eval indexes only ``*.yaml`` (``.yml`` is refused with the fix)."""
IMAGE_KEYS = ("doc_to_image", "doc_to_audio")
"""A task config with one of these keys feeds images (or audio) to the model: lm-eval's multimodal tasks."""


@dataclass(frozen=True)
class LmEvalSettings:
    """What lm-eval runs, under auto-round's flag names (``--tasks``, ``--eval_bs`` ...)."""

    tasks: tuple[str, ...]
    """lm-eval task, group or tag names (globs allowed), or paths to task YAML files or folders."""
    eval_bs: int | None = None
    """Batch size; None: :data:`DEFAULT_BATCH_SIZE`."""
    limit: float | None = None
    """Documents per task: a count, or a fraction of each task's documents when below 1."""
    num_fewshot: int | None = None
    """Few-shot examples per prompt; None: each task's own setting."""
    eval_gen_kwargs: str | None = None
    """Generation settings for ``generate_until`` tasks, ``key=value,...`` as lm-eval parses them."""
    fewshot_as_multiturn: bool = False
    """With :attr:`apply_chat_template`, few-shot examples as separate chat turns."""
    apply_chat_template: bool = False
    """Render prompts with the tokenizer's chat template (lm-eval's own option; auto-round has none)."""
    add_bos_token: bool = False
    """Prepend the BOS token; off: the tokenizer's default (Llama tokenizers add it anyway)."""
    eval_task_by_task: bool = False
    """One lm-eval run per task, the batch size halved and the task retried on running out of memory."""
    eval_model_dtype: str | None = None
    """dtype the checkpoint is loaded in; None or ``auto``: the checkpoint's own."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", split_list(self.tasks))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(LmEvalSettings))
"""The command's flags (and the Python keywords) that shape an lm-eval run."""


@dataclass(frozen=True)
class LmEvalPlan:
    """Settings checked against lm-eval: the names it will load, and its task manager."""

    settings: LmEvalSettings
    names: tuple[str, ...]
    """What lm-eval loads: the names given (globs expanded) and the tasks the local YAMLs define."""
    manager: Any
    """lm-eval's ``TaskManager``, indexing its own tasks (when a name needs them) and the local folders."""
    dtype: str
    """Canonical: auto, float16, bfloat16, float32."""
    gen_kwargs: dict[str, Any] | None


@dataclass
class LmEvalResult:
    """lm-eval's numbers for one checkpoint, small enough for a summary and ``--json``."""

    model: str
    tasks: list[str]
    """The tasks and groups lm-eval reported, in its order."""
    metrics: dict[str, dict[str, float]]
    """Per task, lm-eval's metrics (``acc``, ``acc_stderr``, ``bits_per_byte`` ...); a filter other
    than lm-eval's ``none`` stays in the key (``exact_match,strict-match``)."""
    samples: dict[str, int]
    """Documents scored per task (after ``limit``)."""
    num_fewshot: dict[str, int]
    lm_eval_version: str
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, float, float | None]]:
        """(task, metric, value, stderr) for every metric, stderr beside the metric it belongs to."""
        out = []
        for task, metrics in self.metrics.items():
            for key, value in metrics.items():
                name, _, filter_name = key.partition(",")
                if name.endswith("_stderr"):
                    continue
                stderr_key = f"{name}_stderr" + (f",{filter_name}" if filter_name else "")
                out.append((task, key, value, metrics.get(stderr_key)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def installed_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


def check_installed() -> None:
    """Refuse, in one line, when lm-eval is not installed, or older than the release whose task
    index (``TaskManager.task_index``) this module reads."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("--tasks needs the lm-eval package, which is not installed", fix=INSTALL_FIX)
    from packaging.version import Version

    found = installed_version()
    if Version(found) < Version(OLDEST_LM_EVAL):
        raise UserError(
            f"--tasks needs lm-eval {OLDEST_LM_EVAL} or later; {found} is installed",
            fix=f"pip install -U 'lm-eval>={OLDEST_LM_EVAL}'",
        )


def prepare(settings: LmEvalSettings) -> LmEvalPlan:
    """Every check that needs no weights; the plan :func:`run_tasks` runs."""
    check_installed()
    if not settings.tasks:
        raise UserError("--tasks is empty", fix="name at least one lm-eval task or task YAML")
    if settings.eval_bs is not None and settings.eval_bs < 1:
        raise UserError(
            f"--eval_bs {settings.eval_bs} must be at least 1", fix="use a batch size of 1 or more"
        )
    if settings.limit is not None and not (settings.limit > 0 and math.isfinite(settings.limit)):
        raise UserError(
            f"--limit {settings.limit} must be positive",
            fix="give a count of documents per task (100) or a fraction below 1 (0.1)",
        )
    if settings.num_fewshot is not None and settings.num_fewshot < 0:
        raise UserError(f"--num_fewshot {settings.num_fewshot} is negative", fix="use 0 or more")
    if settings.fewshot_as_multiturn and not settings.apply_chat_template:
        raise UserError(
            "--fewshot_as_multiturn puts few-shot examples in chat turns, which needs --apply_chat_template",
            fix="add --apply_chat_template, or leave --fewshot_as_multiturn out",
        )
    dtype = normalize_dtype(
        settings.eval_model_dtype or "auto", allowed=MODEL_DTYPES, flag="--eval_model_dtype"
    )
    names, manager = resolve_tasks(settings.tasks)
    return LmEvalPlan(settings, names, manager, dtype, parse_gen_kwargs(settings.eval_gen_kwargs))


def parse_gen_kwargs(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    from lm_eval.utils import simple_parse_args_string

    # lm-eval reads "foo" as foo="" and "=3" as ""=3; a typo should not pass as a setting
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if not item.partition("=")[0].strip() or "=" not in item]
    if bad:
        raise UserError(
            f"--eval_gen_kwargs {text!r}: {bad[0]!r} is not key=value",
            fix="write key=value pairs separated by commas: temperature=0,max_gen_toks=128",
        )
    return simple_parse_args_string(text) or None


# ----------------------------------------------------------------------------------------- tasks


def is_task_path(spec: str) -> bool:
    """A path to a task YAML or a folder of them, rather than a name lm-eval registers."""
    return spec.endswith(TASK_SUFFIXES) or "/" in spec or "\\" in spec or Path(spec).is_dir()


def task_manager(include_paths: tuple[str, ...], include_defaults: bool) -> Any:
    """lm-eval's TaskManager over its own tasks (when asked) and the local folders. Indexing its
    ~15,000 built-in task files takes seconds, so a manager is kept per process, and built again
    when a YAML file in the local folders is added, removed or changed."""
    files = tuple(
        (str(path), path.stat().st_mtime_ns)
        for folder in include_paths
        for path in sorted(Path(folder).rglob("*.yaml"))
    )
    return _task_manager(include_paths, include_defaults, files)


@functools.cache
def _task_manager(include_paths: tuple[str, ...], include_defaults: bool, _files: tuple) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None, include_defaults=include_defaults)


def kind_of(entry: Any) -> str:
    return entry.kind.name  # TASK, PY_TASK, GROUP or TAG


def children_of(entry: Any) -> list[str]:
    """The task and group names a group entry lists (inline task configs name themselves)."""
    listed = (entry.cfg or {}).get("task") or []
    listed = listed if isinstance(listed, list) else [listed]
    return [item if isinstance(item, str) else item.get("task") or item.get("group") for item in listed]


def local_names(spec: str, index: Mapping[str, Any]) -> list[str]:
    """The tasks a local YAML file defines, or the top-level ones of a folder (its groups, and the
    tasks no group of the folder lists)."""
    path = Path(spec).expanduser().resolve()
    if path.is_file() and path.suffix != ".yaml":
        raise UserError(
            f"--tasks {spec}: lm-eval reads task files named *.yaml", fix=f"rename it to {path.stem}.yaml"
        )
    runnable = {name: e for name, e in index.items() if kind_of(e) != "TAG" and e.yaml_path is not None}
    if path.is_file():
        names = [name for name, e in runnable.items() if Path(e.yaml_path).resolve() == path]
    else:
        inside = {name: e for name, e in runnable.items() if Path(e.yaml_path).resolve().is_relative_to(path)}
        listed = {child for e in inside.values() if kind_of(e) == "GROUP" for child in children_of(e)}
        names = [name for name in inside if name not in listed]
    if not names:
        raise UserError(
            f"--tasks {spec}: defines no lm-eval task (no parsable YAML with a 'task:' or 'group:' key)",
            fix="see lm-eval's task guide (docs/task_guide.md); README shows a minimal local task",
        )
    return names


def resolve_tasks(specs: Sequence[str]) -> tuple[tuple[str, ...], Any]:
    """The names lm-eval will load and a TaskManager that knows each. lm-eval's own task index is
    read only when a name (or a local group's member) is not found in the local folders."""
    paths = [spec for spec in specs if is_task_path(spec)]
    for spec in paths:
        if not Path(spec).expanduser().exists():
            raise UserError(f"--tasks {spec}: no such task file or folder", fix="check the path")
    folders = tuple(
        sorted({str(p if p.is_dir() else p.parent) for p in (Path(s).expanduser().resolve() for s in paths)})
    )
    local = task_manager(folders, False) if folders else None
    local_index = local.task_index if local else {}
    names: list[str] = []
    for spec in specs:
        names.extend(local_names(spec, local_index) if spec in paths else [spec])
    wanted = [n for n in names if n not in local_index] + [
        child
        for n in names
        if n in local_index
        for child in children_of(local_index[n])
        if child not in local_index
    ]
    manager = task_manager(folders, True) if wanted or not local else local
    resolved: list[str] = []
    for name in names:
        resolved.extend(known_names(name, manager))
    check_runnable(resolved, manager.task_index)
    return tuple(dict.fromkeys(resolved)), manager


def known_names(name: str, manager: Any) -> list[str]:
    """``name`` as lm-eval knows it (a glob expanded), or a one-line refusal."""
    if name in manager.task_index:
        return [name]
    if any(ch in name for ch in "*?["):
        found = manager.match_tasks([name])
        if found:
            return found
    close = difflib.get_close_matches(name, manager.all_tasks, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if importlib.util.find_spec("lmms_eval") is None:
        image = "image-text tasks need lmms-eval, which is not installed"
    else:
        image = "lmms-eval's image-text tasks are not run here yet"
    raise UserError(
        f"--tasks: lm-eval knows no task {name!r}{hint}; {image}",
        fix="`lm-eval ls tasks` lists lm-eval's tasks; a local task is a path to its YAML file or folder",
    )


def leaf_entries(name: str, index: Mapping[str, Any], seen: set[str] | None = None) -> list[Any]:
    """The task entries ``name`` runs: itself, or a group's or tag's members, recursively."""
    seen = set() if seen is None else seen
    entry = index.get(name)
    if entry is None or name in seen:
        return []
    seen.add(name)
    members = {"GROUP": children_of(entry), "TAG": sorted(entry.tags)}.get(kind_of(entry))
    if members is None:
        return [entry]
    return [leaf for child in members if child for leaf in leaf_entries(child, index, seen)]


def check_runnable(names: Sequence[str], index: Mapping[str, Any]) -> None:
    """What would fail only once lm-eval loads the tasks, after quantizing: an image-text task
    (lm-eval runs those only through its own multimodal model loader), a task that two of the
    names both run (lm-eval refuses duplicates), a local data file that is not there."""
    runs: dict[str, str] = {}
    for name in names:
        for entry in leaf_entries(name, index):
            if any(key in (entry.cfg or {}) for key in IMAGE_KEYS):
                what = name if entry.name == name else f"{name} (its task {entry.name})"
                raise UserError(
                    f"--tasks: {what} is an image-text task, which lm-eval runs only through its "
                    "hf-multimodal model loader; evaluating it on our checkpoints is not built yet",
                    fix="run text tasks here (the checkpoint's language model is what they score)",
                )
            if runs.setdefault(entry.name, name) != name:
                raise UserError(
                    f"--tasks: {runs[entry.name]} and {name} both run {entry.name}, which lm-eval refuses",
                    fix="leave out one of the two",
                )
            missing = missing_data_files(entry.cfg or {})
            if missing:
                raise UserError(
                    f"--tasks: {entry.name} reads {missing[0]}, which does not exist",
                    fix="fix dataset_kwargs.data_files in its YAML (a relative path is read from the "
                    "working directory)",
                )


def missing_data_files(cfg: Mapping[str, Any]) -> list[str]:
    """The local ``dataset_kwargs.data_files`` of a task config that are not there (URLs, globs
    and hub files are left to ``datasets``)."""
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or []
    if isinstance(files, Mapping):
        files = list(files.values())
    flat = [
        f
        for item in (files if isinstance(files, list) else [files])
        for f in (item if isinstance(item, list) else [item])
    ]
    local = [
        str(f)
        for f in flat
        if isinstance(f, (str, Path)) and "://" not in str(f) and not any(c in str(f) for c in "*?[")
    ]
    return [f for f in local if not Path(f).expanduser().exists()]


# -------------------------------------------------------------------------------------- the run


def load_for_tasks(path: str | Path, *, dtype: str, device: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """(model, tokenizer) of a checkpoint: packed formats through our loader, ``fake`` and
    unquantized folders through transformers; on ``device``, in ``dtype`` (``auto``: as stored)."""
    import json

    from auto_round_mllm.inference.loader import METHODS, load_quantized
    from auto_round_mllm.models.loading import load_model, resolve_model_dir
    from auto_round_mllm.models.processor_loading import load_processor
    from auto_round_mllm.utils.device import resolve_device, torch_dtype

    target = resolve_device(device)
    folder = resolve_model_dir(str(path))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method is None:
        loaded = load_model(str(folder), model_dtype=dtype, trust_remote_code=trust_remote_code)
        model, tokenizer = loaded.model, loaded.tokenizer
    elif method in METHODS:
        stored = "auto" if dtype == "auto" else torch_dtype(dtype)
        model = load_quantized(folder, dtype=stored, trust_remote_code=trust_remote_code)
        tokenizer = load_processor(folder, trust_remote_code=trust_remote_code).tokenizer
    else:
        raise UserError(
            f"{folder} is quantized with {method!r}, which our loader does not read",
            fix=f"evaluate a checkpoint this tool wrote ({', '.join(METHODS)} or fake)",
        )
    return model.to(target).eval(), tokenizer


def run_tasks(
    path: str | Path, plan: LmEvalPlan, *, device: str = "auto", trust_remote_code: bool = False
) -> LmEvalResult:
    """Load the checkpoint at ``path`` and run the plan's tasks on it."""
    started = time.perf_counter()
    model, tokenizer = load_for_tasks(
        path, dtype=plan.dtype, device=device, trust_remote_code=trust_remote_code
    )
    from lm_eval.models.huggingface import HFLM

    settings = plan.settings
    lm = HFLM(
        pretrained=model,
        backend="causal",  # every family here is a decoder; lm-eval cannot tell for vision-language classes
        tokenizer=tokenizer,
        batch_size=settings.eval_bs or DEFAULT_BATCH_SIZE,
        add_bos_token=True if settings.add_bos_token else None,
        trust_remote_code=trust_remote_code,
    )
    if settings.eval_task_by_task:
        raw = merge([evaluate_with_retry(lm, plan, [name]) for name in plan.names])
    else:
        raw = evaluate(lm, plan, list(plan.names))
    return summarize(str(path), raw, settings, time.perf_counter() - started)


def evaluate(lm: Any, plan: LmEvalPlan, names: list[str]) -> dict[str, Any]:
    """One ``simple_evaluate``; a task whose data cannot be read is the user's to fix, in one line.
    (lm-eval takes the batch size of a model instance from the instance, not from this call.)"""
    import lm_eval

    settings = plan.settings
    try:
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=plan.manager,
            limit=settings.limit,
            num_fewshot=settings.num_fewshot,
            gen_kwargs=plan.gen_kwargs,
            apply_chat_template=settings.apply_chat_template,
            fewshot_as_multiturn=settings.fewshot_as_multiturn,
            log_samples=False,
        )
    except (ConnectionError, FileNotFoundError) as exc:
        raise UserError(
            f"lm-eval could not read the data of {', '.join(names)}: {str(exc).splitlines()[0][:200]}",
            fix="fetch it once with the hub reachable (the datasets cache keeps it), or point a local "
            "task YAML at local files (dataset_path: json)",
        ) from exc
    assert raw is not None  # None only on other ranks of a distributed run
    return raw


def evaluate_with_retry(lm: Any, plan: LmEvalPlan, names: list[str]) -> dict[str, Any]:
    """auto-round's task-by-task run: on running out of memory, halve the batch size and retry."""
    import torch

    lm.batch_size_per_gpu = plan.settings.eval_bs or DEFAULT_BATCH_SIZE
    while True:
        try:
            return evaluate(lm, plan, names)
        except torch.OutOfMemoryError:
            if lm.batch_size_per_gpu == 1:
                raise
            lm.batch_size_per_gpu //= 2
            log.warning(
                "%s ran out of memory: retrying at batch size %d", ", ".join(names), lm.batch_size_per_gpu
            )


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The task-by-task runs' results as one run's."""
    parts = ("results", "n-shot", "n-samples")
    merged: dict[str, Any] = {part: {} for part in parts}
    for raw in runs:
        for part in parts:
            merged[part].update(raw.get(part, {}))
        merged["lm_eval_version"] = raw.get("lm_eval_version")
    return merged


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def summarize(model: str, raw: Mapping[str, Any], settings: LmEvalSettings, seconds: float) -> LmEvalResult:
    """lm-eval's result dictionary, reduced to numbers (its "N/A" and NaN standard errors of tasks
    too small to have one are left out); lm-eval's ``none`` filter suffix dropped."""
    metrics: dict[str, dict[str, float]] = {}
    for task, values in raw["results"].items():
        metrics[task] = {
            key.removesuffix(",none"): float(value)
            for key, value in values.items()
            if "," in key and is_number(value)
        }
    return LmEvalResult(
        model=model,
        tasks=list(raw["results"]),
        metrics=metrics,
        samples={task: int(n["effective"]) for task, n in raw.get("n-samples", {}).items()},
        num_fewshot={task: int(n) for task, n in raw.get("n-shot", {}).items()},
        lm_eval_version=raw.get("lm_eval_version") or installed_version(),
        seconds=seconds,
        settings=settings.to_dict(),
    )


def evaluate_tasks(
    model: str | Path,
    tasks: str | Sequence[str],
    *,
    device: str = "auto",
    trust_remote_code: bool = False,
    **options: Any,
) -> LmEvalResult:
    """Run lm-eval ``tasks`` on the checkpoint (or model folder) ``model``, as ``--tasks`` does.

    ``options`` are auto-round's evaluation flags as keywords: ``eval_bs``, ``limit``,
    ``num_fewshot``, ``eval_gen_kwargs``, ``fewshot_as_multiturn``, ``apply_chat_template``,
    ``add_bos_token``, ``eval_task_by_task``, ``eval_model_dtype``."""
    plan = prepare(LmEvalSettings(tasks=tasks, **options))
    return run_tasks(model, plan, device=device, trust_remote_code=trust_remote_code)
