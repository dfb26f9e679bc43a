"""Whole files: audio -> 30 s log-mel windows -> the state machine -> one transcript."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .audio import HOP_LENGTH, SAMPLE_RATE, Audio, open_audio
from .backend import Backend, check_batch, max_batch
from .decoding import Decoder, DecodingOptions, DecodingOptionsError, DecodingResult, EventSink, State
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


DEFAULT_BATCH_SIZE = 8  # windows decoded as rows of one batch (each row holds its own cross K/V: ~18 MB in tiny)


class Whisper:
    """A loaded checkpoint, its tokenizer and one backend: `load_model().transcribe("a.wav")`."""

    def __init__(self, checkpoint: Checkpoint, backend: Backend, tokenizer: Tokenizer) -> None:
        self.checkpoint, self.backend, self.tokenizer = checkpoint, backend, tokenizer
        self.dims = checkpoint.dims

    def decode(self, mel: np.ndarray, options: DecodingOptions | None = None, trace: bool = False,
               on_event: EventSink | None = None) -> DecodingResult:
        """One window: mel (n_mels, 2 * n_audio_ctx) -> its decoding result (greedy unless `options` say)."""
        features = self.backend.encode(mel[None].astype(np.float32))
        return Decoder(self.backend, self.tokenizer, options, trace=trace).run(features, on_event)

    def transcribe(self, audio: str | os.PathLike | np.ndarray | Audio, language: str | None = None,
                   task: str = "transcribe", no_speech_threshold: float | None = NO_SPEECH_THRESHOLD,
                   logprob_threshold: float | None = LOGPROB_THRESHOLD,
                   progress: Callable[[float], None] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   **decode_options: Any) -> Transcript:
        """A file (or 16 kHz mono float32 samples) -> Transcript, in windows of 30 s.

        The audio is validated whole before the first window is decoded: a file or array that cannot be
        used (unreadable, NaN or inf samples, an array that is not 1-D floating point) raises AudioError,
        an InputError, in one line. Memory is bounded by the batch: the log-mel is streamed (audio.py).
        The windows do not depend on each other (no previous-text conditioning, no timestamp seek), so up
        to `batch_size` of them are decoded as rows of one batch: the same tokens as one by one, with the
        decoder's weights read once per step for all of them. `decode_options` are DecodingOptions
        (beam_size, best_of, patience, length_penalty, temperature, seed, ...).
        `progress`, if given, is called as each window is done with the seconds of audio done so far.
        """
        return next(self.transcribe_many([audio], language, task, no_speech_threshold, logprob_threshold, progress,
                                         batch_size, **decode_options))

    def transcribe_many(self, audios: Sequence[str | os.PathLike | np.ndarray | Audio], language: str | None = None,
                        task: str = "transcribe", no_speech_threshold: float | None = NO_SPEECH_THRESHOLD,
                        logprob_threshold: float | None = LOGPROB_THRESHOLD,
                        progress: Callable[[float], None] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                        **decode_options: Any) -> Iterator[Transcript]:
        """Several files -> their Transcripts, in order, each as soon as its last window is decoded.

        Every file is opened (and validated) before any window is decoded. The windows of all the files
        form one stream, cut into batches of `batch_size` windows: a batch may end one file and start the
        next. A window is done when its rows end (its batch may go on for longer windows), and a file is
        given back as soon as all its windows are done. `progress` gets the seconds done over all the files.
        """
        if batch_size < 1:
            raise DecodingOptionsError(f"batch_size must be at least 1, got {batch_size}")
        sources = [open_audio(a, self.dims.n_mels) for a in audios]
        decoder = Decoder(self.backend, self.tokenizer, DecodingOptions(language=language, task=task, **decode_options))
        per_batch = self._windows_per_batch(decoder, batch_size)
        taken = [0] * len(sources)  # windows of each file taken from the stream so far
        done: list[dict[int, Window]] = [{} for _ in sources]  # file -> seek -> its decoded window
        frontier = [0]  # the file the stream of windows has reached: every file before it is fully taken
        emitted, done_seconds = 0, 0.0
        window_seconds = self.dims.n_mel_frames * HOP_LENGTH / SAMPLE_RATE

        def stream() -> Iterator[tuple[int, int, np.ndarray]]:
            for i, source in enumerate(sources):
                frontier[0] = i
                for seek, mel in source.mel_windows(self.dims.n_mel_frames):
                    taken[i] += 1
                    yield i, seek, mel
            frontier[0] = len(sources)

        items = stream()
        while True:
            batch = list(itertools.islice(items, per_batch))  # (an empty one moves the frontier past the end)
            run = decoder.begin([self.backend.encode(mel[None]) for _, _, mel in batch]) if batch else None
            recorded: set[int] = set()
            while True:
                for k, (i, seek, _) in enumerate(batch):
                    if k not in recorded and run is not None and run.groups[k].done:
                        recorded.add(k)
                        done[i][seek] = self._window(seek, run.result_of(k), no_speech_threshold, logprob_threshold)
                        done_seconds += min(sources[i].duration - seek * HOP_LENGTH / SAMPLE_RATE, window_seconds)
                        if progress is not None:
                            progress(done_seconds)
                while emitted < frontier[0] and len(done[emitted]) == taken[emitted]:
                    yield self._transcript(sources[emitted], [done[emitted][s] for s in sorted(done[emitted])])
                    done[emitted] = {}
                    emitted += 1
                if run is None or run.state is State.DONE:
                    break
                run.advance()
            if not batch:
                return

    def _windows_per_batch(self, decoder: Decoder, batch_size: int) -> int:
        """`batch_size`, or fewer where the backend takes fewer rows (a library compiled for batch 1)."""
        rows = decoder.rows_per_window
        check_batch(self.backend, rows, "one window of this decoding")
        limit = max_batch(self.backend)
        return batch_size if limit is None else max(1, min(batch_size, limit // rows))

    @staticmethod
    def _window(seek: int, r: DecodingResult, no_speech_threshold: float | None,
                logprob_threshold: float | None) -> Window:
        silent = (no_speech_threshold is not None and r.no_speech_prob > no_speech_threshold
                  and (logprob_threshold is None or r.avg_logprob < logprob_threshold))
        return Window(start=seek * HOP_LENGTH / SAMPLE_RATE, tokens=[] if silent else r.tokens,
                      text="" if silent else r.text, no_speech_prob=r.no_speech_prob,
                      avg_logprob=r.avg_logprob, finished="no_speech" if silent else r.finished)

    def _transcript(self, source: Audio, windows: list[Window]) -> Transcript:
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
