"""The command's heap warm-up (reference/app/heap.py): later allocations get memory that is already faulted in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CODE = """
import resource, sys
import numpy as np
from whisperkv.reference.app.heap import WARM_BYTES, warm_heap
thread = warm_heap() if sys.argv[1] == "warm" else None
if thread is not None:
    thread.join()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.empty(WARM_BYTES // 2, np.uint8)
block[::4096] = 1  # one write per 4 KB page
print(thread is not None, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[bool, int]:
    p = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    warmed, count = p.stdout.split()
    return warmed == "True", int(count)


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="the warm-up sets glibc's malloc options; elsewhere it does nothing")
def test_a_warm_heap_serves_a_large_block_without_page_faults() -> None:
    warmed, warm = faults("warm")
    assert warmed
    pages = (48 << 20) // 2 // 4096  # the block's 6,144 pages
    # Without the warm-up each page faults once (or, where transparent huge pages are granted, one fault per
    # 2 MB); with it the block is carved from the faulted heap: a handful of faults for numpy's bookkeeping.
    assert warm < pages // 50, f"{warm} page faults for a block of {pages} pages from a warm heap"
    cold_warmed, cold = faults("cold")
    assert not cold_warmed and cold > warm
