"""The output files (reference/app/writers.py): openai-whisper's writers byte for byte, real parsers, atomic writes.

fixtures/oracle/writers/ holds openai-whisper's own outputs (tools/openai_writers_oracle.py made them with
openai-whisper 20250625 from the results in its inputs.json: openai's transcribe() results of three clips and
two made-up ones); the subtitle parsers `srt` and `webvtt-py` are test-only dependencies.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from whisperkv.reference.app import writers as W
from whisperkv.reference.errors import InputError
from whisperkv.reference.files import TEMPORARY_NAME

ORACLE = Path(__file__).resolve().parents[1] / "fixtures" / "oracle" / "writers"
MANIFEST = json.loads((ORACLE / "manifest.json").read_text(encoding="utf-8"))["files"]
INPUTS = json.loads((ORACLE / "inputs.json").read_text(encoding="utf-8"))

def _options(options: dict) -> W.WriterOptions:
    return W.WriterOptions(**options)


# ----------------------------------------------------------------------------------------------
# openai-whisper's own files


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_render_equals_openai_byte_for_byte(entry: dict) -> None:
    result = INPUTS[entry["input"]]["result"]
    ours = W.render(result, entry["format"], _options(entry["options"])).encode("utf-8")
    assert ours == (ORACLE / entry["file"]).read_bytes()


@pytest.mark.parametrize("case", ["plain", "words"])
def test_write_result_all_writes_openais_files(tmp_path: Path, case: str) -> None:
    """Every format, named after the audio as openai names them, in an output folder created on the way."""
    for key in (k for k in INPUTS if k.endswith("." + ("default" if case == "plain" else "words"))):
        name = key.split(".")[0]
        out = tmp_path / name / "new"
        audio = "/some/where/" + INPUTS[key]["audio"]
        written = W.write_result(INPUTS[key]["result"], audio, out, "all", W.WriterOptions())
        stem = Path(INPUTS[key]["audio"]).stem
        assert written == [out / f"{stem}.{fmt}" for fmt in W.FORMATS]
        for path in written:
            assert path.read_bytes() == (ORACLE / case / path.name).read_bytes()
        assert sorted(os.listdir(out)) == sorted(p.name for p in written)  # no temporary left behind


def test_the_fixture_covers_every_format_and_option() -> None:
    formats = {e["format"] for e in MANIFEST}
    options = {k for e in MANIFEST for k in e["options"]}
    assert formats == set(W.FORMATS)
    assert options == {"max_line_width", "max_line_count", "max_words_per_line", "highlight_words"}


def test_output_path_is_openais_name() -> None:
    assert W.output_path("a/b/talk.final.m4a", "out", "srt") == Path("out/talk.final.srt")
    assert W.output_path("noext", "out", "txt") == Path("out/noext.txt")


# ----------------------------------------------------------------------------------------------
# Real subtitle parsers on openai's layouts


def _srt_cues(text: str) -> list[tuple[int, int, str]]:
    srt = pytest.importorskip("srt")  # test-only dependencies: only these tests need them
    ms = timedelta(milliseconds=1)
    return [(s.start // ms, s.end // ms, s.content) for s in srt.parse(text)]


def _vtt_cues(text: str) -> list[tuple[int, int, str]]:
    webvtt = pytest.importorskip("webvtt")
    return [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds(), c.raw_text)
            for c in webvtt.from_string(text)]


def _letters(texts: Iterable[str]) -> str:
    """All but the whitespace, which the layout moves (a space becomes a line break or a cue break)."""
    return "".join("".join(t.split()) for t in texts)


def _ms(seconds: float) -> int:
    return round(seconds * 1000.0)


@pytest.mark.parametrize("key", [k for k in INPUTS if not k.startswith("synthetic")])
def test_subtitles_parse_and_equal_the_segments(key: str) -> None:
    result = INPUTS[key]["result"]
    if key.endswith(".words"):  # one cue per segment: its first word's start, its last word's end
        want = [(_ms(s["words"][0]["start"]), _ms(s["words"][-1]["end"]),
                 "".join(w["word"] for w in s["words"]).strip()) for s in result["segments"] if s["words"]]
    else:
        want = [(_ms(s["start"]), _ms(s["end"]), s["text"].strip()) for s in result["segments"]]
    assert _srt_cues(W.render(result, "srt")) == want
    assert _vtt_cues(W.render(result, "vtt")) == want


@pytest.mark.parametrize("options", [{"max_line_width": 42, "max_line_count": 2}, {"max_words_per_line": 3},
                                     {"highlight_words": True}])
def test_laid_out_subtitles_parse_and_keep_every_word(options: dict) -> None:
    result = INPUTS["whitehouse10.words"]["result"]
    words = _letters(w["word"] for s in result["segments"] for w in s["words"])
    for cues in (_srt_cues(W.render(result, "srt", _options(options))),
                 _vtt_cues(W.render(result, "vtt", _options(options)))):
        assert all(start <= end for start, end, _ in cues)
        if not options.get("highlight_words"):
            assert _letters(text for _, _, text in cues) == words
        if "max_line_width" in options:
            assert max(len(line) for _, _, text in cues for line in text.split("\n")) <= 42


# ----------------------------------------------------------------------------------------------
# Hypothesis: any segments give subtitles that parse back to the millisecond

# Whisper's words: no whitespace or control characters inside, joined by single spaces. Text whose cue would
# contain "-->" is left out: openai writes it as is (words) or turns "--->" into "-->" (segments), and no
# subtitle parser can read that back.
_WORD = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn")), min_size=1,
                max_size=8)
_SECONDS = st.integers(0, 99 * 3_600_000 - 1).map(lambda ms: ms / 1000)  # below 100 h: two-digit hours


@st.composite
def _results(draw: st.DrawFn, with_words: bool) -> dict:
    segments, t = [], draw(st.floats(0, 7200, allow_nan=False))
    for i in range(draw(st.integers(0, 6))):
        words = draw(st.lists(_WORD, min_size=1, max_size=8))
        steps = draw(st.lists(st.floats(0, 5, allow_nan=False), min_size=2 * len(words), max_size=2 * len(words)))
        times = []
        for step in steps:
            t += step
            times.append(t)
        text = "".join(" " + w for w in words)
        segment = {"id": i, "seek": 0, "start": times[0], "end": times[-1], "text": text, "tokens": [],
                   "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0}
        if with_words:
            segment["words"] = [{"word": " " + w, "start": times[2 * j], "end": times[2 * j + 1], "probability": 1.0}
                                for j, w in enumerate(words)]
        segments.append(segment)
    return {"text": "".join(s["text"] for s in segments), "segments": segments, "language": "en"}


_FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(result=_results(with_words=False))
def test_segment_subtitles_round_trip(result: dict) -> None:
    assume(all("-->" not in s["text"].replace("-->", "->") for s in result["segments"]))
    want = [(_ms(s["start"]), _ms(s["end"]), s["text"].strip().replace("-->", "->")) for s in result["segments"]]
    assert _srt_cues(W.render(result, "srt")) == want
    assert _vtt_cues(W.render(result, "vtt")) == want
    tsv = W.render(result, "tsv").splitlines()[1:]
    assert [tuple(row.split("\t")) for row in tsv] == [(str(_ms(s["start"])), str(_ms(s["end"])), s["text"].strip())
                                                        for s in result["segments"]]


@_FAST
@given(result=_results(with_words=True), width=st.none() | st.integers(1, 60), count=st.none() | st.integers(1, 3),
       per_line=st.none() | st.integers(1, 5), highlight=st.booleans())
def test_word_subtitles_round_trip(result: dict, width: int | None, count: int | None, per_line: int | None,
                                   highlight: bool) -> None:
    words = [w for s in result["segments"] for w in s["words"]]
    assume("-->" not in "".join(w["word"] for w in words))
    options = W.WriterOptions(width, count, per_line, highlight)
    srt_cues = _srt_cues(W.render(result, "srt", options))
    vtt_cues = _vtt_cues(W.render(result, "vtt", options))
    assert srt_cues == vtt_cues
    # Every cue time is a word's start or end, to the millisecond, in order.
    stamps = {_ms(w[k]) for w in words for k in ("start", "end")}
    assert all(a in stamps and b in stamps and a <= b for a, b, _ in srt_cues)
    assert [a for a, _, _ in srt_cues] == sorted(a for a, _, _ in srt_cues)
    if not highlight:  # every word once, in order
        assert _letters(t for _, _, t in srt_cues) == _letters(w["word"] for w in words)
    else:  # one underlined word per word cue
        underlined = [t for _, _, t in srt_cues if "<u>" in t]
        assert len(underlined) == len(words) and all(t.count("<u>") == 1 for t in underlined)


def test_timestamps_round_to_the_millisecond_as_openai() -> None:
    assert W.format_timestamp(0.0005) == "00:00.000"  # round(0.5): half to even
    assert W.format_timestamp(0.0015) == "00:00.002"
    assert W.format_timestamp(3599.9995, True, ",") == "01:00:00,000"
    assert W.format_timestamp(360000.0) == "100:00:00.000"


# ----------------------------------------------------------------------------------------------
# Options and bad input


def test_check_options_as_openais_cli() -> None:
    assert W.check_options(W.WriterOptions(), word_timestamps=False) == []
    with pytest.raises(W.WriterError, match=r"^--highlight_words requires --word_timestamps True$"):
        W.check_options(W.WriterOptions(max_line_width=42, highlight_words=True), word_timestamps=False)
    with pytest.raises(InputError, match="--max_words_per_line requires"):
        W.check_options(W.WriterOptions(max_words_per_line=3), word_timestamps=False)
    assert W.check_options(W.WriterOptions(max_line_count=2), word_timestamps=True) == [
        "--max_line_count has no effect without --max_line_width"]
    assert W.check_options(W.WriterOptions(max_line_width=9, max_words_per_line=2), word_timestamps=True) == [
        "--max_words_per_line has no effect with --max_line_width"]


@pytest.mark.parametrize("bad", [{"max_line_width": 0}, {"max_line_count": -1}, {"max_words_per_line": True},
                                 {"max_line_width": 4.5}, {"highlight_words": "yes"}])
def test_bad_option_values_are_one_line_errors(bad: dict) -> None:
    with pytest.raises(W.WriterError, match=f"--{next(iter(bad))} must be"):
        W.WriterOptions(**bad)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(W.WriterError, match="--output_format must be one of txt, vtt, srt, tsv, json, all, got 'doc'"):
        W.write_result(INPUTS["jfk.default"]["result"], "jfk.wav", tmp_path, "doc")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_result_writes_nothing(tmp_path: Path) -> None:
    result = json.loads(json.dumps(INPUTS["jfk.default"]["result"]))
    result["segments"][-1]["end"] = -1.0
    with pytest.raises(W.WriterError, match="non-negative"):
        W.write_result(result, "jfk.wav", tmp_path, "all")
    assert list(tmp_path.iterdir()) == []  # txt would have been fine: nothing is written before all is rendered


def test_the_result_is_not_changed() -> None:
    result = INPUTS["whitehouse10.words"]["result"]
    before = json.dumps(result)
    W.render(result, "srt", W.WriterOptions(max_line_width=20, max_line_count=2, highlight_words=True))
    assert json.dumps(result) == before


# ----------------------------------------------------------------------------------------------
# Atomic files


class _DiskFull(io.BytesIO):
    """A file that takes half of what is written, then fails as a full disk does."""

    def __init__(self, path: str | os.PathLike, mode: str) -> None:
        super().__init__()
        self._real = open(path, mode)  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._real.write(data[: len(data) // 2])
        self._real.flush()
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        self._real.close()
        super().close()


def test_a_write_failing_midway_leaves_no_file_and_no_temporary(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(W, "open", _DiskFull, raising=False)  # the module's own open(), nobody else's
    with pytest.raises(W.WriterError, match=r"jfk\.srt: cannot write \(No space left on device\)$"):
        W.write_result(INPUTS["jfk.words"]["result"], "jfk.wav", tmp_path, "srt")
    assert list(tmp_path.iterdir()) == []


def test_a_write_failing_midway_keeps_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = W.write_result(INPUTS["jfk.default"]["result"], "jfk.wav", tmp_path, "srt")[0]
    before = old.read_bytes()
    monkeypatch.setattr(W, "open", _DiskFull, raising=False)
    with pytest.raises(W.WriterError):
        W.write_result(INPUTS["jfk.words"]["result"], "jfk.wav", tmp_path, "srt", W.WriterOptions(max_line_width=5))
    assert old.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [old.name]
    assert not any(TEMPORARY_NAME.match(p.name) for p in tmp_path.iterdir())


def test_an_output_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    with pytest.raises(W.WriterError, match="out: cannot create the output folder"):
        W.write_result(INPUTS["jfk.default"]["result"], "jfk.wav", tmp_path / "out", "txt")


def test_an_existing_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "jfk.txt"
    target.write_bytes(b"x" * 100_000)  # longer than what replaces it: nothing of it may remain
    W.write_result(INPUTS["jfk.default"]["result"], "jfk.wav", tmp_path, "txt")
    assert target.read_bytes() == (ORACLE / "plain" / "jfk_inaugural_whispercpp.txt").read_bytes()
    assert os.listdir(tmp_path) == ["jfk.txt"]
