"""Frozen configuration objects: what a quantization job is, independent of how it runs.

The CLI and the Python API both build a :class:`QuantJob`; everything downstream reads it and
nothing mutates it. Validation happens in ``__post_init__`` so a bad job fails before any model
weight is read.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from auto_round_mllm.errors import UserError

SUPPORTED_BITS = (2, 3, 4, 8)
MIN_FALLBACK_GROUP_SIZE = 32
"""Smallest group size a layer falls back to when the requested one does not divide its width."""
SUPPORTED_DATA_TYPES = ("int",)
SCALE_DTYPES = ("float16", "bfloat16", "float32")
MODEL_DTYPES = ("auto", "float16", "bfloat16", "float32")
DTYPE_ALIASES = {
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "auto": "auto",
}


def group_length(in_features: int, group_size: int) -> int:
    """Input channels per quantization group: ``group_size``, or all of them for ``-1`` (per channel)."""
    return in_features if group_size == -1 else group_size


def normalize_dtype(name: str, *, allowed: tuple[str, ...], flag: str) -> str:
    """Map user spellings (fp16, bf16, float32, ...) to canonical torch dtype names."""
    canonical = DTYPE_ALIASES.get(str(name).lower())
    if canonical is None or canonical not in allowed:
        raise UserError(
            f"{flag} {name!r} is not supported",
            fix=f"use one of: {', '.join(allowed)}",
        )
    return canonical


@dataclass(frozen=True)
class QuantScheme:
    """Weight-only integer quantization of one Linear: ``bits`` per weight, one scale (and zero
    point) per ``group_size`` consecutive input channels; ``group_size=-1`` means per channel."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    data_type: str = "int"

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise UserError(
                f"bits={self.bits} is not supported",
                fix=f"use one of {', '.join(map(str, SUPPORTED_BITS))}",
            )
        if self.group_size != -1 and self.group_size <= 0:
            raise UserError(
                f"group_size={self.group_size} is not valid",
                fix="use -1 (per channel) or a positive divisor of the layers' in_features, e.g. 128",
            )
        if self.data_type not in SUPPORTED_DATA_TYPES:
            raise UserError(
                f"data_type={self.data_type!r} is not supported",
                fix=f"use one of: {', '.join(SUPPORTED_DATA_TYPES)}",
            )

    def group_size_for(self, in_features: int) -> int:
        """The effective group length for a layer with ``in_features`` inputs."""
        return group_length(in_features, self.group_size)

    def fits(self, in_features: int) -> bool:
        return in_features % self.group_size_for(in_features) == 0

    def fitted(self, in_features: int) -> QuantScheme | None:
        """This scheme if its group size divides ``in_features``, else the same scheme with the
        largest of ``group_size``, 128, 64, 32 (no larger than ``group_size``) that does: the sizes
        every kernel takes (vLLM's Marlin needs 32, 64 or 128). None if none divides."""
        if self.fits(in_features):
            return self
        for size in sorted({self.group_size, 128, 64, 32}, reverse=True):
            if MIN_FALLBACK_GROUP_SIZE <= size <= self.group_size and in_features % size == 0:
                return dataclasses.replace(self, group_size=size)
        return None

    @property
    def label(self) -> str:
        return f"w{self.bits}g{self.group_size}" + ("" if self.sym else "-asym")


PRESETS: dict[str, QuantScheme] = {
    "W4A16": QuantScheme(bits=4, group_size=128, sym=True),
    "W2A16": QuantScheme(bits=2, group_size=128, sym=True),
    "W2A16G64": QuantScheme(bits=2, group_size=64, sym=True),
    "W2A16G32": QuantScheme(bits=2, group_size=32, sym=True),
    "W3A16": QuantScheme(bits=3, group_size=128, sym=True),
    "W8A16": QuantScheme(bits=8, group_size=128, sym=True),
}


def resolve_scheme(
    name: str | None = "W4A16",
    *,
    bits: int | None = None,
    group_size: int | None = None,
    sym: bool | None = None,
    data_type: str | None = None,
) -> QuantScheme:
    """A preset with explicit overrides on top (auto-round's rule: flags beat the scheme)."""
    key = (name or "W4A16").upper()
    if key not in PRESETS:
        raise UserError(
            f"unknown scheme {name!r}",
            fix=f"use one of: {', '.join(PRESETS)}, or set --bits/--group_size directly",
        )
    overrides = {
        k: v
        for k, v in {"bits": bits, "group_size": group_size, "sym": sym, "data_type": data_type}.items()
        if v is not None
    }
    return dataclasses.replace(PRESETS[key], **overrides)


@dataclass(frozen=True)
class TuningConfig:
    """SignRound hyper-parameters with auto-round's names and defaults."""

    iters: int = 200
    lr: float | None = None
    minmax_lr: float | None = None
    nsamples: int = 128
    seqlen: int = 2048
    batch_size: int = 8
    gradient_accumulate_steps: int = 1
    seed: int = 42
    enable_minmax_tuning: bool = True
    use_best_mse: bool = True
    enable_quanted_input: bool = True
    amp: bool = True
    scale_dtype: str = "float16"
    clip_search: bool = True
    """Start each group's clipping at the ratio with the least importance-weighted RTN error
    (quant/clip_search.py) instead of at 1, auto-round's start."""
    torch_compile: bool | None = None
    """Compile the fused quantizer; None decides by device and iters (see quant/kernel.py)."""
    opt_rtn: bool = False
    """With ``iters=0``: round-to-nearest from the clipping search weighted by the calibration
    inputs (auto-round's optimized RTN), instead of plain round-to-nearest from the full range."""
    enable_adam: bool = False
    """AdamW (no weight decay) on the same parameters instead of signed gradient steps."""
    momentum: float = 0.0
    """Momentum of the sign steps: each step takes the sign of a running sum of gradients."""
    deterministic: bool = False
    """Tune under ``torch.use_deterministic_algorithms(True)`` (auto-round's
    ``enable_deterministic_algorithms``)."""
    dynamic_max_gap: int = -1
    """Stop a block's tuning when the best loss has not improved for this many steps (auto-round's
    ``dynamic_max_gap``; -1 or 0: never)."""
    nblocks: int = 1
    """Consecutive blocks tuned together against their joint output (auto-round's ``nblocks``)."""
    norm_bias_tuning: bool = False
    """Tune the blocks' norm weights and Linear biases with the rounding (tuning/norm_bias.py)."""

    def __post_init__(self) -> None:
        checks = [
            (self.iters >= 0, f"iters={self.iters} must be >= 0", "use 200 (default) or 0 for RTN"),
            (self.nsamples > 0, f"nsamples={self.nsamples} must be > 0", "use e.g. 128"),
            (self.seqlen > 0, f"seqlen={self.seqlen} must be > 0", "use e.g. 2048"),
            (self.batch_size > 0, f"batch_size={self.batch_size} must be > 0", "use e.g. 8"),
            (self.nblocks > 0, f"nblocks={self.nblocks} must be > 0", "use 1 (default) or e.g. 2"),
            (
                self.gradient_accumulate_steps > 0,
                f"gradient_accumulate_steps={self.gradient_accumulate_steps} must be > 0",
                "use 1 (default)",
            ),
            (self.lr is None or self.lr > 0, f"lr={self.lr} must be > 0", "leave it unset for 1/iters"),
            (
                self.minmax_lr is None or self.minmax_lr > 0,
                f"minmax_lr={self.minmax_lr} must be > 0",
                "leave it unset to follow lr",
            ),
        ]
        checks.append(
            (0.0 <= self.momentum < 1.0, f"momentum={self.momentum} must be in [0, 1)", "use e.g. 0.9, or 0")
        )
        checks.append(
            (
                not (self.enable_adam and self.momentum),
                "--momentum moves the sign steps; --enable_adam replaces them with AdamW, which has its own",
                "drop one of them",
            )
        )
        checks.append(
            (
                not self.opt_rtn or (self.clip_search and self.enable_minmax_tuning),
                "optimized round-to-nearest (--enable_opt_rtn) is the clipping search, which "
                "--disable_clip_search / --disable_minmax_tuning turn off",
                "drop one of them",
            )
        )
        checks.append(
            (
                not self.norm_bias_tuning or self.iters > 0,
                "--enable_norm_bias_tuning tunes norms and biases with the rounding, and --iters 0 tunes nothing",
                "give --iters (e.g. 200), or leave --enable_norm_bias_tuning out",
            )
        )
        for ok, problem, fix in checks:
            if not ok:
                raise UserError(problem, fix=fix)
        object.__setattr__(
            self, "scale_dtype", normalize_dtype(self.scale_dtype, allowed=SCALE_DTYPES, flag="--scale_dtype")
        )

    def effective_lr(self, bits: int) -> float:
        """``--lr``, else auto-round's rule: 1/iters, or 2/iters from 1000 iters at 3 bits or fewer
        (what its ``best`` recipe runs at 2 and 3 bits)."""
        if self.lr is not None:
            return self.lr
        if self.iters <= 0:
            return 5e-3
        return (2.0 if self.iters >= 1000 and bits <= 3 else 1.0) / self.iters

    def effective_minmax_lr(self, bits: int) -> float:
        return self.minmax_lr if self.minmax_lr is not None else self.effective_lr(bits)

    @property
    def stops_early(self) -> bool:
        return self.dynamic_max_gap > 0 and self.use_best_mse


RECIPES: dict[str, dict[str, Any]] = {
    "default": {"tuning.iters": 200, "tuning.nsamples": 128, "tuning.seqlen": 2048, "tuning.batch_size": 8},
    "best": {"tuning.iters": 1000, "tuning.nsamples": 512, "tuning.seqlen": 2048, "tuning.batch_size": 8},
    "light": {
        "tuning.iters": 50,
        "tuning.nsamples": 128,
        "tuning.seqlen": 2048,
        "tuning.batch_size": 8,
        "tuning.lr": 5e-3,
    },
    "opt_rtn": {"tuning.iters": 0, "tuning.nsamples": 128, "tuning.seqlen": 2048, "tuning.opt_rtn": True},
    "rtn": {"tuning.iters": 0, "tuning.opt_rtn": False},
}
"""auto-round's recipes (its ``auto-round``, ``auto-round-best``, ``auto-round-light`` commands and
``opt_rtn``/``rtn``), as the job fields they set; flags given explicitly win over them. ``best``
tunes at 2/iters for 3 bits or fewer by the learning-rate rule (:meth:`TuningConfig.effective_lr`)."""


def recipe_fields(name: str) -> dict[str, Any]:
    """The fields recipe ``name`` sets (dotted :class:`QuantJob` paths)."""
    key = str(name).lower()
    if key not in RECIPES:
        raise UserError(f"unknown recipe {name!r}", fix=f"use one of: {', '.join(RECIPES)}")
    return RECIPES[key]


@dataclass(frozen=True)
class DataConfig:
    """Where calibration samples come from and how they are rendered.

    ``dataset=None`` picks the template's default when it can be read now (pile-10k cached or the
    hub reachable), else the embedded offline set. ``template=None`` picks it by model type.
    ``max_missing_images`` is the fraction of image references that may be missing before the
    run fails (missing ones are always counted and reported).
    """

    dataset: str | None = None
    template: str | None = None
    extra_data_dir: str | None = None
    max_missing_images: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_missing_images <= 1.0:
            raise UserError(
                f"max_missing_images={self.max_missing_images} is not a fraction",
                fix="use a value between 0 (no image may be missing) and 1",
            )


def parse_size(size: str | int) -> int:
    """Bytes in a size like ``5GB``, ``500MB`` or ``2GiB``."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise UserError(f"shard size {size!r} is not understood", fix="use a size like 5GB or 500MB")
    units = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    return int(float(match.group(1)) * units.get((match.group(2) or "b").lower(), 1))


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] = ("auto_round",)
    output_dir: str = "./tmp_autoround"
    force: bool = False
    max_shard_size: str = "5GB"

    def __post_init__(self) -> None:
        if not self.formats:
            raise UserError("no export format given", fix="use --format auto_round")
        if parse_size(self.max_shard_size) <= 0:
            raise UserError(f"max_shard_size={self.max_shard_size!r} must be positive", fix="use e.g. 5GB")


@dataclass(frozen=True)
class MemoryConfig:
    """How a run fits in memory. None of it changes the checkpoint (tests hold the outputs
    byte-identical), so it stays out of the report written beside the weights and out of the
    job a resumed run must match."""

    streaming: bool = True
    """Decoder blocks read from the safetensors shards when reached (when the checkpoint allows)."""
    low_gpu_mem_usage: bool = False
    """Activation caches on the host; each micro-batch is moved to the device when used."""
    cache_dir: str | None = None
    """Spill activation caches to memory-mapped files in this folder (implies low_gpu_mem_usage)."""
    device_map: str | None = None
    """``auto`` or ``0,1,2``: one block's layers spread over several devices."""

    @property
    def host_caches(self) -> bool:
        return self.low_gpu_mem_usage or self.cache_dir is not None


def parse_shared_layers(value: Any) -> tuple[tuple[str, ...], ...]:
    """``"q_proj,k_proj;gate_proj,up_proj"`` (groups split by ``;``, members by ``,``) or nested
    lists (auto-round's API form) -> a tuple of groups."""
    if not value:
        return ()
    groups = value.split(";") if isinstance(value, str) else list(value)
    out = []
    for group in groups:
        members = group.split(",") if isinstance(group, str) else list(group)
        members = tuple(str(m).strip() for m in members if str(m).strip())
        if len(members) == 1:
            raise UserError(
                f"--shared_layers group {members[0]!r} has one member",
                fix="e.g. 'q_proj,k_proj;gate_proj,up_proj'",
            )
        if members:
            out.append(members)
    return tuple(out)


SENSITIVITIES = ("fisher", "local")


@dataclass(frozen=True)
class MixedBits:
    """auto-round's AutoScheme: each quantized layer takes one of ``schemes`` (presets, with the
    run's symmetry) so that the average bits per weight meet ``avg_bits`` with the least measured
    error (tuning/mixed_bits.py). Scale and zero-point bits count unless ``ignore_scale_zp_bits``."""

    schemes: tuple[str, ...] = ()
    avg_bits: float | None = None
    ignore_scale_zp_bits: bool = False
    shared_layers: tuple[tuple[str, ...], ...] = ()
    """Groups of layers (name patterns, matched within each block) that take one scheme, beyond
    the q/k/v and gate/up projections that always do (serving engines fuse them)."""
    sensitivity: str = "fisher"
    """How a layer's error at a scheme is weighed: ``fisher`` by the Fisher information of the
    model's output (pipeline/fisher.py), ``local`` by its own inputs' mean squares."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "schemes", tuple(str(s).strip().upper() for s in self.schemes if str(s).strip())
        )
        object.__setattr__(self, "shared_layers", parse_shared_layers(self.shared_layers))
        if self.sensitivity not in SENSITIVITIES:
            raise UserError(
                f"unknown mixed-bits sensitivity {self.sensitivity!r}",
                fix=f"use one of: {', '.join(SENSITIVITIES)}",
            )
        unknown = [s for s in self.schemes if s not in PRESETS]
        if unknown:
            raise UserError(
                f"unknown scheme {unknown[0]!r} in --schemes", fix=f"use presets of: {', '.join(PRESETS)}"
            )
        if self.schemes and self.avg_bits is None:
            raise UserError("--schemes needs a bit budget", fix="add --avg_bits 3.0 (or --bits 3.0)")
        if self.avg_bits is not None and not self.schemes:
            raise UserError("--avg_bits needs the schemes to mix", fix="add --schemes W2A16,W4A16,W8A16")
        if self.schemes and len(set(self.schemes)) < 2:
            raise UserError("--schemes needs two schemes or more to mix", fix="e.g. --schemes W2A16,W4A16")

    @property
    def active(self) -> bool:
        return bool(self.schemes)

    def options(self, sym: bool) -> list[QuantScheme]:
        """The candidate schemes, with the run's symmetry (one zero-point convention per checkpoint)."""
        return [dataclasses.replace(PRESETS[name], sym=sym) for name in self.schemes]

    def bits_per_weight(self, scheme: QuantScheme, in_features: int) -> float:
        """What one weight costs: its bits, plus a 16-bit scale (and a zero point, asymmetric)
        per group unless ``ignore_scale_zp_bits``."""
        if self.ignore_scale_zp_bits:
            return float(scheme.bits)
        per_group = 16 + (0 if scheme.sym else scheme.bits)
        return scheme.bits + per_group / scheme.group_size_for(in_features)


@dataclass(frozen=True)
class AutoScheme:
    """auto-round's ``AutoScheme`` object, for ``AutoRoundMLLM(model, scheme=AutoScheme(...))``:
    the same as the ``schemes=``, ``avg_bits=`` and ``ignore_scale_zp_bits=`` keywords."""

    avg_bits: float
    options: tuple[str, ...] | list[str] | str
    ignore_scale_zp_bits: bool = False
    shared_layers: Any = None
    method: str = "default"
    """auto-round's ``default`` (its gradient-based delta loss) is our ``fisher``; ``local`` too."""

    def keywords(self) -> dict[str, Any]:
        options = self.options.split(",") if isinstance(self.options, str) else list(self.options)
        return {
            "schemes": tuple(options),
            "avg_bits": self.avg_bits,
            "ignore_scale_zp_bits": self.ignore_scale_zp_bits,
            "shared_layers": parse_shared_layers(self.shared_layers),
            "mixed_sensitivity": "fisher" if self.method in ("default", None) else str(self.method),
        }


def scheme_keywords(scheme: Any) -> dict[str, Any]:
    """auto-round's ``scheme=`` as our keywords: a preset name, a dict of scheme fields, or an
    ``AutoScheme`` (ours or auto-round's own: anything with ``avg_bits`` and ``options``)."""
    if isinstance(scheme, str):
        return {"scheme": scheme}
    if hasattr(scheme, "avg_bits") and hasattr(scheme, "options"):
        return AutoScheme(
            scheme.avg_bits,
            scheme.options,
            bool(getattr(scheme, "ignore_scale_zp_bits", False)),
            getattr(scheme, "shared_layers", None),
            getattr(scheme, "method", "default"),
        ).keywords()
    fields = scheme if isinstance(scheme, dict) else getattr(scheme, "__dict__", {})
    known = {
        k: v for k, v in fields.items() if k in ("bits", "group_size", "sym", "data_type") and v is not None
    }
    if not known:
        raise UserError(f"scheme={scheme!r} is not understood", fix="pass a preset name such as 'W4A16'")
    return known


@dataclass(frozen=True)
class QuantJob:
    """Everything one run needs. ``model`` is a path, ``local:path`` or hub id."""

    model: str
    scheme: QuantScheme = field(default_factory=QuantScheme)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    data: DataConfig = field(default_factory=DataConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    device: str = "auto"
    model_dtype: str = "auto"
    fp_layers: tuple[str, ...] = ()
    to_quant_block_names: tuple[str, ...] = ()
    quant_nontext_module: bool = False
    trust_remote_code: bool = False
    group_size_fallback: bool = True
    """A layer whose width the group size does not divide is quantized with the largest group size
    of 128/64/32 that divides it (listed in the summary); off, it stays in 16 bit."""
    layer_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-layer schemes by name or pattern (auto_round_mllm/layer_config.py), normalized."""
    mixed: MixedBits = field(default_factory=MixedBits)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    quant_lm_head: bool = False
    """Quantize the output embeddings too, tuned layer-wise after the blocks (pipeline/head.py)."""
    untie_embeddings: bool = False
    """Give a tied lm_head its own weight, so that quantizing it leaves the input embeddings alone."""

    def __post_init__(self) -> None:
        if not self.model:
            raise UserError("no model given", fix="pass --model PATH_OR_HUB_ID")
        object.__setattr__(
            self, "model_dtype", normalize_dtype(self.model_dtype, allowed=MODEL_DTYPES, flag="--model_dtype")
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantJob:
        data = dict(data)
        nested = {
            "scheme": QuantScheme,
            "tuning": TuningConfig,
            "data": DataConfig,
            "export": ExportConfig,
            "memory": MemoryConfig,
            "mixed": MixedBits,
        }
        for key, klass in nested.items():
            if isinstance(data.get(key), dict):
                value = dict(data[key])
                if key == "export" and "formats" in value:
                    value["formats"] = tuple(value["formats"])
                if key == "mixed" and "schemes" in value:
                    value["schemes"] = tuple(value["schemes"])
                data[key] = klass(**value)
        for key in ("fp_layers", "to_quant_block_names"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def split_list(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``"a, b"`` or ``("a", "b")`` -> ``("a", "b")``."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(part.strip() for part in parts if part.strip())
