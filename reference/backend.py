"""The backend protocol: the small seam between the decoding state machine and a model implementation.

A backend is anything with these methods. KV slots and audio features are backend-native (numpy
arrays for the reference, TVM tensors or the TVM backend's shared cross slots): the state machine only
moves references and reads their `.shape`. Logits come back as float32 numpy arrays.

Rows. `prefill` and `step` take a batch of B rows: independent sequences decoded side by side (the
beams of a beam search, the samples of best_of, the windows of one or several files). Every slot
keeps its batch dimension first, (B, n_head, length, head_dim), and all rows of a call share one
self length: the machine starts them together and drops a row (`select`) when it ends. Row b of
every output depends on row b of the inputs only. `select(kv, rows)` builds the slots of a new batch
from rows of the old one, in the given order, repeats allowed: beam reordering, dropping finished
rows, and expanding one prefilled row into beam_size rows are all this one operation, and it stays
in the backend's memory.

A backend that cannot take more than some number of rows (a library compiled for batch 1) says so
with `max_batch`; the machine refuses a larger batch before any work, naming the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .dims import ModelDims
from .errors import BatchTooLarge


@runtime_checkable
class Backend(Protocol):
    name: str
    dims: ModelDims

    def encode(self, mel: np.ndarray) -> Any:
        """(1, n_mels, 2 * n_audio_ctx) float32 -> audio features (1, n_audio_ctx, n_audio_state)."""
        ...

    def zero_kv(self, batch: int = 1) -> list[Any]:
        """The 4 * n_text_layer zeroed slots of `batch` rows: self slots of length 0, cross slots of
        length n_audio_ctx."""
        ...

    def prefill(self, tokens: np.ndarray, audio_features: Sequence[Any], kv: list[Any]
                ) -> tuple[np.ndarray, list[Any]]:
        """tokens (B, n) int + B audio features (each (1, n_audio_ctx, n_audio_state), as `encode`
        returns them) + zero_kv(B) -> (logits (B, n, n_vocab), all 4 * n_text_layer filled slots).

        Logits of every start-sequence position, not only the last: openai-whisper reads no_speech_prob
        at the <|startoftranscript|> position, which is not the last one. The start sequence is 2 to 4
        tokens, so this costs nothing.
        Cross K/V must be computed from the audio features here; the zeroed cross slots are never read.
        """
        ...

    def step(self, tokens: np.ndarray, kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """tokens (B,) int, one per row + all slots -> (logits (B, n_vocab), the 2 * n_text_layer
        present self slots, layer-major, each one position longer)."""
        ...

    def select(self, kv: list[Any], rows: Sequence[int]) -> list[Any]:
        """All slots of a new batch whose row i is row rows[i] of `kv` (any indices, repeats allowed)."""
        ...

    def to_numpy(self, x: Any) -> np.ndarray:
        """A backend-native array as numpy (for traces and verification, never on the hot path)."""
        ...


def max_batch(backend: Any) -> int | None:
    """The most rows `backend` takes in one call; None: no limit (the attribute is optional)."""
    return getattr(backend, "max_batch", None)


def check_batch(backend: Any, rows: int, needed_for: str) -> None:
    """Refuse, before any work, a decoding that needs more rows per call than `backend` takes."""
    limit = max_batch(backend)
    if limit is not None and rows > limit:
        raise BatchTooLarge(f"backend {backend.name}: takes at most {limit} row(s) per call; {needed_for} "
                            f"needs {rows}")
