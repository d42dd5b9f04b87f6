"""What a dataset source is given when it loads: extra folders, hub access, a sample limit, and
one place that resolves image paths and counts the missing ones.

Image resolution lives here, not in each reader, so every source (LLaVA JSON, JSONL conversations,
parquet, caption folders, a user's own source) gets the same path-escape check and the same
missing-image accounting, which :func:`auto_round_mllm.data.sources.load_samples` turns into a
note or an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from auto_round_mllm.errors import DatasetError

EXTRA_DIR_KINDS = ("image", "video", "audio")
DEFAULT_MAX_MISSING_IMAGES = 0.1
"""Fraction of the images a source refers to that may be missing before the run fails.

Missing images are always counted, reported and their samples dropped; up to 10% is tolerated so
that a COCO copy with a few absent files still calibrates, while a wrong folder (nearly everything
missing) fails at once instead of calibrating on a handful of samples."""


@dataclass(frozen=True)
class ExtraDataDirs:
    """Parsed ``--extra_data_dir``: one folder for everything, or ``image=DIR,video=DIR,audio=DIR``."""

    image: Path | None = None
    video: Path | None = None
    audio: Path | None = None
    root: Path | None = None  # the plain-folder form; also searched for dataset files (LLaVA JSON)

    @property
    def folders(self) -> list[Path]:
        """Folders searched for a dataset's own files (the LLaVA JSON): the plain folder, else the
        image folder of the ``image=DIR`` form."""
        found = [self.root, self.image]
        return [folder for index, folder in enumerate(found) if folder and folder not in found[:index]]


def parse_extra_data_dir(value: str | os.PathLike[str] | None) -> ExtraDataDirs:
    """``DIR`` or ``image=DIR,video=DIR,audio=DIR`` (auto-round's two forms); folders must exist."""
    if value is None or not str(value).strip():
        return ExtraDataDirs()
    text = str(value).strip()
    if "=" not in text:
        folder = _existing_folder(text, "--extra_data_dir")
        return ExtraDataDirs(image=folder, root=folder)
    folders: dict[str, Path] = {}
    for part in text.split(","):
        kind, sep, path = part.partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in EXTRA_DIR_KINDS or not path.strip():
            raise DatasetError(
                f"--extra_data_dir part {part.strip()!r} is not KIND=DIR",
                fix="write one folder, or image=DIR,video=DIR,audio=DIR",
            )
        if kind in folders:
            raise DatasetError(f"--extra_data_dir names {kind!r} twice", fix="give each kind once")
        folders[kind] = _existing_folder(path.strip(), f"--extra_data_dir {kind}")
    return ExtraDataDirs(**folders)


def _existing_folder(path: str, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{what} folder {folder} does not exist", fix="check the path")
    return folder


@dataclass
class ImageTally:
    """How many image references a source made, and which were not found."""

    referenced: int = 0
    missing: int = 0
    examples: list[str] = field(default_factory=list)

    def add_missing(self, path: Path) -> None:
        self.missing += 1
        if len(self.examples) < 3:
            self.examples.append(str(path))


def inside(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` if it stays inside ``folder`` (lexically: ``..`` and absolute paths that
    leave it are refused, while symlinks the user placed inside the folder are followed)."""
    base = os.path.normpath(os.path.abspath(folder))
    candidate = os.path.normpath(os.path.join(base, relative))
    if candidate != base and candidate.startswith(base.rstrip(os.sep) + os.sep):
        return Path(candidate)
    return None


@dataclass
class SourceContext:
    """Everything a registered source may use. A source function takes one of these."""

    extra: ExtraDataDirs = field(default_factory=ExtraDataDirs)
    hub_available: bool | None = None
    limit: int | None = None
    max_missing_images: float = DEFAULT_MAX_MISSING_IMAGES
    images: ImageTally = field(default_factory=ImageTally)

    def hub_is_available(self) -> bool:
        """Asked once per context: ``HF_HUB_OFFLINE`` or a 3-second connect to huggingface.co."""
        if self.hub_available is None:
            from auto_round_mllm.models.loading import hub_reachable

            self.hub_available = hub_reachable()
        return self.hub_available

    def fresh(self, limit: int | None) -> SourceContext:
        """The same settings with a new limit and an empty tally (one per source of a list)."""
        return SourceContext(self.extra, self.hub_available, limit, self.max_missing_images)

    def image_folder(self, own_folder: Path, *, user_may_override: bool = True) -> Path:
        """Where a source's image names are looked up: the ``--extra_data_dir`` image folder when
        given (auto-round's rule), else the folder that holds the dataset file."""
        if user_may_override and self.extra.image is not None:
            return self.extra.image
        return own_folder

    def resolve_image(self, name: object, folder: Path, *, where: str) -> Path | None:
        """Resolve one image reference under ``folder``; ``None`` (and counted) when missing.

        ``folder / name`` is tried first, then ``folder / basename(name)``, so both bare COCO names
        (``000000033471.jpg``) and prefixed ones (``coco/train2017/...``) find a flat COCO folder.
        A name that leaves the folder is an error, not a missing image: it is a malformed or
        hostile dataset, and reading files outside the folder the user named is never right.
        """
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(
                f"{where}: image reference {name!r} is not a file name", fix="give a path string"
            )
        self.images.referenced += 1
        direct = inside(folder, name)
        if direct is None:
            raise DatasetError(
                f"{where}: image path {name!r} leaves the image folder {folder}",
                fix="use paths relative to the image folder, without '..' or absolute paths elsewhere",
            )
        for candidate in (direct, folder / Path(name).name):
            if candidate.is_file():
                return candidate
        self.images.add_missing(direct)
        return None
