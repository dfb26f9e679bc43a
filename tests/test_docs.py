"""The walkthrough's examples are whisperkv's real output, regenerated and compared on every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_kv_cache_walkthrough_is_what_the_tool_prints() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "docs" / "make_kv_cache.py"), "--check"], capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    doc = (ROOT / "docs" / "kv-cache.md").read_text()
    # the examples the prose relies on are really there
    assert "DIAGNOSIS: cross K/V left zero" in doc and "DIAGNOSIS: self slots not appended" in doc
    assert "8 x [1, 6, 2, 64] grew +2" in doc and "AGREE:" in doc
