"""tvm-onnx's warm start: what a start derives from an ONNX file, kept beside the libraries so that the next
start reads no ONNX file at all.

A cold start of one part reads its file (onnx.load: ~0.15 s a file for tiny.en's float32 export), decides
which of its weights float16 holds exactly (tvm_onnx.narrow_exact: ~0.4 s a decoder), hashes the prepared
graph for its library's name (tvm_onnx.graph_key), and runs the library's `main_transform_params` on the
weights (~0.13 s a part), whose outputs then stay in the process's own memory. All of it depends on the
file's bytes and this code only, so the cold start writes two things into the library folder:

- the transformed weights, `{part}-{graph key}-w{weights digest}.params`: `main`'s weight arguments in the
  packed-weights file format (backends/tvm/packed.py, write_tensors), written atomically with a record
  (backends/cache.py), checked by it and memory-mapped at every start: no transform, no copy, pages shared
  with every process that runs the same folder; an argument that an earlier part's file holds is a
  reference to it (SharedParams);
- a start record, `start/{hash of the file's resolved path and the part}.json`: the stat stamps of the
  folder's files, a key of this code, the host and TVM (`start_key`), the names of the library and of the
  params, the part's signature (its inputs and outputs: the binding is checked against the checkpoint's dims
  from it, as from the file) and which weights narrow_exact stored as float16.

A start uses a record only when its key is this process's, every file of the folder has the stamp it records
and was last changed before the record was written (backends/cache.py's rule against "racy" files: a
write within the record's clock tick could keep the stamp), and the library and the params pass their own
records. Anything else (a folder edited, copied or touched; a record missing or unreadable; another
version of this code) is a cold start, which writes them again. The stamps cover every file in the folder,
not only the part's: an export's weights may be external data in a file of its own, and which one is known
only from the file before onnx.load resolves it. Writing the record is best effort (a read-only cache
stays usable, only slower, like the checkpoint notes of reference/weights.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from whisperkv.backends.tvm import runtime
from whisperkv.backends.tvm.packed import PackedWeightsError, map_tensors, write_tensors
from whisperkv.reference.files import atomic_path
from whisperkv.reference.weights import file_stamp, unchanged_since

from ..cache import check_record, recorded_sha256, sources_digest
from .folder import Signature, TensorInfo

START_FORMAT = 1
START_FOLDER = "start"
# what a record's contents are derived by: a change to any of them makes every record stale
_SOURCES = ("tvm_onnx.py", "split.py", "folder.py", "layout.py", "start_record.py")


@functools.cache
def _code_digest() -> str:
    return sources_digest(Path(__file__).parent, _SOURCES)


def start_key(graph_independent_key: list[Any], part: str) -> str:
    """The key a record must carry: this code, the part, and what every library name of the folder hashes
    besides the graph (tvm_onnx.library_key_parts: format, rules, host, TVM version, dims)."""
    key = json.dumps([START_FORMAT, _code_digest(), part, *graph_independent_key], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def record_path(library_dir: Path, source: Path, part: str) -> Path:
    name = hashlib.sha256(f"{source.resolve()}\0{part}".encode()).hexdigest()[:32]
    return library_dir / START_FOLDER / f"{name}.json"


def folder_stamps(source: Path) -> dict[str, list[int]]:
    """The stat stamp of every regular file beside `source` (itself included), by name. Raises OSError."""
    return {entry.name: file_stamp(entry.path) for entry in sorted(os.scandir(source.parent), key=lambda e: e.name)
            if entry.is_file()}


def _tensor_infos(items: tuple[TensorInfo, ...]) -> list[list[Any]]:
    return [[t.name, t.dtype, list(t.shape)] for t in items]


def _signature(raw: dict[str, Any]) -> Signature:
    def infos(entries: list) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(str(name), str(dtype), tuple(shape)) for name, dtype, shape in entries)

    return Signature(infos(raw["inputs"]), infos(raw["outputs"]))


class StartRecord:
    """What a warm start of one part needs from its file: read by `find`, written by `write`."""

    def __init__(self, library: str, params: str, signature: Signature, narrowed: list[str]) -> None:
        self.library, self.params, self.signature, self.narrowed = library, params, signature, narrowed

    @staticmethod
    def find(library_dir: Path, source: Path, part: str, key: str) -> StartRecord | None:
        """The part's record when it holds for the folder as it is now (module docstring), else None."""
        path = record_path(library_dir, source, part)
        try:
            written_ns = path.stat().st_mtime_ns
            raw = json.loads(path.read_text())
            if raw["format"] != START_FORMAT or raw["key"] != key:
                return None
            now = folder_stamps(source)
            if set(now) != set(raw["stamps"]) or not all(unchanged_since(raw["stamps"][name], stamp, written_ns)
                                                         for name, stamp in now.items()):
                return None
            record = StartRecord(str(raw["library"]), str(raw["params"]), _signature(raw["signature"]),
                                 [str(n) for n in raw["narrowed"]])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        # names only: a record cannot point out of the folder (the params' own record is SharedParams')
        if any(Path(name).name != name for name in (record.library, record.params)):
            return None
        return record if check_record(library_dir / record.library) is None else None

    def write(self, library_dir: Path, source: Path, part: str, key: str, stamps: dict[str, list[int]]) -> None:
        """Best effort: a cache that cannot be written keeps cold starts (and says nothing)."""
        path = record_path(library_dir, source, part)
        raw = {"format": START_FORMAT, "key": key, "source": str(source.resolve()), "part": part, "stamps": stamps,
               "library": self.library, "params": self.params, "narrowed": self.narrowed,
               "signature": {"inputs": _tensor_infos(self.signature.inputs),
                             "outputs": _tensor_infos(self.signature.outputs)}}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=".json") as tmp:
                tmp.write_text(json.dumps(raw, sort_keys=True))
        except OSError:
            pass


class _Mapped:
    def __init__(self, sha256: str, arguments: list[list[Any]], arrays: list[np.ndarray]) -> None:
        self.sha256, self.arguments, self.arrays = sha256, arguments, arrays
        self.tensors = [runtime.as_tensor(a) for a in arrays]  # shared by DLPack, no copy


class SharedParams:
    """The params files of one start, each mapped once. A part's file holds only the arrays that no earlier
    part's file (in the folder's part order) holds: for each of `main`'s weight arguments its header names
    either one of its own arrays or an array of an earlier part's file, by that file's name, the sha256 its
    record holds (the reference holds only while those bytes are unchanged) and the array's index.
    decoder_with_past_model's weights are decoder_model's (tiny.en: 97 MB of 215), so both VMs get the same
    mapped tensors: once on disk, once in memory. References point only to earlier parts, so a file's bytes
    never depend on a later one: rewritten, it is the same file."""

    def __init__(self, library_dir: Path) -> None:
        self.library_dir = library_dir
        self.files: dict[str, _Mapped] = {}

    def _file(self, name: str) -> _Mapped | None:
        if name not in self.files:
            sha = recorded_sha256(self.library_dir / name) if Path(name).name == name else None
            if sha is None:
                return None
            try:
                meta, arrays = map_tensors(self.library_dir / name)
                arguments = [[file, pin, int(index)] for file, pin, index in meta["arguments"]]
            except (PackedWeightsError, KeyError, TypeError, ValueError):
                return None
            self.files[name] = _Mapped(sha, arguments, arrays)
        return self.files[name]

    def tensors(self, name: str) -> list[Any] | None:
        """`main`'s weight arguments from the params file `name` and the files it refers to; None when any of
        them is missing, fails its record or is not such a file."""
        own = self._file(name)
        if own is None:
            return None
        out = []
        for file, pin, index in own.arguments:
            source = own if file is None else self._file(str(file))
            if source is None or (file is not None and source.sha256 != pin) or not 0 <= index < len(source.tensors):
                return None
            out.append(source.tensors[index])
        return out

    def write(self, name: str, arrays: list[np.ndarray], earlier: list[str], meta: dict[str, Any]) -> None:
        """A part's transformed weights `arrays` into the params file `name` (atomically; the caller records
        it), those equal to an array of one of the `earlier` parts' files (mapped) as references to it."""
        candidates: dict[tuple[str, tuple[int, ...]], list[tuple[str, str, int, np.ndarray]]] = {}
        for other in earlier:
            mapped = self.files[other]
            for j, b in enumerate(mapped.arrays):  # (its own arrays: what it refers to is in earlier files)
                candidates.setdefault((b.dtype.str, b.shape), []).append((other, mapped.sha256, j, b))
        arguments: list[list[Any]] = []
        own: list[np.ndarray] = []
        for a in arrays:
            match = next(((f, pin, j) for f, pin, j, b in candidates.get((a.dtype.str, a.shape), ())
                          if _same_bytes(a, b)), None)
            if match is None:
                arguments.append([None, None, len(own)])
                own.append(a)
            else:
                arguments.append(list(match))
        self.files.pop(name, None)  # a mapping of the file this replaces (whose references no longer held)
        write_tensors(self.library_dir / name, {**meta, "arguments": arguments}, own)


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(np.ascontiguousarray(a).reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))
