"""The backend protocol over an Optimum folder, for any engine that can run its three graphs.

An engine supplies `_run(part, feeds, output_names)`, `_native(numpy array)`, `to_numpy` and the two row
operations `_take(x, rows)` / `_stack(xs)` on its native arrays; this class does the rest: binding every
input and output by name, and mapping Optimum's present/past tensors onto the KV slot layout
(reference/kv.py): slot s of the protocol is `past_key_values.{name}` / `present.{name}` with the same
`layout.kv_name(prefix, s)`.

- prefill runs decoder_model: start tokens + audio features -> logits of every position and all 4L slots,
  the cross K/V computed from the audio (the zeroed slots it is given are never read).
- step runs decoder_with_past: one token per row + all 4L slots -> logits and the 2L present self slots.
  The cross slots the state machine keeps are those decoder_model returned; decoder_with_past returns none.
- select gathers rows of every slot along axis 0 (`_take`), in the engine's memory.

Rows. Optimum's graphs have a dynamic batch_size axis on every input but cache_position, which stays per
position ([n], shared by all rows: they all hold the same self length). B rows are one call: input_ids
(B, n), the B audio features stacked into one (B, n_audio_ctx, d) encoder_hidden_states. An engine whose
graphs are fixed to fewer rows (a library compiled for batch 1) sets `max_batch` and `batch_limit` (the
file that fixes it); a larger batch is refused before anything runs (BatchTooLargeError).

A folder whose decoders come as decoder_model_merged alone (bindings hold MERGED, not DECODER) runs the
same two calls through it: prefill with use_cache_branch False and empty [B, h, 0, hd] pasts (read by no
node), step with True, all 4L slots as the pasts (the kept cross K/V as the encoder pasts) and the
prefill's audio features as encoder_hidden_states (read by no node of that branch, but a graph input must
be fed, and with the batch's rows). step reads only the self presents: the cached branch's encoder
presents are placeholders.

The audio features a step graph still takes (merged, or an older decoder_with_past) are kept per row of
the current batch: those of the last prefill, re-selected by every `select`, so that row i of the fed
features is always the audio of row i of the slots. A step or select on a batch of another size than the
kept features is refused (it cannot be the batch they belong to).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from whisperkv.reference import kv as kvslots
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.errors import BatchTooLarge

from . import layout
from .folder import OnnxFolderError, PartBinding


class BatchTooLargeError(OnnxFolderError, BatchTooLarge):
    """More rows in one call than the backend's graphs or libraries take; names the backend and the file."""


class OptimumBackend:
    name = "optimum-onnx"
    max_batch: int | None = None  # rows per call; None: no limit (Optimum's batch_size axis is dynamic)
    batch_limit: Path | None = None  # the file that fixes max_batch, named when a batch is refused

    def __init__(self, dims: ModelDims, bindings: dict[str, PartBinding]) -> None:
        self.dims, self.bindings = dims, bindings
        self._zero_kv: dict[int, list[Any]] = {}  # batch -> zeroed slots
        # The graphs the two calls run: the separate decoders, or decoder_model_merged for both.
        self.merged = layout.DECODER not in bindings and layout.MERGED in bindings
        self._prefill_part = layout.MERGED if self.merged else layout.DECODER
        self._step_part = layout.MERGED if self.merged else layout.DECODER_WITH_PAST
        # (B, ctx, d) features of the current batch's rows, for step graphs that still take them; else None
        self._keeps_features = bindings[self._step_part].takes("encoder_hidden_states")
        self._features: Any = None

    # What an engine provides ------------------------------------------------------------------

    def _run(self, part: str, feeds: dict[str, Any], outputs: list[str]) -> list[Any]:
        raise NotImplementedError

    def _native(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def to_numpy(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def _take(self, x: Any, rows: list[int]) -> Any:
        """A new native array whose row i is row rows[i] of `x` (axis 0)."""
        raise NotImplementedError

    def _stack(self, xs: Sequence[Any]) -> Any:
        """Native arrays of one row each -> one native array of len(xs) rows (axis 0)."""
        raise NotImplementedError

    # Rows -------------------------------------------------------------------------------------

    def _check_batch(self, batch: int, what: str) -> None:
        if batch < 1:
            raise ValueError(f"{self.name}: {what} needs at least one row, got {batch}")
        if self.max_batch is not None and batch > self.max_batch:
            where = f"{self.batch_limit} " if self.batch_limit is not None else ""
            raise BatchTooLargeError(f"{self.name}: {where}runs at most {self.max_batch} row(s) per call, "
                                     f"{what} was given {batch}")

    def _token_ids(self, tokens: np.ndarray, ndim: int, what: str) -> np.ndarray:
        """tokens as the contiguous int64 input_ids an Optimum graph takes, checked: (B, n) or (B,)."""
        ids = np.asarray(tokens)
        if ids.ndim != ndim or 0 in ids.shape or not np.issubdtype(ids.dtype, np.integer):
            shape = "(B, n)" if ndim == 2 else "(B,)"
            raise ValueError(f"{self.name}: {what} takes integer tokens of shape {shape}, got "
                             f"{ids.dtype} {tuple(ids.shape)}")
        self._check_batch(ids.shape[0], what)
        return np.ascontiguousarray(ids, np.int64)

    def _batch_features(self, audio_features: Sequence[Any], batch: int) -> Any:
        """B features (1, ctx, d) -> (B, ctx, d) encoder_hidden_states (one row: the feature itself)."""
        want = (1, self.dims.n_audio_ctx, self.dims.n_audio_state)
        shapes = [tuple(f.shape) for f in audio_features]
        if len(shapes) != batch or any(s != want for s in shapes):
            raise ValueError(f"{self.name}: prefill of {batch} row(s) takes {batch} audio features of shape "
                             f"{want} (as encode returns them), got {shapes}")
        return audio_features[0] if batch == 1 else self._stack(audio_features)

    def _kept_features(self, batch: int) -> Any:
        path = self.bindings[self._step_part].path
        if self._features is None:
            raise RuntimeError(f"{path} takes encoder_hidden_states: call prefill before step")
        if int(self._features.shape[0]) != batch:
            raise RuntimeError(f"{path} takes encoder_hidden_states, kept for the {self._features.shape[0]} "
                               f"row(s) of the last prefill or select: a batch of {batch} row(s) is not "
                               "that batch")
        return self._features

    # The protocol -----------------------------------------------------------------------------

    def encode(self, mel: np.ndarray) -> Any:
        # [1, n_mels, 2 * n_audio_ctx] -> [1, n_audio_ctx, n_audio_state]
        want = (1, self.dims.n_mels, self.dims.n_mel_frames)
        if tuple(mel.shape) != want:
            raise ValueError(f"encode expects a mel of shape {want}, got {tuple(mel.shape)}")
        feeds = {"input_features": self._native(np.ascontiguousarray(mel, dtype=np.float32))}
        return self._run(layout.ENCODER, feeds, ["last_hidden_state"])[0]

    def zero_kv(self, batch: int = 1) -> list[Any]:
        # Never written (every call returns new arrays) and never read by prefill: one set per batch size is
        # shared, instead of ~18 MB of zeros per row (copied into TVM tensors for the TVM engines) per window.
        self._check_batch(batch, "zero_kv")
        if batch not in self._zero_kv:
            n = kvslots.n_slots(self.dims.n_text_layer)
            self._zero_kv[batch] = [self._native(np.zeros(kvslots.slot_shape(self.dims, i, 0, batch), np.float32))
                                    for i in range(n)]
        return list(self._zero_kv[batch])

    def prefill(self, tokens: np.ndarray, audio_features: Sequence[Any], kv: list[Any]
                ) -> tuple[np.ndarray, list[Any]]:
        # tokens [B, n], B x audio [1, ctx, d] -> logits [B, n, n_vocab], all 4L slots (self length n)
        ids = self._token_ids(tokens, 2, "prefill")
        batch, n = ids.shape
        features = self._batch_features(audio_features, batch)
        feeds = {"input_ids": self._native(ids), "encoder_hidden_states": features}
        if self.bindings[self._prefill_part].takes("cache_position"):
            feeds["cache_position"] = self._native(np.arange(n, dtype=np.int64))
        if self.merged:  # the no-past branch: Optimum's first call feeds empty pasts, cross ones included
            feeds[layout.USE_CACHE_BRANCH.name] = self._native(np.zeros(1, np.bool_))
            empty = self.zero_kv(batch)[kvslots.slot_index(0, kvslots.SlotKind.SELF_KEY)]  # [B, h, 0, hd]
            feeds.update({layout.kv_name("past_key_values", s): empty for s in range(len(kv))})
        names = ["logits"] + [layout.kv_name("present", s) for s in range(len(kv))]
        out = self._run(self._prefill_part, feeds, names)
        self._features = features if self._keeps_features else None
        return self.to_numpy(out[0]), list(out[1:])

    def step(self, tokens: np.ndarray, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        # tokens [B], 4L slots (self length p) -> logits [B, n_vocab], 2L present self slots (length p + 1)
        ids = self._token_ids(tokens, 1, "step")
        batch = ids.shape[0]
        if kvslots.batch_size(kv) != batch:
            raise ValueError(f"{self.name}: step was given {batch} token(s) for slots of "
                             f"{kvslots.batch_size(kv)} row(s)")
        binding = self.bindings[self._step_part]
        feeds = {"input_ids": self._native(ids[:, None])}  # [B, 1]
        feeds.update({layout.kv_name("past_key_values", s): slot for s, slot in enumerate(kv)})
        if self.merged:
            feeds[layout.USE_CACHE_BRANCH.name] = self._native(np.ones(1, np.bool_))
        if binding.takes("encoder_hidden_states"):
            feeds["encoder_hidden_states"] = self._kept_features(batch)
        if binding.takes("cache_position"):
            feeds["cache_position"] = self._native(np.asarray([kvslots.self_length(kv)], np.int64))
        names = ["logits"] + [layout.kv_name("present", s) for s in kvslots.self_slots(self.dims.n_text_layer)]
        out = self._run(self._step_part, feeds, names)
        return self.to_numpy(out[0])[:, -1], list(out[1:])

    def select(self, kv: list[Any], rows: Sequence[int]) -> list[Any]:
        # 4L slots [B, ...] -> 4L slots [len(rows), ...], row i = row rows[i]; the kept features follow
        rows = kvslots.check_rows(rows, kvslots.batch_size(kv))
        self._check_batch(len(rows), "select")
        if self._keeps_features:
            self._features = self._take(self._kept_features(kvslots.batch_size(kv)), rows)
        return [self._take(slot, rows) for slot in kv]
