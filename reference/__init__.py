"""whisperkv's reference decoder: numpy Whisper and the backend-agnostic decoding state machine.

The names below are imported on first use (PEP 562): importing a submodule that needs no numpy (errors,
app.cli, app.heap) must not import the decoder, so that the `whisperkv` command can start its heap warm-up
(app/heap.py) before numpy loads."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {  # public name -> the submodule that defines it
    "Decoder": "decoding", "DecodingOptions": "decoding", "DecodingResult": "decoding", "State": "decoding",
    "TraceEvent": "decoding",
    "ModelDims": "dims",
    "Transcript": "transcribe", "Whisper": "transcribe", "load_model": "transcribe",
    "Checkpoint": "weights", "CheckpointError": "weights", "load_checkpoint": "weights",
}

__all__ = [  # (a literal, for linters and type checkers; tests/test_layout.py holds it to _LAZY)
    "Checkpoint", "CheckpointError", "Decoder", "DecodingOptions", "DecodingResult", "ModelDims", "State",
    "TraceEvent", "Transcript", "Whisper", "load_checkpoint", "load_model",
]

if TYPE_CHECKING:
    from .decoding import Decoder, DecodingOptions, DecodingResult, State, TraceEvent
    from .dims import ModelDims
    from .transcribe import Transcript, Whisper, load_model
    from .weights import Checkpoint, CheckpointError, load_checkpoint


def __getattr__(name: str) -> Any:
    # Unknown names raise AttributeError, so that `from whisperkv.reference import kv` imports the submodule.
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
