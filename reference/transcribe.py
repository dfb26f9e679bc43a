"""Whole files: openai-whisper's `transcribe()`, the same algorithm, on the one decoding machine.

The long-form driver (docs/architecture.md, "Long-form transcription"): 30 s windows cut from one
log-mel of the whole file at `seek`; each window decoded with timestamp tokens under openai's timestamp
rules, conditioned on the previous text (`<|startofprev|>`), with temperature fallback (0.0, 0.2, ...,
1.0) when the text is too repetitive (zlib compression ratio) or too improbable (average log-probability);
a window that is probably silent yields nothing; segments are cut at timestamp tokens and the next window
starts at the last timestamp. With `word_timestamps`, openai's cross-attention alignment (reference/timing.py)
times every word.

`without_timestamps=True` is whisperkv's fixed-window mode: consecutive 30 s windows, no timestamps, and
(unless `condition_on_previous_text=True` is asked for) no previous text, so the windows do not depend
on each other and are decoded as rows of one batch: the windows of one file and of several files,
the decoder's weights read once per step for all of them. Each window still gets the fallback and the
no-speech rule, as openai-whisper's `transcribe(without_timestamps=True, condition_on_previous_text=False)`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from .audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, Audio, open_audio
from .backend import Backend, check_batch, max_batch
from .decoding import (
    TIME_PRECISION,
    BatchRun,
    Decoder,
    DecodingOptions,
    DecodingOptionsError,
    DecodingResult,
    EventSink,
    State,
)
from .registry import create_backend
from .tokenizer import Tokenizer
from .weights import Checkpoint, load_checkpoint

# openai-whisper transcribe()'s defaults
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
DEFAULT_BATCH_SIZE = 8  # fixed-window mode: windows decoded as rows of one batch (~18 MB of cross K/V each in tiny)

ProgressSink = Callable[[float], None]
SegmentSink = Callable[[dict], None]


@dataclass(frozen=True)
class TranscribeOptions:
    """openai-whisper `transcribe()`'s own keywords (the DecodingOptions are passed beside them)."""

    temperature: float | Sequence[float] = TEMPERATURES  # tried in turn while a window fails the thresholds
    compression_ratio_threshold: float | None = COMPRESSION_RATIO_THRESHOLD  # above: too repetitive, fall back
    logprob_threshold: float | None = LOGPROB_THRESHOLD  # average log-probability below: fall back
    no_speech_threshold: float | None = NO_SPEECH_THRESHOLD  # above (and improbable text): silence
    # None: True (openai's default), but False in fixed-window mode, whose windows are then independent
    condition_on_previous_text: bool | None = None
    initial_prompt: str | None = None
    carry_initial_prompt: bool = False
    word_timestamps: bool = False
    prepend_punctuations: str = PREPEND_PUNCTUATIONS
    append_punctuations: str = APPEND_PUNCTUATIONS
    clip_timestamps: str | Sequence[float] = "0"  # start,end,start,end,... seconds; the last end: the file's
    hallucination_silence_threshold: float | None = None  # (with word_timestamps) skip silences this long
    # whisperkv's: the cross-attention heads word timestamps read. None: the checkpoint's (tiny.en: openai's
    # published mask); an openai model name; or [layer, head] pairs (reference/timing.py)
    alignment_heads: str | Sequence[Sequence[int]] | None = None

    def __post_init__(self) -> None:
        temps = self.temperatures
        if not temps or any(not (math.isfinite(t) and t >= 0) for t in temps):
            raise DecodingOptionsError(f"temperature: finite numbers >= 0 expected, got {self.temperature!r}")
        for name in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold",
                     "hallucination_silence_threshold"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise DecodingOptionsError(f"{name} must be a finite number or None, got {value}")
        if self.hallucination_silence_threshold is not None and not self.word_timestamps:
            # (openai-whisper silently ignores it; a setting that does nothing deserves a word)
            raise DecodingOptionsError("hallucination_silence_threshold needs word_timestamps")
        _ = self.clip_seconds  # parsed now: a bad list fails before any audio is read

    @property
    def temperatures(self) -> tuple[float, ...]:
        t = self.temperature
        return (float(t),) if isinstance(t, (int, float)) else tuple(float(x) for x in t)

    @property
    def clip_seconds(self) -> list[float]:
        spec = self.clip_timestamps
        try:
            values = ([float(x) for x in spec.split(",")] if spec else []) if isinstance(spec, str) \
                else [float(x) for x in spec]
        except ValueError:
            raise DecodingOptionsError(f"clip_timestamps: comma-separated seconds expected, got {spec!r}") from None
        if any(not (math.isfinite(x) and x >= 0) for x in values):
            raise DecodingOptionsError(f"clip_timestamps: seconds >= 0 expected, got {spec!r}")
        return values

    def clips(self, content_frames: int) -> list[tuple[int, int]]:
        """openai's seek clips: (start, end) in frames; an odd count ends at the content's end."""
        points = [round(s * FRAMES_PER_SECOND) for s in self.clip_seconds] or [0]
        if len(points) % 2 == 1:
            points.append(content_frames)
        return list(zip(points[::2], points[1::2], strict=True))


@dataclass
class Transcript:
    """openai-whisper's result (`text`, `segments`, `language`) plus `audio`, `backend` and `tokens`.

    Read it as openai's dict is read: `result["text"]`, `result["segments"][0]["start"]`."""

    audio: str
    backend: str
    text: str  # openai's: the decoded text tokens of every segment, not stripped
    segments: list[dict[str, Any]] = field(default_factory=list)
    language: str = "en"
    tokens: list[int] = field(default_factory=list)  # every sampled text token: no special, no timestamp ones
    word_timestamps: dict[str, str] | None = None  # how the word times were computed, which heads (when asked)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.word_timestamps is None:
            del out["word_timestamps"]
        return out

    def keys(self) -> list[str]:
        return list(self.as_dict())

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()

    def __getitem__(self, key: str) -> Any:
        """openai-whisper's idiom: `model.transcribe("a.wav")["text"]`."""
        if not isinstance(key, str) or key not in self.as_dict():
            raise KeyError(key)
        return getattr(self, key)


def needs_fallback(r: DecodingResult, o: TranscribeOptions) -> bool:
    """openai's decode_with_fallback test: too repetitive or too improbable, unless it is silence."""
    failed = ((o.compression_ratio_threshold is not None and r.compression_ratio > o.compression_ratio_threshold)
              or (o.logprob_threshold is not None and r.avg_logprob < o.logprob_threshold))
    silent = (o.no_speech_threshold is not None and r.no_speech_prob > o.no_speech_threshold
              and o.logprob_threshold is not None and r.avg_logprob < o.logprob_threshold)
    return failed and not silent


def is_silent(r: DecodingResult, o: TranscribeOptions) -> bool:
    """openai's no-voice rule: a probable <|nospeech|>, unless the text is probable enough anyway."""
    if o.no_speech_threshold is None or not r.no_speech_prob > o.no_speech_threshold:
        return False
    return not (o.logprob_threshold is not None and r.avg_logprob > o.logprob_threshold)


def decoding_options(options: dict[str, Any], temperature: float) -> DecodingOptions:
    """openai's per-temperature options: beam search (and patience) only at 0, best_of only above."""
    kwargs = dict(options)
    if temperature > 0:
        kwargs.pop("beam_size", None)
        kwargs.pop("patience", None)
    else:
        kwargs.pop("best_of", None)
    return DecodingOptions(**kwargs, temperature=temperature)


@dataclass
class _Job:
    """A fixed-mode window on its way through the batches."""

    file: int
    seek: int
    size: int  # content frames in the window
    features: Any = None


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

    def transcribe(self, audio: str | os.PathLike | np.ndarray | Audio, *, progress: ProgressSink | None = None,
                   on_segment: SegmentSink | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   **options: Any) -> Transcript:
        """A file (or 16 kHz mono float32 samples) -> openai-whisper's result, by its algorithm.

        `options`: openai `transcribe()`'s keywords (TranscribeOptions: temperature, thresholds,
        condition_on_previous_text, initial_prompt, word_timestamps, clip_timestamps, ...) and its decoding
        options (DecodingOptions: language, task, beam_size, best_of, patience, without_timestamps, ...),
        with openai's defaults: greedy with fallback, timestamps, conditioning on the previous text.
        The audio is validated whole before the first window is decoded (AudioError, an InputError, in one
        line). `progress` is called with the seconds of audio done; `on_segment` with each segment as it
        is decoded. `batch_size` bounds the windows decoded together in fixed-window mode.
        """
        return next(self.transcribe_many([audio], progress=progress, on_segment=on_segment,
                                         batch_size=batch_size, **options))

    def transcribe_many(self, audios: Sequence[str | os.PathLike | np.ndarray | Audio], *,
                        progress: ProgressSink | None = None, on_segment: SegmentSink | None = None,
                        batch_size: int = DEFAULT_BATCH_SIZE, **options: Any) -> Iterator[Transcript]:
        """Several files -> their results, in order, each as soon as it is done.

        Every file is opened (and validated) before any window is decoded. In fixed-window mode the
        windows of all the files form one stream cut into batches (a batch may end one file and start
        the next); otherwise the files are decoded one after the other, a window at a time, because each
        window starts where the previous one's timestamps ended. `progress` gets the seconds done over
        all the files.
        """
        if batch_size < 1:
            raise DecodingOptionsError(f"batch_size must be at least 1, got {batch_size}")
        topts, dopts = self._split_options(options)
        decoding_options(dopts, topts.temperatures[0])  # invalid decoding options fail before any audio is read
        sources = [open_audio(a, self.dims.n_mels) for a in audios]
        if self._independent_windows(topts, dopts):
            yield from self._fixed_windows(sources, topts, dopts, progress, on_segment, batch_size)
            return
        done = 0.0
        for source in sources:
            def file_progress(seconds: float, before: float = done) -> None:
                if progress is not None:
                    progress(before + seconds)
            yield self._long_form(source, topts, dopts, file_progress, on_segment)
            done += source.duration

    # -- options ----------------------------------------------------------------------------------

    @staticmethod
    def _split_options(options: dict[str, Any]) -> tuple[TranscribeOptions, dict[str, Any]]:
        names = {f.name for f in fields(TranscribeOptions)}
        known = names | {f.name for f in fields(DecodingOptions)}
        unknown = sorted(set(options) - known - {"temperature"})
        if unknown:
            raise DecodingOptionsError(f"unknown transcribe option(s): {', '.join(unknown)}")
        topts = TranscribeOptions(**{k: v for k, v in options.items() if k in names})
        dopts = {k: v for k, v in options.items() if k not in names}
        dopts.setdefault("without_timestamps", False)  # transcribe()'s default: timestamps
        if topts.condition_on_previous_text is None:  # openai's True; off in whisperkv's fixed-window mode
            topts = replace(topts, condition_on_previous_text=not dopts["without_timestamps"])
        if dopts.get("beam_size") is not None and min(topts.temperatures) > 0:
            # (openai-whisper drops beam_size above 0 without a word: here it would never be used)
            raise DecodingOptionsError(f"beam search samples no tokens: beam_size needs temperature 0 among "
                                       f"the temperatures, got {topts.temperatures}")
        for key in ("prompt", "prefix"):
            if dopts.get(key) is not None:
                raise DecodingOptionsError(f"{key} is set per window by transcribe: use initial_prompt")
        return topts, dopts

    @staticmethod
    def _independent_windows(o: TranscribeOptions, dopts: dict[str, Any]) -> bool:
        """Fixed windows that need nothing from each other: they can be rows of one batch."""
        return (bool(dopts.get("without_timestamps")) and not o.condition_on_previous_text and not o.word_timestamps
                and o.initial_prompt is None)

    def _windows_per_batch(self, decoder: Decoder, batch_size: int) -> int:
        """`batch_size`, or fewer where the backend takes fewer rows (a library compiled for batch 1)."""
        rows = decoder.rows_per_window
        check_batch(self.backend, rows, "one window of this decoding")
        limit = max_batch(self.backend)
        return batch_size if limit is None else max(1, min(batch_size, limit // rows))

    # -- the long-form driver (openai-whisper's transcribe loop) ------------------------------------

    def _long_form(self, source: Audio, o: TranscribeOptions, dopts: dict[str, Any], progress: ProgressSink,
                   on_segment: SegmentSink | None) -> Transcript:
        tok = self.tokenizer
        reader = source.mel_reader()
        content_frames = reader.content_frames
        content_duration = content_frames * HOP_LENGTH / SAMPLE_RATE
        input_stride = self.dims.n_mel_frames // self.dims.n_audio_ctx  # mel frames per timestamp step: 2
        precision = input_stride * HOP_LENGTH / SAMPLE_RATE  # 0.02 s
        assert math.isclose(precision, TIME_PRECISION)
        all_tokens: list[int] = []
        segments: list[dict[str, Any]] = []
        prompt_reset_since = 0
        remaining_prompt_length = self.dims.n_text_ctx // 2 - 1
        initial_prompt_tokens: list[int] = []
        if o.initial_prompt is not None:
            initial_prompt_tokens = tok.encode(" " + o.initial_prompt.strip())
            all_tokens += initial_prompt_tokens
            remaining_prompt_length -= len(initial_prompt_tokens)
        clips = o.clips(content_frames)
        timing: dict[str, str] | None = None
        heads = None
        if o.word_timestamps:
            from .timing import alignment_heads_for

            heads = alignment_heads_for(self.checkpoint, o.alignment_heads)
        last_speech_timestamp = 0.0
        clip_index, seek = 0, clips[0][0]
        while clip_index < len(clips):
            clip_start, clip_end = clips[clip_index]
            seek = max(seek, clip_start)
            if seek >= clip_end:
                clip_index += 1
                if clip_index < len(clips):
                    seek = clips[clip_index][0]
                continue
            time_offset = seek * HOP_LENGTH / SAMPLE_RATE
            window_end_time = (seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE
            segment_size = min(N_FRAMES, content_frames - seek, clip_end - seek)
            segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE
            mel = reader.window(seek, segment_size, self.dims.n_mel_frames)
            if o.carry_initial_prompt:
                ignored = max(len(initial_prompt_tokens), prompt_reset_since)
                prompt = initial_prompt_tokens + all_tokens[ignored:][-remaining_prompt_length:]
            else:
                prompt = all_tokens[prompt_reset_since:]
            result, run = self._decode_with_fallback(mel, prompt, o, dopts)
            if is_silent(result, o):
                seek += segment_size  # fast-forward to the next window
                progress(min(content_frames, seek) * HOP_LENGTH / SAMPLE_RATE)
                continue
            previous_seek = seek
            tokens = result.tokens
            current, seek, single_ending = self._segments(tokens, result, seek, time_offset, segment_size,
                                                           segment_duration, input_stride, precision)
            for segment in current:
                # A timestamp past the end of the audio (the model may put one in the zero padding of a short
                # last window) is the end of the audio: segments stay inside it. openai-whisper does not clamp;
                # its results on the shared clips never need it, so they are unchanged.
                segment["start"] = min(segment["start"], content_duration)
                segment["end"] = min(segment["end"], content_duration)
            if o.word_timestamps:
                timing = self._add_words(current, run, segment_size, o, dopts, heads, last_speech_timestamp)
                if not single_ending:
                    last_word_end = _last_word_end(current)
                    if last_word_end is not None and last_word_end > time_offset:
                        seek = round(last_word_end * FRAMES_PER_SECOND)
                if o.hallucination_silence_threshold is not None:
                    seek, current, restart = _skip_hallucinations(
                        current, o.hallucination_silence_threshold, seek, previous_seek, segment_size,
                        single_ending, time_offset, window_end_time, segment_duration, last_speech_timestamp,
                        content_duration, content_frames)
                    if restart:
                        continue
                last_word_end = _last_word_end(current)
                if last_word_end is not None:
                    last_speech_timestamp = last_word_end
            for segment in current:  # an instantaneous or empty segment is kept, emptied (words too, as openai)
                if segment["start"] == segment["end"] or segment["text"].strip() == "":
                    segment.update(text="", tokens=[], words=[])
            for segment in current:
                segment = {"id": len(segments), **segment}
                segments.append(segment)
                all_tokens += segment["tokens"]
                if on_segment is not None:
                    on_segment(segment)
            if seek <= previous_seek:  # (openai could stall here on a sub-frame gap; every window moves on)
                seek = previous_seek + segment_size
            if not o.condition_on_previous_text or result.temperature > 0.5:
                prompt_reset_since = len(all_tokens)  # a high temperature's text is not fed as a prompt
            progress(min(content_frames, seek) * HOP_LENGTH / SAMPLE_RATE)
        spoken = all_tokens[len(initial_prompt_tokens):]
        return Transcript(audio=source.name, backend=self.backend.name, text=tok.decode(spoken), segments=segments,
                          language=dopts.get("language") or "en", tokens=[t for t in spoken if t < tok.eot],
                          word_timestamps=timing)

    def _decode_with_fallback(self, mel: np.ndarray, prompt: list[int], o: TranscribeOptions,
                              dopts: dict[str, Any]) -> tuple[DecodingResult, BatchRun]:
        """One window at each temperature in turn, until the result passes openai's thresholds."""
        features = self.backend.encode(mel[None])  # once: every temperature decodes the same features
        temps = o.temperatures
        for i, t in enumerate(temps):
            options = decoding_options({**dopts, "prompt": prompt or None}, t)
            run = Decoder(self.backend, self.tokenizer, options).begin([features])
            while run.state is not State.DONE:
                run.advance()
            result = run.result()
            if i == len(temps) - 1 or not needs_fallback(result, o):
                return result, run
        raise AssertionError("unreachable: the last temperature returns")

    def _segments(self, tokens: list[int], result: DecodingResult, seek: int, time_offset: float, segment_size: int,
                  segment_duration: float, input_stride: int, precision: float
                  ) -> tuple[list[dict[str, Any]], int, bool]:
        """openai's segmentation of one window's tokens -> (segments, the next seek, single timestamp ending)."""
        begin = self.tokenizer.timestamp_begin
        is_ts = [t >= begin for t in tokens]
        single_ending = is_ts[-2:] == [False, True]
        consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
        current: list[dict[str, Any]] = []
        if consecutive:
            slices = consecutive + ([len(tokens)] if single_ending else [])
            last = 0
            for cut in slices:
                part = tokens[last:cut]
                current.append(self._segment(seek, time_offset + (part[0] - begin) * precision,
                                             time_offset + (part[-1] - begin) * precision, part, result))
                last = cut
            if single_ending:  # no speech after the last timestamp
                next_seek = seek + segment_size
            else:  # the unfinished last segment is decoded again from its start
                next_seek = seek + (tokens[last - 1] - begin) * input_stride
        else:
            duration = segment_duration
            stamps = [t for t in tokens if t >= begin]
            if stamps and stamps[-1] != begin:  # one timestamp, not at 0: the speech ends there
                duration = (stamps[-1] - begin) * precision
            current.append(self._segment(seek, time_offset, time_offset + duration, tokens, result))
            next_seek = seek + segment_size
        return current, next_seek, single_ending

    def _segment(self, seek: int, start: float, end: float, tokens: list[int], r: DecodingResult) -> dict[str, Any]:
        return {"seek": seek, "start": start, "end": end,
                "text": self.tokenizer.decode([t for t in tokens if t < self.tokenizer.eot]), "tokens": list(tokens),
                "temperature": r.temperature, "avg_logprob": r.avg_logprob,
                "compression_ratio": r.compression_ratio, "no_speech_prob": r.no_speech_prob}

    def _add_words(self, segments: list[dict[str, Any]], run: BatchRun, num_frames: int, o: TranscribeOptions,
                   dopts: dict[str, Any], heads: Any, last_speech_timestamp: float) -> dict[str, str]:
        """openai's word timestamps for one window's segments, from the window's cross K/V (any backend)."""
        from .timing import add_word_timestamps, cross_kv_from_slots

        # every row of a window shares its cross K/V: row 0's are the window's
        cross = cross_kv_from_slots(self.backend, run.kv, self.dims.n_text_layer, row=0)
        return add_word_timestamps(segments=segments, checkpoint=self.checkpoint, tokenizer=self.tokenizer,
                                   cross_kv=cross, num_frames=num_frames, last_speech_timestamp=last_speech_timestamp,
                                   prepend_punctuations=o.prepend_punctuations,
                                   append_punctuations=o.append_punctuations, alignment_heads=heads,
                                   language=dopts.get("language"), task=dopts.get("task", "transcribe"))

    # -- fixed-window mode: independent windows, batched --------------------------------------------

    def _fixed_windows(self, sources: list[Audio], o: TranscribeOptions, dopts: dict[str, Any],
                       progress: ProgressSink | None, on_segment: SegmentSink | None,
                       batch_size: int) -> Iterator[Transcript]:
        temps = o.temperatures
        decoders = [Decoder(self.backend, self.tokenizer, decoding_options(dopts, t)) for t in temps]
        per_batch = min(self._windows_per_batch(d, batch_size) for d in decoders)
        done: list[dict[int, tuple[_Job, DecodingResult]]] = [{} for _ in sources]  # file -> seek -> result
        taken = [0] * len(sources)
        frontier = [0]  # the file the stream of windows has reached: every file before it is fully taken
        emitted, done_seconds = 0, 0.0

        def stream() -> Iterator[tuple[_Job, np.ndarray]]:
            for i, source in enumerate(sources):
                frontier[0] = i
                reader = source.mel_reader()
                for clip_start, clip_end in o.clips(reader.content_frames):
                    for seek in range(clip_start, min(clip_end, reader.content_frames), N_FRAMES):
                        size = min(N_FRAMES, reader.content_frames - seek, clip_end - seek)
                        taken[i] += 1
                        yield _Job(i, seek, size), reader.window(seek, size, self.dims.n_mel_frames)
            frontier[0] = len(sources)

        items = stream()
        while True:
            batch = list(itertools.islice(items, per_batch))  # (an empty one moves the frontier past the end)
            for job, mel in batch:
                job.features = self.backend.encode(mel[None])
            pending = [job for job, _ in batch]
            for level, decoder in enumerate(decoders):
                if not pending:
                    break
                retry: list[_Job] = []
                for job, result in self._decode_jobs(decoder, pending):
                    if level < len(decoders) - 1 and needs_fallback(result, o):
                        retry.append(job)
                        continue
                    job.features = None  # (the cross K/V of a finished window need not wait for the batch)
                    done[job.file][job.seek] = (job, result)
                    done_seconds += job.size * HOP_LENGTH / SAMPLE_RATE
                    if progress is not None:
                        progress(done_seconds)
                pending = retry
            while emitted < frontier[0] and len(done[emitted]) == taken[emitted]:
                windows = [done[emitted][s] for s in sorted(done[emitted])]
                yield self._fixed_transcript(sources[emitted], windows, o, dopts, on_segment)
                done[emitted] = {}
                emitted += 1
            if not batch:
                return

    @staticmethod
    def _decode_jobs(decoder: Decoder, jobs: list[_Job]) -> Iterator[tuple[_Job, DecodingResult]]:
        """The windows as rows of one batch; each (window, result) as soon as its rows end."""
        run = decoder.begin([job.features for job in jobs])
        reported: set[int] = set()
        while True:
            for k, job in enumerate(jobs):
                if k not in reported and run.groups[k].done:
                    reported.add(k)
                    yield job, run.result_of(k)
            if run.state is State.DONE:
                return
            run.advance()

    def _fixed_transcript(self, source: Audio, windows: list[tuple[_Job, DecodingResult]], o: TranscribeOptions,
                          dopts: dict[str, Any], on_segment: SegmentSink | None) -> Transcript:
        segments: list[dict[str, Any]] = []
        for job, result in windows:
            if is_silent(result, o):
                continue
            start = job.seek * HOP_LENGTH / SAMPLE_RATE
            segment = self._segment(job.seek, start, start + job.size * HOP_LENGTH / SAMPLE_RATE, result.tokens,
                                    result)
            if segment["start"] == segment["end"] or segment["text"].strip() == "":
                segment.update(text="", tokens=[])
            segment = {"id": len(segments), **segment}
            segments.append(segment)
            if on_segment is not None:
                on_segment(segment)
        tokens = [t for s in segments for t in s["tokens"]]
        return Transcript(audio=source.name, backend=self.backend.name, text=self.tokenizer.decode(tokens),
                          segments=segments, language=dopts.get("language") or "en",
                          tokens=[t for t in tokens if t < self.tokenizer.eot])


def _last_word_end(segments: list[dict[str, Any]]) -> float | None:
    """openai's get_end: the end of the last word of the last segment with words, else of that segment."""
    return next((w["end"] for s in reversed(segments) for w in reversed(s.get("words", []))),
                segments[-1]["end"] if segments else None)


# punctuation that never counts as a word when judging anomalies (openai's list)
_PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"


def _word_anomaly_score(word: dict[str, Any]) -> float:
    """openai's: very improbable, very short or very long words look like a hallucination."""
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_segment_anomaly(segment: dict[str, Any] | None) -> bool:
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in _PUNCTUATION][:8]
    score = sum(_word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_words_segment(segments: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((s for s in segments if s["words"]), None)


def _skip_hallucinations(current: list[dict[str, Any]], threshold: float, seek: int, previous_seek: int,
                         segment_size: int, single_ending: bool, time_offset: float, window_end_time: float,
                         segment_duration: float, last_speech_timestamp: float, content_duration: float,
                         content_frames: int) -> tuple[int, list[dict[str, Any]], bool]:
    """openai's hallucination_silence_threshold rules -> (seek, the segments kept, decode again from seek)."""
    if not single_ending:
        last_word_end = _last_word_end(current)
        if last_word_end is not None and last_word_end > time_offset:
            remaining = window_end_time - last_word_end
            seek = round(last_word_end * FRAMES_PER_SECOND) if remaining > threshold else previous_seek + segment_size
    # a first segment that may be a hallucination: skip the silence before it and decode again
    first = _next_words_segment(current)
    if first is not None and _is_segment_anomaly(first):
        gap = first["start"] - time_offset
        if gap > threshold:
            # (at least one frame on: openai's round() of a sub-frame gap would decode this window forever)
            return previous_seek + max(1, round(gap * FRAMES_PER_SECOND)), current, True
    # a possible hallucination surrounded by silence (or more hallucinations): drop it and what follows
    hal_last_end = last_speech_timestamp
    for i, segment in enumerate(current):
        if not segment["words"]:
            continue
        if _is_segment_anomaly(segment):
            following = _next_words_segment(current[i + 1 :])
            hal_next_start = following["words"][0]["start"] if following is not None \
                else time_offset + segment_duration
            silence_before = (segment["start"] - hal_last_end > threshold or segment["start"] < threshold
                              or segment["start"] - time_offset < 2.0)
            silence_after = (hal_next_start - segment["end"] > threshold or _is_segment_anomaly(following)
                             or window_end_time - segment["end"] < 2.0)
            if silence_before and silence_after:
                seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                if content_duration - segment["end"] < threshold:
                    seek = content_frames
                return seek, current[:i], False
        hal_last_end = segment["end"]
    return seek, current, False


def load_model(model: str | os.PathLike | None = None, backend: str = "numpy", **backend_options: Any) -> Whisper:
    """Load a checkpoint folder (the bundled tiny.en by default) with the named backend."""
    checkpoint = load_checkpoint(model)
    tokenizer = Tokenizer(checkpoint.tokenizer_path, multilingual=checkpoint.dims.is_multilingual)
    return Whisper(checkpoint, create_backend(backend, checkpoint, **backend_options), tokenizer)
