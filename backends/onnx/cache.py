"""Exported folders and compiled libraries, cached by what they depend on.

`$WHISPERKV_CACHE_DIR`, else `$XDG_CACHE_HOME/whisperkv`, else `~/.cache/whisperkv` (the TVM backend's
folder too); ONNX exports live under `onnx/`. A folder's name hashes the dims, the weights and the
exporter's source, so an edited exporter or another checkpoint never reuses a stale export. Each
folder is checked against the record of its files' sizes and sha256 before anything opens it, and
re-exported on a mismatch; exports are locked and atomic (backends/cache.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from whisperkv.reference.files import atomic_folder
from whisperkv.reference.weights import Checkpoint

from ..cache import cache_dir, cached, sources_digest

_EXPORTER_SOURCES = ("export.py", "layout.py")


def source_hash(names: tuple[str, ...] = _EXPORTER_SOURCES) -> str:
    return sources_digest(Path(__file__).parent, names)


def weights_hash(checkpoint: Checkpoint) -> str:
    h = hashlib.sha256()
    for name in sorted(checkpoint.weights):
        h.update(name.encode())
        h.update(memoryview(checkpoint.weights[name]))  # the weights are contiguous: hashed without a copy
    return h.hexdigest()[:16]


def weights_key(checkpoint: Checkpoint) -> str:
    """The weights' part of an export's key: the checkpoint files' sha256 when it has one (from the
    checkpoint's note: a warm start reads no weights, as the native backend's packed weights are keyed),
    else a hash of the weights in memory (weights from no file, or replaced since they were read)."""
    digest = checkpoint.weights_digest()
    return f"f{digest[:16]}" if digest is not None else weights_hash(checkpoint)


def exported_folder(checkpoint: Checkpoint, fp16: bool = False, directory: Path | None = None,
                    quiet: bool = True) -> Path:
    """The Optimum folder of `checkpoint` in the cache, checked against its record, exported on a miss or
    a mismatch (into a temporary folder renamed into place, under the cache folder's lock)."""
    key = f"{checkpoint.dims.key()}-{weights_key(checkpoint)}-{source_hash()}{'-fp16' if fp16 else ''}"
    folder = (directory or cache_dir() / "onnx") / key

    def build() -> None:
        from .export import export_onnx  # (onnx: imported only to export; a warm start reads no ONNX file)

        with atomic_folder(folder) as tmp:
            export_onnx(checkpoint, tmp, fp16=fp16)

    return cached(folder, build, what="ONNX export", quiet=quiet)
