"""auto-round's flags that set no field of ours: accepted where they ask for what we do anyway,
refused in one line where they ask for what we do not build.

auto-round 0.16.1's command has about 150 option strings; :mod:`auto_round_mllm.flags` implements
the ones with a meaning here. The rest are rows of this table, so that a batch script written for
auto-round either runs unchanged (``--mllm``, ``--disable_opt_rtn``, ``--act_bits 16``,
``--allow_online_rotation`` ask for our behaviour) or stops before any weight is read with the reason
and what to use instead. Nothing is silently ignored: a value other than the one that means "what
we do" is refused. ``tests/test_autoround_flags.py`` reads auto-round's own parser and checks that
every option string it has is known here or in the main table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from auto_round_mllm.errors import UserError

NOT_YET = "not built yet"


def _always(_value: Any) -> bool:
    return True


def _number_at_least(lowest: float) -> Callable[[Any], bool]:
    def accepts(value: Any) -> bool:
        try:
            return float(value) >= lowest
        except (TypeError, ValueError):
            return False

    return accepts


@dataclass(frozen=True)
class ForeignFlag:
    """One of auto-round's flags with no field here."""

    name: str
    kind: type
    default: Any
    """auto-round's default: what the flag's absence means."""
    asks_for: str
    """What the flag asks for, as the refusal names it."""
    fix: str = ""
    """What to do instead (the refusal's second half); empty for flags that are always accepted."""
    aliases: tuple[str, ...] = ()
    negative: str | None = None
    """auto-round's ``--no-NAME`` spelling of a boolean flag (it asks for the default)."""
    accepts: Callable[[Any], bool] | None = None
    """Values, besides the default, that ask for what we do anyway."""
    status: str = "not supported"
    """``not supported``, or :data:`NOT_YET` for what an open issue builds."""

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def check(self, value: Any, *, given: str | None = None) -> None:
        """Refuse ``value`` unless it asks for what we do; ``given`` is how the user wrote it (the
        command's ``--name value`` by default, ``name=value`` from Python)."""
        if value is None or value == self.default or value is False:
            return
        if self.accepts is not None and self.accepts(value):
            return
        if given is None:
            given = f"--{self.name}" if self.kind is bool else f"--{self.name} {value}"
        raise UserError(f"{given}: {self.asks_for} is {self.status} here", fix=self.fix)

    def readme_row(self) -> str:
        spelled = ", ".join(f"`--{s}`" for s in self.spellings)
        if self.negative:
            spelled += f", `--{self.negative}`"
        if not self.fix:
            return f"| {spelled} | accepted: {self.asks_for} |"
        return f"| {spelled} | refused ({self.status}): {self.asks_for}; {self.fix} |"


def _refused(name: str, kind: type, default: Any, asks_for: str, fix: str, **more: Any) -> ForeignFlag:
    return ForeignFlag(name, kind, default, asks_for, fix, **more)


def _accepted(name: str, kind: type, default: Any, why: str, **more: Any) -> ForeignFlag:
    return ForeignFlag(name, kind, default, why, "", accepts=_always, **more)


EVAL_FIX = "leave it out: --tasks runs lm-eval through transformers on the checkpoint our loader reads"
ROTATION_FIX = "leave it out: no rotation is applied"
DIFFUSION_FIX = "auto-round-mllm quantizes language and vision-language models"
AWQ_FIX = "leave it out: SignRound tunes the weights (--format auto_awq stores them in AWQ's layout)"
SVD_FIX = "leave it out: weights are quantized without a low-rank branch"
ACT_FIX = "leave it out: weights are quantized, activations stay in 16 bit (W*A16)"
ONE_SCHEME = (
    "quantize with one scheme (--scheme, --bits, --group_size) and keep layers in 16 bit with --fp_layers"
)

FOREIGN_FLAGS: tuple[ForeignFlag, ...] = (
    _refused("platform", str, "hf", "loading from another hub", "download the model and pass its folder",
             accepts=lambda v: str(v).lower() == "hf"),
    _refused("num_hidden_layers", int, None, "loading only the first N decoder layers",
             "select the blocks to tune with --to_quant_block_names", aliases=("debug_layer_num",)),
    _refused("algorithm", str, None, "another quantization algorithm",
             "SignRound is the algorithm (--iters 0 for round-to-nearest)",
             aliases=("algorithms", "alg", "algs", "alg_config", "alg_configs"),
             accepts=lambda v: str(v).lower() in ("auto_round", "autoround", "signround")),
    _refused("static_kv_dtype", str, None, "KV-cache quantization", "leave it out: the KV cache stays in 16 bit"),
    _refused("static_kv_granularity", str, "tensor", "KV-cache quantization",
             "leave it out: the KV cache stays in 16 bit"),
    _refused("static_attention_dtype", str, None, "attention quantization",
             "leave it out: attention runs in 16 bit"),
    _refused("static_attention_granularity", str, "tensor", "attention quantization",
             "leave it out: attention runs in 16 bit"),
    _refused("eval_backend", str, "hf", "another evaluation backend", EVAL_FIX,
             accepts=lambda v: str(v).lower() == "hf"),
    _refused("vllm_args", str, None, "evaluation through vLLM", EVAL_FIX),
    _refused("model_free", bool, False, "model-free round-to-nearest",
             "use --iters 0 for round-to-nearest through the model"),
    _accepted("disable_model_free", bool, False, "runs always go through the model"),
    _accepted("mllm", bool, False, "vision-language models are always quantized as such"),
    _refused("prompt_file", str, None, "diffusion evaluation", DIFFUSION_FIX),
    _refused("prompt", str, None, "diffusion evaluation", DIFFUSION_FIX),
    _refused("metrics", str, "clip", "diffusion metrics", DIFFUSION_FIX, aliases=("metric",)),
    _refused("image_save_dir", str, "./tmp_image_save", "diffusion images", DIFFUSION_FIX),
    _refused("guidance_scale", float, 7.5, "diffusion guidance", DIFFUSION_FIX),
    _refused("calib_num_inference_steps", int, 8, "diffusion calibration", DIFFUSION_FIX),
    _refused("num_inference_steps", int, 50, "diffusion generation", DIFFUSION_FIX),
    _refused("generator_seed", int, None, "diffusion generation", DIFFUSION_FIX),
    _refused("diffusion_tuning_cache_size", float, 0, "diffusion tuning", DIFFUSION_FIX),
    _refused("act_bits", int, None, "activation quantization", ACT_FIX, accepts=_number_at_least(16)),
    _refused("act_group_size", int, None, "activation quantization", ACT_FIX),
    _refused("act_asym", bool, False, "activation quantization", ACT_FIX),
    _refused("act_data_type", str, None, "activation quantization", ACT_FIX, aliases=("act_dtype",),
             accepts=lambda v: str(v).lower() in ("float", "fp16", "bf16", "float16", "bfloat16")),
    _refused("disable_act_dynamic", bool, False, "static activation quantization", ACT_FIX),
    _refused("super_bits", int, None, "double-quantized scales (GGUF K-quants)",
             "use --format auto_round, auto_gptq or auto_awq", status=NOT_YET),
    _refused("super_group_size", int, None, "double-quantized scales (GGUF K-quants)",
             "use --format auto_round, auto_gptq or auto_awq", status=NOT_YET),
    _refused("enable_neuqi", bool, False, "the NeUQI grid search",
             "use a few SignRound --iters instead (they start from the clipping search)"),
    _refused("enable_alg_ext", bool, False, "auto-round's experimental SignRound extension", "leave it out",
             negative="no-enable_alg_ext"),
    _refused("enable_lfq", bool, False, "a last-block cross-entropy loss", "leave it out",
             negative="no-enable_lfq"),
    _refused("awq_duo_scaling", str, "true", "AWQ as an algorithm", AWQ_FIX,
             accepts=lambda v: str(v).lower() == "true"),
    _refused("awq_n_grid", int, 20, "AWQ as an algorithm", AWQ_FIX),
    _refused("awq_seqlen", int, None, "AWQ as an algorithm", AWQ_FIX),
    _refused("awq_smooth_batch_size", int, None, "AWQ as an algorithm", AWQ_FIX),
    _refused("awq_apply_clip", bool, False, "AWQ as an algorithm", AWQ_FIX),
    _refused("awq_clip_as_init", bool, False, "AWQ as an algorithm", AWQ_FIX),
    _refused("svdquant_rank", int, 32, "SVDQuant", SVD_FIX),
    _refused("enable_svdquant_smooth", bool, False, "SVDQuant", SVD_FIX),
    _refused("svdquant_smooth_num_grids", int, 20, "SVDQuant", SVD_FIX),
    _refused("svdquant_smooth_max_calibration_calls", int, 128, "SVDQuant", SVD_FIX),
    _refused("svdquant_residual_iters", int, 1, "SVDQuant", SVD_FIX),
    _refused("enable_svdquant_residual_early_stop", bool, False, "SVDQuant", SVD_FIX),
    _refused("svdquant_low_rank_dtype", str, "bf16", "SVDQuant", SVD_FIX),
    _refused("svdquant_target_modules", str, None, "SVDQuant", SVD_FIX),
    _refused("svdquant_exclude_modules", str, None, "SVDQuant", SVD_FIX),
    _refused("svdquant_model_adapter", str, "auto", "SVDQuant", SVD_FIX),
    _refused("rotation_type", str, None, "Hadamard rotations", ROTATION_FIX, aliases=("rotation_hadamard_type",)),
    _refused("rotation_backend", str, "auto", "Hadamard rotations", ROTATION_FIX),
    _refused("rotation_block_size", int, None, "Hadamard rotations", ROTATION_FIX),
    _refused("fuse_online_to_weight", bool, False, "Hadamard rotations", ROTATION_FIX,
             negative="no-fuse_online_to_weight"),
    _accepted("allow_online_rotation", bool, False, "no rotation is applied, online or not",
              negative="no-allow_online_rotation"),
    *(
        _refused(name, bool, False, "rotations", ROTATION_FIX, negative=f"no-{name}")
        for name in ("layerwise", "r1", "r2", "r3", "r4", "random_r1", "random_r2", "random_r3", "random_r4",
                     "trainable_rotation", "trainable_smooth", "online_r1_rotation", "fuse_rmsnorm")
    ),
    _refused("rotation_size", int, None, "rotations", ROTATION_FIX),
    _refused("smooth_lr", float, None, "trainable smoothing", ROTATION_FIX),
    _refused("loss_type", str, None, "another tuning loss", "leave it out: the block output's MSE is the loss"),
    _refused("kl_top_k", int, None, "a KL tuning loss", "leave it out: the block output's MSE is the loss"),
)  # fmt: skip

BY_NAME: dict[str, ForeignFlag] = {flag.name: flag for flag in FOREIGN_FLAGS}
BY_SPELLING: dict[str, ForeignFlag] = {s: flag for flag in FOREIGN_FLAGS for s in flag.spellings}
NEGATIVES: dict[str, ForeignFlag] = {flag.negative: flag for flag in FOREIGN_FLAGS if flag.negative}
"""``no-NAME`` spellings: as Python keywords, ``no-enable_lfq=False`` asks for ``enable_lfq``."""


def check_foreign(values: Mapping[str, Any]) -> None:
    """Refuse, in one line, the first of auto-round's flags (the command's values, by name) that
    asks for something we do not build."""
    for name, value in values.items():
        BY_NAME[name].check(value)


README_START = "<!-- autoround-flags: generated from auto_round_mllm/autoround_flags.py by `python scripts/render_flag_table.py` -->"
README_END = "<!-- autoround-flags: end -->"


def readme_table() -> str:
    rows = ["| auto-round flag | here |", "|---|---|"]
    rows.extend(flag.readme_row() for flag in FOREIGN_FLAGS)
    return "\n".join(rows)
