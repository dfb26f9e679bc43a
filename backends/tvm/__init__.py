"""The TVM backend: Whisper as Relax functions with hand-scheduled CPU kernels, compiled once per model
shape and cached (see compile.py).

Importing this package sets TVM_NUM_THREADS (threads.py) and nothing more: tvm itself (~1 s to import) is
imported only when one of the names below is first used, so that `whisperkv --help` or the `compile`
command's registration never pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import threads  # noqa: F401  (must come before anything that imports tvm)

_WHERE = {
    "TVMBackend": "backend", "ensure_compiled": "backend", "ModelConfig": "model",
    "LibraryMismatchError": "compile", "LibraryNotFoundError": "compile", "cached_library": "compile",
    "compile_library": "compile", "library_path": "compile", "load_library": "compile",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
