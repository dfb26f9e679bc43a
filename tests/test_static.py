"""The code's habits, checked like everything else: ruff is clean, and the public seams type-check.

The seams are listed in pyproject.toml's [tool.mypy]. mypy cannot follow the editable install's import hook
(the folder reference/ is installed as whisperkv.reference by package-dir), so the folders are linked under
their installed names into a temporary whisperkv/ tree that MYPYPATH points at.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_public_seams_type_check(tmp_path: Path) -> None:
    tree = tmp_path / "whisperkv"
    tree.mkdir()
    for source in (ROOT / "whisperkv").glob("*.py"):
        (tree / source.name).symlink_to(source)
    (tree / "reference").symlink_to(ROOT / "reference")
    (tree / "backends").symlink_to(ROOT / "backends")
    env = dict(os.environ, MYPYPATH=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
