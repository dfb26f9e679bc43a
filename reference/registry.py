"""Backend names -> constructors. The only door from reference/ into backends/ (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

from .backend import Backend
from .weights import Checkpoint


class BackendUnavailable(ValueError):
    """A backend that cannot be created here (unknown name, or its optional package is not installed)."""


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
        raise BackendUnavailable(f"backend {name!r} is not available: {e}") from e
    return backends.get_backend(name, checkpoint, **options)


def resolve_candidate(spec: str, checkpoint: Checkpoint, tokenizer: Any) -> Backend:
    """A `--candidate` SPEC -> a backend.

    - a backend name (`numpy`, `tvm`, ...)
    - `mutant:NAME`: a built-in buggy variant of the reference (reference/mutants.py), for demonstration
    - `python:MODULE:FACTORY`: FACTORY(checkpoint) from an importable module, returning a protocol object
    - a folder: handed to `backends.open_folder` (an Optimum ONNX export, compiled libraries, ...)
    """
    from pathlib import Path

    if spec.startswith("mutant:"):
        from .mutants import MUTANTS, make_mutant

        name = spec.split(":", 1)[1]
        if name not in MUTANTS:
            raise BackendUnavailable(f"unknown mutant {name!r} (known: {', '.join(MUTANTS)})")
        return make_mutant(name, checkpoint, tokenizer)
    if spec.startswith("python:"):
        parts = spec.split(":")
        if len(parts) != 3:
            raise BackendUnavailable(f"--candidate {spec!r}: expected python:MODULE:FACTORY")
        try:
            module = importlib.import_module(parts[1])
        except ImportError as e:
            raise BackendUnavailable(f"--candidate {spec!r}: cannot import {parts[1]} ({e})") from e
        factory = getattr(module, parts[2], None)
        if factory is None:
            raise BackendUnavailable(f"--candidate {spec!r}: {parts[1]} has no {parts[2]}")
        try:
            backend = factory(checkpoint)
        except Exception as e:  # a user's factory: any failure is a bad candidate, reported in one line
            raise BackendUnavailable(f"--candidate {spec!r}: {parts[2]}(checkpoint) failed: "
                                     f"{type(e).__name__}: {e}") from e
        if not isinstance(backend, Backend):
            raise BackendUnavailable(f"--candidate {spec!r}: {parts[2]}(checkpoint) returned a "
                                     f"{type(backend).__name__}, not an object with the backend protocol's "
                                     "name, dims, encode, zero_kv, prefill, step and to_numpy")
        return backend
    if Path(spec).is_dir():
        try:
            open_folder = importlib.import_module("backends").open_folder
        except (ImportError, AttributeError) as e:
            raise BackendUnavailable(f"{spec}: no installed backend opens folders ({e})") from e
        return open_folder(spec, checkpoint)
    if spec in available_backends():
        return create_backend(spec, checkpoint)
    raise BackendUnavailable(f"--candidate {spec!r}: not a backend name ({', '.join(available_backends())}), "
                     "mutant:NAME, python:MODULE:FACTORY or a folder")
