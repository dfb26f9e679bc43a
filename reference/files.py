"""Writing files so that nobody ever sees half of one: a temporary file beside the target, then a rename."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The names of those temporaries: "." + target name + "." + tempfile's 8 random characters + ".tmp" +
# the optional suffix. A writer killed with SIGKILL cannot remove its own; a cache that knows nobody
# else is writing (backends/cache.py, under its lock) removes whatever matches.
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9_]+)?$")


def _temp_affixes(target: Path, suffix: str) -> dict[str, str]:
    return {"prefix": f".{target.name}.", "suffix": f".tmp{suffix}"}


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path in the target's folder; on success it replaces the target.

    Two writers at once each get their own temporary file, and the last rename wins with a whole file; a
    writer that fails or is killed leaves the target as it was (and, unless killed, no temporary behind).
    `suffix` keeps the extension for writers that infer the format from it (".so", ".png").
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(**_temp_affixes(target, suffix), dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give it the mode an ordinary write would
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces the target folder.

    A folder cannot be swapped in one step for an existing one, so an existing target is removed first:
    use it where writers are serialized (a lock) and readers check what they read (a record).
    """
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(**_temp_affixes(target, ""), dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
