"""The TVM runtime reads TVM_NUM_THREADS once, when tvm is imported, and uses 1 thread without it.

Import this module before `tvm` (backends/tvm/__init__.py does): it sets the variable to the number of
CPUs this process may run on, unless the user already set it.
"""

from __future__ import annotations

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
          "(set TVM_NUM_THREADS or import backends.tvm first)", file=sys.stderr)
os.environ.setdefault("TVM_NUM_THREADS", str(n_threads()))
