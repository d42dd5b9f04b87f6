"""Chat templates: how a calibration conversation becomes the text a model was trained on.

A template is data, one JSON file per model type in the repository's ``templates/`` folder, with
auto-round's field names so auto-round template files load unchanged (``templates/README.md``
documents every field). Templates are never code: nothing in a file is evaluated; only the literal
``{{content}}`` placeholder is substituted.

Two ways a template is used, chosen by ``extra_encode``:

* ``true``: :meth:`ChatTemplate.render` builds the whole prompt string from the ``format_*`` fields
  (models without a usable processor chat template, e.g. CogVLM2 and Phi-3-vision's remote code).
* ``false``: :meth:`ChatTemplate.to_messages` only normalizes roles and swaps the generic
  ``<image>`` marker for the model's image token; the HF processor's own chat template renders the
  prompt later. That template is the model author's, so it is the most faithful choice wherever it
  exists.

Rendering follows auto-round's encoder (``Template._encode``): the system text once before the first
turn, each turn wrapped by its role's ``format_*`` string, turns concatenated with nothing in
between. Each ``format_*`` string therefore carries its own trailing newline or space, and
``format_separator`` is accepted and kept (auto-round files carry it) but not used, as in auto-round.
Deviations from auto-round, each to avoid a prompt the model never saw: a system turn in the
conversation replaces ``default_system`` instead of being dropped; ``format_system`` is skipped when
the system text is empty (no empty system header); a ``format_*`` value of ``""`` drops that role's
turns; an unknown role is an error instead of being skipped silently.

The built-in files are read on the first registry lookup, not at import, so importing the package
does no file IO and a broken file fails the lookup that needs it with a message naming the file.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from auto_round_mllm.data.sample import ROLES, normalize_role
from auto_round_mllm.errors import DatasetError, UnknownName, UserError
from auto_round_mllm.registry import Registry
from auto_round_mllm.utils.assets import asset_dir

PLACEHOLDER = "{{content}}"
DEFAULT_TEMPLATE = "default"
README_HINT = "templates/README.md describes every field"

FORMAT_FIELDS = (
    "format_user",
    "format_assistant",
    "format_system",
    "format_function",
    "format_observation",
)
ROLE_FIELDS = {
    "user": "format_user",
    "assistant": "format_assistant",
    "system": "format_system",
    "function": "format_function",
    "observation": "format_observation",
}
# auto-round's defaults for a field that is missing (or null) in a JSON file.
FIELD_DEFAULTS: dict[str, Any] = {
    "format_user": PLACEHOLDER,
    "format_assistant": PLACEHOLDER,
    "format_system": PLACEHOLDER,
    "format_function": "",
    "format_observation": "",
    "format_separator": "\n",
    "default_system": "",
    "replace_tokens": (),
    "extra_encode": False,
    "default_dataset": "NeelNanda/pile-10k",
    "processor": "hf",
}
STRING_FIELDS = (*FORMAT_FIELDS, "format_separator", "default_system")
NON_EMPTY_FIELDS = ("model_type", "default_dataset", "processor")
TEMPLATE_FIELDS = (
    "model_type",
    *FORMAT_FIELDS,
    "format_separator",
    "default_system",
    "replace_tokens",
    "extra_encode",
    "default_dataset",
    "processor",
)
"""The fields a template JSON file may have (all optional)."""


@dataclass(frozen=True)
class ChatTemplate:
    """One model type's prompt format, its calibration processor and default dataset.

    ``replace_tokens`` is a tuple of ``(old, new)`` pairs applied to every turn's text in order, so an
    earlier pair can consume text a later one would otherwise match (``"<image>\\n"`` before
    ``"<image>"``). Construction validates the fields, so a template registered from Python fails
    with the same one-line messages as a JSON file.
    """

    name: str
    model_type: str = ""
    format_user: str = FIELD_DEFAULTS["format_user"]
    format_assistant: str = FIELD_DEFAULTS["format_assistant"]
    format_system: str = FIELD_DEFAULTS["format_system"]
    format_function: str = FIELD_DEFAULTS["format_function"]
    format_observation: str = FIELD_DEFAULTS["format_observation"]
    format_separator: str = FIELD_DEFAULTS["format_separator"]
    default_system: str = FIELD_DEFAULTS["default_system"]
    replace_tokens: tuple[tuple[str, str], ...] = ()
    extra_encode: bool = FIELD_DEFAULTS["extra_encode"]
    default_dataset: str = FIELD_DEFAULTS["default_dataset"]
    processor: str = FIELD_DEFAULTS["processor"]

    def __post_init__(self) -> None:
        where = f"template {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise UserError(f"{where}: the name must be a non-empty string", fix="name the template")
        if self.model_type == "":
            object.__setattr__(self, "model_type", self.name)  # frozen: set once, before use
        object.__setattr__(self, "replace_tokens", _as_pairs(self.replace_tokens, where))
        _check_values(where, {field.name: getattr(self, field.name) for field in fields(self)})

    def replace(self, text: str) -> str:
        """Apply ``replace_tokens`` in order (each pair sees the previous pair's result)."""
        for old, new in self.replace_tokens:
            text = text.replace(old, new)
        return text

    @property
    def generation_prompt(self) -> str:
        """What starts an assistant turn: ``format_assistant`` up to ``{{content}}``.

        Trailing spaces are dropped because the prompts end at the colon (``ASSISTANT:``,
        ``Answer:``) and the space belongs to the answer's first token; newlines are kept
        (``<|im_start|>assistant\\n``)."""
        return self.format_assistant.split(PLACEHOLDER, 1)[0].rstrip(" ")

    def to_messages(
        self, messages: Sequence[Mapping[str, str]], *, apply_replacements: bool = True
    ) -> list[dict[str, str]]:
        """Roles normalized (``human`` -> ``user``, ...) and contents passed through :meth:`replace`.

        Input turns use ``role``/``content`` or LLaVA's ``from``/``value``. System turns are kept,
        and ``default_system`` is not added: with ``extra_encode`` false the processor's chat
        template decides the system prompt (some templates reject a system role altogether).
        The replaced contents suit a chat template given string contents (the built-in
        replacements emit the token that template would emit for an image part); pass
        ``apply_replacements=False`` to keep the generic ``<image>`` marker, e.g. to build
        structured image + text contents instead.
        """
        turns: list[dict[str, str]] = []
        for index, message in enumerate(messages):
            role = message.get("role", message.get("from"))
            content = message.get("content", message.get("value"))
            if not isinstance(role, str) or not isinstance(content, str):
                raise DatasetError(
                    f"conversation turn {index} has no string 'role' and 'content' (got {dict(message)!r:.80})",
                    fix='write turns as {"role": "user", "content": "..."} (or LLaVA\'s "from"/"value")',
                )
            normalized = normalize_role(role)
            if normalized not in ROLES:
                raise DatasetError(
                    f"conversation turn {index} has unknown role {role!r}",
                    fix=f"use one of: {', '.join(ROLES)} (or human/gpt)",
                )
            turns.append(
                {"role": normalized, "content": self.replace(content) if apply_replacements else content}
            )
        return turns

    def render(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False) -> str:
        """One prompt string, as auto-round's encoder builds it (see the module docstring).

        The system text is the conversation's system turns (joined by newlines) or else
        ``default_system``; it is wrapped by ``format_system`` once, before the first turn.
        """
        turns = self.to_messages(messages)
        system_turns = [turn["content"] for turn in turns if turn["role"] == "system"]
        system = "\n".join(system_turns) if system_turns else self.default_system
        parts: list[str] = []
        if turns and system and self.format_system:
            parts.append(_fill(self.format_system, system))
        for turn in turns:
            if turn["role"] == "system":
                continue
            form = getattr(self, ROLE_FIELDS[turn["role"]])
            if form:
                parts.append(_fill(form, turn["content"]))
        if add_generation_prompt:
            parts.append(self.generation_prompt)
        return "".join(parts)


def _fill(form: str, content: str) -> str:
    # First occurrence only, like auto-round; validation guarantees there is exactly one.
    return form.replace(PLACEHOLDER, content, 1)


def _type_name(value: object) -> str:
    """The JSON name of a value's type, for messages a JSON author understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _as_pairs(value: object, where: str) -> tuple[tuple[str, str], ...]:
    """Python form of ``replace_tokens``: a sequence of (old, new) string pairs."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise UserError(
            f"{where}: field 'replace_tokens' must be a sequence of (old, new) pairs, got {_type_name(value)}",
            fix='e.g. replace_tokens=(("<image>", "<|image|>"),)',
        )
    pairs = []
    for index, pair in enumerate(value):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise UserError(
                f"{where}: field 'replace_tokens' item {index} is not an (old, new) pair of strings",
                fix='e.g. replace_tokens=(("<image>", "<|image|>"),)',
            )
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _pairs_from_flat(value: object, where: str) -> tuple[tuple[str, str], ...]:
    """JSON form of ``replace_tokens``: a flat list ``[old1, new1, old2, new2, ...]`` or null."""
    fix = 'write pairs flat: ["<image>", "<|image|>", "old2", "new2"]'
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UserError(
            f"{where}: field 'replace_tokens' must be a list of strings or null, got {_type_name(value)}",
            fix=fix,
        )
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise UserError(
                f"{where}: field 'replace_tokens' item {index} must be a string, got {_type_name(item)}",
                fix=fix,
            )
    if len(value) % 2:
        raise UserError(
            f"{where}: field 'replace_tokens' has an odd number of strings ({len(value)})", fix=fix
        )
    return tuple((value[i], value[i + 1]) for i in range(0, len(value), 2))


def _check_values(where: str, values: Mapping[str, Any]) -> None:
    """Checks shared by JSON files and Python construction; ``values`` is in Python form."""
    for name in (*STRING_FIELDS, *NON_EMPTY_FIELDS):
        if not isinstance(values[name], str):
            raise UserError(
                f"{where}: field {name!r} must be a string, got {_type_name(values[name])}",
                fix=README_HINT,
            )
    for name in NON_EMPTY_FIELDS:
        if not values[name].strip():
            raise UserError(f"{where}: field {name!r} is empty", fix=README_HINT)
    if not isinstance(values["extra_encode"], bool):
        raise UserError(
            f"{where}: field 'extra_encode' must be true or false, got {_type_name(values['extra_encode'])}",
            fix=README_HINT,
        )
    for name in FORMAT_FIELDS:
        form = values[name]
        count = form.count(PLACEHOLDER)
        if form and count == 0:
            raise UserError(
                f"{where}: field {name!r} has no {PLACEHOLDER} placeholder",
                fix=f'put {PLACEHOLDER} where the turn\'s text goes, or use "" to leave that role out',
            )
        if count > 1:
            raise UserError(
                f"{where}: field {name!r} has {PLACEHOLDER} {count} times",
                fix="only the first would be filled in; keep exactly one",
            )
    for index, (old, _new) in enumerate(values["replace_tokens"]):
        if not old:
            raise UserError(
                f"{where}: field 'replace_tokens' pair {index} replaces the empty string",
                fix="every 'old' string must be non-empty",
            )


def load_template_file(path: str | Path) -> ChatTemplate:
    """Read and validate one template JSON file; every problem is a one-line :class:`UserError`.

    The template's ``name`` is the file name without ``.json``; ``model_type`` defaults to it.
    """
    path = Path(path)
    where = f"template file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"{where} does not exist", fix="pass a registered template name or the path of a .json file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where} cannot be read ({exc})", fix="pass a readable UTF-8 JSON file") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            fix=f"fix the syntax there; {README_HINT}",
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"{where} must hold a JSON object of template fields, got {_type_name(data)}", fix=README_HINT
        )
    for key in data:
        if key not in TEMPLATE_FIELDS:
            close = difflib.get_close_matches(key, TEMPLATE_FIELDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(
                f"{where}: unknown field {key!r}", fix=f"{hint}valid fields: {', '.join(TEMPLATE_FIELDS)}"
            )
    values: dict[str, Any] = {"name": path.stem, **FIELD_DEFAULTS, "model_type": path.stem}
    for key, value in data.items():
        if key == "replace_tokens":
            values[key] = _pairs_from_flat(value, where)
        elif key == "extra_encode":
            if not isinstance(value, bool):
                raise UserError(
                    f"{where}: field 'extra_encode' must be true or false, got {_type_name(value)}",
                    fix=README_HINT,
                )
            values[key] = value
        elif value is None and key in FIELD_DEFAULTS:
            values[key] = FIELD_DEFAULTS[key]  # null means "auto-round's default", as in auto-round
        elif not isinstance(value, str):
            nullable = " or null" if key in FIELD_DEFAULTS else ""
            raise UserError(
                f"{where}: field {key!r} must be a string{nullable}, got {_type_name(value)}", fix=README_HINT
            )
        else:
            values[key] = value
    _check_values(where, values)  # here, so the message names the file rather than the template
    return ChatTemplate(**values)


class _TemplateRegistry(Registry[ChatTemplate]):
    """A :class:`Registry` that reads the built-in ``templates/*.json`` on first use.

    Every entry point loads first, ``add`` included, so duplicate protection against built-in
    names does not depend on whether anything was looked up before."""

    def __init__(self) -> None:
        super().__init__("template")
        self._loaded = False

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        for path in sorted(asset_dir("templates").glob("*.json")):
            template = load_template_file(path)
            super().add(template.name, template)
        self._loaded = True

    def add(
        self, name: str, item: ChatTemplate, *, aliases: tuple[str, ...] = (), replace: bool = False
    ) -> ChatTemplate:
        self._ensure_loaded()
        return super().add(name, item, aliases=aliases, replace=replace)

    def canonical(self, name: str) -> str:
        self._ensure_loaded()
        return super().canonical(name)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return super().__contains__(name)

    def names(self) -> list[str]:
        self._ensure_loaded()
        return super().names()

    def items(self) -> Iterator[tuple[str, ChatTemplate]]:
        self._ensure_loaded()
        return super().items()


TEMPLATES: Registry[ChatTemplate] = _TemplateRegistry()


def register_template(template: ChatTemplate, *, replace: bool = False) -> ChatTemplate:
    """Make ``template`` available under ``template.name`` (to ``--template`` and model-type lookup).

    Registering a built-in name needs ``replace=True``, so a typo cannot shadow one silently."""
    if not isinstance(template, ChatTemplate):
        raise TypeError(f"register_template expects a ChatTemplate, got {type(template).__name__}")
    return TEMPLATES.add(template.name, template, replace=replace)


def resolve_template(spec: str | None, model_type: str) -> tuple[ChatTemplate, str | None]:
    """The template for ``--template spec`` (None: the model's own), and a one-line notice or None.

    Order: no spec -> the template named like ``model_type``, else ``default`` with a notice; a
    registered name; a path (ends with ``.json`` or is an existing file); else an
    :class:`UnknownName` error listing the choices.
    """
    if spec is None:
        if model_type in TEMPLATES:
            return TEMPLATES.get(model_type), None
        notice = (
            f"model type {model_type!r} has no chat template; using {DEFAULT_TEMPLATE!r} "
            "(pass --template NAME or a .json file to choose one)"
        )
        return TEMPLATES.get(DEFAULT_TEMPLATE), notice
    if spec in TEMPLATES:
        return TEMPLATES.get(spec), None
    if spec.lower().endswith(".json") or Path(spec).is_file():
        return load_template_file(spec), None
    try:
        return TEMPLATES.get(spec), None
    except UnknownName as exc:
        raise UnknownName(exc.problem, fix=f"{exc.fix}; or pass the path of a .json template file") from None
