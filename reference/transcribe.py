"""Whole files: audio -> 30 s log-mel windows -> the state machine -> one transcript."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .audio import HOP_LENGTH, SAMPLE_RATE, Audio, open_audio
from .backend import Backend
from .decoding import Decoder, DecodingOptions, DecodingResult, EventSink
from .registry import create_backend
from .tokenizer import Tokenizer
from .weights import Checkpoint, load_checkpoint

# openai-whisper transcribe()'s defaults: a window whose no-speech probability is high AND whose
# tokens are unconvincing is silence, and yields no text (instead of a hallucination).
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0


@dataclass
class Window:
    start: float  # seconds
    tokens: list[int]
    text: str
    no_speech_prob: float
    avg_logprob: float
    finished: str  # "eot", "budget" or "no_speech" (skipped as silence)


@dataclass
class Transcript:
    audio: str
    backend: str
    text: str
    tokens: list[int]
    windows: list[Window] = field(default_factory=list)
    no_speech_prob: float = 1.0
    avg_logprob: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        """openai-whisper's idiom: `model.transcribe("a.wav")["text"]`."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


class Whisper:
    """A loaded checkpoint, its tokenizer and one backend: `load_model().transcribe("a.wav")`."""

    def __init__(self, checkpoint: Checkpoint, backend: Backend, tokenizer: Tokenizer) -> None:
        self.checkpoint, self.backend, self.tokenizer = checkpoint, backend, tokenizer
        self.dims = checkpoint.dims

    def decode(self, mel: np.ndarray, options: DecodingOptions | None = None, trace: bool = False,
               on_event: EventSink | None = None) -> DecodingResult:
        """One window: mel (n_mels, 2 * n_audio_ctx) -> greedy decoding result."""
        features = self.backend.encode(mel[None].astype(np.float32))
        return Decoder(self.backend, self.tokenizer, options, trace=trace).run(features, on_event)

    def transcribe(self, audio: str | os.PathLike | np.ndarray | Audio, language: str | None = None,
                   task: str = "transcribe", no_speech_threshold: float | None = NO_SPEECH_THRESHOLD,
                   logprob_threshold: float | None = LOGPROB_THRESHOLD,
                   progress: Callable[[float], None] | None = None, **decode_options: Any) -> Transcript:
        """A file (or 16 kHz mono float32 samples) -> Transcript, window after window of 30 s.

        The audio is validated whole before the first window is decoded: a file or array that cannot be
        used (unreadable, NaN or inf samples, an array that is not 1-D floating point) raises AudioError,
        an InputError, in one line. Memory is bounded by the window: the log-mel is streamed (audio.py).
        `progress`, if given, is called after each window with the seconds of audio done so far.
        """
        source = open_audio(audio, self.dims.n_mels)
        decoder = Decoder(self.backend, self.tokenizer, DecodingOptions(language=language, task=task, **decode_options))
        windows: list[Window] = []
        for seek, mel in source.mel_windows(self.dims.n_mel_frames):
            r = decoder.run(self.backend.encode(mel[None]))
            silent = (no_speech_threshold is not None and r.no_speech_prob > no_speech_threshold
                      and (logprob_threshold is None or r.avg_logprob < logprob_threshold))
            windows.append(Window(start=seek * HOP_LENGTH / SAMPLE_RATE, tokens=[] if silent else r.tokens,
                                  text="" if silent else r.text, no_speech_prob=r.no_speech_prob,
                                  avg_logprob=r.avg_logprob, finished="no_speech" if silent else r.finished))
            if progress is not None:
                progress(min(source.duration, (seek + self.dims.n_mel_frames) * HOP_LENGTH / SAMPLE_RATE))
        tokens = [t for w in windows for t in w.tokens]
        # Per file: avg_logprob weighted by tokens (+1 for each window's EOT, as per window); the file
        # counts as silent only as much as its most speech-like window.
        weights = [len(w.tokens) + 1 for w in windows]
        return Transcript(
            audio=source.name, backend=self.backend.name, text=self.tokenizer.decode(tokens).strip(), tokens=tokens,
            windows=windows,
            no_speech_prob=min((w.no_speech_prob for w in windows), default=1.0),
            avg_logprob=(float(np.average([w.avg_logprob for w in windows], weights=weights)) if windows else 0.0),
        )


def load_model(model: str | os.PathLike | None = None, backend: str = "numpy", **backend_options: Any) -> Whisper:
    """Load a checkpoint folder (the bundled tiny.en by default) with the named backend."""
    checkpoint = load_checkpoint(model)
    tokenizer = Tokenizer(checkpoint.tokenizer_path, multilingual=checkpoint.dims.is_multilingual)
    return Whisper(checkpoint, create_backend(backend, checkpoint, **backend_options), tokenizer)
