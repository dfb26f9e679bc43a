"""A warm heap for the `whisperkv` command: the first transcription's memory, faulted in ahead, off the
critical path.

A fresh process gets every page of its memory from the kernel on first touch. The first transcription
of a 30 s clip on the tvm backend touched ~64 MB of new memory (the encoder's activations, the prefill's
cross K/V, the log-mel's arrays): ~18,500 page faults, where a second transcription in the same process
took ~2,100 and ~80 ms less (means of 10 fresh processes on a 2-vCPU AMD EPYC, a VM: 825 against 744 ms).
Many of the faults land inside the encoder's parallel kernels, where both threads stall on them.

The command's first ~250 ms are imports on one core (numpy, tvm-ffi, the tokenizer), which leave the other
core idle. `warm_heap` uses it: it takes one block from glibc's heap on the calling thread (allowed to by
a raised M_MMAP_THRESHOLD, then lowered again: see MMAP_THRESHOLD) and lets a background thread write it
(the page faults, on the idle core) and free it; M_TRIM_THRESHOLD keeps it in the heap. The kernels' and
numpy's later allocations are carved from that block, whose pages are already present: the first
transcription then takes ~2,000 faults. Whole `whisperkv transcribe` processes on LJSpeech's first 30 s
(~1.05-1.10 s), four A/B runs of 20-30 alternating pairs: medians 19-47 ms lower with it (2-4%; this shared
machine's own spread is ±10%).

Process-wide allocator settings are the command's to choose, not a library's: only `cli.run()` (the
console script and `python -m whisperkv`, which own their process) calls this; `main()` and every
in-process use leave malloc alone. Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import sys
import threading

WARM_BYTES = 48 << 20
"""What the first transcription of a 30 s window needs beyond the second's (measured on tiny.en's tvm
backend: 32 MB left 6,100 of the 18,500 faults, 48 MB left ~2,000, as many as a second transcription)."""

MMAP_THRESHOLD = 8 << 20
"""malloc first carves any block from free heap memory (the warm block, once freed); when the heap has no
room, a block this large or larger gets a mapping of its own (returned to the kernel when freed) and a
smaller one grows the heap. The warm block itself is taken under a threshold above its size (or it would
be a mapping of its own, unmapped when freed); leaving the threshold that high let the 172 s clip's
six-row prefill grow the heap for its temporaries, and keep them: a peak RSS of 355-376 MB against 315 MB
without the warm-up, and 310 MB with this threshold. glibc's own starts at 128 KB and adapts up to 32 MB."""

TRIM_THRESHOLD = 64 << 20
"""Free memory at the heap's top, up to this much, stays with the process for its next allocations (the
warm block, once freed, among it)."""

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc's own symbol: musl's mallopt does nothing)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.restype = None
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt.restype = ctypes.c_int
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def warm_heap(nbytes: int = WARM_BYTES) -> threading.Thread | None:
    """Set malloc's thresholds and fault `nbytes` of heap in on a background thread; returns the thread
    (already started; nothing needs to wait for it), or None where there is nothing to do."""
    libc = _glibc()
    if libc is None or nbytes <= 0:
        return None
    if not (libc.mallopt(_M_MMAP_THRESHOLD, nbytes + (1 << 20)) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return None
    block = libc.malloc(nbytes)  # on this (the main) thread: from the main arena, which later allocations use
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if not block:
        return None

    def touch() -> None:
        ctypes.memset(block, 0, nbytes)  # a foreign call: the GIL is released while the pages fault in
        libc.free(block)  # back to the main arena, faulted in

    thread = threading.Thread(target=touch, name="whisperkv-warm-heap", daemon=True)
    thread.start()
    return thread
