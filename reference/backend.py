"""The backend protocol: the small seam between the decoding state machine and a model implementation.

A backend is anything with these methods. KV slots and audio features are backend-native (numpy
arrays for the reference, TVM tensors for the TVM backend): the state machine only moves references.
Logits come back as float32 numpy arrays of shape (n_vocab,).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .dims import ModelDims


@runtime_checkable
class Backend(Protocol):
    name: str
    dims: ModelDims

    def encode(self, mel: np.ndarray) -> Any:
        """(1, n_mels, 2 * n_audio_ctx) float32 -> audio features (1, n_audio_ctx, n_audio_state)."""
        ...

    def zero_kv(self) -> list[Any]:
        """The 4 * n_text_layer zeroed slots: self slots of length 0, cross slots of length n_audio_ctx."""
        ...

    def prefill(self, tokens: Sequence[int], audio_features: Any, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """Start sequence + audio features + zeroed slots -> (logits (len(tokens), n_vocab), all filled slots).

        Logits of every start-sequence position, not only the last: openai-whisper reads no_speech_prob
        at the <|startoftranscript|> position, which is not the last one. The start sequence is 2 to 4
        tokens, so this costs nothing.
        Cross K/V must be computed from audio_features here; the zeroed cross slots are never read.
        """
        ...

    def step(self, token: int, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """One token + all slots -> (logits, the 2 * n_text_layer present self slots, layer-major)."""
        ...

    def to_numpy(self, x: Any) -> np.ndarray:
        """A backend-native array as numpy (for traces and verification, never on the hot path)."""
        ...
