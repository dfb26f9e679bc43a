"""Writing files so that nobody ever sees half of one: a temporary file beside the target, then a rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path in the target's folder; on success it replaces the target.

    Two writers at once each get their own temporary file, and the last rename wins with a whole file; a
    writer that fails or is killed leaves the target as it was (and, unless killed, no temporary behind).
    `suffix` keeps the extension for writers that infer the format from it (".so", ".png").
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give it the mode an ordinary write would
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
