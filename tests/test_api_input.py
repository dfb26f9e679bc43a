"""The Python API validates arrays as the CLI validates files: one-line `AudioError`s (an `InputError`).

openai-whisper's `transcribe(array)` expects float32 mono samples at 16 kHz in [-1, 1]. Anything else
used to decode silently into garbage (a NaN array gave 224 `"` tokens, a (2, n) array an empty string).
"""

from __future__ import annotations

import numpy as np
import pytest

import whisperkv
from whisperkv.reference.audio import SAMPLE_RATE, AudioError, load_audio, open_audio

from .helpers import AUDIO_DIR


@pytest.fixture(scope="module")
def model() -> whisperkv.Whisper:
    return whisperkv.load_model()


def refused(model: whisperkv.Whisper, samples: object) -> str:
    with pytest.raises(whisperkv.InputError) as err:
        model.transcribe(samples)
    assert isinstance(err.value, AudioError) and isinstance(err.value, ValueError)
    message = str(err.value)
    assert message.startswith("<array>: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(model: whisperkv.Whisper, bad: float) -> None:
    samples = np.zeros(SAMPLE_RATE, np.float32)
    samples[[1234, 5000]] = bad
    message = refused(model, samples)
    kind = "2 NaN and 0 inf" if np.isnan(bad) else "0 NaN and 2 inf"
    assert f"{kind} sample(s) of 16000; first at sample 1234 (0.077 s)" in message


def test_non_finite_sample_in_a_later_block_is_found() -> None:
    # The array is checked block by block (never a whole-size temporary): the last sample counts too.
    samples = np.zeros(10 * SAMPLE_RATE + 1, np.float64)
    samples[-1] = np.nan
    with pytest.raises(AudioError, match=f"first at sample {len(samples) - 1} "):
        open_audio(samples)


@pytest.mark.parametrize("shape", [(2, 16000), (16000, 2), (16000, 1), (), (1, 1, 16000)])
def test_only_one_dimensional_arrays(model: whisperkv.Whisper, shape: tuple[int, ...]) -> None:
    # A stereo array is refused, not averaged: which axis holds the channels is the caller's to say.
    message = refused(model, np.zeros(shape, np.float32))
    assert f"got shape {shape}" in message and "shape (n,)" in message and "mono 16 kHz" in message


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8, np.bool_, np.complex64, object])
def test_only_real_floating_dtypes(model: whisperkv.Whisper, dtype: type) -> None:
    message = refused(model, np.zeros(16000, dtype))
    assert f"got dtype {np.dtype(dtype)}" in message and "float32" in message
    if np.issubdtype(dtype, np.integer):
        assert "32768" in message  # how to scale int16 PCM


def test_float64_beyond_float32_range_is_refused() -> None:
    samples = np.zeros(16000)
    samples[7] = 1e300  # finite in float64, inf once converted to the float32 the model computes in
    with pytest.raises(AudioError, match="1 sample.* beyond float32"):
        open_audio(samples)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_floating_dtypes_give_the_float32_windows(dtype: type) -> None:
    samples = (0.1 * np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE)).astype(dtype)
    want = open_audio(samples.astype(np.float32)).mel_windows()
    got = open_audio(samples).mel_windows()
    for (seek_a, a), (seek_b, b) in zip(got, want, strict=True):
        assert seek_a == seek_b and np.array_equal(a, b)  # converted sample by sample: exactly equal


def test_empty_and_too_short_arrays_give_an_empty_transcript(model: whisperkv.Whisper) -> None:
    # As openai-whisper: no content frame (n < 160 samples), no window, "".
    for n in (0, 159):
        t = model.transcribe(np.zeros(n, np.float32))
        assert t.text == "" and t.tokens == [] and t.segments == []


@pytest.mark.slow  # two real decodes, ~8 s on 2 shared cores
def test_a_valid_array_transcribes_as_its_file(model: whisperkv.Whisper) -> None:
    path = AUDIO_DIR / "pocketsphinx_goforward.wav"  # 2.8 s at 16 kHz: the shortest clip
    from_array = model.transcribe(load_audio(path))
    assert from_array.audio == "<array>"
    assert from_array.tokens == model.transcribe(path).tokens and "forward" in from_array.text.lower()


def test_the_array_is_checked_before_anything_is_decoded(model: whisperkv.Whisper) -> None:
    class CountingBackend:
        def __init__(self, inner) -> None:
            self.inner, self.calls = inner, 0

        def __getattr__(self, name):
            self.calls += 1
            return getattr(self.inner, name)

    samples = np.zeros(40 * SAMPLE_RATE, np.float32)  # two windows
    samples[-1] = np.nan  # in the second window only
    backend, model.backend = model.backend, CountingBackend(model.backend)
    try:
        refused(model, samples)
        assert model.backend.calls == 0
    finally:
        model.backend = backend
