"""The KV slot layout: the one place that knows which of the 4 * n_text_layer slots is which.

For decoder layer i, slot 4i is self-attention key, 4i+1 self value, 4i+2 cross key, 4i+3 cross value;
each slot is (batch, n_text_head, length, head_dim): one row per sequence decoded side by side (the
seed's layout had batch 1). Self slots start at length 0 and grow by one per decoded token; cross slots
are n_audio_ctx long and are written once, by prefill, from the audio.

A backend's `step` returns only the present self slots, layer-major: (layer 0 key, layer 0 value,
layer 1 key, ...). `remap_present` puts them back where they belong.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Any, TypeVar

from .dims import ModelDims

SLOTS_PER_LAYER = 4

Slot = TypeVar("Slot")  # backend-native array: numpy here, a TVM tensor in backends/tvm


class SlotKind(IntEnum):
    SELF_KEY = 0
    SELF_VALUE = 1
    CROSS_KEY = 2
    CROSS_VALUE = 3

    @property
    def is_self(self) -> bool:
        return self in (SlotKind.SELF_KEY, SlotKind.SELF_VALUE)


def n_slots(n_layer: int) -> int:
    return SLOTS_PER_LAYER * n_layer


def slot_index(layer: int, kind: SlotKind) -> int:
    return SLOTS_PER_LAYER * layer + int(kind)


def slot_of(index: int) -> tuple[int, SlotKind]:
    """Inverse of slot_index: (layer, kind)."""
    return index // SLOTS_PER_LAYER, SlotKind(index % SLOTS_PER_LAYER)


def self_slots(n_layer: int) -> list[int]:
    """Indices of the self-attention slots, in the order `step` returns them."""
    return [slot_index(i, k) for i in range(n_layer) for k in (SlotKind.SELF_KEY, SlotKind.SELF_VALUE)]


def cross_slots(n_layer: int) -> list[int]:
    return [slot_index(i, k) for i in range(n_layer) for k in (SlotKind.CROSS_KEY, SlotKind.CROSS_VALUE)]


def slot_name(index: int) -> str:
    layer, kind = slot_of(index)
    part = "key" if kind in (SlotKind.SELF_KEY, SlotKind.CROSS_KEY) else "value"
    return f"{layer}.{'self' if kind.is_self else 'cross'}.{part}"


def slot_shape(dims: ModelDims, index: int, self_length: int, batch: int = 1) -> tuple[int, int, int, int]:
    """The shape slot `index` has when the self slots hold `self_length` positions, for `batch` rows."""
    _, kind = slot_of(index)
    length = self_length if kind.is_self else dims.n_audio_ctx
    return (batch, dims.n_text_head, length, dims.text_head_dim)


def self_length(kv: Sequence[Any]) -> int:
    """Positions the self slots hold (every row holds the same number)."""
    return int(kv[slot_index(0, SlotKind.SELF_KEY)].shape[2])


def batch_size(kv: Sequence[Any]) -> int:
    return int(kv[0].shape[0])


def check_rows(rows: Sequence[int], batch: int) -> list[int]:
    """The row indices of a `select`, checked against the batch they index (any order, repeats allowed)."""
    out = [int(r) for r in rows]
    bad = [r for r in out if not 0 <= r < batch]
    if bad:
        raise ValueError(f"select: row {bad[0]} out of range for a batch of {batch}")
    return out


def remap_present(kv: Sequence[Slot], present: Sequence[Slot]) -> list[Slot]:
    """Write the present self slots of a step back into a full slot list; cross slots are kept as is.

    Only references move: no slot is copied.
    """
    n_layer = len(kv) // SLOTS_PER_LAYER
    if len(kv) != n_slots(n_layer):
        raise ValueError(f"a KV list has a multiple of {SLOTS_PER_LAYER} slots, got {len(kv)}")
    targets = self_slots(n_layer)
    if len(present) != len(targets):
        raise ValueError(f"step returned {len(present)} present slots, expected {len(targets)} (2 per layer)")
    out = list(kv)
    for src, dst in enumerate(targets):
        out[dst] = present[src]
    return out


def shapes(kv: Sequence[Any]) -> list[tuple[int, ...]]:
    return [tuple(s.shape) for s in kv]
