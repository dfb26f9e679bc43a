"""Packed weights: a checkpoint's weights in the kernels' layout and storage dtype, written once into the cache
beside the library and memory-mapped at every start.

Packing (params.pack_params) needs the canonical float32 weights: reading and upcasting the checkpoint, then
transposing into column blocks, took ~0.9 s of every start. The file keeps the result, so a start maps it
instead: no upcast, no repacking, no copy, and its pages are the page cache's, shared by every process that
runs the same model.

- Name: `whisper-{dims}-w{dtype}-p{layout digest[:12]}-{checkpoint digest[:16]}.weights`. The layout digest
  hashes what the bytes depend on: the config record (library.py: format, dims, weight dtype), this file's
  format and alignment, and the source of params.py (param_specs, pack_params); the checkpoint digest is
  the sha256 of its weight file(s) (reference/weights.py, Checkpoint.weights_digest). Not the host, the TVM
  version or the kernels' source: the library's name has those, and a kernel edit (a new library) keeps
  the 95 MB of packed tiny.en.
- Written atomically under the cache's lock, with a record of its size and sha256 checked before it is
  mapped (backends/cache.py, the library's mechanism): a truncated or flipped file is rebuilt.
- Format: MAGIC, a uint32 format, a uint32 header length, the JSON header (the config record, the
  checkpoint digest, and per tensor its function, name, dtype, shape and byte offset), then the tensors,
  each at an offset that is a multiple of 64 bytes (the runtime's alignment; a mapping starts on a page).
- Mapped copy-on-write (MAP_PRIVATE): numpy will not export a read-only array by DLPack to TVM, and a
  private mapping that is never written is the same shared page-cache pages as a read-only one.

A checkpoint without a weight file (weights built in memory), or a cache folder that cannot be written, is
packed in memory instead, into one aligned buffer with the same layout.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

from whisperkv.reference.files import atomic_path

from ..cache import CacheError, cache_dir, cached
from . import runtime
from .library import config_record
from .params import ModelConfig, pack_params, param_specs

MAGIC = b"WKVPACK\0"
PACK_FORMAT = 1
ALIGN = runtime.ALIGNMENT
_PREFIX = struct.Struct("<8sII")  # magic, format, header length

Packed = dict[str, list[np.ndarray]]


class PackedWeightsError(ValueError):
    """A packed-weights file that does not describe what it was asked for (never a damaged one: the record
    catches those first)."""


@functools.cache
def _params_source() -> bytes:
    return (Path(__file__).parent / "params.py").read_bytes()


def layout_digest(cfg: ModelConfig) -> str:
    key = json.dumps([config_record(cfg), PACK_FORMAT, ALIGN, hashlib.sha256(_params_source()).hexdigest()],
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def packed_path(cfg: ModelConfig, digest: str, directory: Path | None = None) -> Path:
    """Where `cfg`'s packed weights of the checkpoint with sha256 `digest` live in the cache."""
    return (directory or cache_dir()) / f"whisper-{cfg.key()}-p{layout_digest(cfg)[:12]}-{digest[:16]}.weights"


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _data_start(header_length: int) -> int:
    """The tensors' offsets are relative to the first multiple of ALIGN after the prefix and the header."""
    return _aligned(_PREFIX.size + header_length)


def _layout(cfg: ModelConfig, digest: str) -> tuple[bytes, list[tuple[str, str, str, tuple[int, ...], int]]]:
    """The header bytes and (function, name, dtype, shape, offset) of every tensor, in call order."""
    entries: list[list[Any]] = []
    offset = 0
    for fn, specs in param_specs(cfg).items():
        for name, shape, dtype in specs:
            entries.append([fn, name, dtype, list(shape), offset])
            offset += _aligned(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    header = json.dumps({"config": config_record(cfg), "checkpoint": digest, "align": ALIGN,
                         "tensors": entries}, sort_keys=True).encode()
    start = _data_start(len(header))
    return header, [(fn, name, dtype, tuple(shape), start + off) for fn, name, dtype, shape, off in entries]


def _fill(buffer: np.ndarray, layout: list, packed: Packed) -> None:
    arrays = [a for fn in packed for a in packed[fn]]
    if len(arrays) != len(layout):
        raise PackedWeightsError(f"{len(arrays)} packed arrays for {len(layout)} parameters")
    for (_fn, name, dtype, shape, offset), a in zip(layout, arrays, strict=True):
        if a.shape != shape or a.dtype != np.dtype(dtype):
            raise PackedWeightsError(f"{name}: packed {a.shape} {a.dtype}, expected {shape} {dtype}")
        buffer[offset : offset + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _total(layout: list) -> int:
    fn, name, dtype, shape, offset = layout[-1]
    return offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def write_packed(path: Path, cfg: ModelConfig, packed: Packed, digest: str) -> Path:
    """Write `packed` (pack_params' lists) to `path` atomically (no record, no lock: cached_weights adds them)."""
    header, layout = _layout(cfg, digest)
    buffer = np.zeros(_total(layout), np.uint8)
    buffer[: _PREFIX.size] = np.frombuffer(_PREFIX.pack(MAGIC, PACK_FORMAT, len(header)), np.uint8)
    buffer[_PREFIX.size : _PREFIX.size + len(header)] = np.frombuffer(header, np.uint8)
    _fill(buffer, layout, packed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".weights") as tmp:
        buffer.tofile(tmp)
    return path


def _views(buffer: np.ndarray, layout: list) -> Packed:
    out: Packed = {}
    for fn, _name, dtype, shape, offset in layout:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        out.setdefault(fn, []).append(buffer[offset : offset + n].view(dtype).reshape(shape))
    return out


def _mapped(path: Path) -> tuple[np.ndarray, dict, int]:
    """`path` memory-mapped copy-on-write, its JSON header (a dict), and where its data starts."""
    buffer = np.memmap(path, dtype=np.uint8, mode="c")
    magic, fmt, length = _PREFIX.unpack(bytes(buffer[: _PREFIX.size]))
    if magic != MAGIC or fmt != PACK_FORMAT:
        raise PackedWeightsError(f"{path}: not a packed-weights file of format {PACK_FORMAT}")
    try:
        header = json.loads(bytes(buffer[_PREFIX.size : _PREFIX.size + length]))
    except ValueError as e:
        raise PackedWeightsError(f"{path}: unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise PackedWeightsError(f"{path}: unreadable header")
    return buffer, header, _data_start(length)


def map_packed(path: Path, cfg: ModelConfig, digest: str | None = None) -> Packed:
    """The packed arrays of `path`, memory-mapped copy-on-write (no copy; pages shared with other processes).

    The header must describe exactly `cfg`'s parameters (and `digest`'s checkpoint when given)."""
    buffer, header, _ = _mapped(path)
    if not isinstance(header.get("checkpoint"), str):
        raise PackedWeightsError(f"{path}: unreadable header")
    want_header, layout = _layout(cfg, header["checkpoint"])
    if header != json.loads(want_header) or (digest is not None and header["checkpoint"] != digest):
        raise PackedWeightsError(f"{path}: packed for another model or checkpoint")
    if buffer.size != _total(layout):
        raise PackedWeightsError(f"{path}: {buffer.size} bytes, its header needs {_total(layout)}")
    return _views(buffer, layout)


def write_tensors(path: Path, meta: dict[str, Any], arrays: list[np.ndarray]) -> Path:
    """Any list of arrays in this format, `meta` in the header beside their dtypes, shapes and offsets; written
    atomically, one array at a time (no buffer of the whole file). Read back by map_tensors."""
    entries, offset = [], 0
    for a in arrays:
        entries.append([a.dtype.str, list(a.shape), offset])
        offset += _aligned(a.nbytes)
    header = json.dumps({**meta, "align": ALIGN, "tensors": entries}, sort_keys=True).encode()
    start = _data_start(len(header))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=path.suffix) as tmp, open(tmp, "wb") as f:
        f.write(_PREFIX.pack(MAGIC, PACK_FORMAT, len(header)) + header)
        for a, (_, _, off) in zip(arrays, entries, strict=True):
            f.write(bytes(start + off - f.tell()))  # zeros up to the tensor's aligned offset
            f.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    return path


def map_tensors(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """write_tensors' (meta, arrays), the arrays memory-mapped copy-on-write (as map_packed's)."""
    buffer, header, start = _mapped(path)
    try:
        entries = header.pop("tensors")
        if header.pop("align") != ALIGN:
            raise ValueError("another alignment")
        arrays = []
        for dtype, shape, offset in entries:
            n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if start + offset + n > buffer.size:
                raise ValueError(f"a tensor ends past the file's {buffer.size} bytes")
            arrays.append(buffer[start + offset : start + offset + n].view(dtype).reshape(shape))
    except (KeyError, TypeError, ValueError) as e:
        raise PackedWeightsError(f"{path}: not a tensors file ({e})") from e
    return header, arrays


def pack_in_memory(cfg: ModelConfig, weights: dict[str, np.ndarray]) -> Packed:
    """pack_params' arrays in one aligned buffer (the file's layout, without the file)."""
    _, layout = _layout(cfg, "")
    buffer = runtime.aligned_empty((_total(layout),), np.uint8)
    _fill(buffer, layout, pack_params(weights, cfg))
    return _views(buffer, layout)


def cached_weights(cfg: ModelConfig, checkpoint: Any, *, directory: Path | None = None, force: bool = False,
                   quiet: bool = False) -> Path | None:
    """The checked packed-weights file of `checkpoint` for `cfg` in the cache, written on a miss (which reads
    the checkpoint's weights); None when the checkpoint has no weight file to key it by, or the cache folder
    cannot be written (then the caller packs in memory)."""
    digest = checkpoint.weights_digest() if hasattr(checkpoint, "weights_digest") else None
    if digest is None:
        return None
    path = packed_path(cfg, digest, directory)

    def build() -> None:
        write_packed(path, cfg, pack_params(checkpoint.weights, cfg), digest)

    try:
        return cached(path, build, what="packed weights", force=force, quiet=quiet)
    except CacheError as e:
        if not quiet:
            print(f"whisperkv: packing the weights in memory: {e}", file=sys.stderr, flush=True)
        return None


def load_weights(cfg: ModelConfig, checkpoint: Any, *, quiet: bool = False) -> Packed:
    """`checkpoint`'s packed weights for `cfg`: mapped from the cache (written there first on a miss), else
    packed in memory. `checkpoint`: a Checkpoint, or (dims, weights) as TVMBackend takes it."""
    path = cached_weights(cfg, checkpoint, quiet=quiet) if not isinstance(checkpoint, tuple) else None
    if path is not None:
        try:
            return map_packed(path, cfg, checkpoint.weights_digest())
        except PackedWeightsError:  # whole (its record says so) but not what its name promises: write it again
            path = cached_weights(cfg, checkpoint, force=True, quiet=quiet)
            if path is not None:
                return map_packed(path, cfg, checkpoint.weights_digest())
    weights = checkpoint[1] if isinstance(checkpoint, tuple) else checkpoint.weights
    return pack_in_memory(cfg, weights)
