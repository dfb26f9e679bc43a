"""TVMBackend: the backend protocol (reference/backend.py) on a compiled Relax library.

Audio features and KV slots stay TVM tensors between calls; only the logits come back to numpy. The
weights are packed and copied to TVM tensors once, when the backend is created.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tvm  # noqa: E402,I001

from whisperkv.reference import kv as kvslots
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.weights import Checkpoint

from . import threads  # (before tvm)
from .compile import cached_library, load_library
from .model import ModelConfig, pack_params


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

    def __init__(self, checkpoint: Checkpoint | tuple[ModelDims, dict[str, np.ndarray]], *,
                 decoder_weight_dtype: str = "auto", library: str | os.PathLike | None = None,
                 compile_if_missing: bool = True, quiet: bool = False) -> None:
        if isinstance(checkpoint, Checkpoint):
            dims, weights = checkpoint.dims, checkpoint.weights
        else:
            dims, weights = checkpoint
        self.dims: ModelDims = dims
        self.config = ModelConfig(dims, _choose_weight_dtype(checkpoint, decoder_weight_dtype))
        threads.quiet_blas_threads()
        self.vm, self.library_path = load_library(self.config, Path(library) if library else None,
                                                  compile_if_missing=compile_if_missing, quiet=quiet)
        self.device = tvm.cpu()
        packed = pack_params(weights, self.config)
        self._params = {fn: [self._tensor(a) for a in arrs] for fn, arrs in packed.items()}
        self._encode = self.vm["encode"]
        self._cross_kv = self.vm["cross_kv"]
        self._decode = self.vm["decode"]
        L = dims.n_text_layer
        self._self_idx = kvslots.self_slots(L)
        self._cross_idx = kvslots.cross_slots(L)
        self._zero_kv: list[Any] | None = None

    def _tensor(self, a: np.ndarray) -> tvm.runtime.Tensor:
        return tvm.runtime.tensor(np.ascontiguousarray(a), self.device)

    # -- protocol ---------------------------------------------------------------------------

    def encode(self, mel: np.ndarray) -> tvm.runtime.Tensor:
        # [1, n_mels, 2 * n_audio_ctx] -> [1, n_audio_ctx, n_audio_state]
        want = (1, self.dims.n_mels, self.dims.n_mel_frames)
        if tuple(mel.shape) != want:
            raise ValueError(f"encode expects a mel of shape {want}, got {tuple(mel.shape)}")
        threads.quiet_blas_threads()  # an OpenBLAS loaded since __init__ (e.g. scipy's) would spin too
        return self._encode(self._tensor(np.asarray(mel, dtype=np.float32)), *self._params["encode"])

    def zero_kv(self) -> list[Any]:
        # Zero slots are never written (every call returns new tensors), so one set is shared.
        if self._zero_kv is None:
            n = kvslots.n_slots(self.dims.n_text_layer)
            self._zero_kv = [self._tensor(np.zeros(kvslots.slot_shape(self.dims, i, 0), np.float32)) for i in range(n)]
        return list(self._zero_kv)

    def prefill(self, tokens: Sequence[int], audio_features: Any, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """-> (logits [len(tokens), n_vocab], all slots). Cross K/V come from audio_features, never from kv."""
        if not isinstance(audio_features, tvm.runtime.Tensor):
            audio_features = self._tensor(np.asarray(audio_features, dtype=np.float32))
        want = (1, self.dims.n_audio_ctx, self.dims.n_audio_state)
        if tuple(audio_features.shape) != want:
            raise ValueError(f"prefill expects audio features {want}, got {tuple(audio_features.shape)}")
        if any(kv[i].shape[2] != 0 for i in self._self_idx):
            raise ValueError("prefill expects empty self slots (zero_kv())")
        cross = list(self._cross_kv(audio_features, *self._params["cross_kv"]))
        kv = list(kv)
        for dst, slot in zip(self._cross_idx, cross, strict=True):
            kv[dst] = slot
        logits, present = self._run_decode(list(tokens), kv)
        return logits, kvslots.remap_present(kv, present)

    def step(self, token: int, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        logits, present = self._run_decode([token], kv)
        return logits[0], present

    def from_numpy(self, x: np.ndarray) -> tvm.runtime.Tensor:
        """A numpy array as a backend-native tensor (e.g. slots computed by another backend)."""
        return self._tensor(np.asarray(x, dtype=np.float32) if np.asarray(x).dtype != np.int32 else x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.numpy() if isinstance(x, tvm.runtime.Tensor) else np.asarray(x)

    # -- internals --------------------------------------------------------------------------

    def _run_decode(self, tokens: list[int], kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        past = kv[self._self_idx[0]].shape[2]
        if past + len(tokens) > self.dims.n_text_ctx:
            raise ValueError(f"decoder context overflow: {past} + {len(tokens)} positions > n_text_ctx "
                             f"{self.dims.n_text_ctx}")
        ids = np.asarray(tokens, dtype=np.int32)
        if ids.min() < 0 or ids.max() >= self.dims.n_vocab:
            raise ValueError(f"token id out of range [0, {self.dims.n_vocab}): {tokens}")
        out = self._decode(self._tensor(ids), *(kv[i] for i in self._self_idx), *(kv[i] for i in self._cross_idx),
                           *self._params["decode"])
        logits = out[0].numpy()[:, : self.dims.n_vocab]  # drop the zero-padded vocabulary columns
        return logits, [out[i] for i in range(1, len(out))]


def ensure_compiled(checkpoint: Checkpoint | tuple[ModelDims, dict[str, np.ndarray]], *,
                    decoder_weight_dtype: str = "auto", force: bool = False, quiet: bool = False) -> Path:
    """Warm the cache for this checkpoint's shape (what `whisperkv compile` runs); -> the library path."""
    dims = checkpoint.dims if isinstance(checkpoint, Checkpoint) else checkpoint[0]
    cfg = ModelConfig(dims, _choose_weight_dtype(checkpoint, decoder_weight_dtype))
    # An unusable cache folder is refused here, before any compile work (backends/cache.py).
    path = cached_library(cfg, force=force, quiet=quiet)
    load_library(cfg, path, compile_if_missing=False)  # proves it loads and matches
    return path
