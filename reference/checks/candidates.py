"""`--candidate SPEC` -> a backend: what `whisperkv verify` and the conformance suite check."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..backend import Backend
from ..registry import BackendUnavailable, available_backends, create_backend, open_folder
from ..weights import Checkpoint


def resolve_candidate(spec: str, checkpoint: Checkpoint, tokenizer: Any) -> Backend:
    """A `--candidate` SPEC -> a backend.

    - a backend name (`numpy`, `tvm`, ...)
    - `mutant:NAME`: a built-in buggy variant of the reference (checks/mutants.py), for demonstration
    - `python:MODULE:FACTORY`: FACTORY(checkpoint) from an importable module, returning a protocol object
    - a folder: handed to the installed folder openers (an Optimum ONNX export, compiled libraries, ...)
    """
    if spec.startswith("mutant:"):
        from .mutants import MUTANTS, make_mutant

        name = spec.split(":", 1)[1]
        if name not in MUTANTS:
            raise BackendUnavailable(f"unknown mutant {name!r} (known: {', '.join(MUTANTS)})")
        return make_mutant(name, checkpoint, tokenizer)
    if spec.startswith("python:"):
        return _python_factory(spec, checkpoint)
    if Path(spec).is_dir():
        return open_folder(spec, checkpoint)
    if spec in available_backends():
        return create_backend(spec, checkpoint)
    raise BackendUnavailable(f"--candidate {spec!r}: not a backend name ({', '.join(available_backends())}), "
                             "mutant:NAME, python:MODULE:FACTORY or a folder")


def _python_factory(spec: str, checkpoint: Checkpoint) -> Backend:
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
                                 "name, dims, encode, zero_kv, prefill, step, select and to_numpy")
    return backend
