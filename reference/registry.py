"""Backend names -> constructors. The only door from reference/ into backends/ (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

from .backend import Backend
from .weights import Checkpoint


def available_backends() -> list[str]:
    names = ["numpy"]
    try:
        names += [n for n in importlib.import_module("backends").BACKENDS if n != "numpy"]
    except ImportError:
        pass
    return names


def create_backend(name: str, checkpoint: Checkpoint, **options: Any) -> Backend:
    if name == "numpy":
        from .model import NumpyModel

        return NumpyModel(checkpoint)
    try:
        backends = importlib.import_module("backends")
    except ImportError as e:
        raise ValueError(f"backend {name!r} is not available: {e}") from e
    return backends.get_backend(name, checkpoint, **options)
