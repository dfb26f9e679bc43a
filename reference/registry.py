"""Backend names -> backends, found through entry points; the reference never imports a backend by name.

A backend package (whisperkv's own `whisperkv.backends`, or a third party's) plugs in by declaring, in
its pyproject.toml:

    [project.entry-points."whisperkv.backends"]
    mybackend = "mypackage.module:MyBackend"      # MyBackend(checkpoint, **options) -> a Backend

    [project.entry-points."whisperkv.folders"]
    mykind = "mypackage.module:open_folder"       # open_folder(path, checkpoint) -> a Backend

A folder opener that does not recognise a folder raises `FolderNotRecognised` saying what it looked for;
the next opener is tried. Errors a backend raises derive from `InputError` (reference/errors.py).
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from .backend import Backend
from .errors import InputError
from .weights import Checkpoint

BACKEND_GROUP = "whisperkv.backends"
FOLDER_GROUP = "whisperkv.folders"
REFERENCE = "numpy"  # the reference model itself, always available


class BackendUnavailable(InputError):
    """A backend that cannot be created here (unknown name, or its optional package is not installed)."""


class FolderNotRecognised(InputError):
    """Raised by a folder opener for a folder that is not of its kind; the message says what it expected."""


_SCAN: dict[tuple[str, ...], Any] = {}  # sys.path when scanned -> every entry point (importlib.metadata's)


def group_entry_points(group: str) -> dict[str, EntryPoint]:
    """The installed entry points of one group, by name (none of them is loaded).

    One scan of the installed distributions serves every group, until sys.path changes: a scan reads
    every distribution's metadata (7-24 ms with ~80 installed), and the `whisperkv` command asks three
    times before it transcribes (the backends for its parser, its subcommands, the backend to create)."""
    key = tuple(sys.path)
    if key not in _SCAN:
        _SCAN.clear()
        _SCAN[key] = entry_points()
    return {ep.name: ep for ep in _SCAN[key].select(group=group)}


def available_backends() -> list[str]:
    """`numpy` and every installed backend's name (none of them is imported)."""
    return [REFERENCE] + sorted(n for n in group_entry_points(BACKEND_GROUP) if n != REFERENCE)


def _load(ep: EntryPoint, what: str) -> Any:
    try:
        return ep.load()
    except ModuleNotFoundError as e:
        raise BackendUnavailable(f"{what} {ep.name!r} needs a package that is not installed: {e}") from e
    except ImportError as e:  # installed, but broken (e.g. a backend older than this whisperkv)
        raise BackendUnavailable(f"{what} {ep.name!r} cannot be imported ({ep.value}): {e}") from e


def create_backend(name: str, checkpoint: Checkpoint, **options: Any) -> Backend:
    if name == REFERENCE:
        from .model import NumpyModel

        return NumpyModel(checkpoint)
    known = group_entry_points(BACKEND_GROUP)
    if name not in known:
        raise BackendUnavailable(f"unknown backend {name!r} (installed: {', '.join(available_backends())})")
    return _load(known[name], "backend")(checkpoint, **options)


def open_folder(path: str | os.PathLike, checkpoint: Checkpoint) -> Backend:
    """A folder of model files (an ONNX export, compiled libraries, ...) -> the backend that runs it."""
    folder = Path(path)
    reasons = []
    for ep in group_entry_points(FOLDER_GROUP).values():
        try:
            return _load(ep, "folder opener")(folder, checkpoint)
        except FolderNotRecognised as e:
            reasons.append(str(e))
    if not reasons:
        raise BackendUnavailable(f"{folder}: no installed backend opens folders (pip install 'whisperkv[onnx]')")
    raise BackendUnavailable(f"{folder}: " + "; ".join(reasons))
