"""The TVM backend: Whisper as Relax functions with hand-scheduled CPU kernels, compiled once per model
shape and cached (see compile.py).

Importing this package sets TVM_NUM_THREADS (threads.py) and nothing more: the names below are imported
when first used, so that `whisperkv --help` or the `compile` command's registration pay for nothing. Even
then tvm itself (the compiler, ~1-2 s to import) comes only with `compile_library`, or when a library has to
be built: running a cached one takes the TVM runtime alone (runtime.py).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import threads  # noqa: F401  (must come before the TVM runtime starts)

_WHERE = {
    "TVMBackend": "backend", "ensure_compiled": "backend", "ModelConfig": "params",
    "LibraryMismatchError": "library", "LibraryNotFoundError": "library", "cached_library": "library",
    "compile_library": "compile", "library_path": "library", "load_library": "library",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
