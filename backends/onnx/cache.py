"""Exported folders and compiled libraries, cached by what they depend on.

`$WHISPERKV_CACHE_DIR`, else `$XDG_CACHE_HOME/whisperkv`, else `~/.cache/whisperkv` (the TVM backend's
folder too); ONNX exports live under `onnx/`. A folder's name hashes the dims, the weights and the
exporter's source, so an edited exporter or another checkpoint never reuses a stale export.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from whisperkv.reference.weights import Checkpoint

from ..cache import cache_dir
from . import layout

_EXPORTER_SOURCES = ("export.py", "layout.py")


def source_hash(names: tuple[str, ...] = _EXPORTER_SOURCES) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def weights_hash(checkpoint: Checkpoint) -> str:
    h = hashlib.sha256()
    for name in sorted(checkpoint.weights):
        h.update(name.encode())
        h.update(memoryview(checkpoint.weights[name]))  # the weights are contiguous: hashed without a copy
    return h.hexdigest()[:16]


def exported_folder(checkpoint: Checkpoint, fp16: bool = False, directory: Path | None = None) -> Path:
    """The Optimum folder of `checkpoint` in the cache, exported on a miss (atomically: a whole folder
    is renamed into place, so a concurrent or interrupted export never leaves a partial one)."""
    from .export import export_onnx

    key = f"{checkpoint.dims.key()}-{weights_hash(checkpoint)}-{source_hash()}{'-fp16' if fp16 else ''}"
    folder = (directory or cache_dir() / "onnx") / key
    if all((folder / layout.file_name(p, fp16)).is_file() for p in layout.PARTS):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=key + ".", dir=folder.parent))
    try:
        export_onnx(checkpoint, tmp, fp16=fp16)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process got there first: theirs is as good as ours
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
