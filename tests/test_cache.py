"""The compile/export cache on damaged, unwritable and contended state (backends/cache.py).

Anything that could crash (dlopen of a damaged library is a SIGBUS or a segfault, not an exception) runs
in a child process, so a crash shows up as a negative return code instead of taking pytest down. The
`whisperkv compile` tests run the real command on the bundled tiny.en (a compile takes ~5 s of CPU);
the library tests use a small random shape, which compiles in about the same time (the fixed cost of
TVM's pipeline dominates), and load it in children that each import tvm (~2-3 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tvm")

import whisperkv.backends.tvm.threads  # noqa: E402,F401  (sets TVM_NUM_THREADS before tvm is imported)
from whisperkv.backends import cache as wcache  # noqa: E402
from whisperkv.backends.tvm import compile as tvm_compile  # noqa: E402
from whisperkv.backends.tvm.model import ModelConfig  # noqa: E402
from whisperkv.reference.dims import ModelDims  # noqa: E402
from whisperkv.reference.errors import InputError  # noqa: E402
from whisperkv.reference.files import TEMPORARY_NAME  # noqa: E402

SMALL = ModelConfig(ModelDims(n_mels=5, n_audio_ctx=9, n_audio_state=48, n_audio_head=3, n_audio_layer=1,
                              n_vocab=77, n_text_ctx=13, n_text_state=48, n_text_head=2, n_text_layer=1))

# Damage done to a real library: cut to 0 B, 1 KB, 50 KB and 200 KB (the small library is ~350 KB: each
# cut ends inside a different part of it), 2000 bytes flipped, and two foreign files.
DAMAGE = ["empty", "cut-1k", "cut-50k", "cut-200k", "flipped-2000", "flipped-2000-seed7", "foreign-elf", "foreign-text"]


def damage(good: bytes, kind: str, out: Path) -> Path:
    import random

    if kind == "empty":
        out.write_bytes(b"")
    elif kind.startswith("cut-"):
        n = {"cut-1k": 1_000, "cut-50k": 50_000, "cut-200k": 200_000}[kind]
        assert n < len(good)
        out.write_bytes(good[:n])
    elif kind.startswith("flipped-2000"):
        b = bytearray(good)
        seed = 7 if kind.endswith("seed7") else 1  # seeds 1 and 7 segfaulted dlopen before records and probes
        for i in random.Random(seed).sample(range(len(b)), 2000):
            b[i] ^= 0xFF
        out.write_bytes(bytes(b))
    elif kind == "foreign-elf":
        shutil.copyfile("/bin/ls", out)  # an ELF of this machine, but an executable and no TVM library
    else:
        out.write_text("not a library\n")
    return out


def child_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WHISPERKV_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(WHISPERKV_CACHE_DIR=str(cache), **extra)
    return env


# A child that loads the SMALL library, printing one line per argument: "ok PATH" or "error MESSAGE"
# (InputError only: anything else is a traceback, rc 1). Arguments: "check:DIR" looks in cache DIR and
# refuses to build; "cache:DIR" builds there if needed, then loads; "folder:DIR" opens DIR as a seed-style
# folder (backends/onnx/tvm_libs.py); anything else is a library path given explicitly.
LOADER = """
import json, sys, types
from pathlib import Path
import whisperkv.backends.tvm.threads
from whisperkv.backends.tvm import compile as c
from whisperkv.backends.tvm.model import ModelConfig
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.errors import InputError
cfg = ModelConfig(ModelDims(**json.loads(sys.argv[1])))
for arg in sys.argv[2:]:
    kind, _, where = arg.partition(":")
    try:
        if kind in ("check", "cache"):
            path = c.cached_library(cfg, directory=Path(where), compile_if_missing=kind == "cache", quiet=True)
            c.load_library(cfg, path, compile_if_missing=False)
        elif kind == "folder":
            from whisperkv.backends.onnx.tvm_libs import TVMLibraryFolderBackend
            TVMLibraryFolderBackend(types.SimpleNamespace(dims=cfg.dims), where)
            path = where
        else:
            vm, path = c.load_library(cfg, arg, compile_if_missing=False)
        print("ok", path, flush=True)
    except InputError as e:
        print("error", e, flush=True)
"""


def start_loader(cache: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOADER, json.dumps(SMALL.dims.as_dict()), *args],
                            env=child_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    # 300 s: far above a compile (~5 s) even on a loaded machine; only a hang would reach it.
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode >= 0, f"child crashed with signal {-proc.returncode}:\n{out}\n{err}"
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    """A cache holding the SMALL library and its record."""
    cache = tmp_path_factory.mktemp("warm-small")
    tvm_compile.cached_library(SMALL, quiet=True, directory=cache)
    return cache


# ----------------------------------------------------------------------------------------------
# Damaged libraries


def damaged_caches(small_cache: Path, tmp_path: Path, kinds: list[str]) -> dict[str, Path]:
    """kind -> a cache folder whose SMALL library is damaged that way, beside the good library's record."""
    good_path = tvm_compile.library_path(SMALL, directory=small_cache)
    paths = {}
    for kind in kinds:
        (tmp_path / kind).mkdir()
        paths[kind] = damage(good_path.read_bytes(), kind, tmp_path / kind / good_path.name)
        shutil.copyfile(wcache.record_path(good_path), wcache.record_path(paths[kind]))
    return paths


def test_a_damaged_cached_library_is_never_loaded(small_cache, tmp_path) -> None:
    # Every kind of damage fails the record check, so nothing is dlopened: with building refused that is
    # one line naming the library. One child for all: each kind has its own folder (dlopen of a path it
    # has loaded before would not read the file again).
    paths = damaged_caches(small_cache, tmp_path, DAMAGE)
    rc, out, err = finish(start_loader(tmp_path, *(f"check:{p.parent}" for p in paths.values())))
    lines = out.splitlines()
    assert rc == 0 and len(lines) == len(DAMAGE), f"rc {rc}\n{out}\n{err}"
    for (kind, path), line in zip(paths.items(), lines, strict=True):
        assert line.startswith(f"error {path}: compiled library does not match its record"), (kind, line)


@pytest.mark.slow
def test_a_damaged_cached_library_is_rebuilt(small_cache, tmp_path) -> None:
    # The two kinds that crashed dlopen before records (SIGBUS, segfault); the rebuild is the same code
    # for every kind that fails the check (test above). One child each, run at once (~5 s of compile each).
    kinds = ["cut-200k", "flipped-2000"]
    paths = damaged_caches(small_cache, tmp_path, kinds)
    procs = [start_loader(tmp_path, f"cache:{paths[kind].parent}") for kind in kinds]
    for kind, proc in zip(kinds, procs, strict=True):
        rc, out, err = finish(proc)
        assert rc == 0 and out == f"ok {paths[kind]}\n", f"{kind}: rc {rc}\n{out}\n{err}"
        # Rebuilt (the library is not byte-identical from build to build, so no comparison with the good one).
        assert wcache.check_record(paths[kind]) is None and wcache.elf_problem(paths[kind]) is None


def test_a_cached_library_without_record_is_rebuilt(small_cache, tmp_path) -> None:
    # A library from before records existed, or one whose writer was killed before the record: rebuilt
    # (in this process: the check comes before any dlopen, and the file is whole anyway).
    path = tvm_compile.library_path(SMALL, directory=tmp_path)
    shutil.copyfile(tvm_compile.library_path(SMALL, directory=small_cache), path)
    assert wcache.check_record(path) == "has no record of its contents"
    with pytest.raises(wcache.NotCachedError, match="no record") as e:
        tvm_compile.cached_library(SMALL, compile_if_missing=False, directory=tmp_path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert tvm_compile.cached_library(SMALL, quiet=True, directory=tmp_path) == path
    assert wcache.check_record(path) is None


def test_a_damaged_library_given_by_path_is_one_line_naming_it(small_cache, tmp_path) -> None:
    good = tvm_compile.library_path(SMALL, directory=small_cache).read_bytes()
    # A library handed over by path has no record: truncated, empty and foreign files fail the structural
    # check; flipped bytes that pass it are loaded in a child process first, which crashes instead of us.
    kinds = DAMAGE
    paths = [damage(good, kind, tmp_path / f"{kind}.so") for kind in kinds]
    folder = tmp_path / "seed-style"  # backends/onnx/tvm_libs.py's folder of three libraries
    folder.mkdir()
    for name in ("encoder_model.so", "decoder_model.so", "decoder_with_past_model.so"):
        damage(good, "cut-50k", folder / name)
    rc, out, err = finish(start_loader(tmp_path, *map(str, paths), f"folder:{folder}"))
    lines = out.splitlines()
    assert rc == 0 and len(lines) == len(kinds) + 1, f"rc {rc}\n{out}\n{err}"
    for path, line in zip([*paths, folder / "encoder_model.so"], lines, strict=True):
        assert line.startswith(f"error {path}: not a loadable TVM library ("), line


def test_elf_check_accepts_real_libraries_and_names_the_problem(small_cache, tmp_path) -> None:
    good = tvm_compile.library_path(SMALL, directory=small_cache)
    assert wcache.elf_problem(good) is None
    data = good.read_bytes()
    cut = damage(data, "cut-200k", tmp_path / "cut.so")
    assert "truncated" in wcache.elf_problem(cut)
    other_machine = tmp_path / "aarch64.so"  # e_machine (bytes 18-19) of another CPU: 183 is AArch64, 62 x86-64
    other_machine.write_bytes(data[:18] + (62 if data[18:20] == b"\xb7\x00" else 183).to_bytes(2, "little") + data[20:])
    assert "ELF machine" in wcache.elf_problem(other_machine)
    other_class = tmp_path / "32bit.so"  # EI_CLASS (byte 4): 1 is 32-bit
    other_class.write_bytes(data[:4] + b"\x01" + data[5:])
    assert "not this machine's" in wcache.elf_problem(other_class)
    assert wcache.elf_problem(tmp_path / "missing.so").startswith("cannot read it")


def test_missing_library_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="no compiled library") as e:
        tvm_compile.load_library(SMALL, tmp_path / "nothing.so", compile_if_missing=False)
    assert isinstance(e.value, FileNotFoundError)  # what it was before: old callers keep working
    with pytest.raises(InputError, match="compiled library is missing.*whisperkv compile") as e:
        tvm_compile.cached_library(SMALL, compile_if_missing=False, directory=tmp_path)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Unusable cache folders, through `whisperkv compile`

# `python -m whisperkv compile --quiet`, with tvm.compile replaced by an exit: proves the command failed
# before any compile work (the replacement is looked up at call time, `tvm.compile(...)` in compile.py).
COMPILE_CLI = """
import runpy, sys, tvm
def refuse(*a, **k):
    print("tvm.compile was called", file=sys.stderr)
    sys.exit(99)
if "--allow-compile" in sys.argv:
    sys.argv.remove("--allow-compile")
else:
    tvm.compile = refuse
sys.argv = ["whisperkv", *sys.argv[1:]]
runpy.run_module("whisperkv", run_name="__main__")
"""


def run_compile(env: dict[str, str], *args: str, prefix: tuple[str, ...] = (), allow_compile: bool = False,
                timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [*prefix, sys.executable, "-c", COMPILE_CLI, "compile", "--quiet", *args]
    if allow_compile:
        argv.append("--allow-compile")
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def assert_refused(r: subprocess.CompletedProcess, folder: Path, variable: str) -> None:
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1, f"rc {r.returncode}\n{r.stderr}"
    assert lines[0].startswith(f"whisperkv: error: {folder}: cache folder is not writable"), lines[0]
    assert variable in lines[0], lines[0]
    assert r.stdout == ""


def test_cache_that_is_a_regular_file_is_refused_before_compiling(tmp_path) -> None:
    # Root ignores permission bits, but nobody can create a folder where a file is, or inside one.
    afile = tmp_path / "a-file"
    afile.write_text("")
    for cache in (afile, afile / "sub"):
        assert_refused(run_compile(child_env(cache)), cache, "$WHISPERKV_CACHE_DIR")
    env = child_env(tmp_path)
    del env["WHISPERKV_CACHE_DIR"]
    env["XDG_CACHE_HOME"] = str(afile)
    assert_refused(run_compile(env), afile / "whisperkv", "$XDG_CACHE_HOME")
    assert afile.read_text() == ""


def read_only_prefix(folder: Path) -> tuple[str, ...]:
    """A command prefix that runs its command with `folder` read-only, for root too: a read-only bind
    mount in a private mount namespace (chmod 0555 does not stop root). Non-root: chmod is enough."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}'"],
                           capture_output=True, text=True)
    if probe.returncode != 0:  # e.g. a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot make a folder read-only for root here: {probe.stderr.strip()}")
    # `exec "$0" "$@"`: the command after the mount, in the namespace that has it.
    return ("unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}' && exec \"$0\" \"$@\"")


def test_read_only_cold_cache_is_refused_before_compiling(tmp_path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    r = run_compile(child_env(cache), prefix=read_only_prefix(cache))
    assert_refused(r, cache, "$WHISPERKV_CACHE_DIR")
    assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr
    assert list(cache.iterdir()) == []


@pytest.fixture(scope="module")
def warm_tiny_cache(tmp_path_factory) -> tuple[Path, str]:
    cache = tmp_path_factory.mktemp("warm-tiny")
    r = run_compile(child_env(cache), allow_compile=True)
    assert r.returncode == 0, r.stderr
    return cache, r.stdout


@pytest.mark.slow
def test_warm_read_only_cache_keeps_working(warm_tiny_cache) -> None:
    cache, printed = warm_tiny_cache
    r = run_compile(child_env(cache), prefix=read_only_prefix(cache))  # tvm.compile would exit 99
    assert r.returncode == 0 and r.stdout == printed and r.stderr == "", r.stderr
    # But a damaged library in a read-only cache cannot be rebuilt: one line, naming why it had to write.
    shutil.copytree(cache, cache.parent / "damaged")
    library = cache.parent / "damaged" / Path(printed.strip()).name
    library.write_bytes(library.read_bytes()[:50_000])
    r = run_compile(child_env(library.parent), prefix=read_only_prefix(library.parent))
    assert_refused(r, library.parent, "$WHISPERKV_CACHE_DIR")
    assert f"needed because {library.name} does not match its record" in r.stderr


# ----------------------------------------------------------------------------------------------
# Killed and concurrent compiles


@pytest.mark.slow
def test_a_killed_compile_leaves_nothing_the_next_one_keeps(tmp_path) -> None:
    cache, tmp = tmp_path / "cache", tmp_path / "system-tmp"
    tmp.mkdir()
    env = child_env(cache, TMPDIR=str(tmp))  # where TVM's tempdir() and tempfile would put things
    argv = [sys.executable, "-c", COMPILE_CLI, "compile", "--quiet", "--allow-compile"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Kill once export_library has begun: the atomic writer's temporary library exists (and the
    # compiler's workspace). Poll every 10 ms; 300 s is far above a compile, a guard against a hang only.
    deadline = time.monotonic() + 300
    while not (cache.is_dir() and any(TEMPORARY_NAME.match(p.name) for p in cache.iterdir())):
        assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    left = sorted(p.name for p in cache.iterdir() if TEMPORARY_NAME.match(p.name))
    assert left and any((cache / ".tmp").iterdir()), "nothing left to clean: the kill came too late"
    assert not [p for p in tmp.iterdir() if p.is_dir()], "the compiler used the system temp folder"

    r = run_compile(env, allow_compile=True)
    assert r.returncode == 0, r.stderr
    library = Path(r.stdout.strip())
    assert wcache.check_record(library) is None
    assert not [p.name for p in cache.iterdir() if TEMPORARY_NAME.match(p.name)]
    assert not any((cache / ".tmp").iterdir())
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [".lock", ".tmp", library.name, wcache.record_path(library).name])
    assert not [p for p in tmp.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_two_compiles_at_once_compile_once(tmp_path) -> None:
    cache = tmp_path / "cache"
    argv = [sys.executable, "-c", COMPILE_CLI, "compile", "--allow-compile"]  # not quiet: count "compiling"
    procs = [subprocess.Popen(argv, env=child_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [finish(p) for p in procs]
    assert [rc for rc, _, _ in results] == [0, 0], results
    assert results[0][1] == results[1][1] and Path(results[0][1].strip()).is_file()
    stderr = "".join(err for _, _, err in results)
    assert stderr.count("compiling the TVM backend") == 1, stderr
    assert stderr.count("waiting for another process") <= 1, stderr  # only if the second came in time


# ----------------------------------------------------------------------------------------------
# The lock and the ONNX export cache


def test_lock_is_reentrant_and_sweeps_leftovers(tmp_path) -> None:
    (tmp_path / ".x.so.abcd1234.tmp.so").write_bytes(b"")
    (tmp_path / ".tmp" / "build.abcd1234").mkdir(parents=True)
    (tmp_path / "keep.so").write_bytes(b"")
    with wcache.cache_lock(tmp_path), wcache.cache_lock(tmp_path):  # would deadlock if not reentrant
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "keep.so"]


def test_damaged_onnx_export_is_re_exported(tmp_path) -> None:
    pytest.importorskip("onnx")
    from whisperkv.backends.onnx.cache import exported_folder
    from whisperkv.reference.weights import Checkpoint, random_weights

    checkpoint = Checkpoint(SMALL.dims, random_weights(SMALL.dims), Path("/nonexistent"), "float32", "random")
    folder = exported_folder(checkpoint, directory=tmp_path)
    assert wcache.check_record(folder) is None
    files = {p: p.read_bytes() for p in folder.iterdir()}
    victim = folder / "decoder_model.onnx"
    victim.write_bytes(files[victim][: len(files[victim]) // 2])
    assert "does not match its record (decoder_model.onnx" in wcache.check_record(folder)
    assert exported_folder(checkpoint, directory=tmp_path) == folder
    assert {p: p.read_bytes() for p in folder.iterdir()} == files  # the export is deterministic
    assert not [p for p in tmp_path.iterdir() if TEMPORARY_NAME.match(p.name)]
