"""A warm heap for the `whisperkv` command: the first transcription's memory, faulted in ahead, off the
critical path.

A fresh process gets every page of its memory from the kernel on first touch. The first transcription
of a 30 s clip on the tvm backend touched ~64 MB of new memory (the encoder's activations, the prefill's
cross K/V, the log-mel's arrays): ~18,400 page faults, where a second transcription in the same process
took ~2,000. Many of them land inside the encoder's parallel kernels, where both threads stall on them.
Measured on a 2-vCPU AMD EPYC (a VM): that first transcription took 757-1042 ms in four fresh processes,
against 695-772 ms after a 48 MB warm-up; whole `whisperkv transcribe` processes on LJSpeech's first 30 s,
20 alternating runs each, 1.10 s median without, 1.055 s with.

The command's first ~250 ms are imports on one core (numpy, tvm-ffi, the tokenizer), which leave the other
core idle. `warm_heap` uses it: it asks glibc's malloc to serve large blocks from its heap instead of
fresh mmaps (M_MMAP_THRESHOLD) and to keep freed memory at the heap's top (M_TRIM_THRESHOLD), takes one
block from the heap on the calling thread, and lets a background thread write it (the page faults, on
the idle core) and free it. The kernels' and numpy's later allocations are carved from that block, whose
pages are already present.

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
backend: 32 MB left 6,100 of the 18,400 faults, 48 MB left 2,300, as many as a second transcription)."""

MMAP_THRESHOLD = 64 << 20
"""Blocks this large and larger still get their own mmap (returned to the kernel when freed); smaller ones
come from the heap. It must exceed WARM_BYTES, or the warm block would be an mmap of its own, unmapped
when freed. glibc's own threshold adapts up to 32 MB."""

TRIM_THRESHOLD = 128 << 20
"""Free memory at the heap's top, up to this much, stays with the process for its next allocations."""

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
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return None
    block = libc.malloc(nbytes)  # on this (the main) thread: from the main arena, which later allocations use
    if not block:
        return None

    def touch() -> None:
        ctypes.memset(block, 0, nbytes)  # a foreign call: the GIL is released while the pages fault in
        libc.free(block)  # back to the main arena, faulted in

    thread = threading.Thread(target=touch, name="whisperkv-warm-heap", daemon=True)
    thread.start()
    return thread
