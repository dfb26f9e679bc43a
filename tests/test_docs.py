"""The walkthrough's examples are whisperkv's real output, regenerated and compared on every full run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_kv_cache_walkthrough_shows_the_examples_the_prose_relies_on() -> None:
    doc = (ROOT / "docs" / "kv-cache.md").read_text()
    assert "DIAGNOSIS: cross K/V left zero" in doc and "DIAGNOSIS: self slots not appended" in doc
    assert "8 x [1, 6, 2, 64] grew +2" in doc and "AGREE:" in doc
    # the beam-search section's prose reads these off its trace
    assert "select([0, 0, 0, 0, 0])" in doc and "8 x [5, 6, 3, 64]" in doc and "finished" in doc


@pytest.mark.slow  # regenerates every example (several verify and trace runs of tiny.en)
def test_kv_cache_walkthrough_is_what_the_tool_prints() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "docs" / "make_kv_cache.py"), "--check"], capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr
