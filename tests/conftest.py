"""Shared fixtures: the bundled tiny.en, loaded once per session, and the real clips."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
AUDIO_DIR = FIXTURES / "audio"


def clip_manifest() -> list[dict[str, str]]:
    with open(AUDIO_DIR / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


CLIPS = [row["file"] for row in clip_manifest()]

# clip -> (word error rate, hypothesis, human transcript), filled by tests/test_oracle.py, printed at the end
WER_REPORT: dict[str, tuple[float, str, str]] = {}


@pytest.fixture(scope="session")
def tiny_en():
    from whisperkv.reference import load_model

    return load_model()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not WER_REPORT:
        return
    terminalreporter.section("word error rate, reference (numpy) tiny.en vs human transcripts")
    total_err = total_words = 0.0
    for clip, (wer, _hyp, ref) in sorted(WER_REPORT.items()):
        n = len(ref.split())
        total_err, total_words = total_err + wer * n, total_words + n
        terminalreporter.write_line(f"{wer:6.1%}  {clip}")
    terminalreporter.write_line(f"{total_err / total_words:6.1%}  all clips, weighted by words")
