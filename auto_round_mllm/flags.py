"""The one table of quantization flags, and the :class:`QuantJob` built from them.

Each row says everything about one flag: its name and aliases, type, default, help, whether
auto-round spells it the same way, and the :class:`QuantJob` field it sets. The Typer command
(``cli/app.py``), :func:`job_from_flags`, the Python API's keyword names (``AutoRoundMLLM``) and
README's flag table (checked by a test) are all derived from it, so adding a flag is one row.

A *switch* (``sets=...``) is a flag without a value: given, it sets its field to ``sets``; absent, it
leaves the field alone. Two flags (or keywords) that set one field to different values contradict
each other, which is how ``--trust_remote_code --disable_trust_remote_code`` and
``sym=True, asym=True`` are refused. Fields a flag does not set keep the dataclass defaults.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from auto_round_mllm.autoround_flags import BY_SPELLING as FOREIGN
from auto_round_mllm.autoround_flags import NEGATIVES as FOREIGN_NEGATIVES
from auto_round_mllm.config import (
    DataConfig,
    ExportConfig,
    MemoryConfig,
    MixedBits,
    QuantJob,
    TuningConfig,
    recipe_fields,
    resolve_scheme,
    scheme_keywords,
    split_list,
)
from auto_round_mllm.errors import UserError
from auto_round_mllm.layer_config import parse_layer_config

_UNSET: Any = object()


@dataclass(frozen=True)
class Flag:
    """One row of the table."""

    name: str
    """The canonical spelling: ``--name`` on the command line, ``name=`` in Python."""
    kind: type
    default: Any
    help: str
    aliases: tuple[str, ...] = ()
    """Other spellings (auto-round's among them): ``--bs`` for ``--batch_size``."""
    negative: tuple[str, ...] = ()
    """For a switch: auto-round's spellings that ask for the default (``--enable_minmax_tuning`` for
    ``--disable_minmax_tuning``); as Python keywords they give the switch's opposite."""
    target: str | None = None
    """The :class:`QuantJob` field, dotted (``tuning.iters``); None for options of the command's
    run itself (``--json``), which no job holds."""
    sets: Any = _UNSET
    """For a switch: the value the field takes when the switch is given."""
    convert: Callable[[Any], Any] | None = None
    """Flag value -> field value (``"a,b"`` -> ``("a", "b")``)."""
    api_names: tuple[str, ...] = ()
    """auto-round's Python keywords that give the field's value directly (``sym=`` for ``--asym``)."""
    autoround: bool = True
    """Whether auto-round's own command accepts this flag; README marks ours."""
    shown_default: str | None = None
    """README's default column, where the value alone would mislead (``from scheme``)."""
    doc: str | None = None
    """README's meaning column (markdown, links allowed); ``help`` when None."""

    @property
    def is_switch(self) -> bool:
        return self.sets is not _UNSET

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def assignment(self, value: Any) -> tuple[str, Any] | None:
        """(field, value) this flag's value sets, or None when it sets nothing (a switch that is
        off, a value left at None)."""
        if self.target is None:
            return None
        if self.is_switch:
            if not value and self.negative and isinstance(self.sets, bool):
                return self.target, not self.sets  # its negative spelling, given: the field's default
            return (self.target, self.sets) if value else None
        if value is None:
            return None
        return self.target, self.convert(value) if self.convert else value

    def readme_default(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.kind is bool:
            return "off" if not self.default else "on"
        if self.default is None or self.default == "":
            return "none"
        if isinstance(self.default, str):
            return f"`{self.default}`"
        return str(self.default)


def whole_bits(value: float) -> int | float:
    """``4.0`` -> ``4``; a fraction stays (an average for --schemes, else refused by the scheme)."""
    return int(value) if float(value).is_integer() else float(value)


def _switch(name: str, target: str | None, sets: Any, help: str, **more: Any) -> Flag:
    return Flag(name, bool, False, help, target=target, sets=sets, **more)


FLAGS: tuple[Flag, ...] = (
    Flag(
        "model", str, None,
        "Local folder, local:PATH, or hub id (read from the HF cache when offline).",
        aliases=("model_name", "model_name_or_path"), target="model", shown_default="required",
    ),
    Flag(
        "scheme", str, "W4A16",
        "Preset: W4A16, W2A16, W2A16G64, W2A16G32, W3A16, W8A16; --bits/--group_size/--asym override it.",
        target="scheme.preset",
        doc="Preset: `W4A16` (4-bit g128), `W2A16` (2-bit g128), `W2A16G64`, `W2A16G32`, `W3A16`, `W8A16`; "
        "the flags below override it",
    ),
    Flag(
        "bits", float, None, "Weight bits: 2, 3, 4 or 8 (default from --scheme: 4); with --schemes, the "
        "average bits per weight to meet.",
        aliases=("bit",), target="scheme.bits", shown_default="from scheme", convert=whole_bits,
        doc="2, 3, 4 or 8; with `--schemes`, the average to meet (as `--avg_bits`)",
    ),
    Flag(
        "schemes", str, None,
        "Mixed bits (auto-round's AutoScheme): comma list of presets each layer may take, e.g. "
        "W2A16,W4A16,W8A16, chosen per layer to meet --avg_bits with the least measured error.",
        aliases=("options", "option"), target="mixed.schemes", convert=split_list, shown_default="none",
        doc="Mixed bits: the presets each layer may take (see [Mixed bits](#mixed-bits))",
    ),
    Flag(
        "avg_bits", float, None, "With --schemes: the average bits per weight to meet (scales included).",
        aliases=("target_bits",), target="mixed.avg_bits", shown_default="none",
    ),
    Flag(
        "shared_layers", str, None,
        "With --schemes: groups of layers (patterns within each block) that take one scheme, groups "
        "split by ';' and members by ',' (q/k/v and gate/up always share: serving engines fuse them).",
        target="mixed.shared_layers", shown_default="none",
    ),
    _switch(
        "ignore_scale_zp_bits", "mixed.ignore_scale_zp_bits", True,
        "With --schemes: count only the weights' bits, not their scales' and zero points'.",
    ),
    Flag(
        "mixed_sensitivity", str, "fisher",
        "With --schemes: how a layer's error at a scheme is weighed: fisher (by the Fisher "
        "information of the model's output, one backward pass) or local (by its own inputs).",
        target="mixed.sensitivity",
    ),
    Flag(
        "group_size", int, None,
        "Input channels per scale: -1 (per channel), 32, 64, 128 or any divisor of in_features; a "
        "layer it does not divide takes the largest of 128/64/32 that does (default from --scheme: 128).",
        target="scheme.group_size", shown_default="from scheme",
        doc="Input channels per scale: -1 (per channel), 32, 64, 128 or any divisor of in_features; "
        "a layer whose width it does not divide takes the largest of 128, 64, 32 that does "
        "(see [Group sizes](#group-sizes))",
    ),
    Flag(
        "layer_config", str, None,
        "Per-layer schemes: JSON text or a JSON file mapping a layer name or pattern to a preset "
        "(W8A16) or to bits/group_size/sym/data_type/scheme; bits 16 keeps the layer in 16 bit.",
        target="layer_config", convert=parse_layer_config, shown_default="none",
        doc="Per-layer schemes, as auto-round reads them (see [Per-layer schemes](#per-layer-schemes))",
    ),
    _switch(
        "disable_group_size_fallback", "group_size_fallback", False,
        "Keep layers whose in_features the group size does not divide in 16 bit, instead of "
        "quantizing them with a smaller group size.",
    ),
    _switch(
        "asym", "scheme.sym", False,
        "Asymmetric weights (a zero point per group); default is auto-round's full-range symmetric.",
        api_names=("sym",),
    ),
    Flag(
        "data_type", str, None, "Weight data type; only 'int' for now.",
        aliases=("dtype",), target="scheme.data_type", shown_default="`int`",
        doc="Weight data type (only `int`)",
    ),
    Flag(
        "iters", int, 200, "SignRound steps per block; 0 = round-to-nearest (no calibration data needed).",
        aliases=("iter",), target="tuning.iters",
        doc="SignRound steps per block; 0 = round-to-nearest, needs no calibration data",
    ),
    Flag(
        "lr", float, None, "Rounding learning rate (default 1/iters), decayed linearly to 0.",
        target="tuning.lr", shown_default="1/iters", doc="Rounding learning rate, decayed linearly to 0",
    ),
    Flag(
        "minmax_lr", float, None, "Clipping-scale learning rate (default: --lr).",
        target="tuning.minmax_lr", shown_default="`--lr`", doc="Clipping-scale learning rate",
    ),
    Flag(
        "recipe", str, None,
        "auto-round's recipes: default (200 iters, 128 samples), best (1000 iters, 512 samples, lr "
        "2/iters at <= 3 bits), light (50 iters, lr 5e-3), opt_rtn (iters 0 with the clipping "
        "search), rtn (iters 0 plain); flags given explicitly override it.",
        target="recipe", shown_default="none",
        doc="auto-round's recipes by name: `default`, `best`, `light`, `opt_rtn`, `rtn` (see "
        "[Recipes](#recipes)); flags given explicitly override it",
        autoround=False,
    ),
    Flag("nsamples", int, 128, "Calibration samples.", aliases=("nsample",), target="tuning.nsamples"),
    Flag("seqlen", int, 2048, "Tokens per calibration sample.", aliases=("seq_len",), target="tuning.seqlen"),
    Flag(
        "batch_size", int, 8, "Samples per tuning step.", aliases=("train_bs", "bs"), target="tuning.batch_size"
    ),
    Flag(
        "gradient_accumulate_steps", int, 1, "Micro-batches per tuning step.",
        target="tuning.gradient_accumulate_steps",
    ),
    Flag("seed", int, 42, "Seed for sample order and batches.", target="tuning.seed"),
    _switch(
        "disable_minmax_tuning", "tuning.enable_minmax_tuning", False,
        "Keep clipping scales at 1 (tune rounding only).", aliases=("no-enable_minmax_tuning",),
        negative=("enable_minmax_tuning",), api_names=("enable_minmax_tuning",),
    ),
    _switch(
        "disable_clip_search", "tuning.clip_search", False,
        "Start every group's clipping at 1, as auto-round does, instead of at the ratio with the "
        "least activation-weighted round-to-nearest error.",
        autoround=False,
        doc="Start clipping at 1 as auto-round does, not at the searched ratio (see [What happens](#what-happens))",
    ),
    _switch(
        "enable_opt_rtn", "tuning.opt_rtn", True,
        "With --iters 0: start from the clipping search weighted by the calibration inputs "
        "(auto-round's optimized RTN) instead of plain round-to-nearest.",
        negative=("disable_opt_rtn",),
    ),
    _switch(
        "enable_adam", "tuning.enable_adam", True,
        "Tune the same parameters with AdamW (no weight decay, the same decaying learning rate) "
        "instead of signed gradient steps.",
        aliases=("adam",), negative=("no-enable_adam",),
    ),
    Flag(
        "momentum", float, 0.0,
        "Momentum of the sign steps: each step takes the sign of a running sum of gradients.",
        target="tuning.momentum",
    ),
    _switch(
        "enable_deterministic_algorithms", "tuning.deterministic", True,
        "Tune under torch.use_deterministic_algorithms(True): an operation without a deterministic "
        "kernel fails instead of varying between runs (on one machine the same seed and data "
        "already give the same bytes on the CPU).",
    ),
    _switch(
        "enable_norm_bias_tuning", "tuning.norm_bias_tuning", True,
        "Also tune the blocks' norm weights and Linear biases (kept in 16 bit), by offsets of up to "
        "half a 4-bit step of each tensor's range, with the same signed steps as the rounding.",
        negative=("no-enable_norm_bias_tuning",),
    ),
    Flag(
        "nblocks", int, 1,
        "Tune this many consecutive blocks together, against their joint output (more memory, "
        "fewer block boundaries).",
        target="tuning.nblocks",
    ),
    Flag(
        "dynamic_max_gap", int, -1,
        "Stop a block's tuning when the best loss has not improved for this many steps (-1: never).",
        target="tuning.dynamic_max_gap",
    ),
    _switch(
        "not_use_best_mse", "tuning.use_best_mse", False,
        "Keep the parameters of the last evaluated step instead of the best step's (auto-round's meaning).",
        negative=("no-not_use_best_mse",),
    ),
    _switch(
        "disable_quanted_input", "tuning.enable_quanted_input", False,
        "Feed each block full-precision inputs instead of the quantized blocks' outputs.",
        aliases=("no-enable_quanted_input",), negative=("enable_quanted_input",), api_names=("enable_quanted_input",),
    ),
    _switch(
        "disable_amp", "tuning.amp", False, "No autocast: tune in the model dtype (fp32 on CPUs without bf16).",
        api_names=("amp",),
    ),
    Flag(
        "scale_dtype", str, "fp16", "Scale precision during tuning: fp16 (default), bf16, fp32.",
        target="tuning.scale_dtype",
        doc="Scale precision while tuning: fp16, bf16, fp32 (exported scales are fp16)",
    ),
    _switch(
        "enable_torch_compile", "tuning.torch_compile", True,
        "Compile the fused quantizer even where it is off by default (devices other than CPU and "
        "CUDA, or under 10 iters).",
    ),
    _switch(
        "disable_torch_compile", "tuning.torch_compile", False,
        "Never compile the quantizer (on by default on CPU and CUDA from 10 iters; a failed "
        "compilation already falls back with a warning).",
    ),
    Flag(
        "model_dtype", str, "auto",
        "Dtype to tune and write the model in: auto (the checkpoint's; an fp32 checkpoint goes to "
        "bf16 where AMP computes in bf16, as in auto-round), fp16, bf16, fp32.",
        target="model_dtype",
    ),
    Flag(
        "fp_layers", str, "", "Comma list of layer-name substrings (or re:REGEX) kept in 16 bit.",
        aliases=("ignore_layers",), target="fp_layers", convert=split_list,
    ),
    Flag(
        "to_quant_block_names", str, "",
        "Comma list of regexes selecting blocks to tune (default: all text decoder blocks).",
        target="to_quant_block_names", convert=split_list, shown_default="text decoder",
    ),
    _switch(
        "quant_nontext_module", "quant_nontext_module", True,
        "Also quantize the vision tower's blocks (batch 1 with gradient accumulation); the text "
        "blocks then calibrate on the quantized vision tower's output.",
        doc="Also quantize the vision tower's blocks (see [Vision modules](#vision-modules))",
    ),
    _switch(
        "quant_lm_head", "quant_lm_head", True,
        "Also quantize lm_head (the job's scheme, or --layer_config's), tuned on its own after the "
        "blocks on the quantized model's final hidden states.",
        negative=("no-quant_lm_head",),
    ),
    _switch(
        "untie_embeddings", "untie_embeddings", True,
        "With --quant_lm_head on a model whose lm_head shares the input embeddings' weight: give "
        "lm_head its own copy (the checkpoint then stores both and says tie_word_embeddings false).",
        negative=("no-untie_embeddings",),
    ),
    Flag(
        "dataset", str, None,
        "Calibration data: NeelNanda/pile-10k (from the datasets cache), liuhaotian/llava_conv_58k, "
        "llava_instruct_80k, llava_instruct_150k (local copies), embedded, embedded-text, "
        "embedded-images, a local .txt/.jsonl/.json/.parquet file or image folder, or a comma list "
        "with counts (name:count,...). Default: the template's dataset when it can be read offline, "
        "else embedded.",
        target="data.dataset", shown_default="see [Calibration data](#calibration-data)",
        doc="A registered source, a local file or image folder, or a comma list with counts",
    ),
    Flag(
        "template", str, None,
        "Chat template: a name (auto-round-mllm list templates) or a JSON file; default: by model type.",
        target="data.template", shown_default="by model type",
        doc="Chat template name (`auto-round-mllm list templates`) or a JSON file",
    ),
    Flag(
        "extra_data_dir", str, None,
        "Folder with the images (and LLaVA JSON) of image-text datasets, or image=DIR,video=DIR,audio=DIR.",
        target="data.extra_data_dir",
    ),
    Flag(
        "max_missing_images", float, 0.1,
        "Fraction of image references that may be missing before the run fails; missing ones are reported.",
        target="data.max_missing_images", autoround=False,
    ),
    Flag(
        "device", str, "auto", "auto, cpu, cuda, cuda:N, xpu, hpu (or N for the N-th accelerator).",
        aliases=("devices",), target="device",
    ),
    Flag(
        "output_dir", str, "./tmp_autoround",
        "Parent folder; the checkpoint goes to OUTPUT_DIR/<model>-w{bits}g{group_size}.",
        target="export.output_dir", doc="Parent folder of the checkpoint (see [Output](#output))",
    ),
    Flag(
        "format", str, "auto_round",
        "Export format(s), comma separated (one sub-folder each): auto_round (default), "
        "auto_round:auto_gptq, auto_round:auto_awq, auto_gptq (symmetric), gptq_v2, auto_awq, llm_compressor, "
        "fake (auto-round-mllm list formats shows what vLLM was measured to load).",
        aliases=("formats",), target="export.formats", convert=split_list,
        doc="Export format(s), comma separated (see [Formats](#formats))",
    ),
    Flag("max_shard_size", str, "5GB", "Largest safetensors shard.", target="export.max_shard_size"),
    _switch("force", "export.force", True, "Replace an existing output folder.", autoround=False),
    _switch(
        "trust_remote_code", "trust_remote_code", True,
        "Allow models that ship their own Python code (off by default).",
    ),
    _switch(
        "disable_trust_remote_code", "trust_remote_code", False,
        "Accepted for auto-round scripts; remote code is off unless --trust_remote_code.",
        shown_default="-",
    ),
    _switch(
        "resume", None, True,
        "Continue an unfinished run of this job in the output folder, and refuse if the job "
        "differs. A matching unfinished run is resumed even without it.",
        autoround=False,
        doc="Continue the unfinished run of this job in the output folder, refusing a different job (see "
        '[Resume after a crash](#resume-after-a-crash); a matching run resumes even without it)',
    ),
    _switch(
        "disable_streaming", "memory.streaming", False,
        "Load the whole model into memory instead of reading each decoder block from the "
        "safetensors shards when it is reached (the output is the same).",
        aliases=("disable_low_cpu_mem_usage",), negative=("low_cpu_mem_usage",),
        doc="Load the whole model into memory instead of streaming the decoder blocks from disk "
        "(same output; see [Large models](#large-models))",
    ),
    _switch(
        "low_gpu_mem_usage", "memory.low_gpu_mem_usage", True,
        "Keep activation caches in host memory and move each micro-batch to the device when used.",
    ),
    Flag(
        "cache_dir", str, None,
        "Spill activation caches to memory-mapped files in this folder (very large calibration "
        "sets; implies --low_gpu_mem_usage).",
        target="memory.cache_dir", autoround=False,
    ),
    Flag(
        "device_map", str, None,
        "Spread each block's layers over several devices: auto (every visible GPU) or a comma list "
        "such as 0,1,2 or cuda:0,cuda:1; the first computes the loss and holds the caches.",
        target="memory.device_map",
    ),
    _switch("json", None, True, "Print the summary as JSON on stdout (logs stay on stderr).", autoround=False),
    _switch(
        "eval", None, True, "After quantizing, run `auto-round-mllm eval` on the output against the model.",
        doc="After quantizing, run the [evaluation](#evaluation) checks against the original model",
    ),
    Flag(
        "tasks", str, None,
        "lm-eval tasks to run on the checkpoint (after quantizing: the first format written): a comma "
        "list of task names or paths to task YAML files or folders. Needs the lm-eval package.",
        aliases=("task",), shown_default="none",
        doc="After quantizing, run lm-eval tasks on the checkpoint (see [lm-eval tasks](#lm-eval-tasks))",
    ),
    Flag("eval_bs", int, None, "lm-eval batch size (default 16).", shown_default="16"),
    Flag(
        "limit", float, None, "lm-eval documents per task: a count, or a fraction of each task's when below 1.",
        shown_default="all",
    ),
    Flag(
        "num_fewshot", int, None, "lm-eval few-shot examples per prompt (default: each task's own).",
        shown_default="the task's",
    ),
    Flag(
        "eval_gen_kwargs", str, None,
        "lm-eval generation settings for generate_until tasks: key=value,... (temperature=0,max_gen_toks=64).",
    ),
    _switch(
        "fewshot_as_multiturn", None, True,
        "With --apply_chat_template, lm-eval's few-shot examples as separate chat turns.",
    ),
    _switch(
        "apply_chat_template", None, True,
        "Render lm-eval prompts with the tokenizer's chat template (lm-eval's own option).",
        autoround=False,
    ),
    _switch(
        "add_bos_token", None, True,
        "lm-eval prompts start with the BOS token (default: the tokenizer's habit; Llama's adds it).",
    ),
    _switch(
        "eval_task_by_task", None, True,
        "One lm-eval run per task, halving the batch size and retrying a task that runs out of memory.",
    ),
    Flag(
        "eval_model_dtype", str, None,
        "dtype lm-eval's model is loaded in: auto (the checkpoint's), float16, bfloat16, float32.",
        shown_default="`auto`",
    ),
    _switch("debug", None, True, "Verbose logs and full tracebacks.", autoround=False),
)  # fmt: skip

BY_NAME: dict[str, Flag] = {flag.name: flag for flag in FLAGS}
RUN_OPTIONS: tuple[str, ...] = tuple(flag.name for flag in FLAGS if flag.target is None)
"""Flags of the command's run (output, evaluation, logging, resume), held by no job."""


@dataclass(frozen=True)
class Keyword:
    """How a Python keyword maps onto the table: a flag (by any spelling) or a field (api_names)."""

    flag: Flag
    direct: bool = False
    """True for auto-round's API keywords, whose value is the field's value (``sym=False``)."""
    negated: bool = False
    """True for a switch's negative spelling (``low_cpu_mem_usage=False`` is ``disable_streaming=True``)."""

    def assignment(self, value: Any) -> tuple[str, Any] | None:
        if self.direct:
            return (self.flag.target, value) if self.flag.target else None
        return self.flag.assignment(not value if self.negated else value)


def keywords() -> dict[str, Keyword]:
    """Every Python keyword the API accepts: each flag's spellings and auto-round's API names."""
    out: dict[str, Keyword] = {}
    for flag in FLAGS:
        for spelling in flag.spellings:
            out[spelling] = Keyword(flag)
        for spelling in flag.negative:
            out[spelling] = Keyword(flag, negated=True)
        for name in flag.api_names:
            out[name] = Keyword(flag, direct=True)
    return out


Assignment = tuple[str, Any, str]
"""(field, value, who set it: ``--flag`` or ``keyword=value``), the unit :func:`build_job` takes."""


def assignments_from_flags(values: Mapping[str, Any], *, label: Callable[[str], str]) -> list[Assignment]:
    """The field assignments of canonical flag values (``{"iters": 200, "asym": True}``)."""
    out: list[Assignment] = []
    for name, value in values.items():
        found = BY_NAME[name].assignment(value)
        if found is not None:
            out.append((found[0], found[1], label(name)))
    return out


def bits_as_budget(assignments: list[Assignment]) -> list[Assignment]:
    """With ``--schemes``, ``--bits`` is the average to meet (auto-round's reading), not a width."""
    if not any(target == "mixed.schemes" for target, _, _ in assignments):
        return assignments
    return [
        ("mixed.avg_bits" if target == "scheme.bits" else target, value, who)
        for target, value, who in assignments
    ]


def build_job(assignments: Iterable[Assignment]) -> QuantJob:
    """The job the assignments describe; one field set to two values is a contradiction."""
    fields: dict[str, tuple[Any, str]] = {}
    assignments = list(assignments)
    recipes = [(value, who) for target, value, who in assignments if target == "recipe"]
    assignments = [item for item in assignments if item[0] != "recipe"]
    if len({name for name, _ in recipes}) > 1:
        raise UserError(
            f"{recipes[0][1]} and {recipes[1][1]} contradict each other", fix="pass only one of them"
        )
    for name, who in recipes[:1]:  # below every explicit flag, whatever its position
        given = {target for target, _, _ in assignments}
        assignments += [(t, v, who) for t, v in recipe_fields(name).items() if t not in given]
    assignments = bits_as_budget(assignments)
    for target, value, who in assignments:
        if target in fields and fields[target][0] != value:
            raise UserError(
                f"{fields[target][1]} and {who} contradict each other", fix="pass only one of them"
            )
        fields.setdefault(target, (value, who))
    sections: dict[str, dict[str, Any]] = {}
    for target, (value, _) in fields.items():
        section, _, leaf = target.rpartition(".")
        sections.setdefault(section, {})[leaf] = value
    scheme = dict(sections.pop("scheme", {}))
    preset = scheme.pop("preset", None)
    classes = {
        "tuning": TuningConfig,
        "data": DataConfig,
        "export": ExportConfig,
        "memory": MemoryConfig,
        "mixed": MixedBits,
    }
    nested = {"scheme": resolve_scheme(preset, **scheme)}
    nested.update({name: klass(**sections.pop(name, {})) for name, klass in classes.items()})
    top = sections.pop("", {})
    return QuantJob(model=top.pop("model", ""), **nested, **top)


def job_from_flags(**values: Any) -> QuantJob:
    """The job for the command's flag values, by canonical name (``iters=200, asym=True``); flags
    left out keep their defaults. The command calls it with every flag; tests and scripts with a few."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise TypeError(f"job_from_flags() got unexpected keyword arguments: {', '.join(unknown)}")
    return build_job(assignments_from_flags(values, label=lambda name: f"--{name}"))


def job_from_keywords(
    model: str, options: Mapping[str, Any], *, caller: str
) -> tuple[QuantJob, dict[str, Any]]:
    """The Python API's job: keywords by any flag spelling or auto-round's API name. Returns the job
    and the run options given (``debug``, ``resume`` ...), which no job holds."""
    table = keywords()
    assignments: list[Assignment] = [("model", model, "model")]
    run_options: dict[str, Any] = {}
    if "scheme" in options and not isinstance(options["scheme"], str):  # AutoScheme, a dict ...
        options = {
            **{k: v for k, v in options.items() if k != "scheme"},
            **scheme_keywords(options["scheme"]),
        }
    for key, value in options.items():
        if key in FOREIGN:
            FOREIGN[key].check(value, given=f"{key}={value!r}")
            continue
        if key in FOREIGN_NEGATIVES:
            FOREIGN_NEGATIVES[key].check(not value, given=f"{key}={value!r}")
            continue
        if key not in table:
            close = difflib.get_close_matches(key, [*table, *FOREIGN], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{caller} got an unexpected keyword argument {key!r}{hint}")
        keyword = table[key]
        if keyword.flag.target is None:
            run_options[keyword.flag.name] = value
            continue
        found = keyword.assignment(value)
        if found is not None:
            assignments.append((found[0], found[1], f"{key}={value!r}"))
    return build_job(assignments), run_options


README_START = (
    "<!-- flags: generated from auto_round_mllm/flags.py by `python scripts/render_flag_table.py` -->"
)
README_END = "<!-- flags: end -->"


def readme_table() -> str:
    """README's flag table (between :data:`README_START` and :data:`README_END`), rendered from
    :data:`FLAGS`; flags auto-round's command does not have are marked *(ours)*."""
    rows = ["| flag (aliases) | default | meaning |", "|---|---|---|"]
    for flag in FLAGS:
        spelled = f"`--{flag.name}`" + (
            f" (`{'`, `'.join('--' + a for a in flag.aliases)}`)" if flag.aliases else ""
        )
        if flag.negative:
            spelled += f"; off: `{'`, `'.join('--' + n for n in flag.negative)}`"
        meaning = (flag.doc or flag.help).rstrip(".") + "."
        if not flag.autoround:
            meaning += " *(ours)*"
        rows.append(f"| {spelled} | {flag.readme_default()} | {meaning} |")
    rows.append("| `-h`, `--help` | | Every flag, with examples. |")
    return "\n".join(rows)
