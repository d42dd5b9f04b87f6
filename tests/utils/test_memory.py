"""Host memory helpers."""

import sys

import pytest
import torch

from auto_round_mllm.utils.memory import _libc_malloc_trim, peak_rss_gb, release_host_memory


def resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def test_peak_rss_is_positive_and_plausible():
    assert 0.01 < peak_rss_gb() < 64


@pytest.mark.skipif(not sys.platform.startswith("linux") or _libc_malloc_trim() is None, reason="glibc only")
def test_release_host_memory_hands_freed_heap_back():
    """After a burst of medium allocations (below glibc's raised mmap threshold) is freed, the trim
    returns the memory: resident size falls back near where it was (without it, +200 MiB stay)."""
    big = torch.empty(16 * 2**20, dtype=torch.uint8)  # a freed mmap chunk: glibc raises its threshold
    del big
    before = resident_mib()
    chunks = [torch.ones(4 * 2**20, dtype=torch.uint8) for _ in range(50)]  # 200 MiB from the heap
    last = chunks[-1]  # pins the top of the heap, as live tensors do in a real run
    del chunks
    release_host_memory()
    assert resident_mib() - before < 100
    del last


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_child_reports_its_own_peak_not_its_parents():
    """ru_maxrss survives exec (a child of a big harness starts at the harness's peak); VmHWM does not."""
    import subprocess

    ballast = torch.ones(400 * 2**20, dtype=torch.uint8)  # 400 MiB resident in this process
    code = "from auto_round_mllm.utils.memory import peak_rss_gb; print(peak_rss_gb())"
    child = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert child < 0.35, f"the child reported {child:.2f} GiB"
    del ballast
