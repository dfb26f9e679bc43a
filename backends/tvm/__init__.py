"""The TVM backend: Whisper as Relax functions with hand-scheduled CPU kernels, compiled once per model
shape and cached (see compile.py). Importing this package sets TVM_NUM_THREADS before tvm loads."""

from __future__ import annotations

from . import threads  # noqa: F401  (must come before anything that imports tvm)
from .backend import TVMBackend, ensure_compiled
from .compile import LibraryMismatchError, compile_library, library_path, load_library
from .model import ModelConfig

__all__ = [
    "TVMBackend", "ensure_compiled", "ModelConfig", "LibraryMismatchError", "compile_library", "library_path",
    "load_library",
]
