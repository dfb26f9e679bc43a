"""The TVM runtime reads TVM_NUM_THREADS once, when it starts, and uses 1 thread without it.

Import this module before the runtime library is loaded (runtime.py) or `tvm` is imported
(backends/tvm/__init__.py and runtime.py do): it sets the variable to the number of CPUs this process may
run on, unless the user already set it.

`quiet_blas_threads` keeps numpy's OpenBLAS from competing with the TVM thread pool: after every BLAS
call, OpenBLAS's worker threads busy-wait for 2^28 cycles (~0.1 s) before they sleep, so a TVM call
that follows one (the encoder right after the log-mel's `filters @ power`) runs on one core of two:
measured 215 ms instead of 137 ms for the tiny.en encoder on 2 cores. With OpenBLAS at one thread there
is no worker to spin; the small matrix products numpy does around the TVM backend barely notice (the
log-mel: 4.4 -> 4.9 ms; the numpy reference encoder: 0.69 -> 0.70 s).

TVM_THREAD_POOL_SPIN_COUNT (read once, when the first worker starts) is how many times an idle worker
calls sched_yield before it sleeps; TVM's default is 300,000, ~0.2 s on this project's machines. The
spin does not look at the pool's exit flag, so a process's exit waits for it (measured: a 30 s clip's
whole `whisperkv transcribe` 1.62 -> 1.39 s, the exit alone 230 -> 80 ms), and every pause between TVM
calls leaves one core busy-waiting. SPIN_COUNT still spans the ~1 ms of Python between two decode steps
(~0.7 us a yield), so the decode step is unchanged (3.7 ms either way, tiny.en, 2 threads); a worker that
does fall asleep costs one futex wake.
"""

from __future__ import annotations

import ctypes
import os
import sys


def n_threads() -> int:
    env = os.environ.get("TVM_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


if "tvm" in sys.modules and "TVM_NUM_THREADS" not in os.environ:
    print("whisperkv: tvm was imported before backends.tvm; its runtime may use a single thread "
          "(set TVM_NUM_THREADS or import whisperkv.backends.tvm first)", file=sys.stderr)
os.environ.setdefault("TVM_NUM_THREADS", str(n_threads()))
SPIN_COUNT = 3000
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(SPIN_COUNT))


# OpenBLAS builds name their thread-count setter differently (numpy and scipy wheels prefix and suffix it).
_BLAS_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads64_",
                 "scipy_openblas_set_num_threads")
_QUIETED: set[str] = set()


def quiet_blas_threads() -> None:
    """Set every OpenBLAS loaded in this process to one thread (once per library; cheap to call again).

    WHISPERKV_KEEP_BLAS_THREADS=1 leaves them alone.
    """
    if os.environ.get("WHISPERKV_KEEP_BLAS_THREADS") == "1":
        return
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if "openblas" in line and line.count(" ") >= 5}
    except OSError:  # not Linux
        return
    for path in paths - _QUIETED:
        _QUIETED.add(path)
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        for name in _BLAS_SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter(1)
                break
