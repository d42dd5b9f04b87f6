"""One calibration example before tokenization, and what a source hands to calibration.

Sources (pile-10k, llava conversations, local files, the embedded set) all produce
:class:`Sample` objects; templates and processors turn them into model inputs. Keeping this type
tiny is what lets a new source or processor be written without knowing the other side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant", "function", "observation")
ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "tool": "observation",
}


@dataclass
class Sample:
    """Plain ``text``, or a conversation (``messages``) whose turns may contain ``<image>``
    placeholders, one per entry of ``images`` (resolved local files), in order."""

    text: str | None = None
    messages: list[dict[str, str]] | None = None
    images: list[Path] = field(default_factory=list)
    source: str = ""

    @property
    def is_multimodal(self) -> bool:
        return bool(self.images)


@dataclass
class SourceSamples:
    """What a dataset source produced, with the accounting the report shows."""

    label: str
    samples: list[Sample]
    missing_images: int = 0
    notes: list[str] = field(default_factory=list)


def normalize_role(role: str) -> str:
    """LLaVA's ``human``/``gpt`` and similar spellings -> user/assistant/..."""
    key = role.strip().lower()
    return ROLE_ALIASES.get(key, key)
