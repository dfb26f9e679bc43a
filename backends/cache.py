"""The one cache folder every backend writes compiled libraries and exports into."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$WHISPERKV_CACHE_DIR`, else `$XDG_CACHE_HOME/whisperkv`, else `~/.cache/whisperkv`."""
    env = os.environ.get("WHISPERKV_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "whisperkv"
