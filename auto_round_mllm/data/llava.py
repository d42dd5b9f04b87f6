"""LLaVA-Instruct conversations (``liuhaotian/llava_*``) with COCO images, from local copies only.

auto-round fetches the JSON with a plain HTTP GET and each COCO image on the fly; here the JSON
comes from ``--extra_data_dir`` or the Hugging Face hub cache (``local_files_only``), and images
from the ``--extra_data_dir`` image folder. Nothing is downloaded, so a run is reproducible and
fails in seconds, with the command that fetches what is missing.
"""

from __future__ import annotations

from pathlib import Path

from auto_round_mllm.data.context import SourceContext
from auto_round_mllm.data.local_files import read_json
from auto_round_mllm.data.sample import SourceSamples
from auto_round_mllm.data.source_registry import register_dataset
from auto_round_mllm.errors import DatasetError

LLAVA_REPO = "liuhaotian/LLaVA-Instruct-150K"
LLAVA_FILES = {
    "liuhaotian/llava_conv_58k": "conversation_58k.json",
    "liuhaotian/llava_instruct_80k": "llava_instruct_80k.json",
    "liuhaotian/llava_instruct_150k": "llava_instruct_150k.json",
}
ALIASES = {"liuhaotian/llava_conv_58k": ("liuhaotian/llava",)}


def hub_cached_file(filename: str) -> Path | None:
    """The file from the hub cache, never from the network."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(repo_id=LLAVA_REPO, repo_type="dataset", filename=filename, local_files_only=True)
        )
    except Exception:  # LocalEntryNotFoundError and friends: "not cached" is the only meaning here
        return None


def find_llava_json(filename: str, ctx: SourceContext) -> Path | None:
    """``--extra_data_dir`` first (the user's explicit copy), then the hub cache."""
    for folder in ctx.extra.folders:
        if (folder / filename).is_file():
            return folder / filename
    return hub_cached_file(filename)


def _make_source(name: str, filename: str) -> None:
    def ready(ctx: SourceContext) -> bool:
        return find_llava_json(filename, ctx) is not None

    def load(ctx: SourceContext) -> SourceSamples:
        path = find_llava_json(filename, ctx)
        if path is None:
            searched = ", ".join(str(folder) for folder in ctx.extra.folders) or "no --extra_data_dir given"
            raise DatasetError(
                f"{filename} for {name} is not in --extra_data_dir ({searched}) nor in the Hugging Face cache",
                fix=(
                    f"fetch it once with `hf download {LLAVA_REPO} {filename} --repo-type dataset` or put it in "
                    "--extra_data_dir, and pass the COCO train2017 images with --extra_data_dir DIR or image=DIR"
                ),
            )
        return SourceSamples(label=name, samples=read_json(path, ctx))

    load.__doc__ = f"LLaVA-Instruct {filename} (image-text), local JSON + COCO images from --extra_data_dir."
    register_dataset(name, aliases=ALIASES.get(name, ()), ready=ready)(load)


for _name, _filename in LLAVA_FILES.items():
    _make_source(_name, _filename)
