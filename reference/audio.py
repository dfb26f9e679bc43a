"""Audio in, log-mel windows out: decode, resample to 16 kHz, and Whisper's log-mel, in numpy.

The log-mel follows openai-whisper's `whisper/audio.py` step for step (torch.stft defaults: periodic
Hann window, centred frames with reflect padding, the last frame dropped), and `mel_windows` follows
`transcribe()`: one log-mel over the whole audio plus 30 s of zeros, cut into 3000-frame windows whose
tails are padded with 0.0 in the log-mel domain. See ARCHITECTURE.md, "Windows and the log-mel".

openai-whisper decodes and resamples with the ffmpeg command line (to s16 at 16 kHz); here libsndfile
decodes and a numpy polyphase windowed-sinc filter resamples. A 16-bit mono 16 kHz file gives the same
samples as openai-whisper's pipeline; other rates agree up to the two resamplers' filters (measured in
tests/test_audio.py against FFmpeg's libswresample: flat below 4 kHz, different only near 8 kHz).
"""

from __future__ import annotations

import os
from functools import cache, lru_cache
from math import ceil, gcd, pi

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


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file libsndfile reads, mix down to mono and resample to `sr`.

    # file -> [n_samples] float32 at `sr`
    """
    name = os.fspath(path)
    # Checked before libsndfile, whose "Format not recognised" would hide the real problem.
    if not os.path.exists(name):
        raise AudioError(name, "no such file")
    if os.path.isdir(name):
        raise AudioError(name, "is a directory, not an audio file")
    if os.path.getsize(name) == 0:
        raise AudioError(name, "empty file (0 bytes)")
    try:
        data, file_sr = sf.read(name, dtype="float32", always_2d=True)  # [n_frames, n_channels]
    except sf.LibsndfileError as e:
        raise AudioError(name, f"not an audio file libsndfile can read ({e.error_string})") from e
    except (RuntimeError, OSError) as e:
        raise AudioError(name, f"cannot read audio ({e})") from e
    n_frames, n_channels = data.shape
    if n_frames == 0:
        raise AudioError(name, f"no audio: 0 frames ({n_channels} channel(s) at {file_sr} Hz)")
    bad = ~np.isfinite(data)
    if bad.any():
        frame, channel = np.argwhere(bad)[0]
        n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        raise AudioError(
            name,
            f"{n_nan} NaN and {n_inf} inf sample(s) of {data.size}; first at frame {frame} "
            f"({frame / file_sr:.3f} s), channel {channel}",
        )
    # Float files may exceed ±1 and are kept so (openai-whisper's s16 pipe would clip them): the log-mel is
    # level-normalised by its own maximum, so clipping would only add distortion.
    mono = data.mean(axis=1, dtype=np.float32)
    return resample(mono, file_sr, sr)


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


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling (80 dB Kaiser windowed sinc), output length ceil(n * new_sr / orig_sr).

    Conceptually: insert up-1 zeros between samples, lowpass at the lower Nyquist, keep every down-th
    sample. Output m sits at input time m * orig_sr / new_sr (zero-phase; zeros beyond both ends).
    # [n] -> [ceil(n * new_sr / orig_sr)] float32
    """
    if not (isinstance(orig_sr, (int, np.integer)) and isinstance(new_sr, (int, np.integer))):
        raise ValueError(f"sample rates must be integers, got {orig_sr!r} and {new_sr!r}")
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} and {new_sr}")
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample expects mono audio [n], got shape {x.shape}")
    g = gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    if up == down:
        return x.copy()
    n_out = -(-len(x) * up // down)
    if n_out == 0:
        return np.zeros(0, np.float32)

    rows, q = _polyphase_rows(int(orig_sr), int(new_sr), min(up, n_out))
    n_taps = rows.shape[1]
    q_last = q[(n_out - 1) % up] + down * ((n_out - 1) // up)  # the last output's newest input
    xp = np.pad(x, (n_taps - 1, max(0, q_last + 1 - len(x))))
    windows = np.lib.stride_tricks.sliding_window_view(xp, n_taps)  # row q holds x[q - n_taps + 1 .. q]
    y = np.empty(n_out, np.float32)
    # A Python loop over the polyphase rows (at most `up`, e.g. 160 for 44.1 kHz), never over samples.
    for r in range(len(rows)):
        count = len(range(r, n_out, up))
        y[r::up] = windows[q[r] :: down][:count] @ rows[r]
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


_FRAME_BLOCK = 8192  # frames per FFT batch: bounds the temporary [block, n_fft] arrays for long audio


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
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH]  # [n // hop + 1, n_fft]
    frames = frames[:-1]  # whisper drops the last frame (stft[..., :-1]); dropping it first saves an FFT
    filters = mel_filters(n_mels)
    window = _hann_window(N_FFT)
    mel = np.empty((n_mels, len(frames)), np.float32)
    for start in range(0, len(frames), _FRAME_BLOCK):
        block = frames[start : start + _FRAME_BLOCK]
        spectrum = np.fft.rfft(block * window, axis=-1)  # [block, n_fft // 2 + 1] complex64
        power = np.abs(spectrum) ** 2  # |.| then square, as whisper's stft.abs() ** 2
        mel[:, start : start + len(block)] = filters @ power.T
    log_spec = np.log10(np.maximum(mel, np.float32(1e-10)))
    # The floor is relative to the loudest value of this whole call: hence mel_windows' single call.
    log_spec = np.maximum(log_spec, log_spec.max() - np.float32(8.0))
    return ((log_spec + np.float32(4.0)) / np.float32(4.0)).astype(np.float32)


def mel_windows(
    audio: np.ndarray, n_mels: int = 80, n_frames: int = N_FRAMES
) -> list[tuple[int, np.ndarray]]:
    """The encoder inputs of openai-whisper's transcribe(): (seek in frames, window) pairs.

    One log-mel over audio + 30 s of zeros (so the max - 8 floor uses the global maximum), then windows
    at seek = 0, n_frames, ... while seek < len(audio) // 160; a short last window is padded with 0.0 in
    the log-mel domain, not with the log-mel of silence. Audio shorter than one hop (160 samples, zero
    length included) has no content frames and gives no window: the transcriber reports an empty
    transcript for it, as transcribe() does.
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


# ----------------------------------------------------------------------------------------------
# Sources: a file or an array, validated once, read window by window


class Audio:
    """Validated audio (a file or an array of 16 kHz samples), read as log-mel windows.

    Interim form: holds the samples. (To be replaced by a streaming reader whose memory is bounded by
    the window, not the file.)
    """

    def __init__(self, name: str, samples: np.ndarray, n_mels: int) -> None:
        self.name, self.samples, self.n_mels = name, samples, n_mels

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def mel_windows(self, n_frames: int = N_FRAMES):
        return mel_windows(self.samples, self.n_mels, n_frames)


def open_audio(source: str | os.PathLike | np.ndarray | Audio, n_mels: int = 80) -> Audio:
    if isinstance(source, Audio):
        return source
    if isinstance(source, np.ndarray):
        return Audio("<array>", source.astype(np.float32), n_mels)
    return Audio(os.fspath(source), load_audio(source), n_mels)
