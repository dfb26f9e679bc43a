"""Shared fixtures: the bundled tiny.en, loaded once per session; the word error rate report.

Two tiers:

    python -m pytest -m "not slow" -q     # everyday work: a cheap test of every area, under 3 minutes on 2 cores
    python -m pytest -q                   # the full suite, as .ci/run runs it (every clip, every compile)

Tests marked `slow` (pyproject.toml registers the marker) decode real tiny.en on every clip, compile or
export whole models, or run the CLI end to end many times; each area keeps a cheap test in the fast tier.

Shared helpers (the clips, small checkpoints, the kernel comparison) live in tests/helpers.py: no test
module imports another.
"""

from __future__ import annotations

import pytest

from .helpers import WER_REPORT


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
