"""TVMBackend: the backend protocol (reference/backend.py) on a compiled Relax library.

Audio features and KV slots stay TVM tensors between calls; only the logits come back to numpy. The
weights are packed once into the cache and memory-mapped when the backend is created (packed.py). Rows: any
number per call (`max_batch` None); the linears of a call read their weights once for all rows (model.py).

No `import tvm` here: a cached library runs on the TVM runtime alone (runtime.py, library.py); the compiler
(compile.py) is imported only when a library has to be built.

Self slots are TVM tensors [B, H, length, D]. A cross slot is a `CrossSlot`: the cross K/V of each
distinct window once, plus which window each row reads. The rows of a beam search or of best_of decode the
same audio, and `select` runs after nearly every step: copying their cross K/V (~18 MB a row for tiny.en)
would cost more than the step itself, and a step would read it once per row. A plain tensor
[B, H, T, D] (from_numpy, another backend's slots) is accepted wherever a cross slot is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from whisperkv.reference import kv as kvslots
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.weights import Checkpoint

from . import runtime, threads  # (threads first: TVM_NUM_THREADS before the runtime starts)
from .library import cached_library, library_config, load_library
from .packed import cached_weights, load_weights
from .params import ROW_TILE, ModelConfig, max_token_rows

Tensor = Any  # tvm_ffi.Tensor (tvm.runtime.Tensor when tvm is imported)


class CrossSlot:
    """A cross K/V slot of len(rows) rows: row b is windows[rows[b]], windows a TVM tensor [G, H, T, D].

    Quacks like a slot for the decoding machine (`.shape` is that of the rows); never written, like every
    slot, so several slots and batches may share one windows tensor. TVMBackend.to_numpy gives the rows."""

    __slots__ = ("windows", "rows")

    def __init__(self, windows: Tensor, rows: Sequence[int]) -> None:
        self.windows = windows
        self.rows = tuple(int(r) for r in rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        _, h, t, d = self.windows.shape
        return (len(self.rows), int(h), int(t), int(d))

    @property
    def dtype(self) -> str:
        return str(self.windows.dtype)

    def __repr__(self) -> str:
        return f"CrossSlot(shape={self.shape}, rows={self.rows})"


def _as_cross(slot: Any) -> CrossSlot:
    return slot if isinstance(slot, CrossSlot) else CrossSlot(slot, range(slot.shape[0]))


def _int32_tensor(values: Any) -> Tensor:
    """A small int32 array (tokens, row indices) as a TVM tensor, shared with numpy by DLPack: allocating it
    through TVM cost ~50 us, a noticeable part of a step's overhead. TVM takes 64-byte aligned data only."""
    return runtime.tensor(values, np.int32)


def _choose_weight_dtype(checkpoint: Checkpoint | tuple, requested: str) -> str:
    if requested in ("float32", "float16"):
        return requested
    if requested != "auto":
        raise ValueError(f"decoder_weight_dtype must be auto, float32 or float16, got {requested!r}")
    # fp16 storage is exact only for weights that were fp16 to begin with.
    stored = getattr(checkpoint, "stored_dtype", "float32")
    return "float16" if stored == "float16" else "float32"


class TVMBackend:
    name = "tvm"
    max_batch: int | None = None  # any number of rows (up to model.max_token_rows tokens over all rows per call)

    def __init__(self, checkpoint: Checkpoint | tuple[ModelDims, dict[str, np.ndarray]], *,
                 decoder_weight_dtype: str = "auto", library: str | os.PathLike | None = None,
                 compile_if_missing: bool = True, quiet: bool = False) -> None:
        dims = checkpoint.dims if isinstance(checkpoint, Checkpoint) else checkpoint[0]
        self.dims: ModelDims = dims
        self.config = ModelConfig(dims, _choose_weight_dtype(checkpoint, decoder_weight_dtype))
        threads.quiet_blas_threads()
        t0 = time.perf_counter()
        self.vm, self.library_path = load_library(self.config, Path(library) if library else None,
                                                  compile_if_missing=compile_if_missing, quiet=quiet)
        self.config = library_config(self.vm, self.config)  # a library by path: its tiles' weight layout
        t1 = time.perf_counter()
        # Mapped from the cache (no copy) or packed in memory; the tensors keep their arrays alive.
        self._params = {fn: [runtime.as_tensor(a) for a in arrs]
                        for fn, arrs in load_weights(self.config, checkpoint, quiet=quiet).items()}
        # Seconds the start took (benchmarks/bench_start.py prints them): the library checked, loaded and
        # matched (compiled first on a miss); the weights mapped (packed and written first on a miss).
        self.load_times = {"library": t1 - t0, "weights": time.perf_counter() - t1}
        self._encode = self.vm["encode"]
        self._cross_kv = self.vm["cross_kv"]
        self._gather_rows = self.vm["gather_rows"]
        self._decode = self.vm["decode"]
        self._decode_row = self.vm["decode_row"]
        L = dims.n_text_layer
        self._self_idx = kvslots.self_slots(L)
        self._cross_idx = kvslots.cross_slots(L)
        self._zero_kv: dict[int, list[Any]] = {}
        self._zero_cross: Tensor | None = None

    def _tensor(self, a: np.ndarray) -> Tensor:
        return runtime.tensor(a)

    # -- protocol ---------------------------------------------------------------------------

    def encode(self, mel: np.ndarray) -> Tensor:
        # [1, n_mels, 2 * n_audio_ctx] -> [1, n_audio_ctx, n_audio_state]
        want = (1, self.dims.n_mels, self.dims.n_mel_frames)
        if tuple(mel.shape) != want:
            raise ValueError(f"encode expects a mel of shape {want}, got {tuple(mel.shape)}")
        threads.quiet_blas_threads()  # an OpenBLAS loaded since __init__ (e.g. scipy's) would spin too
        return self._encode(self._tensor(np.asarray(mel, dtype=np.float32)), *self._params["encode"])

    def zero_kv(self, batch: int = 1) -> list[Any]:
        # Zero slots are never written (every call returns new tensors): one set per batch size. Its cross
        # slots are one zero window read by every row (prefill never reads them).
        if batch < 1:
            raise ValueError(f"zero_kv: a batch has at least one row, got {batch}")
        if batch not in self._zero_kv:
            d = self.dims
            window = self._zero_window()
            self._zero_kv[batch] = [
                self._tensor(np.zeros(kvslots.slot_shape(d, i, 0, batch), np.float32)) if kvslots.slot_of(i)[1].is_self
                else CrossSlot(window, [0] * batch)
                for i in range(kvslots.n_slots(d.n_text_layer))]
        return list(self._zero_kv[batch])

    def prefill(self, tokens: np.ndarray, audio_features: Sequence[Any], kv: list[Any]
                ) -> tuple[np.ndarray, list[Any]]:
        """tokens (B, n) + B audio features -> (logits (B, n, n_vocab), all slots). Cross K/V come from the
        features, never from kv."""
        ids = self._token_ids(tokens, ndim=2, what="prefill")
        features = list(audio_features)
        if len(features) != ids.shape[0]:
            raise ValueError(f"prefill: {ids.shape[0]} rows of tokens but {len(features)} audio features")
        if any(kv[i].shape[2] != 0 for i in self._self_idx):
            raise ValueError("prefill expects empty self slots (zero_kv(batch))")
        kv = list(kv)
        for dst, slot in zip(self._cross_idx, self._cross_slots(features), strict=True):
            kv[dst] = slot
        logits, present = self._run_decode(ids, kv)
        return logits, kvslots.remap_present(kv, present)

    def step(self, tokens: np.ndarray, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """tokens (B,) -> (logits (B, n_vocab), the 2L present self slots, each one position longer)."""
        ids = self._token_ids(tokens, ndim=1, what="step")
        logits, present = self._run_decode(ids[:, None], kv)
        return logits[:, 0], present

    def select(self, kv: list[Any], rows: Sequence[int]) -> list[Any]:
        """All slots of a new batch whose row i is row rows[i] of kv: the self slots by a compiled gather,
        in TVM memory; the cross slots by re-indexing their windows (no copy)."""
        batch = kvslots.batch_size(kv)
        index = kvslots.check_rows(rows, batch)
        if not index:
            raise ValueError("select: a batch has at least one row, got none")
        if index == list(range(batch)):
            return list(kv)  # the same rows in the same order: slots are never written, so no copy
        out = list(kv)
        gathered = self._gather_rows(_int32_tensor(index), *(kv[i] for i in self._self_idx))
        for dst, slot in zip(self._self_idx, gathered, strict=True):
            out[dst] = slot
        for i in self._cross_idx:
            cross = _as_cross(kv[i])
            out[i] = CrossSlot(cross.windows, [cross.rows[r] for r in index])
        return out

    def from_numpy(self, x: np.ndarray) -> Tensor:
        """A numpy array as a backend-native tensor (e.g. slots computed by another backend)."""
        return self._tensor(np.asarray(x, dtype=np.float32) if np.asarray(x).dtype != np.int32 else x)

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, CrossSlot):
            return runtime.to_numpy(x.windows)[list(x.rows)]
        return runtime.to_numpy(x) if runtime.is_tensor(x) else np.asarray(x)

    # -- internals --------------------------------------------------------------------------

    def _token_ids(self, tokens: np.ndarray, ndim: int, what: str) -> np.ndarray:
        ids = np.asarray(tokens)
        if ids.ndim != ndim or ids.shape[0] == 0 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            want = "(B, n)" if ndim == 2 else "(B,)"
            raise ValueError(f"{what} expects integer tokens of shape {want} with B, n >= 1, got {ids.dtype} "
                             f"{ids.shape}")
        if ids.min() < 0 or ids.max() >= self.dims.n_vocab:
            raise ValueError(f"token id out of range [0, {self.dims.n_vocab}): {ids.tolist()}")
        return ids.astype(np.int32)

    def _zero_window(self) -> Tensor:
        if self._zero_cross is None:
            d = self.dims
            self._zero_cross = self._tensor(np.zeros((1, d.n_text_head, d.n_audio_ctx, d.text_head_dim), np.float32))
        return self._zero_cross

    def _cross_slots(self, features: list[Any]) -> list[CrossSlot]:
        """The 2L cross slots of B rows' audio features: cross K/V computed once per distinct feature object
        (the rows of a beam search or of best_of share one window)."""
        want = (1, self.dims.n_audio_ctx, self.dims.n_audio_state)
        distinct: dict[int, int] = {}  # id(feature) -> its row in the stacked audio
        windows: list[Any] = []
        for f in features:
            if id(f) not in distinct:
                distinct[id(f)] = len(windows)
                t = f if runtime.is_tensor(f) else self._tensor(np.asarray(f, dtype=np.float32))
                if tuple(t.shape) != want:
                    raise ValueError(f"prefill expects audio features {want}, got {tuple(t.shape)}")
                windows.append(t)
        rows = [distinct[id(f)] for f in features]
        return [CrossSlot(w, rows) for w in self._cross_kv(self._stack(windows), *self._params["cross_kv"])]

    def _cross_args(self, kv: list[Any]) -> tuple[list[Tensor], list[int]]:
        """The 2L cross windows tensors and the window of each row, as `decode` takes them."""
        slots = [_as_cross(kv[i]) for i in self._cross_idx]
        rows, windows = slots[0].rows, slots[0].windows.shape[0]
        if any(s.rows != rows or s.windows.shape[0] != windows for s in slots):
            # cross slots from different batches in one list (never from prefill/select): give each its rows
            slots = [_as_cross(self._tensor(self.to_numpy(s))) for s in slots]
            rows = slots[0].rows
        return [s.windows for s in slots], list(rows)

    def _stack(self, windows: list[Tensor]) -> Tensor:
        # G features [1, T, C] -> [G, T, C], copied tensor to tensor (no numpy round trip)
        if len(windows) == 1:
            return windows[0]
        _, t, c = windows[0].shape
        out = runtime.empty((len(windows), t, c), "float32")
        row_bytes = t * c * 4
        for g, w in enumerate(windows):
            runtime.copy_into(runtime.view(out, (1, t, c), g * row_bytes), w)
        return out

    def _run_decode(self, ids: np.ndarray, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        # ids (B, n) int32 -> (logits (B, n, n_vocab), the 2L present self slots)
        batch, n = ids.shape
        past = kvslots.self_length(kv)
        if past + n > self.dims.n_text_ctx:
            raise ValueError(f"decoder context overflow: {past} + {n} positions > n_text_ctx "
                             f"{self.dims.n_text_ctx}")
        cross, cross_rows = self._cross_args(kv)
        if len(cross_rows) != batch or any(kv[i].shape[0] != batch or kv[i].shape[2] != past for i in self._self_idx):
            raise ValueError(f"{batch} rows of tokens for slots of shapes {kvslots.shapes(kv)}: every slot needs "
                             f"{batch} rows and every self slot the same length")
        if batch * n > max_token_rows(self.dims):
            raise ValueError(f"{batch} rows x {n} tokens in one call: the library takes at most "
                             f"{max_token_rows(self.dims)} token rows; split the batch")
        # A row tile computes ROW_TILE rows however few are real: fewer stream the weights once per row.
        decode = self._decode_row if batch * n < ROW_TILE else self._decode
        out = decode(_int32_tensor(ids), *(kv[i] for i in self._self_idx), *cross, _int32_tensor(cross_rows),
                     *self._params["decode"])
        # [B * n, V_pad] -> [B, n, n_vocab]: drop the zero-padded vocabulary columns
        logits = runtime.to_numpy(out[0]).reshape(batch, n, -1)[:, :, : self.dims.n_vocab]
        return logits, [out[i] for i in range(1, len(out))]


def ensure_compiled(checkpoint: Checkpoint | tuple[ModelDims, dict[str, np.ndarray]], *,
                    decoder_weight_dtype: str = "auto", force: bool = False, quiet: bool = False,
                    pack_weights: bool = False) -> Path:
    """Warm the cache for this checkpoint's shape (what `whisperkv compile` runs): its library, and with
    `pack_weights` the checkpoint's packed weights too (else the first backend on it writes them);
    -> the library path."""
    dims = checkpoint.dims if isinstance(checkpoint, Checkpoint) else checkpoint[0]
    cfg = ModelConfig(dims, _choose_weight_dtype(checkpoint, decoder_weight_dtype))
    # An unusable cache folder is refused here, before any compile work (backends/cache.py).
    path = cached_library(cfg, force=force, quiet=quiet)
    load_library(cfg, path, compile_if_missing=False)  # proves it loads and matches
    if pack_weights and isinstance(checkpoint, Checkpoint):
        cached_weights(cfg, checkpoint, force=force, quiet=quiet)
    return path
