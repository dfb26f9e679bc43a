"""The command's heap warm-up (reference/app/heap.py): later allocations get memory that is already faulted in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CODE = """
import resource, sys
import numpy as np
from whisperkv.reference.app.heap import MMAP_THRESHOLD, WARM_BYTES, warm_heap
thread = warm_heap() if sys.argv[1] == "warm" else None
if thread is not None:
    thread.join()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
size = MMAP_THRESHOLD // 2  # blocks the heap serves, as a kernel's activations
blocks = [np.empty(size, np.uint8) for _ in range(WARM_BYTES // 2 // size)]
for block in blocks:
    block[::4096] = 1  # one write per 4 KB page
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
blocks += [np.ones(size, np.uint8) for _ in range(WARM_BYTES // size)]  # the warm heap used up
big = np.empty(MMAP_THRESHOLD, np.uint8)
import ctypes
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
start_brk = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[44])  # proc(5): field 47
print(thread is not None, faults, start_brk <= big.ctypes.data < libc.sbrk(0))
"""


def faults(mode: str) -> tuple[bool, int, bool]:
    """-> (warmed, page faults of the heap-sized blocks, whether a block of MMAP_THRESHOLD is in the heap)"""
    p = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    warmed, count, in_heap = p.stdout.split()
    return warmed == "True", int(count), in_heap == "True"


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="the warm-up sets glibc's malloc options; elsewhere it does nothing")
def test_a_warm_heap_serves_large_blocks_without_page_faults() -> None:
    warmed, warm, big_in_heap = faults("warm")
    assert warmed
    pages = (48 << 20) // 2 // 4096  # the blocks' 6,144 pages
    # Without the warm-up each page faults once (or, where the kernel grants large folios, once per folio);
    # with it the blocks are carved from the faulted heap: a handful of faults for numpy's bookkeeping.
    assert warm < pages // 50, f"{warm} page faults for blocks of {pages} pages from a warm heap"
    cold_warmed, cold, _ = faults("cold")
    assert not cold_warmed and cold > warm
    # Once the warm heap is used up, a block of MMAP_THRESHOLD or more gets a mapping of its own, returned to
    # the kernel when freed: the heap does not grow to keep a long file's large temporaries (the 172 s clip's
    # peak RSS depends on it).
    assert not big_in_heap
