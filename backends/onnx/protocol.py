"""The backend protocol over an Optimum folder, for any engine that can run its three graphs.

An engine supplies `_run(part, feeds, output_names)` and `_native(numpy array)`; this class does the rest:
binding every input and output by name, and mapping Optimum's present/past tensors onto the KV slot layout
(reference/kv.py): slot s of the protocol is `past_key_values.{name}` / `present.{name}` with the same
`layout.kv_name(prefix, s)`.

- prefill runs decoder_model: start tokens + audio features -> logits of every position and all 4L slots,
  the cross K/V computed from the audio (the zeroed slots it is given are never read).
- step runs decoder_with_past: one token + all 4L slots -> logits and the 2L present self slots. The
  cross slots the state machine keeps are those decoder_model returned; decoder_with_past returns none.

A folder whose decoders come as decoder_model_merged alone (bindings hold MERGED, not DECODER) runs the
same two calls through it: prefill with use_cache_branch False and empty [1, h, 0, hd] pasts (read by no
node), step with True, all 4L slots as the pasts (the kept cross K/V as the encoder pasts) and the last
prefill's audio features as encoder_hidden_states (read by no node of that branch, but a graph input must
be fed). step reads only the self presents: the cached branch's encoder presents are placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from whisperkv.reference import kv as kvslots
from whisperkv.reference.dims import ModelDims

from . import layout
from .folder import PartBinding


class OptimumBackend:
    name = "optimum-onnx"

    def __init__(self, dims: ModelDims, bindings: dict[str, PartBinding]) -> None:
        self.dims, self.bindings = dims, bindings
        self._audio_features: Any = None  # the last prefill's, for step graphs that still take it
        self._zero_kv: list[Any] | None = None
        # The graphs the two calls run: the separate decoders, or decoder_model_merged for both.
        self.merged = layout.DECODER not in bindings and layout.MERGED in bindings
        self._prefill_part = layout.MERGED if self.merged else layout.DECODER
        self._step_part = layout.MERGED if self.merged else layout.DECODER_WITH_PAST

    # What an engine provides ------------------------------------------------------------------

    def _run(self, part: str, feeds: dict[str, Any], outputs: list[str]) -> list[Any]:
        raise NotImplementedError

    def _native(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def to_numpy(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    # The protocol -----------------------------------------------------------------------------

    def encode(self, mel: np.ndarray) -> Any:
        # [1, n_mels, 2 * n_audio_ctx] -> [1, n_audio_ctx, n_audio_state]
        want = (1, self.dims.n_mels, self.dims.n_mel_frames)
        if tuple(mel.shape) != want:
            raise ValueError(f"encode expects a mel of shape {want}, got {tuple(mel.shape)}")
        feeds = {"input_features": self._native(np.ascontiguousarray(mel, dtype=np.float32))}
        return self._run(layout.ENCODER, feeds, ["last_hidden_state"])[0]

    def zero_kv(self) -> list[Any]:
        # Never written (every call returns new arrays) and never read by prefill: one set is shared, instead
        # of ~18 MB of zeros (copied into TVM tensors for the TVM engines) per window.
        if self._zero_kv is None:
            n = kvslots.n_slots(self.dims.n_text_layer)
            self._zero_kv = [self._native(np.zeros(kvslots.slot_shape(self.dims, i, 0), np.float32)) for i in range(n)]
        return list(self._zero_kv)

    def prefill(self, tokens: Sequence[int], audio_features: Any, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        # tokens [n], audio [1, ctx, d] -> logits [n, n_vocab], all 4L slots (self length n)
        feeds = {"input_ids": self._native(np.asarray([tokens], np.int64)), "encoder_hidden_states": audio_features}
        if self.bindings[self._prefill_part].takes("cache_position"):
            feeds["cache_position"] = self._native(np.arange(len(tokens), dtype=np.int64))
        if self.merged:  # the no-past branch: Optimum's first call feeds empty pasts, cross ones included
            feeds[layout.USE_CACHE_BRANCH.name] = self._native(np.zeros(1, np.bool_))
            empty = self._native(np.zeros((1, self.dims.n_text_head, 0, self.dims.text_head_dim), np.float32))
            feeds.update({layout.kv_name("past_key_values", s): empty for s in range(len(kv))})
        names = ["logits"] + [layout.kv_name("present", s) for s in range(len(kv))]
        out = self._run(self._prefill_part, feeds, names)
        self._audio_features = audio_features
        return self.to_numpy(out[0])[0], list(out[1:])

    def step(self, token: int, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        # token, 4L slots (self length p) -> logits [n_vocab], 2L present self slots (length p + 1), layer-major
        binding = self.bindings[self._step_part]
        feeds = {"input_ids": self._native(np.asarray([[token]], np.int64))}
        feeds.update({layout.kv_name("past_key_values", s): slot for s, slot in enumerate(kv)})
        if self.merged:
            feeds[layout.USE_CACHE_BRANCH.name] = self._native(np.ones(1, np.bool_))
        if binding.takes("encoder_hidden_states"):
            if self._audio_features is None:
                raise RuntimeError(f"{binding.path} takes encoder_hidden_states: call prefill before step")
            feeds["encoder_hidden_states"] = self._audio_features
        if binding.takes("cache_position"):
            past = int(kv[kvslots.slot_index(0, kvslots.SlotKind.SELF_KEY)].shape[2])
            feeds["cache_position"] = self._native(np.asarray([past], np.int64))
        names = ["logits"] + [layout.kv_name("present", s) for s in kvslots.self_slots(self.dims.n_text_layer)]
        out = self._run(self._step_part, feeds, names)
        return self.to_numpy(out[0])[0, -1], list(out[1:])
