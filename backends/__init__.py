"""Plug-in backends. Each is imported only when asked for, so a missing optional dependency (tvm)
only matters to the one who asks for that backend."""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:factory"; a factory takes (checkpoint, **options) and returns a Backend.
BACKENDS: dict[str, str] = {
    "numpy": "reference.model:NumpyModel",
    "tvm": "backends.tvm:TVMBackend",
}


def get_backend(name: str, checkpoint: Any, **options: Any) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    module_name, factory = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"backend {name!r} needs a package that is not installed: {e}") from e
    return getattr(module, factory)(checkpoint, **options)
