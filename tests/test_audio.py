"""reference/audio.py: decoding errors, the band-limited resampler, and openai-whisper's log-mel windows."""

from __future__ import annotations

import time
from math import ceil, gcd
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisperkv.reference import audio as A
from whisperkv.reference.audio import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
    mel_windows,
    pad_or_trim,
    resample,
)

AUDIO_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "audio"
CLIPS = sorted(AUDIO_DIR.glob("*.wav"))
LJSPEECH = AUDIO_DIR / "ljspeech_LJ001-0001_to_0008_concat.wav"  # 50.3 s at 22.05 kHz
RESAMPLED_CLIPS = [c for c in CLIPS if sf.info(str(c)).samplerate != SAMPLE_RATE]

# Hypothesis writes files to tmp_path, which is shared across examples: harmless, each example
# overwrites its own file name. The suite runs on 2 shared cores, so examples are few and small.
PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    return {c.name: load_audio(c) for c in CLIPS}


def tone(freq: float, sr: int, n: int, amplitude: float = 1.0) -> np.ndarray:
    # [n] float64: the analytic reference every resampled tone is compared with
    return amplitude * np.sin(2 * np.pi * freq * np.arange(n) / sr)


def interior(y: np.ndarray, sr: int, margin_s: float = 0.05) -> np.ndarray:
    # The filter reaches at most ~7 ms into the zeros beyond either end; 50 ms skips those transients.
    m = int(margin_s * sr)
    return y[m:-m]


def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and "\r" not in message, message
    return message


def test_fixture_clips_present() -> None:
    # The comparisons below are parametrized over these; an empty list would make them vacuous.
    assert len(CLIPS) >= 6 and LJSPEECH in CLIPS and len(RESAMPLED_CLIPS) >= 2


# ----------------------------------------------------------------------------------------------
# Mel filterbank and log-mel against faster-whisper's numpy FeatureExtractor


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_faster_whisper(n_mels: int) -> None:
    from faster_whisper.feature_extractor import FeatureExtractor

    theirs = FeatureExtractor.get_mel_filters(SAMPLE_RATE, 400, n_mels=n_mels)  # float64, librosa's formula
    ours = mel_filters(n_mels)
    assert ours.shape == (n_mels, 201) and ours.dtype == np.float32
    # Both evaluate librosa's Slaney formula in float64 (faster-whisper with a hard-coded max mel, we from
    # hz_to_mel(8000)) and ours rounds once to float32: a float32 half-ulp (6e-8 relative) is the budget.
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=0)
    assert (ours >= 0).all() and (ours.max(axis=1) > 0).all()  # every band is a non-empty triangle
    assert mel_filters(n_mels) is ours and not ours.flags.writeable  # cached, so it must be read-only


@pytest.mark.parametrize("padding", [160, N_SAMPLES], ids=["fw-default-160", "transcribe-30s"])
@pytest.mark.parametrize("clip", [c.name for c in CLIPS])
def test_log_mel_matches_faster_whisper(clips: dict[str, np.ndarray], clip: str, padding: int) -> None:
    """Same samples, same padding: faster-whisper's __call__ pads `padding` zeros at the end, runs a centred
    reflect-padded STFT with the periodic Hann window, drops the last frame and applies whisper's log/floor/
    scale, i.e. exactly openai-whisper's log_mel_spectrogram(audio, padding=padding)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    audio = clips[clip]
    theirs = FeatureExtractor(feature_size=80)(audio, padding=padding)
    ours = log_mel_spectrogram(audio, 80, padding=padding)
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape == (80, (len(audio) + padding) // HOP_LENGTH)
    # Both are float32 numpy pipelines with the same operations in the same order (observed: identical, max
    # difference 0.0). 1e-5 (output units; one unit is 4 decades of power) leaves room only for a different
    # BLAS summation order in the 201-term mel matmul: float32 rounding there is ~1e-7 relative, i.e. ~1e-8.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("clip", [c.name for c in CLIPS])
def test_float32_fft_is_as_good_as_float64(clips: dict[str, np.ndarray], clip: str) -> None:
    """Justifies the float32 FFT: a float64 pipeline (float64 frames, window, FFT, mel) differs by rounding
    only. openai-whisper's torch.stft on float32 input is itself a float32 FFT."""
    audio = clips[clip]
    x = np.pad(np.pad(audio.astype(np.float64), (0, N_SAMPLES)), 200, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160][:-1]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    mel = mel_filters(80).astype(np.float64) @ (np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2).T
    ref = np.log10(np.maximum(mel, 1e-10))
    ref = (np.maximum(ref, ref.max() - 8.0) + 4.0) / 4.0
    ours = log_mel_spectrogram(audio, padding=N_SAMPLES)
    # Measured up to 6.6e-6 on these clips: float32 FFT error is ~1e-7 of the frame's energy, which grows
    # relative to quiet bins a few decades below the loudest; 5e-5 output units is 10x the observation and
    # still 100x below anything that could flip a token.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=5e-5)


@settings(max_examples=5, deadline=None)
@given(seconds=st.floats(0.1, 45.0), seed=st.integers(0, 2**31 - 1))
def test_sliced_ffts_give_the_bits_of_one_call_per_block(seconds: float, seed: int) -> None:
    # _log10_mel runs its block's rfft on slices of _FFT_FRAMES frames (faster) on the claim that every
    # frame's transform is computed alone: the same bits as one call over the whole block.
    audio = np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32)
    sliced = log_mel_spectrogram(audio, padding=A.N_FFT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(A, "_FFT_FRAMES", A._FRAME_BLOCK)
        whole = log_mel_spectrogram(audio, padding=A.N_FFT)
    assert np.array_equal(sliced, whole)


def test_log_mel_of_silence_is_the_floor() -> None:
    # All-zero power clamps to 1e-10: log10 -> -10, which is also the max, so (-10 + 4) / 4 everywhere.
    mel = log_mel_spectrogram(np.zeros(16000, np.float32), 80)
    assert mel.shape == (80, 100) and np.unique(mel).size == 1
    # float32(1e-10) is not exactly 1e-10 and log10 rounds: -1.5000002, as whisper's float32 torch gives.
    assert abs(mel[0, 0] + 1.5) < 1e-6


@given(n=st.integers(201, 5000), padding=st.integers(0, 700), n_mels=st.sampled_from([80, 128]))
@settings(max_examples=30, deadline=None)
def test_log_mel_shape_and_range(n: int, padding: int, n_mels: int) -> None:
    audio = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    mel = log_mel_spectrogram(audio, n_mels, padding=padding)
    assert mel.shape == (n_mels, (n + padding) // HOP_LENGTH) and mel.dtype == np.float32
    assert np.isfinite(mel).all()
    # The floor: nothing is more than 8 decades (2.0 output units) below the maximum.
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # 1e-6: float32 rounding of (x + 4) / 4


def test_log_mel_rejects_too_short_input() -> None:
    # torch's reflect padding of 200 needs more than 200 samples; so do we, rather than inventing a value.
    with pytest.raises(ValueError, match="200"):
        log_mel_spectrogram(np.zeros(200, np.float32))
    assert log_mel_spectrogram(np.zeros(200, np.float32), padding=1).shape == (80, 1)


def test_pad_or_trim() -> None:
    a = np.arange(10, dtype=np.float32)
    assert np.array_equal(pad_or_trim(a, 4), a[:4])
    assert np.array_equal(pad_or_trim(a, 13), np.r_[a, 0, 0, 0])
    assert pad_or_trim(np.zeros(5, np.float32)).shape == (N_SAMPLES,)


# ----------------------------------------------------------------------------------------------
# mel_windows: transcribe()'s windows


def test_mel_windows_on_the_50s_clip(clips: dict[str, np.ndarray]) -> None:
    audio = clips[LJSPEECH.name]
    content = len(audio) // HOP_LENGTH
    assert content == 5032  # 805251 samples after resampling 1109736 samples at 22.05 kHz
    windows = mel_windows(audio)
    assert [seek for seek, _ in windows] == [0, 3000]
    full = log_mel_spectrogram(audio, padding=N_SAMPLES)  # the single global log-mel
    (_, first), (_, second) = windows
    assert first.shape == second.shape == (80, N_FRAMES) and second.dtype == np.float32
    assert np.array_equal(first, full[:, :3000])
    assert np.array_equal(second[:, : content - 3000], full[:, 3000:content])
    # Padded with 0.0 in the log-mel domain: exactly zero, not the log-mel of silence. That would be the
    # floor (global max - 2.0 output units, here about -0.5); frames from content + 3 on see no audio.
    assert (second[:, content - 3000 :] == 0.0).all()
    assert (full[:, content + 3 :] == full.min()).all() and full.min() < -0.4


def test_mel_windows_equal_the_30_s_padded_log_mel_on_every_clip(clips: dict[str, np.ndarray]) -> None:
    # mel_windows pads n_fft zeros instead of transcribe()'s 30 s: the frames it uses must not change.
    for name, audio in clips.items():
        content = len(audio) // HOP_LENGTH
        full = log_mel_spectrogram(audio, padding=N_SAMPLES)[:, :content]
        ours = np.concatenate([w for _, w in mel_windows(audio)], axis=1)[:, :content]
        assert np.array_equal(ours, full), name


def test_mel_windows_use_the_global_floor() -> None:
    """A loud first half raises the floor of a quiet second window: windows are cut from one log-mel,
    not computed per window (what docs/architecture.md says changes tokens on real clips)."""
    rng = np.random.default_rng(0)
    loud, quiet_half = rng.standard_normal(N_SAMPLES), 1e-6 * rng.standard_normal(N_SAMPLES // 2)
    audio = np.r_[loud, quiet_half].astype(np.float32)
    (_, _), (_, quiet) = mel_windows(audio)
    alone = mel_windows(audio[N_SAMPLES:])[0][1]
    assert not np.array_equal(quiet, alone)
    assert quiet[:, :1500].min() > alone[:, :1500].min()  # clamped higher by the loud half's maximum


def test_mel_windows_shorter_than_one_hop_give_no_window() -> None:
    # content_frames = n // 160 == 0: transcribe() never enters its loop; the transcriber reports "".
    assert mel_windows(np.zeros(0, np.float32)) == []
    assert mel_windows(np.ones(159, np.float32)) == []
    assert len(mel_windows(np.ones(160, np.float32))) == 1


@given(
    frames=st.one_of(st.integers(0, 9200), st.sampled_from([2999, 3000, 3001, 6000, 6001])),
    extra=st.integers(0, HOP_LENGTH - 1),
)
@settings(max_examples=12, deadline=None)
def test_mel_windows_count_shape_and_padding(frames: int, extra: int) -> None:
    n = frames * HOP_LENGTH + extra  # extra samples below one hop add no frame
    audio = (0.1 * np.random.default_rng(frames).standard_normal(n)).astype(np.float32)
    windows = mel_windows(audio)
    assert len(windows) == ceil(frames / N_FRAMES)
    assert [seek for seek, _ in windows] == list(range(0, frames, N_FRAMES))
    for seek, window in windows:
        assert window.shape == (80, N_FRAMES) and window.dtype == np.float32 and np.isfinite(window).all()
        size = min(N_FRAMES, frames - seek)
        assert (window[:, size:] == 0.0).all()
        assert (window[:, :size] != 0.0).any()


# ----------------------------------------------------------------------------------------------
# Resampler


@pytest.mark.parametrize("orig_sr", [8000, 22050, 44100, 48000])
def test_resampled_sine_keeps_frequency_and_amplitude(orig_sr: int) -> None:
    x = tone(1000, orig_sr, orig_sr).astype(np.float32)  # 1 s of 1 kHz, amplitude 1
    y = resample(x, orig_sr, SAMPLE_RATE)
    assert y.dtype == np.float32 and len(y) == SAMPLE_RATE
    want = tone(1000, SAMPLE_RATE, len(y))
    # Measured 3e-6 .. 9e-6. The 80 dB Kaiser design bounds passband ripple by ~1e-4; float32 accumulation
    # of ~300 taps adds ~1e-6. A wrong frequency, phase (delay) or gain by 0.01% would exceed 1e-4.
    assert np.abs(interior(y - want, SAMPLE_RATE)).max() < 1e-4


@pytest.mark.parametrize(
    "orig_sr,freq",
    [(44100, 8100), (44100, 10000), (44100, 15000), (44100, 20000), (22050, 9000), (48000, 12000)],
)
def test_tones_above_the_new_nyquist_are_removed(orig_sr: int, freq: int) -> None:
    x = tone(freq, orig_sr, orig_sr).astype(np.float32)
    y = resample(x, orig_sr, SAMPLE_RATE)
    attenuation_db = 20 * np.log10(np.sqrt(np.mean(interior(y, SAMPLE_RATE) ** 2)) / np.sqrt(0.5))
    # The stopband starts at 8 kHz by design; measured >= 84 dB (8.05 kHz) to 109 dB (15 kHz). 78 dB allows
    # ~2 dB for Kaiser's empirical length formula; anything aliased back (as by interpolation) is far above.
    assert attenuation_db < -78, attenuation_db


def test_linear_interpolation_would_fail_the_stopband_test() -> None:
    """The stopband test discriminates: np.interp (what a naive resampler does) aliases 10 kHz to 6 kHz."""
    x = tone(10000, 44100, 44100)
    y = np.interp(np.arange(SAMPLE_RATE) * 44100 / SAMPLE_RATE, np.arange(len(x)), x)
    attenuation_db = 20 * np.log10(np.sqrt(np.mean(interior(y, SAMPLE_RATE) ** 2)) / np.sqrt(0.5))
    assert attenuation_db > -40


def test_upsampling_rejects_images() -> None:
    # 3 kHz at 8 kHz -> 16 kHz: zero-stuffing makes an image at 5 kHz that the lowpass must remove.
    y = resample(tone(3000, 8000, 8000).astype(np.float32), 8000, SAMPLE_RATE)
    residual = interior(y - tone(3000, SAMPLE_RATE, len(y)), SAMPLE_RATE)
    # The residual holds the image and passband ripple at 3 kHz (inside 0.9 of the 4 kHz Nyquist): both
    # bounded by the 80 dB design, i.e. 1e-4 of the unit amplitude, so RMS below 1e-4 (-80 dB).
    assert np.sqrt(np.mean(residual**2)) < 1e-4


@pytest.mark.parametrize(
    "orig_sr,new_sr", [(44100, 16000), (22050, 16000), (8000, 16000), (16000, 8000), (11025, 24000)]
)
def test_polyphase_equals_zero_stuff_filter_decimate(orig_sr: int, new_sr: int) -> None:
    """White box: the strided polyphase products compute exactly 'insert up-1 zeros, convolve with the
    whole filter, keep every down-th sample', done here the slow way in float64."""
    g = gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    half = A._filter_half_length(up, orig_sr, new_sr)
    h = A._lowpass(np.arange(-half, half + 1, dtype=np.float64), up, orig_sr, new_sr, half)
    x = np.random.default_rng(orig_sr).uniform(-1, 1, 700)
    stuffed = np.zeros(len(x) * up)
    stuffed[::up] = x
    n = len(stuffed) + len(h) - 1
    filtered = np.fft.irfft(np.fft.rfft(stuffed, n) * np.fft.rfft(h, n), n)  # full linear convolution
    y = resample(x.astype(np.float32), orig_sr, new_sr)
    want = filtered[half + down * np.arange(len(y))]  # zero-phase: output m is centred on m*down
    # Ours sums ~300 float32 products of |x| <= 1; float32 rounding of taps, samples and the sum is a few
    # 1e-7 each, so 1e-5 absolute. A one-sample misalignment of any polyphase row would be ~1e-1.
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5)


@given(
    n=st.integers(0, 3000),
    orig_sr=st.one_of(st.sampled_from([8000, 11025, 22050, 44100, 48000]), st.integers(8000, 48000)),
    new_sr=st.one_of(st.just(SAMPLE_RATE), st.integers(8000, 48000)),
)
@settings(max_examples=40, deadline=None)
def test_resample_length_and_identity(n: int, orig_sr: int, new_sr: int) -> None:
    x = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    y = resample(x, orig_sr, new_sr)
    assert y.dtype == np.float32 and y.shape == (ceil(n * new_sr / orig_sr),)
    assert np.isfinite(y).all()
    if orig_sr == new_sr:
        assert np.array_equal(y, x)
    # A band-limited filter can overshoot, but an 80 dB Kaiser sinc's taps sum (in absolute value) to < 3.
    assert np.abs(y).max(initial=0) <= 3.0


@pytest.mark.parametrize("bad", [(0, 16000), (16000, 0), (-8000, 16000), (44100.0, 16000)])
def test_resample_rejects_bad_rates(bad: tuple) -> None:
    with pytest.raises(ValueError, match="sample rates"):
        resample(np.zeros(10, np.float32), *bad)


def test_resample_matches_scipy_resample_poly() -> None:
    signal = pytest.importorskip("scipy.signal")
    sr = 44100
    x = sum(tone(f, sr, sr, 0.2) for f in (110, 440, 1250, 2600, 3900)).astype(np.float32)
    g = gcd(sr, SAMPLE_RATE)
    want = signal.resample_poly(x.astype(np.float64), SAMPLE_RATE // g, sr // g)
    y = resample(x, sr, SAMPLE_RATE)
    assert y.shape == want.shape  # both ceil(n * up / down), both zero-phase
    # resample_poly's default Kaiser(beta=5) filter has ~2e-3 passband ripple below ~6.7 kHz, ours 1e-4;
    # the tones (<= 3.9 kHz, peak 1.0) therefore agree to a few 1e-3.
    assert np.abs(interior(y - want, SAMPLE_RATE)).max() < 5e-3


@pytest.mark.parametrize("clip", [c.name for c in RESAMPLED_CLIPS])
def test_resampler_agrees_with_ffmpeg_swresample(clips: dict[str, np.ndarray], clip: str) -> None:
    """FFmpeg's libswresample (through PyAV, as faster-whisper decodes; openai-whisper's ffmpeg CLI uses the
    same library) on the two non-16 kHz clips, in float so that s16 rounding does not blur the comparison."""
    av = pytest.importorskip("av")
    resampler = av.audio.resampler.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    parts = []
    with av.open(str(AUDIO_DIR / clip)) as container:
        for frame in container.decode(audio=0):
            parts += [f.to_ndarray().ravel() for f in resampler.resample(frame)]
    parts += [f.to_ndarray().ravel() for f in resampler.resample(None)]
    theirs = np.concatenate(parts)
    ours = clips[clip]
    assert abs(len(ours) - len(theirs)) <= 1  # swresample may round the length down
    n = min(len(ours), len(theirs))
    ours, theirs = ours[:n], theirs[:n]

    # Below 4 kHz both filters are flat: the difference there (measured 1.4e-5 .. 1.7e-5 of the signal's
    # spectral RMS) is ripple and rounding. 1e-4 fails on any delay (a one-sample lag gives ~0.3).
    spectrum_diff, spectrum = np.fft.rfft(ours - theirs), np.fft.rfft(ours)
    low = np.fft.rfftfreq(n, 1 / SAMPLE_RATE) < 4000
    assert np.sqrt(np.mean(np.abs(spectrum_diff[low]) ** 2) / np.mean(np.abs(spectrum[low]) ** 2)) < 1e-4

    # The log-mel bands below ~6.6 kHz (0..74 of 80) agree to 2.2e-3 (measured); the top bands differ by up to
    # 0.34 because the filters differ there: ours rolls off over 7.2..8 kHz (no aliasing at all), swresample's
    # cutoff is 0.97 of Nyquist with a shorter filter. 1e-2 is ~5x the measured low-band difference.
    content = n // HOP_LENGTH
    ours_mel, theirs_mel = (log_mel_spectrogram(a, padding=N_SAMPLES) for a in (ours, theirs))
    diff = np.abs(ours_mel - theirs_mel)
    assert diff[:75, :content].max() < 1e-2


def test_resampling_50s_is_fast() -> None:
    x, sr = sf.read(str(LJSPEECH), dtype="float32")
    resample(x[:sr], sr, SAMPLE_RATE)  # designs and caches the filter rows for this rate
    start = time.perf_counter()
    y = resample(x, sr, SAMPLE_RATE)
    elapsed = time.perf_counter() - start
    assert len(y) == 805251
    # Measured ~0.04 s (0.1 s including the filter design) on 2 shared cores. A Python loop per output
    # sample would take ~5 s; 2 s leaves room for a loaded machine.
    assert elapsed < 2.0, elapsed


# ----------------------------------------------------------------------------------------------
# load_audio: any rate, any channel count, clear errors


@given(
    n=st.integers(1, 4000),
    sr=st.one_of(st.sampled_from([8000, 16000, 22050, 44100, 48000]), st.integers(8000, 48000)),
    channels=st.integers(1, 6),
    amplitude=st.sampled_from([0.0, 1e-6, 0.5, 1.0, 3.0]),
    clip_to_unit=st.booleans(),
)
@PROPERTY
def test_load_audio_property(
    tmp_path: Path, n: int, sr: int, channels: int, amplitude: float, clip_to_unit: bool
) -> None:
    rng = np.random.default_rng(n * 7 + channels)
    data = (amplitude * rng.uniform(-1, 1, (n, channels))).astype(np.float32)
    if clip_to_unit and amplitude > 0:
        data = np.clip(data * 4, -1.0, 1.0)  # many samples exactly at full scale
    # PCM_16 would wrap values beyond +-1 (libsndfile does not clip by default), so those go to FLOAT.
    subtype = "FLOAT" if np.abs(data).max() > 1.0 or amplitude == 1e-6 else "PCM_16"
    path = tmp_path / "prop.wav"
    sf.write(str(path), data, sr, subtype=subtype)

    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == ceil(n * SAMPLE_RATE / sr)
    assert np.isfinite(audio).all()
    stored = sf.read(str(path), dtype="float32", always_2d=True)[0]
    if not stored.any():
        assert not audio.any()  # silence stays exactly zero
    if sr == SAMPLE_RATE:
        assert np.array_equal(audio, stored.mean(axis=1, dtype=np.float32))  # no resampling at 16 kHz
    # Mixing identical channels gives back the one channel, up to float32 rounding of (x + ... + x) / c:
    # 1-2 ulp per sample (1.2e-7 relative), through a filter of absolute gain < 3: 1e-6 of the peak.
    same = np.repeat(stored[:, :1], channels, axis=1)
    sf.write(str(path), same, sr, subtype="FLOAT")
    one = resample(stored[:, 0], sr, SAMPLE_RATE)
    np.testing.assert_allclose(load_audio(path), one, rtol=0, atol=1e-6 * np.abs(stored).max())

    windows = mel_windows(audio)
    assert len(windows) == ceil((len(audio) // HOP_LENGTH) / N_FRAMES)
    for _, window in windows:
        assert window.shape == (80, N_FRAMES) and window.dtype == np.float32 and np.isfinite(window).all()


@given(
    n=st.integers(1, 500),
    channels=st.integers(1, 4),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    data=st.data(),
)
@PROPERTY
def test_non_finite_samples_are_refused(tmp_path: Path, n: int, channels: int, bad: float, data) -> None:
    frame = data.draw(st.integers(0, n - 1))
    channel = data.draw(st.integers(0, channels - 1))
    samples = np.zeros((n, channels), np.float32)
    samples[frame, channel] = bad
    path = tmp_path / "nonfinite.wav"
    sf.write(str(path), samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    message = assert_one_line_naming(err, path)
    kind = "NaN" if np.isnan(bad) else "inf"
    assert f"1 {kind}" in message and f"frame {frame} " in message and f"channel {channel}" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "no such file" in assert_one_line_naming(err, path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path)
    assert "directory" in assert_one_line_naming(err, tmp_path)


def test_text_file_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("not audio\nat all\n")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "not an audio file" in assert_one_line_naming(err, path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "0 bytes" in assert_one_line_naming(err, path)


@pytest.mark.parametrize("channels,subtype", [(1, "PCM_16"), (2, "FLOAT")])
def test_zero_frames(tmp_path: Path, channels: int, subtype: str) -> None:
    path = tmp_path / "silent.wav"
    sf.write(str(path), np.zeros((0, channels), np.float32), 44100, subtype=subtype)
    assert path.stat().st_size > 0  # a real header, just no frames
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "0 frames" in assert_one_line_naming(err, path)


def test_audio_error_is_a_value_error_and_one_line() -> None:
    err = AudioError("a.wav", "libsndfile said\nsomething\n  odd")
    assert isinstance(err, ValueError) and str(err) == "a.wav: libsndfile said something odd"


@pytest.mark.parametrize("fmt,subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_other_formats_decode(tmp_path: Path, fmt: str, subtype: str) -> None:
    x = tone(440, 22050, 22050, 0.5).astype(np.float32)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(str(path), np.stack([x, x], axis=1), 22050, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert len(audio) == SAMPLE_RATE
    # FLAC PCM_16 is lossless up to 16-bit rounding (3e-5); Vorbis is lossy: a 440 Hz tone survives to ~1e-2.
    # Either way the resampled 440 Hz tone of amplitude 0.5 is recovered, which a wrong rate would not be.
    tol = 1e-3 if fmt == "FLAC" else 5e-2
    assert np.abs(interior(audio - tone(440, SAMPLE_RATE, len(audio), 0.5), SAMPLE_RATE)).max() < tol


# ----------------------------------------------------------------------------------------------
# open_audio: the same windows, streamed, bit for bit; memory bounded by the window


def assert_same_windows(streamed, whole: list[tuple[int, np.ndarray]]) -> None:
    # Bit-identical, no tolerance: both paths run the same block computations at the same boundaries.
    streamed = list(streamed)
    assert [seek for seek, _ in streamed] == [seek for seek, _ in whole]
    for (seek, ours), (_, theirs) in zip(streamed, whole, strict=True):
        assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape, seek
        assert np.array_equal(ours, theirs), f"window at frame {seek} differs"


@pytest.mark.parametrize("kept_blocks", [0, 8], ids=["second-read", "first-read-kept"])
@pytest.mark.parametrize("clip", [c.name for c in CLIPS])
def test_streamed_windows_equal_the_whole_file_on_every_clip(clips: dict[str, np.ndarray], clip: str,
                                                             kept_blocks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(A, "_KEPT_BLOCKS", kept_blocks)  # 0: pass 2 reads and analyses the file again
    source = A.open_audio(AUDIO_DIR / clip)
    assert source.name == str(AUDIO_DIR / clip) and source.duration == len(clips[clip]) / SAMPLE_RATE
    assert not hasattr(source, "samples")  # holds neither samples nor log-mel
    assert_same_windows(source.mel_windows(), mel_windows(clips[clip]))
    assert_same_windows(source.mel_windows(), mel_windows(clips[clip]))  # a second read gives the same again
    # An array source is streamed the same way.
    assert_same_windows(A.open_audio(clips[clip]).mel_windows(), mel_windows(clips[clip]))


def test_streamed_windows_with_128_mels_and_other_window_sizes(clips: dict[str, np.ndarray]) -> None:
    audio = clips[LJSPEECH.name]
    assert_same_windows(A.open_audio(LJSPEECH, 128).mel_windows(), mel_windows(audio, 128))
    assert_same_windows(A.open_audio(LJSPEECH).mel_windows(1234), mel_windows(audio, 80, 1234))
    # An Audio opened for another filterbank is reopened: its floor depends on the filterbank.
    assert_same_windows(A.open_audio(A.open_audio(LJSPEECH), 128).mel_windows(), mel_windows(audio, 128))
    with pytest.raises(ValueError, match="n_frames"):
        A.open_audio(LJSPEECH).mel_windows(0)


def test_streamed_windows_are_a_generator() -> None:
    windows = A.open_audio(LJSPEECH).mel_windows()
    assert iter(windows) is windows  # one window at a time: a list of 240 windows is itself 230 MB for 2 h
    assert next(windows)[0] == 0


@given(
    seconds=st.floats(0.0, 4.0),
    sr=st.sampled_from([8000, 16000, 22050, 44100, 48000, 11025]),
    channels=st.integers(1, 3),
    n_frames=st.sampled_from([N_FRAMES, 317, 1000]),
    read_block=st.sampled_from([97, 1000, 4096]),
    kept_blocks=st.sampled_from([0, 8]),
)
@PROPERTY
def test_streaming_matches_the_whole_file_across_block_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: float, sr: int, channels: int, n_frames: int,
    read_block: int, kept_blocks: int,
) -> None:
    """Small blocks (the same for both paths) put many resampling, FFT and read boundaries inside windows,
    including reads that split a resampling block or an FFT block anywhere; with kept_blocks 0 the windows
    are computed by the second read of the input, else (up to 8 blocks) from the first read's blocks."""
    monkeypatch.setattr(A, "_KEPT_BLOCKS", kept_blocks)
    monkeypatch.setattr(A, "_READ_BLOCK", read_block)
    monkeypatch.setattr(A, "_RESAMPLE_BLOCK", 2000)
    monkeypatch.setattr(A, "_FRAME_BLOCK", 130)
    n = max(1, int(seconds * sr))  # a file of 0 frames is refused (test_zero_frames)
    rng = np.random.default_rng(n + channels)
    data = (0.3 * rng.standard_normal((n, channels)) * np.linspace(0, 1, n)[:, None]).astype(np.float32)
    path = tmp_path / "blocks.wav"
    sf.write(str(path), data, sr, subtype="FLOAT")
    audio = load_audio(path)
    source = A.open_audio(path)
    assert source.duration == len(audio) / SAMPLE_RATE
    assert_same_windows(source.mel_windows(n_frames), mel_windows(audio, 80, n_frames))
    assert_same_windows(A.open_audio(audio).mel_windows(n_frames), mel_windows(audio, 80, n_frames))


@pytest.mark.slow  # ~10 s on 2 shared cores; the fast tier keeps the small-block property test above
def test_streaming_a_long_file_matches_the_whole_file(tmp_path: Path) -> None:
    """100 s of 44.1 kHz stereo at the real block sizes: two resampling blocks (65.5 s) and five FFT blocks
    (20.5 s each), boundaries falling inside windows."""
    sr, n = 44100, 100 * 44100
    rng = np.random.default_rng(1)
    t = np.arange(n) / sr
    left = 0.2 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.05 * t))
    data = np.stack([left, 0.05 * rng.standard_normal(n)], axis=1).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(str(path), data, sr, subtype="FLOAT")
    audio = load_audio(path)
    assert len(audio) > 1 << 20 and len(audio) // HOP_LENGTH > A._FRAME_BLOCK  # more than one block of each
    assert_same_windows(A.open_audio(path).mel_windows(), mel_windows(audio))


# A child process that streams a file's windows and reports its own peak RSS (in KiB on Linux).
_STREAM_AND_MEASURE = """
import resource, sys
from whisperkv.reference.audio import open_audio
source = open_audio(sys.argv[1])
count = sum(1 for _ in source.mel_windows())
print(count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_silence(path: Path, seconds: int) -> None:
    # Written a minute at a time, so that the test itself stays small too.
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        minute = np.zeros(60 * SAMPLE_RATE, np.int16)
        for start in range(0, seconds, 60):
            f.write(minute[: min(60, seconds - start) * SAMPLE_RATE])


def peak_rss_mib(path: Path) -> tuple[int, float]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _STREAM_AND_MEASURE, str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), int(out[1]) / 1024


@pytest.mark.slow
def test_two_hours_stream_in_bounded_memory(tmp_path: Path) -> None:
    long, short = tmp_path / "2h.wav", tmp_path / "30s.wav"
    write_silence(long, 2 * 3600)
    write_silence(short, 30)
    n_long, rss_long = peak_rss_mib(long)
    n_short, rss_short = peak_rss_mib(short)
    assert (n_long, n_short) == (240, 1)
    # The bound: 2 hours within ~150 MB of a 30 s clip. Whole-file features need ~2.4 GB here (115M
    # samples, a [80, 720000] log-mel, 240 windows); any one of those alone exceeds 150 MiB. Streaming holds
    # the same state for both files: one 2048-frame FFT block (~10 MB of temporaries), a resampling or FFT
    # block of samples (a few MB) and a window or two. Measured: ~71 MiB against ~66 MiB.
    assert rss_long - rss_short < 150, (rss_long, rss_short)


# ----------------------------------------------------------------------------------------------
# open_audio refuses what load_audio refuses, with the same one-line message, before any window


def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"missing": tmp_path / "nope.wav", "directory": tmp_path / "folder.wav", "text": tmp_path / "notes.wav",
             "zero bytes": tmp_path / "empty.wav", "zero frames": tmp_path / "silent.wav",
             "nan": tmp_path / "nan.wav", "inf": tmp_path / "inf.wav"}
    files["directory"].mkdir()
    files["text"].write_text("not audio\n")
    files["zero bytes"].touch()
    sf.write(str(files["zero frames"]), np.zeros((0, 2), np.float32), 44100, subtype="FLOAT")
    for kind, value in (("nan", np.nan), ("inf", -np.inf)):
        # Past the first read block, and in a later one too: every block is checked and counted.
        data = np.zeros((3 * A._READ_BLOCK, 2), np.float32)
        data[A._READ_BLOCK + 5, 1] = data[2 * A._READ_BLOCK + 7, 0] = value
        sf.write(str(files[kind]), data, 22050, subtype="FLOAT")
    return files


def test_open_audio_refuses_bad_files_as_load_audio_does(tmp_path: Path) -> None:
    for kind, path in bad_files(tmp_path).items():
        with pytest.raises(AudioError) as whole:
            load_audio(path)
        with pytest.raises(AudioError) as streamed:
            A.open_audio(path)
        assert str(streamed.value) == str(whole.value), kind
        assert_one_line_naming(streamed, path)
    with pytest.raises(AudioError) as err:
        A.open_audio(tmp_path / "nan.wav")
    assert f"2 NaN and 0 inf sample(s) of {6 * A._READ_BLOCK}; first at frame {A._READ_BLOCK + 5} " in str(err.value)
    assert "channel 1" in str(err.value)
