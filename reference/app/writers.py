"""The files openai-whisper's command line writes (`--output_format txt|vtt|srt|tsv|json|all`), byte for byte.

The behaviour is that of openai-whisper 20250625's `whisper/utils.py` (WriteTXT, WriteVTT, WriteSRT, WriteTSV,
WriteJSON, SubtitlesWriter.iterate_result, format_timestamp), written afresh; fixtures/oracle/writers/ holds
openai-whisper's own outputs (tools/openai_writers_oracle.py) and tests/test_writers.py compares them byte for byte.
A result is openai's result dict (`text`, `segments` with `start`, `end`, `text` and, with word timestamps,
`words` of `word`, `start`, `end`): the JSON file is the dict as given, whatever extra keys it carries.

Where openai-whisper is loose, this module chooses (each choice leaves every output openai writes unchanged):

- Options. openai's CLI refuses the four layout options without `--word_timestamps True` (`parser.error`, exit
  2): `check_options` raises a `WriterError` (an InputError: one line, exit 2) with the same words. Its two
  warnings ("--max_line_count has no effect without --max_line_width", "--max_words_per_line has no effect
  with --max_line_width") are returned as strings for the caller to print, not raised: openai writes the
  files anyway, and the second is not quite true (without --max_line_count each group of max_words_per_line
  words still becomes its own cue), so refusing would refuse output openai gives. `write_result` itself
  does not ask for word timestamps: like openai's writers, a result without `words` gets one cue per
  segment, whatever the layout options say.
- Numbers. openai reads 0 as "not set" and loops forever on a negative `max_words_per_line`; here every
  layout number must be an int >= 1 (`WriterOptions` raises a WriterError otherwise).
- Bad results. openai asserts on a negative timestamp and raises KeyError when a later segment lacks `words`;
  here a negative or non-finite cue time is a WriterError and a missing `words` counts as none.
- Bytes. UTF-8 with "\\n" line ends on every platform (openai's text-mode files would write "\\r\\n" on Windows).
- Files. `<output_dir>/<audio basename without its extension>.<ext>`, as openai names them; output_dir is
  created if missing (as openai's CLI does). Every format asked for is rendered in memory before any file
  is touched, then each file is written atomically (reference/files.py): a failure leaves each file whole,
  old or new, and no temporary behind; it is a WriterError naming the file (openai lets the OSError out).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import atomic_path

FORMATS: tuple[str, ...] = ("txt", "vtt", "srt", "tsv", "json")  # in the order "all" writes them
OUTPUT_FORMATS: tuple[str, ...] = (*FORMATS, "all")

# openai's layout for word-timestamped results, its constants.
_UNLIMITED = 1000  # width and words per line when not set
_LONG_PAUSE = 3.0  # seconds between word starts that open a new cue (when segments are not kept)


class WriterError(InputError):
    """A layout option, an output format or a result that the writers cannot use; one line."""


@dataclass(frozen=True)
class WriterOptions:
    """openai-whisper's `--max_line_width`, `--max_line_count`, `--max_words_per_line`, `--highlight_words`.

    They shape the .srt and .vtt cues of a result with word timestamps, and nothing else.
    """

    max_line_width: int | None = None
    max_line_count: int | None = None
    max_words_per_line: int | None = None
    highlight_words: bool = False

    def __post_init__(self) -> None:
        for name in ("max_line_width", "max_line_count", "max_words_per_line"):
            value = getattr(self, name)
            # bool is an int: True would silently mean 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise WriterError(f"--{name} must be a whole number of at least 1, got {value!r}")
        if not isinstance(self.highlight_words, bool):
            raise WriterError(f"--highlight_words must be True or False, got {self.highlight_words!r}")

    def word_options(self) -> list[str]:
        """The options set that need word timestamps, in the order openai's CLI checks them."""
        order = ("highlight_words", "max_line_count", "max_line_width", "max_words_per_line")
        return [name for name in order if getattr(self, name)]


def check_options(options: WriterOptions, word_timestamps: bool) -> list[str]:
    """openai's CLI checks: a WriterError where it exits with an error, its warnings returned as lines."""
    if not word_timestamps and (needing := options.word_options()):
        raise WriterError(f"--{needing[0]} requires --word_timestamps True")
    warnings = []
    if options.max_line_count and not options.max_line_width:
        warnings.append("--max_line_count has no effect without --max_line_width")
    if options.max_words_per_line and options.max_line_width:
        warnings.append("--max_words_per_line has no effect with --max_line_width")
    return warnings


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """[HH:]MM:SS.mmm, rounded to the millisecond as openai does (Python's round: half to even)."""
    if not seconds >= 0 or math.isinf(seconds):  # `not >=` also catches NaN
        raise WriterError(f"a result's timestamps must be finite and non-negative, got {seconds!r}")
    total_ms = round(seconds * 1000.0)
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole_seconds, ms = divmod(rest, 1_000)
    prefix = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{prefix}{minutes:02d}:{whole_seconds:02d}{decimal_marker}{ms:03d}"


# ----------------------------------------------------------------------------------------------
# Cues: (start, end, text) of the subtitle formats


def _words(segment: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    return segment.get("words") or []


def _word_groups(segments: Sequence[Mapping[str, Any]], options: WriterOptions) -> Iterator[list[dict[str, Any]]]:
    """The words of each cue, their text already carrying the line breaks ("\\n" before a word) and trimmed.

    openai's rules: a word joins the current line if the line has text, the word fits the width, no long
    pause precedes it and it does not start a segment (or a max_words_per_line group) while segments are
    kept. Otherwise it starts a line (stripped); that line opens a new cue at a segment start, or when the
    cue already has max_line_count lines or follows a long pause. Segments are kept (a cue never spans two)
    unless both max_line_width and max_line_count are given.
    """
    keep_segments = options.max_line_count is None or options.max_line_width is None
    width = options.max_line_width or _UNLIMITED
    per_group = options.max_words_per_line or _UNLIMITED
    line_len, n_lines = 0, 1
    cue: list[dict[str, Any]] = []
    # The previous word's start; the first word's start to begin with (or the first segment's, or 0.0).
    first = next((w["start"] for s in segments for w in _words(s)), segments[0]["start"] if segments else None)
    previous = first or 0.0
    for segment in segments:
        words = _words(segment)
        for group_start in range(0, len(words), per_group):
            for i, original in enumerate(words[group_start : group_start + per_group]):
                word = dict(original)  # the result itself is never changed
                text = word["word"]
                long_pause = not keep_segments and word["start"] - previous > _LONG_PAUSE
                fits = line_len + len(text) <= width
                starts_group = i == 0 and len(cue) > 0 and keep_segments
                if line_len > 0 and fits and not long_pause and not starts_group:
                    line_len += len(text)
                else:
                    text = text.strip()
                    cue_full = options.max_line_count is not None and (long_pause or n_lines >= options.max_line_count)
                    if (cue and cue_full) or starts_group:
                        yield cue
                        cue, n_lines = [], 1
                    elif line_len > 0:
                        n_lines += 1
                        text = "\n" + text
                    line_len = len(text.strip())
                    word["word"] = text
                cue.append(word)
                previous = word["start"]
    if cue:
        yield cue


_LEADING_SPACE = re.compile(r"^(\s*)(.*)$")  # openai underlines the word after its leading whitespace


def _cues(result: Mapping[str, Any], options: WriterOptions, stamp: Callable[[float], str]) -> Iterator[
        tuple[str, str, str]]:
    """openai's SubtitlesWriter.iterate_result: word cues if the first segment has `words`, else segment cues."""
    segments = result["segments"]
    if not (segments and "words" in segments[0]):
        for segment in segments:
            # "-->" would end a cue's text early in both formats
            yield stamp(segment["start"]), stamp(segment["end"]), segment["text"].strip().replace("-->", "->")
        return
    for cue in _word_groups(segments, options):
        start, end = stamp(cue[0]["start"]), stamp(cue[-1]["end"])
        texts = [word["word"] for word in cue]
        whole = "".join(texts)
        if not options.highlight_words:
            yield start, end, whole
            continue
        # One cue per word with that word underlined; the gaps between words show the plain text.
        shown_until = start
        for i, word in enumerate(cue):
            word_start, word_end = stamp(word["start"]), stamp(word["end"])
            if shown_until != word_start:  # compared as formatted, as openai does
                yield shown_until, word_start, whole
            underlined = _LEADING_SPACE.sub(r"\1<u>\2</u>", texts[i])
            yield word_start, word_end, "".join(texts[:i]) + underlined + "".join(texts[i + 1 :])
            shown_until = word_end


# ----------------------------------------------------------------------------------------------
# Formats


def _txt(result: Mapping[str, Any], options: WriterOptions) -> str:
    return "".join(segment["text"].strip() + "\n" for segment in result["segments"])


def _vtt(result: Mapping[str, Any], options: WriterOptions) -> str:
    cues = _cues(result, options, lambda t: format_timestamp(t, always_include_hours=False, decimal_marker="."))
    return "WEBVTT\n\n" + "".join(f"{start} --> {end}\n{text}\n\n" for start, end, text in cues)


def _srt(result: Mapping[str, Any], options: WriterOptions) -> str:
    cues = _cues(result, options, lambda t: format_timestamp(t, always_include_hours=True, decimal_marker=","))
    return "".join(f"{n}\n{start} --> {end}\n{text}\n\n" for n, (start, end, text) in enumerate(cues, start=1))


def _tsv(result: Mapping[str, Any], options: WriterOptions) -> str:
    # Integer milliseconds: no locale can turn them into "1,5"; a tab in the text would add a column.
    rows = [f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t{s['text'].strip().replace(chr(9), ' ')}\n"
            for s in result["segments"]]
    return "start\tend\ttext\n" + "".join(rows)


def _json(result: Mapping[str, Any], options: WriterOptions) -> str:
    return json.dumps(result)  # json.dump's defaults, as openai: ASCII escapes, ", " and ": ", no final newline


_RENDER: dict[str, Callable[[Mapping[str, Any], WriterOptions], str]] = {
    "txt": _txt, "vtt": _vtt, "srt": _srt, "tsv": _tsv, "json": _json,
}


def _formats(output_format: str) -> tuple[str, ...]:
    if output_format == "all":
        return FORMATS
    if output_format not in FORMATS:
        raise WriterError(f"--output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    return (output_format,)


def render(result: Mapping[str, Any], output_format: str, options: WriterOptions | None = None) -> str:
    """One format's file content (not "all")."""
    if output_format == "all":
        raise WriterError("render() makes one format; use write_result() for 'all'")
    (name,) = _formats(output_format)
    return _RENDER[name](result, options or WriterOptions())


def output_path(audio_path: str | os.PathLike, output_dir: str | os.PathLike, extension: str) -> Path:
    """`<output_dir>/<audio basename without its extension>.<extension>`, as openai names its files."""
    stem = os.path.splitext(os.path.basename(os.fspath(audio_path)))[0]
    return Path(output_dir) / f"{stem}.{extension}"


def write_result(result: Mapping[str, Any], audio_path: str | os.PathLike, output_dir: str | os.PathLike,
                 output_format: str = "all", options: WriterOptions | None = None) -> list[Path]:
    """Write `result` in one format (or "all": txt, vtt, srt, tsv, json) next to each other; the paths written."""
    options = options or WriterOptions()
    # Everything rendered first: a result the writers cannot use fails before any file is touched.
    contents = [(output_path(audio_path, output_dir, name), render(result, name, options).encode("utf-8"))
                for name in _formats(output_format)]
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriterError(f"{output_dir}: cannot create the output folder ({e.strerror or e})") from e
    written = []
    for path, data in contents:
        _write_atomically(path, data)
        written.append(path)
    return written


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
    except OSError as e:  # a full disk, a read-only folder: one line naming the file, as for bad input
        raise WriterError(f"{path}: cannot write ({e.strerror or e})") from e


__all__ = ["FORMATS", "OUTPUT_FORMATS", "WriterError", "WriterOptions", "check_options", "format_timestamp",
           "output_path", "render", "write_result"]
