"""Audio in, log-mel windows out: decode, resample to 16 kHz, and Whisper's log-mel, in numpy.

The log-mel follows openai-whisper's `whisper/audio.py` step for step (torch.stft defaults: periodic
Hann window, centred frames with reflect padding, the last frame dropped), and `mel_windows` follows
`transcribe()`: one log-mel over the whole audio plus 30 s of zeros, cut into 3000-frame windows whose
tails are padded with 0.0 in the log-mel domain. See docs/architecture.md, "Windows and the log-mel".

Memory is bounded by the window, not the file: `open_audio` reads a file (or array) block by block
twice, once to validate it and find the log-mel's global maximum (the max - 8 floor needs it), once to
yield windows. Both passes and the whole-array functions (`resample`, `log_mel_spectrogram`) run the
very same block computations at the same absolute block boundaries (`_ResamplePlan.run`, `_log10_mel`),
so the streamed features are bit-identical to the whole-file ones by construction, not by tolerance:
a BLAS matrix product or a batched FFT may round differently when the work is split differently.

openai-whisper decodes and resamples with the ffmpeg command line (to s16 at 16 kHz); here libsndfile
decodes and a numpy polyphase windowed-sinc filter resamples. A 16-bit mono 16 kHz file gives the same
samples as openai-whisper's pipeline; other rates agree up to the two resamplers' filters (measured in
tests/test_audio.py against FFmpeg's libswresample: flat below 4 kHz, different only near 8 kHz).
What libsndfile cannot open (m4a, mp4, aac, video containers) is decoded by FFmpeg through PyAV, the optional
`av` package (`pip install 'whisperkv[av]'`), at the stream's own rate: see `_AVFile`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable, Iterator
from functools import cache, lru_cache
from math import ceil, gcd, pi
from typing import Any

import numpy as np
import soundfile as sf

from .errors import InputError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in one 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in one window


class AudioError(InputError):
    """An audio file that cannot be used; the message is one line, `"{path}: {problem}"`."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever libsndfile said
        super().__init__(f"{self.path}: {self.problem}")


# ----------------------------------------------------------------------------------------------
# Decoding

_READ_BLOCK = 1 << 16  # frames per libsndfile read when streaming: 1.5 s at 44.1 kHz, 0.5 MB in stereo float32


def _open_file(name: str) -> sf.SoundFile | _AVFile:
    """Open for reading (libsndfile, else PyAV), or say in one line why not."""
    # Checked before libsndfile, whose "Format not recognised" would hide the real problem.
    if not os.path.exists(name):
        raise AudioError(name, "no such file")
    if os.path.isdir(name):
        raise AudioError(name, "is a directory, not an audio file")
    if os.path.getsize(name) == 0:
        raise AudioError(name, "empty file (0 bytes)")
    try:
        return sf.SoundFile(name)
    except sf.LibsndfileError as e:
        return _open_with_pyav(name, e.error_string)  # m4a, mp4, aac, video containers
    except (RuntimeError, OSError) as e:
        raise AudioError(name, f"cannot read audio ({e})") from e


def _open_with_pyav(name: str, sndfile_problem: str) -> _AVFile:
    """A file libsndfile refused, opened by FFmpeg through PyAV; or one line saying that neither can read it."""
    try:
        import av  # optional: only files libsndfile cannot read need it
    except ImportError:
        raise AudioError(name, f"not an audio file libsndfile can read ({sndfile_problem}); m4a, mp4, aac and video "
                               f"files need PyAV: pip install 'whisperkv[av]'") from None
    try:
        container = av.open(name, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise AudioError(name, f"not an audio file libsndfile or PyAV can read (libsndfile: {sndfile_problem}; "
                               f"PyAV: {_av_problem(e)})") from None
    try:
        return _AVFile(name, container)
    except BaseException:
        container.close()
        raise


def _av_problem(e: Exception) -> str:
    # FFmpeg's own words ("Invalid data found when processing input"), without PyAV's errno and path
    return str(getattr(e, "strerror", None) or e)


class _AVFile:
    """The first audio stream of a file, decoded by FFmpeg (PyAV): what `_read` needs of an sf.SoundFile.

    Frames come at the stream's own rate and channel layout, converted to float32 here as libsndfile
    converts (integer PCM / 2^(bits-1), planar or interleaved to [n, channels]); the channels are mixed
    down by `_mono` like any other file's and our own resampler brings them to 16 kHz. Doing the sample
    format conversion here, rather than with av's AudioResampler (format "flt", same layout and rate),
    gives the same numbers with no resampler state to flush. A packet FFmpeg cannot decode (a truncated
    or corrupt file) is an AudioError, not skipped: skipping would shorten the transcript silently.
    The rate and channels are those of the first decoded frame (an HE-AAC stream's header may say
    otherwise), and a stream whose rate or channel count changes midway is refused.
    """

    def __init__(self, name: str, container: Any) -> None:
        import av

        self.name, self._container, self._av = name, container, av
        streams = container.streams
        if not streams.audio:
            kinds = sorted({s.type for s in streams}) or ["none"]
            raise AudioError(name, f"no audio stream (PyAV found {', '.join(kinds)}: "
                                   f"{container.format.long_name or container.format.name})")
        self._stream = streams.audio[0]
        self._done = 0  # frames decoded so far, to say where a decoding error is
        ctx = self._stream.codec_context
        self.samplerate, self.channels = int(ctx.sample_rate or 0), int(ctx.channels or 0)
        self._frames = self._decode()
        self._pending: list[np.ndarray] = []
        first = next(self._frames, None)  # the true rate and layout, from the decoder itself
        if first is not None:
            self._pending.append(first)
        if self.samplerate <= 0 or self.channels <= 0:
            raise AudioError(name, f"PyAV reports no sample rate or channels ({self.samplerate} Hz, "
                                   f"{self.channels} channel(s))")

    def _decode(self) -> Generator[np.ndarray, None, None]:
        # -> [k, channels] float32, ...
        av = self._av
        try:
            for packet in self._container.demux(self._stream):
                for frame in packet.decode():
                    data = self._samples(frame)
                    self._done += len(data)
                    yield data
        except av.error.FFmpegError as e:
            at = f"{self._done / self.samplerate:.3f} s" if self.samplerate else f"frame {self._done}"
            raise AudioError(self.name, f"cannot decode audio after {at} (PyAV: {_av_problem(e)}); "
                                        f"the file may be truncated or corrupt") from None

    def _samples(self, frame: Any) -> np.ndarray:
        # one decoded frame -> [samples, channels] float32
        rate, channels = int(frame.sample_rate), len(frame.layout.channels)
        if not self._done and not self._pending:  # the first frame sets the stream's rate and layout
            self.samplerate, self.channels = rate, channels
        elif (rate, channels) != (self.samplerate, self.channels):
            raise AudioError(self.name, f"the audio stream changes from {self.channels} channel(s) at "
                                        f"{self.samplerate} Hz to {channels} at {rate} Hz")
        x = frame.to_ndarray()  # planar: [channels, samples]; interleaved: [1, samples * channels]
        x = x.T if frame.format.is_planar else x.reshape(-1, channels)
        if x.dtype.kind == "f":
            return x.astype(np.float32)
        if x.dtype.kind == "u":  # 8-bit PCM is unsigned, centred on 128
            return (x.astype(np.float32) - 128) / 128
        return x.astype(np.float32) * np.float32(2.0 ** (1 - 8 * x.dtype.itemsize))  # s16 / 2^15, s32 / 2^31

    def read(self, frames: int = -1) -> np.ndarray:
        """# -> [<= frames, channels] float32 (all that remain for -1)"""
        have = sum(len(p) for p in self._pending)
        while frames < 0 or have < frames:
            data = next(self._frames, None)
            if data is None:
                break
            self._pending.append(data)
            have += len(data)
        if not self._pending:
            return np.zeros((0, self.channels), np.float32)
        joined = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        n = len(joined) if frames < 0 else min(frames, len(joined))
        self._pending = [joined[n:]] if n < len(joined) else []
        return joined[:n]

    def close(self) -> None:
        self._frames.close()
        self._container.close()

    def __enter__(self) -> _AVFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(f: sf.SoundFile | _AVFile, name: str, frames: int = -1) -> np.ndarray:
    """The next `frames` frames (all that remain for -1); fewer, or none, at the end.

    # -> [<= frames, n_channels] float32
    """
    if isinstance(f, _AVFile):
        return f.read(frames)  # its errors are AudioErrors already
    try:
        return f.read(frames, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AudioError(name, f"cannot read audio ({e.error_string})") from e
    except (RuntimeError, OSError) as e:
        raise AudioError(name, f"cannot read audio ({e})") from e


def _mono(data: np.ndarray) -> np.ndarray:
    # Float files may exceed ±1 and are kept so (openai-whisper's s16 pipe would clip them): the log-mel is
    # level-normalised by its own maximum, so clipping would only add distortion. The mean is taken per
    # frame, so a block's frames mix exactly as they would in the whole file.
    return data.mean(axis=1, dtype=np.float32)  # [n, n_channels] -> [n]


class _Validity:
    """Counts the non-finite samples of a file or array block by block, and where the first one is."""

    def __init__(self) -> None:
        self.n_nan = self.n_inf = self.size = 0
        self.first: tuple[int, int] | None = None  # (frame, channel)

    def update(self, data: np.ndarray, offset: int) -> None:
        """data [n, n_channels] starting at frame `offset`."""
        self.size += data.size
        finite = np.isfinite(data)
        if finite.all():
            return
        if self.first is None:
            frame, channel = np.argwhere(~finite)[0]
            self.first = (offset + int(frame), int(channel))
        self.n_nan += int(np.isnan(data).sum())
        self.n_inf += int(np.isinf(data).sum())

    def problem(self, sr: int, channels: bool = True) -> str | None:
        if self.first is None:
            return None
        frame, channel = self.first
        where = f"first at frame {frame} ({frame / sr:.3f} s), channel {channel}" if channels else \
            f"first at sample {frame} ({frame / sr:.3f} s)"
        return f"{self.n_nan} NaN and {self.n_inf} inf sample(s) of {self.size}; {where}"


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file libsndfile (or PyAV) reads, mix down to mono and resample to `sr`, all at once.

    The whole-file form of `open_audio(path).mel_windows()`'s input, with the same checks and messages.
    # file -> [n_samples] float32 at `sr`
    """
    name = os.fspath(path)
    with _open_file(name) as f:
        data, file_sr = _read(f, name), f.samplerate  # [n_frames, n_channels]
    n_frames, n_channels = data.shape
    if n_frames == 0:
        raise AudioError(name, f"no audio: 0 frames ({n_channels} channel(s) at {file_sr} Hz)")
    validity = _Validity()
    validity.update(data, 0)
    if problem := validity.problem(file_sr):
        raise AudioError(name, problem)
    return resample(_mono(data), file_sr, sr)


# ----------------------------------------------------------------------------------------------
# Resampling: polyphase windowed-sinc at the rational ratio up/down

_STOPBAND_DB = 80.0  # Kaiser design target: passband ripple and stopband are both ~1e-4
_ROLLOFF = 0.95  # cutoff (-6 dB) as a fraction of the lower Nyquist; the stopband starts at Nyquist


def _kaiser_beta(attenuation_db: float) -> float:
    # Kaiser's empirical formula for attenuation above 50 dB.
    return 0.1102 * (attenuation_db - 8.7)


def _filter_half_length(up: int, orig_sr: int, new_sr: int) -> int:
    """Half length D (in upsampled samples) of the lowpass: it spans [-D, D]."""
    nyquist = min(orig_sr, new_sr) / 2
    transition = 2 * (1 - _ROLLOFF) * nyquist / (orig_sr * up)  # full width, cycles per upsampled sample
    n_taps = (_STOPBAND_DB - 7.95) / (2.285 * 2 * pi * transition)  # Kaiser's length estimate
    return int(ceil(n_taps / 2))


def _bessel_i0(z: np.ndarray) -> np.ndarray:
    """Modified Bessel function I0 by its power series, 2-3x faster than np.i0 for Kaiser arguments.

    For z <= beta (~7.9) the terms (z/2)^2k / (k!)^2 fall below 1e-20 of the sum by k = 30.
    # [...] -> [...] float64
    """
    q = (np.asarray(z, dtype=np.float64) / 2) ** 2
    term = np.ones_like(q)
    total = np.ones_like(q)
    for k in range(1, 30):
        term *= q
        term *= 1.0 / (k * k)
        total += term
    return total


def _lowpass(t: np.ndarray, up: int, orig_sr: int, new_sr: int, half: int) -> np.ndarray:
    """The continuous Kaiser-windowed sinc, sampled at offsets t (upsampled samples) from its centre.

    Evaluated pointwise so that only the polyphase rows actually used are ever built: for ratios like
    16000/44099 the full filter would have millions of taps.
    # [...] -> [...] float64
    """
    cutoff = _ROLLOFF * min(orig_sr, new_sr) / 2 / (orig_sr * up)  # cycles per upsampled sample
    beta = _kaiser_beta(_STOPBAND_DB)
    inside = np.abs(t) <= half
    ratio = np.where(inside, t / half, 1.0)
    window = np.where(inside, _bessel_i0(beta * np.sqrt(1 - ratio**2)) / _bessel_i0(np.float64(beta)), 0.0)
    # The factor `up` restores the amplitude that zero-stuffing spreads over `up` samples.
    return up * 2 * cutoff * np.sinc(2 * cutoff * t) * window


@lru_cache(maxsize=4)
def _polyphase_rows(orig_sr: int, new_sr: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Filter rows for outputs r = 0 .. n_rows-1 (r mod up picks the row), with their input positions.

    Output m = r + up*i needs inputs x[q - j], j < n_taps, with q = (m*down + half) // up, weighted by
    the filter at offset p - half + j*up, p = (m*down + half) % up. Outputs with equal r share p (the
    polyphase rows) and their q step by `down`. Cached: for common rates n_rows == up for any file
    longer than a few ms, so loading many files at one rate designs the filter once.
    # -> ([n_rows, n_taps] float32 reversed rows, [n_rows] q of each row's first output)
    """
    g = gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    half = _filter_half_length(up, orig_sr, new_sr)
    n_taps = 2 * half // up + 1  # input samples any one output depends on (at most)
    q, p = np.divmod(np.arange(n_rows) * down + half, up)
    offsets = p[:, None] - half + up * np.arange(n_taps)[None, :]  # [n_rows, n_taps]
    # Reversed so that a row dots with the ascending window x[q - n_taps + 1 .. q].
    rows = np.ascontiguousarray(_lowpass(offsets, up, orig_sr, new_sr, half).astype(np.float32)[:, ::-1])
    for a in (rows, q):
        a.flags.writeable = False
    return rows, q


class _Samples:
    """A 1-D signal that arrives in chunks, addressed by absolute sample index; keeps only what is still needed.

    `segment` always returns a fresh contiguous array, whether the samples came in one piece (the
    whole-array functions) or in many (streaming): the block computations then see identical inputs.
    """

    def __init__(self, audio: np.ndarray | None = None) -> None:
        self._parts: list[np.ndarray] = []
        self.start = 0  # absolute index of the first sample kept
        self.end = 0  # absolute index one past the last sample received
        if audio is not None:
            self.append(audio)

    def append(self, chunk: np.ndarray) -> None:
        if len(chunk):
            self._parts.append(chunk)
            self.end += len(chunk)

    def _joined(self) -> np.ndarray:
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)]
        return self._parts[0]

    def segment(self, s: int, e: int) -> np.ndarray:
        """Samples s .. e-1, zeros before 0 and from `end` on (the caller knows when `end` is final).

        # -> [e - s] float32, a new array
        """
        lo, hi = max(s, 0), min(e, self.end)
        if lo < self.start:
            raise AssertionError(f"samples from {lo} were already dropped (kept from {self.start})")
        out = np.zeros(e - s, np.float32)
        if hi > lo:
            out[lo - s : hi - s] = self._joined()[lo - self.start : hi - self.start]
        return out

    def drop_before(self, s: int) -> None:
        cut = min(s, self.end) - self.start
        if cut > 0:
            # A copy, so that the consumed samples' memory is freed rather than kept alive by a view.
            self._parts = [self._joined()[cut:].copy()]
            self.start += cut


_RESAMPLE_BLOCK = 1 << 20  # output samples per resampling block (65.5 s at 16 kHz), rounded to a multiple of up


class _ResamplePlan:
    """Output blocks of `resample` at fixed absolute boundaries, and the input span each one reads.

    Block k holds outputs k*B .. (k+1)*B - 1 (the last one fewer), B a multiple of `up` so that every
    block starts at polyphase row 0 and its rows' inputs step alike. Output m reads inputs
    q(m) - n_taps + 1 .. q(m), q(m) = (m*down + half) // up, increasing with m.
    """

    def __init__(self, orig_sr: int, new_sr: int) -> None:
        g = gcd(orig_sr, new_sr)
        self.orig_sr, self.new_sr = orig_sr, new_sr
        self.up, self.down = new_sr // g, orig_sr // g
        self.half = _filter_half_length(self.up, orig_sr, new_sr)
        self.n_taps = 2 * self.half // self.up + 1
        # At least 32 outputs per polyphase row: the Python loop runs over rows, once per block.
        self.block = self.up * max(32, -(-_RESAMPLE_BLOCK // self.up))

    def q(self, m: int) -> int:
        return (m * self.down + self.half) // self.up

    def span(self, m0: int, m1: int) -> tuple[int, int]:
        """The input samples [s, e) that outputs m0 .. m1-1 read."""
        return self.q(m0) - self.n_taps + 1, self.q(m1 - 1) + 1

    def outputs(self, n_in: int) -> int:
        return -(-n_in * self.up // self.down)  # ceil(n_in * new_sr / orig_sr)

    def run(self, segment: np.ndarray, m0: int, m1: int) -> np.ndarray:
        """Outputs m0 .. m1-1 (m0 a multiple of `up`) from their input span.

        # [e - s] float32 (the span of `span(m0, m1)`) -> [m1 - m0] float32
        """
        n = m1 - m0
        rows, q = _polyphase_rows(self.orig_sr, self.new_sr, min(self.up, n))
        windows = np.lib.stride_tricks.sliding_window_view(segment, self.n_taps)  # [j] ends at input s + j + n_taps - 1
        y = np.empty(n, np.float32)
        # A Python loop over the polyphase rows (at most `up`, e.g. 160 for 44.1 kHz), never over samples.
        for r in range(len(rows)):
            count = len(range(r, n, self.up))
            y[r :: self.up] = windows[q[r] - q[0] :: self.down][:count] @ rows[r]
        return y


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling (80 dB Kaiser windowed sinc), output length ceil(n * new_sr / orig_sr).

    Conceptually: insert up-1 zeros between samples, lowpass at the lower Nyquist, keep every down-th
    sample. Output m sits at input time m * orig_sr / new_sr (zero-phase; zeros beyond both ends).
    Computed in the blocks of `_ResamplePlan`, exactly as `_Resampler` streams it.
    # [n] -> [ceil(n * new_sr / orig_sr)] float32
    """
    if not (isinstance(orig_sr, (int, np.integer)) and isinstance(new_sr, (int, np.integer))):
        raise ValueError(f"sample rates must be integers, got {orig_sr!r} and {new_sr!r}")
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} and {new_sr}")
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample expects mono audio [n], got shape {x.shape}")
    plan = _ResamplePlan(int(orig_sr), int(new_sr))
    if plan.up == plan.down:
        return x.copy()
    samples, n_out = _Samples(x), plan.outputs(len(x))
    y = np.empty(n_out, np.float32)
    for m0 in range(0, n_out, plan.block):
        m1 = min(m0 + plan.block, n_out)
        y[m0:m1] = plan.run(samples.segment(*plan.span(m0, m1)), m0, m1)
    return y


class _Resampler:
    """`resample` as a stream: feed input chunks, get output blocks as soon as their inputs have arrived.

    # feed([k] at orig_sr) -> [block] float32 at new_sr, ...; finish() -> the rest
    """

    def __init__(self, orig_sr: int, new_sr: int) -> None:
        self.plan = _ResamplePlan(orig_sr, new_sr)
        self.samples = _Samples()
        self.done = 0  # outputs produced so far: always a multiple of the block size until finish()

    def feed(self, chunk: np.ndarray) -> Iterator[np.ndarray]:
        if self.plan.up == self.plan.down:
            yield chunk
            return
        self.samples.append(chunk)
        plan = self.plan
        # A full block needs input up to q(m1 - 1); having it also proves the file has >= m1 outputs.
        while plan.span(self.done, self.done + plan.block)[1] <= self.samples.end:
            yield self._block(self.done + plan.block)

    def finish(self) -> Iterator[np.ndarray]:
        if self.plan.up == self.plan.down:
            return
        n_out = self.plan.outputs(self.samples.end)
        while self.done < n_out:
            yield self._block(min(self.done + self.plan.block, n_out))

    def _block(self, m1: int) -> np.ndarray:
        m0, plan = self.done, self.plan
        y = plan.run(self.samples.segment(*plan.span(m0, m1)), m0, m1)
        self.done = m1
        self.samples.drop_before(plan.span(m1, m1 + 1)[0])
        return y


# ----------------------------------------------------------------------------------------------
# Log-mel


def pad_or_trim(audio: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    """Zero-pad or cut the end to exactly `length` samples, as openai-whisper's pad_or_trim.

    # [n] -> [length]
    """
    audio = np.asarray(audio)
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale (librosa htk=False): linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@cache
def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels, htk=False, norm="slaney"): what openai-whisper ships.

    Computed in float64 and rounded once to float32, as librosa does. The array is cached and read-only.
    # -> [n_mels, 1 + n_fft // 2] float32
    """
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)  # [n_bins]
    mel_edges = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2)
    hz_edges = _mel_to_hz(mel_edges)  # [n_mels + 2]
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]  # [n_mels + 2, n_bins]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, n_bins] triangles
    # Slaney normalisation: each triangle has unit area in Hz, so wide high bands are not louder.
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    out = weights.astype(np.float32)
    out.flags.writeable = False
    return out


@cache
def _hann_window(n: int) -> np.ndarray:
    # torch.hann_window(n) is periodic (denominator n, not n - 1): the DFT-even window torch.stft uses.
    w = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
    w.flags.writeable = False
    return w  # [n]


_FRAME_BLOCK = 2048  # frames per FFT block (20.5 s): bounds the temporary [block, n_fft] arrays, streamed or not
# Frames per numpy rfft call within a block. numpy 2's float32 rfft of a whole block's 2048 frames took
# 7.3-8.2 ms, of 256-frame slices 2.3 ms in all (its working set stays in cache), with identical bits: each
# frame's transform is computed alone either way (checked for slices of 16 to 512 frames).
_FFT_FRAMES = 256
# Pass 1 keeps the log10 mel of inputs up to this many blocks (21.8 min; 42 MB at 80 mels) for pass 2: a
# file up to that long is analysed once, and only longer ones twice, in memory bounded by this, not the
# file. (At 8 blocks, 164 s, the 172 s clip was analysed twice: 260 of its whole process's ~3.8 s.)
_KEPT_BLOCKS = 64


def _log10_mel(padded: np.ndarray, n_mels: int) -> np.ndarray:
    """log10 mel power of consecutive frames, before whisper's floor: the one block computation of the log-mel.

    `padded` is the centred (reflect-padded) signal from the block's first frame start to its last
    frame's end. Every block is computed at the full _FRAME_BLOCK frames (a short one zero-extended, the
    extra frames dropped): a batched FFT and a BLAS matrix product may round a frame differently when
    they hold a different number of frames (observed: 1.2e-7 apart between a 5035- and an 8032-frame
    call). With one shape, a frame's features depend only on its samples and its absolute position,
    whatever the audio's length or padding, streamed or not (for a given BLAS and thread count).
    # [(n - 1) * hop + n_fft] float32, n <= _FRAME_BLOCK -> [n_mels, n] float32
    """
    n = (len(padded) - N_FFT) // HOP_LENGTH + 1
    full = np.zeros((_FRAME_BLOCK - 1) * HOP_LENGTH + N_FFT, np.float32)
    full[: len(padded)] = padded
    frames = np.lib.stride_tricks.sliding_window_view(full, N_FFT)[::HOP_LENGTH]  # [_FRAME_BLOCK, n_fft]
    power = np.empty((_FRAME_BLOCK, N_FFT // 2 + 1), np.float32)
    for f in range(0, _FRAME_BLOCK, _FFT_FRAMES):  # (the same bits as one call, 3-4x faster: see _FFT_FRAMES)
        spectrum = np.fft.rfft(frames[f : f + _FFT_FRAMES] * _hann_window(N_FFT), axis=-1)  # complex64
        power[f : f + _FFT_FRAMES] = np.abs(spectrum) ** 2  # |.| then square, as whisper's stft.abs() ** 2
    mel = mel_filters(n_mels) @ power.T
    return np.log10(np.maximum(mel[:, :n], np.float32(1e-10)))


def _frame_blocks(n_frames: int) -> Iterator[tuple[int, int]]:
    # Blocks of frames at absolute boundaries: f0 .. f1-1.
    for f0 in range(0, n_frames, _FRAME_BLOCK):
        yield f0, min(f0 + _FRAME_BLOCK, n_frames)


def _frame_span(f0: int, f1: int) -> tuple[int, int]:
    # Frames f0 .. f1-1, centred (frame f spans samples f*hop - n_fft/2 .. f*hop + n_fft/2 - 1): their samples.
    return f0 * HOP_LENGTH - N_FFT // 2, (f1 - 1) * HOP_LENGTH + N_FFT // 2


def _scale(log_spec: np.ndarray, top: np.floating) -> np.ndarray:
    # whisper's floor (8 decades below the loudest value of the whole audio) and scale, elementwise.
    log_spec = np.maximum(log_spec, top - np.float32(8.0))
    return ((log_spec + np.float32(4.0)) / np.float32(4.0)).astype(np.float32)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """openai-whisper's log_mel_spectrogram on a numpy array: n // 160 frames for n = len + padding.

    Requires len(audio) + padding > 200 (torch's reflect padding needs it too).

    The FFT runs in float32 (numpy >= 2 keeps float32 through pocketfft): openai-whisper runs
    torch.stft on float32 input, i.e. a single-precision FFT as well, so float64 here would not be
    closer to it; single-precision FFTs differ from exact ones only by rounding: up to 7e-6 on the
    log-mel of the fixture clips (tests/test_audio.py). The rest stays float32, as in whisper.
    # [n_samples] -> [n_mels, (n_samples + padding) // 160] float32
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel_spectrogram expects mono audio [n], got shape {x.shape}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding:
        x = np.pad(x, (0, padding))
    if len(x) <= N_FFT // 2:
        raise ValueError(f"reflect padding needs more than {N_FFT // 2} samples (audio + padding): {len(x)}")
    x = np.pad(x, N_FFT // 2, mode="reflect")  # [n + n_fft], centred frames as torch.stft(center=True)
    n_frames = (len(x) - N_FFT) // HOP_LENGTH  # whisper drops the last frame (stft[..., :-1])
    log_spec = np.empty((n_mels, n_frames), np.float32)
    for f0, f1 in _frame_blocks(n_frames):
        s, e = _frame_span(f0, f1)
        log_spec[:, f0:f1] = _log10_mel(x[s + N_FFT // 2 : e + N_FFT // 2].copy(), n_mels)
    # The floor is relative to the loudest value of this whole call: hence mel_windows' single call.
    return _scale(log_spec, log_spec.max())


class _LogMelStream:
    """`log_mel_spectrogram(audio, padding=N_FFT)` as a stream, before the floor: feed 16 kHz samples, get
    [n_mels, _FRAME_BLOCK] blocks of log10 mel power as soon as their samples have arrived.

    The n_fft zeros of padding (see mel_windows) make every sample past the audio zero, the end's reflect
    padding included, so `finish()` needs nothing but the sample count.
    # feed([k] float32) -> [n_mels, block] float32, ...; finish() -> the rest
    """

    def __init__(self, n_mels: int) -> None:
        self.n_mels = n_mels
        self.samples = _Samples()
        self.done = 0  # frames produced so far

    def feed(self, chunk: np.ndarray) -> Iterator[np.ndarray]:
        self.samples.append(chunk)
        # Having a full block's last sample also proves the audio has more frames than that block.
        while _frame_span(self.done, self.done + _FRAME_BLOCK)[1] <= self.samples.end:
            yield self._block(self.done + _FRAME_BLOCK)

    def finish(self) -> Iterator[np.ndarray]:
        n_frames = (self.samples.end + N_FFT) // HOP_LENGTH  # as log_mel_spectrogram with padding=N_FFT
        while self.done < n_frames:
            yield self._block(min(self.done + _FRAME_BLOCK, n_frames))

    def _block(self, f1: int) -> np.ndarray:
        s, e = _frame_span(self.done, f1)
        padded = self.samples.segment(s, e)
        if s < 0:  # the first block: reflect padding, samples n_fft/2 .. 1 (zeros past the end, as padded)
            padded[:-s] = self.samples.segment(1, 1 - s)[::-1]
        out = _log10_mel(padded, self.n_mels)
        self.done = f1
        self.samples.drop_before(_frame_span(f1, f1 + 1)[0])
        return out


def mel_windows(
    audio: np.ndarray, n_mels: int = 80, n_frames: int = N_FRAMES
) -> list[tuple[int, np.ndarray]]:
    """The encoder inputs of openai-whisper's transcribe(): (seek in frames, window) pairs, all at once.

    One log-mel over audio + 30 s of zeros (so the max - 8 floor uses the global maximum), then windows
    at seek = 0, n_frames, ... while seek < len(audio) // 160; a short last window is padded with 0.0 in
    the log-mel domain, not with the log-mel of silence. Audio shorter than one hop (160 samples, zero
    length included) has no content frames and gives no window: the transcriber reports an empty
    transcript for it, as transcribe() does. `open_audio(audio).mel_windows()` yields the same windows
    one at a time, bit for bit, without holding the whole log-mel.
    # [n_samples] -> [(seek, [n_mels, n_frames] float32), ...]
    """
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    # transcribe() pads 30 s of zeros, but no window reads past the content frames, and a frame whose
    # samples are all zero is -10 before the floor, never the maximum: n_fft zeros give the same frames
    # (every frame touching audio, the same zeros after it) for far fewer FFTs. tests/test_audio.py
    # checks the equality against the 30 s padding.
    content_frames = len(audio) // HOP_LENGTH
    mel = log_mel_spectrogram(audio, n_mels, padding=N_FFT) if content_frames else np.zeros((n_mels, 0))
    windows = []
    for seek in range(0, content_frames, n_frames):
        size = min(n_frames, content_frames - seek)
        window = np.pad(mel[:, seek : seek + size], ((0, 0), (0, n_frames - size)))
        windows.append((seek, np.ascontiguousarray(window, dtype=np.float32)))
    return windows


def _cut_windows(
    blocks: Iterable[np.ndarray], top: np.floating, content_frames: int, n_frames: int
) -> Iterator[tuple[int, np.ndarray]]:
    """mel_windows' windows from streamed log10 mel blocks and the global maximum `top` found beforehand.

    # [n_mels, block] float32, ... -> (seek, [n_mels, n_frames] float32), ...
    """
    held: list[np.ndarray] = []  # floored, scaled frames from `seek` on
    n_held, seek = 0, 0
    for block in blocks:
        held.append(_scale(block, top))
        n_held += block.shape[1]
        while seek < content_frames and n_held >= min(n_frames, content_frames - seek):
            frames = np.concatenate(held, axis=1) if len(held) > 1 else held[0]
            size = min(n_frames, content_frames - seek)
            window = np.zeros((frames.shape[0], n_frames), np.float32)  # a short last window: 0.0 padding
            window[:, :size] = frames[:, :size]
            yield seek, window
            held, n_held, seek = [frames[:, n_frames:]], n_held - n_frames, seek + n_frames
            if n_held <= 0:
                held, n_held = [], 0


# ----------------------------------------------------------------------------------------------
# Sources: a file or an array, validated once, read window by window


class Audio:
    """Validated audio (a file, or an array of 16 kHz samples), read as log-mel windows.

    Holds neither the samples nor the log-mel of a long input: `open_audio` read the source once to
    validate it and to find the log-mel's maximum, and each `mel_windows()` reads it again block by block
    (an input of at most _KEPT_BLOCKS blocks, 21.8 min, keeps pass 1's blocks instead: at most 42 MB at
    80 mels).
    """

    def __init__(self, name: str, source: str | np.ndarray, chunks: Callable[[], Iterator[np.ndarray]], sr: int,
                 n_mels: int) -> None:
        self.name, self.n_mels = name, n_mels
        self._source, self._chunks, self._sr = source, chunks, sr  # chunks() -> mono [k] float32 at sr, ...
        self.n_samples = 0  # at 16 kHz, set by _scan
        self._top = np.float32(-10.0)  # the log10 mel's maximum, set by _scan
        self._last_count = 0  # 16 kHz samples the last complete read found
        self._kept: list[np.ndarray] | None = None  # pass 1's log10 mel blocks, for inputs of <= _KEPT_BLOCKS

    @property
    def duration(self) -> float:
        """Seconds at 16 kHz."""
        return self.n_samples / SAMPLE_RATE

    def _log10_mel_blocks(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        # mono at the source's rate -> 16 kHz -> log10 mel blocks; sets n_samples when exhausted
        resampler, mel = _Resampler(self._sr, SAMPLE_RATE), _LogMelStream(self.n_mels)
        for chunk in chunks:
            for y in resampler.feed(chunk):
                yield from mel.feed(y)
        for y in resampler.finish():
            yield from mel.feed(y)
        yield from mel.finish()
        self._last_count = mel.samples.end

    def _scan(self, chunks: Iterable[np.ndarray]) -> None:
        # Pass 1: the sample count and the global maximum the max - 8 floor needs. The blocks of a short
        # input are kept, so that its windows are not analysed a second time.
        top = np.float32(-np.inf)
        kept: list[np.ndarray] | None = []
        for block in self._log10_mel_blocks(chunks):
            top = max(top, block.max())
            if kept is not None:
                if len(kept) < _KEPT_BLOCKS:
                    kept.append(block)
                else:
                    kept = None
        self.n_samples, self._top, self._kept = self._last_count, top, kept

    def mel_windows(self, n_frames: int = N_FRAMES) -> Iterator[tuple[int, np.ndarray]]:
        """mel_windows() of the whole audio, one window at a time, bit for bit.

        # -> (seek in frames, [n_mels, n_frames] float32), ...
        """
        if n_frames <= 0:
            raise ValueError(f"n_frames must be positive, got {n_frames}")
        return self._windows(n_frames)

    def mel_reader(self) -> MelReader:
        """Random access to the log-mel's content frames, streamed: cheap when reads move forward."""
        return MelReader(self)

    def _scaled_blocks(self) -> Iterator[np.ndarray]:
        # the floored, scaled log-mel, block by block: [n_mels, block] float32, ...
        blocks = self._kept if self._kept is not None else self._log10_mel_blocks(self._chunks())
        for block in blocks:
            yield _scale(block, self._top)

    def _windows(self, n_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        if self._kept is not None:  # the very blocks pass 2 would compute again
            yield from _cut_windows(self._kept, self._top, self.n_samples // HOP_LENGTH, n_frames)
            return
        yield from _cut_windows(self._log10_mel_blocks(self._chunks()), self._top, self.n_samples // HOP_LENGTH,
                                n_frames)
        if self._last_count != self.n_samples:  # the windows were cut by the first read's count
            raise AudioError(self.name, f"changed while being read: {self._last_count} samples at 16 kHz, "
                             f"{self.n_samples} when opened")


class MelReader:
    """`window(seek, size)`: the frames openai-whisper's transcribe() slices, one window at a time.

    transcribe() slices mel[:, seek : seek + size] out of one log-mel of the whole padded audio and pads
    it with 0.0 to a full window. Its seek only moves forward, so the frames are streamed: the reader
    keeps the frames from the last window's start on (a few windows' worth) and restarts the stream
    only if asked for frames it has already let go (clip_timestamps that go back in time).
    """

    def __init__(self, audio: Audio) -> None:
        self.audio = audio
        self.content_frames = audio.n_samples // HOP_LENGTH
        self._restart()

    def _restart(self) -> None:
        self._blocks = self.audio._scaled_blocks()
        self._start, self._held = 0, np.zeros((self.audio.n_mels, 0), np.float32)  # frames [start, start + held)

    def window(self, seek: int, size: int, n_frames: int = N_FRAMES) -> np.ndarray:
        """Frames [seek, seek + size) of the content, padded with 0.0 to n_frames. # -> [n_mels, n_frames]"""
        if not 0 <= seek and 0 <= size <= n_frames and seek + size <= self.content_frames:
            raise ValueError(f"frames [{seek}, {seek + size}) outside the content's {self.content_frames}")
        if seek < self._start:
            self._restart()
        parts = [self._held[:, seek - self._start :]] if seek < self._start + self._held.shape[1] else []
        have = sum(p.shape[1] for p in parts)
        skipped = max(0, seek - self._start - self._held.shape[1])  # frames between the held ones and seek
        while have < size:
            block = next(self._blocks)
            if skipped >= block.shape[1]:
                skipped -= block.shape[1]
                continue
            parts.append(block[:, skipped:])
            have += block.shape[1] - skipped
            skipped = 0
        self._held = np.concatenate(parts, axis=1) if parts else self._held[:, :0]
        self._start = seek
        out = np.zeros((self.audio.n_mels, n_frames), np.float32)
        out[:, :size] = self._held[:, :size]
        return out


def _file_chunks(name: str, validity: _Validity | None = None) -> Iterator[np.ndarray]:
    """A file's mono samples at its own rate, block by block; `validity`, if given, sees every raw block.

    # -> [<= _READ_BLOCK] float32, ...
    """
    with _open_file(name) as f:
        offset = 0
        while len(data := _read(f, name, _READ_BLOCK)):  # [k, n_channels]
            if validity is not None:
                validity.update(data, offset)
                if validity.first is not None:
                    offset += len(data)
                    continue  # only counted from here on: the file will be refused
            offset += len(data)
            yield _mono(data)


def _open_file_source(name: str, n_mels: int) -> Audio:
    with _open_file(name) as f:
        sr, channels = f.samplerate, f.channels
    audio = Audio(name, name, lambda: _file_chunks(name), sr, n_mels)
    validity = _Validity()
    audio._scan(_file_chunks(name, validity))
    if validity.size == 0:
        raise AudioError(name, f"no audio: 0 frames ({channels} channel(s) at {sr} Hz)")
    if problem := validity.problem(sr):
        raise AudioError(name, problem)
    return audio


_ARRAY = "<array>"


def _array_chunks(samples: np.ndarray) -> Iterator[np.ndarray]:
    # [n] float16/32/64 -> [<= block] float32, ...: converted block by block, never the whole array at once
    for start in range(0, len(samples), _READ_BLOCK):
        yield np.asarray(samples[start : start + _READ_BLOCK], dtype=np.float32)


def _check_array(samples: np.ndarray) -> None:
    """What the API accepts: openai-whisper's input, float32 (or float16/64) mono samples at 16 kHz."""
    dtype = samples.dtype
    if not np.issubdtype(dtype, np.floating):
        hint = "; scale integer PCM to [-1, 1] first (int16: x / 32768)" if np.issubdtype(dtype, np.integer) else ""
        raise AudioError(_ARRAY, f"expected float32 samples in [-1, 1] (float16 and float64 are converted), "
                                 f"got dtype {dtype}{hint}")
    if samples.ndim != 1:
        raise AudioError(_ARRAY, f"expected mono 16 kHz samples of shape (n,), got shape {samples.shape}; "
                                 f"mix the channels down (and resample to 16 kHz) first")
    validity = _Validity()
    for start in range(0, len(samples), _READ_BLOCK):
        validity.update(samples[start : start + _READ_BLOCK, None], start)
    if problem := validity.problem(SAMPLE_RATE, channels=False):
        raise AudioError(_ARRAY, problem)
    if dtype.itemsize > 4:
        finfo = np.finfo(np.float32)
        beyond = sum(int((np.abs(samples[s : s + _READ_BLOCK]) > finfo.max).sum())
                     for s in range(0, len(samples), _READ_BLOCK))
        if beyond:
            raise AudioError(_ARRAY, f"{beyond} sample(s) of {len(samples)} beyond float32's range (±{finfo.max:.3g})")


def open_audio(source: str | os.PathLike | np.ndarray | Audio, n_mels: int = 80) -> Audio:
    """A file (any rate, any channel count) or an array of mono 16 kHz samples, validated, ready to stream.

    The whole input is read once here (a bad file or array raises AudioError, an InputError, before
    anything is decoded), and again by each `mel_windows()`. An array is not copied: it is read when
    the windows are, so do not change it in between.
    """
    if isinstance(source, Audio):
        if source.n_mels == n_mels:
            return source
        source = source._source  # another filterbank: another maximum
    if isinstance(source, np.ndarray):
        _check_array(source)
        audio = Audio(_ARRAY, source, lambda: _array_chunks(source), SAMPLE_RATE, n_mels)
        audio._scan(_array_chunks(source))
        return audio
    return _open_file_source(os.fspath(source), n_mels)
