"""The reference runner's own decisions (it runs in auto-round's venv; only its pure parts run here)."""

from __future__ import annotations

import autoround_runner
import autoround_venv


def test_a_vision_language_checkpoint_takes_the_mllm_path(tiny_qwen2_vl, tiny_llama):
    assert autoround_runner.is_vision_language(tiny_qwen2_vl)
    assert not autoround_runner.is_vision_language(tiny_llama)


def test_the_reference_venv_can_load_an_image_processor():
    """auto-round's MLLM path asks for the (PIL) image processor even on text-only ids."""
    requirements = autoround_venv._requirements("0.16.1")
    assert "pillow" in requirements
    assert not any(r.startswith("torchvision") for r in requirements)  # its PyPI wheels need CUDA torch
