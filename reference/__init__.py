"""whisperkv's reference decoder: numpy Whisper and the backend-agnostic decoding state machine."""

from .decoding import Decoder, DecodingOptions, DecodingResult, State, TraceEvent
from .dims import ModelDims
from .transcribe import Transcript, Whisper, load_model
from .weights import Checkpoint, CheckpointError, load_checkpoint

__all__ = [
    "Checkpoint", "CheckpointError", "Decoder", "DecodingOptions", "DecodingResult", "ModelDims", "State",
    "TraceEvent", "Transcript", "Whisper", "load_checkpoint", "load_model",
]
