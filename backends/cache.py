"""The one cache folder every backend writes compiled libraries and exports into, and how it is kept sane.

Everything a backend keeps in the cache goes through `cached()`:
- Nothing is loaded unchecked. Each cached file or folder has a record beside it (`NAME.record.json`:
  the size and sha256 of each of its files), written under the lock right after the thing itself. A
  truncated, bit-flipped, foreign or empty file fails that check and is rebuilt (dlopen of such a file
  is a SIGBUS or a segfault, not an exception), and a missing record counts as a mismatch.
- The record also keeps each file's stat stamp (device, inode, size, mtime and ctime, in ns) as it was when
  hashed. A file whose stamp is unchanged, and was last changed before the record was written (both by
  the file system's own clock: git's rule against "racy" entries), has not been written since it was
  hashed, and is not hashed again: the 90 MB of packed weights would cost ~65 ms of sha256 at every start.
  Any write (a flipped byte, a truncation, a copy: a new inode) changes the stamp and brings the hash back;
  so does `check_record(..., full=True)` or WHISPERKV_CACHE_VERIFY=full. What it cannot see is the disk
  rotting under an unchanged stamp.
- Before any compile or export work the folder is probed by creating and removing a file in it, so an
  unusable folder is one line naming the folder and the variable that chose it, not a traceback after
  the work. A warm cache (everything present and matching its record) is only read, so a read-only
  cache that is already filled keeps working.
- Writers take an exclusive `fcntl.flock` on `.lock` in the folder: two processes that want the same
  library build it once, the second waits and then finds it. The lock is reentrant within one process.
  Whoever takes it first removes what killed writers left: the atomic writer's `.NAME.XXXXXXXX.tmp*`
  files and folders, and `.tmp/`, where compilers are pointed for their intermediate files
  (`workspace()`).

Files a user hands over by path have no record: `elf_problem` checks them structurally and `loader_crash`
loads them once in a throw-away child before they are dlopened, so a truncated, empty, foreign or
loader-crashing file is a one-line error instead of a crash.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from whisperkv.reference.errors import InputError
from whisperkv.reference.files import TEMPORARY_NAME, atomic_path
from whisperkv.reference.weights import CACHE_ENV_VAR, cache_folder_and_origin, file_stamp, unchanged_since

ENV_VAR = CACHE_ENV_VAR
VERIFY_ENV_VAR = "WHISPERKV_CACHE_VERIFY"  # "full": hash every file at every check, stamps or not
RECORD_SUFFIX = ".record.json"
RECORD_FORMAT = 1
LOCK_NAME = ".lock"
WORKSPACE_NAME = ".tmp"


class CacheError(InputError):
    """A cache folder that cannot be written into."""


class NotCachedError(InputError, FileNotFoundError):
    """Nothing usable in the cache and building was not asked for (a FileNotFoundError too, as it was)."""


# ----------------------------------------------------------------------------------------------
# Where the cache is


def cache_dir() -> Path:
    """`$WHISPERKV_CACHE_DIR`, else `$XDG_CACHE_HOME/whisperkv`, else `~/.cache/whisperkv`."""
    return _cache_dir_and_origin()[0]


def cache_origin() -> str:
    """Which setting chose cache_dir(), as an error message names it."""
    return _cache_dir_and_origin()[1]


def _cache_dir_and_origin() -> tuple[Path, str]:
    return cache_folder_and_origin()  # one home: the core keeps its checked-checkpoint notes there too


def _origin_of(folder: Path) -> str:
    root, origin = _cache_dir_and_origin()
    try:
        inside = folder.absolute() == root.absolute() or folder.absolute().is_relative_to(root.absolute())
    except OSError:
        inside = False
    return origin if inside else "the caller (an explicit folder argument)"


def writable_folder(folder: Path, why: str = "") -> Path:
    """Create `folder` if missing and prove it writable by creating and removing a file in it.

    Permission bits alone do not tell (root ignores them; a read-only mount or an immutable folder
    refuses root too), so the probe really writes. Raises CacheError naming the folder and the setting
    that chose it.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        Path(probe).unlink(missing_ok=True)  # a concurrent lock holder may have swept it already
    except OSError as e:
        what = e.strerror or type(e).__name__
        if isinstance(e, FileExistsError) or e.errno == errno.ENOTDIR:  # the folder, or a parent, is a file
            blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
            what = f"{blocker} is not a folder"
        raise CacheError(f"{folder}: cache folder is not writable ({what}){'; ' + why if why else ''}; "
                         f"it was chosen by {_origin_of(folder)}") from None
    return folder


# ----------------------------------------------------------------------------------------------
# Records


def sources_digest(folder: Path, names: tuple[str, ...]) -> str:
    """sha256 of the named source files of `folder`, in order (16 hex digits): the part of a cache key that
    rebuilds an entry when the code that made it changes."""
    h = hashlib.sha256()
    for name in names:
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def record_path(target: Path) -> Path:
    return target.with_name(target.name + RECORD_SUFFIX)


def _files_of(target: Path) -> list[Path]:
    return sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_record(target: Path) -> Path:
    """Record the size, sha256 and stat stamp of `target` (a file, or each file of a folder), atomically."""
    base = target if target.is_dir() else target.parent
    files = {}
    for p in _files_of(target):
        before = file_stamp(p)
        entry = {"size": p.stat().st_size, "sha256": _digest(p)}
        if file_stamp(p) == before:  # not written while it was hashed: the stamp vouches for the hash
            entry["stamp"] = before
        files[str(p.relative_to(base))] = entry
    record = record_path(target)
    with atomic_path(record, suffix=".json") as tmp:
        tmp.write_text(json.dumps({"format": RECORD_FORMAT, "folder": target.is_dir(), "files": files}, indent=1))
    return record


def check_record(target: Path, full: bool = False) -> str | None:
    """None when `target` matches its record; else why not, in a few words.

    A file whose stat stamp vouches for its recorded hash (module docstring) is not hashed again unless
    `full` (or WHISPERKV_CACHE_VERIFY=full)."""
    if not target.exists():
        return "is missing"
    full = full or os.environ.get(VERIFY_ENV_VAR) == "full"
    try:
        rec_path = record_path(target)
        rec = json.loads(rec_path.read_text())
        written_ns = rec_path.stat().st_mtime_ns
        files, is_folder = rec["files"], rec["folder"]
        if rec["format"] != RECORD_FORMAT or not isinstance(files, dict):
            return "has a record of another format"
    except FileNotFoundError:
        return "has no record of its contents"
    except (OSError, ValueError, KeyError, TypeError):
        return "has an unreadable record"
    if is_folder != target.is_dir():
        return "does not match its record (file vs folder)"
    base = target if is_folder else target.parent
    for name, want in files.items():
        path = base / name
        try:
            size = path.stat().st_size
            if size != want["size"]:
                return f"does not match its record ({name}: {size} bytes, recorded {want['size']})"
            if not full and unchanged_since(want.get("stamp"), file_stamp(path), written_ns):
                continue
            if _digest(path) != want["sha256"]:
                return f"does not match its record ({name}: sha256 differs)"
        except OSError:
            return f"does not match its record ({name} is missing or unreadable)"
        except (KeyError, TypeError, AttributeError):
            return "has an unreadable record"
    return None


def recorded_sha256(target: Path) -> str | None:
    """The sha256 that a file's record holds for it, when the file matches its record; else None. Another
    file can pin these bytes by it (a reference into `target` that holds only while it is unchanged)."""
    if check_record(target) is not None:
        return None
    try:
        return str(json.loads(record_path(target).read_text())["files"][target.name]["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------
# The lock and the leftovers of killed writers


class _Held:
    def __init__(self) -> None:
        self.thread_lock = threading.RLock()  # flock excludes other processes; this, other threads
        self.fd = -1
        self.depth = 0


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()


@contextmanager
def cache_lock(folder: Path, quiet: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of `folder` (created if missing); reentrant within this process.

    The first holder in this process removes leftovers of killed writers: nobody else can be writing.
    """
    key = str(folder.absolute())
    with _HELD_GUARD:
        held = _HELD.setdefault(key, _Held())
    with held.thread_lock:
        if held.depth == 0:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not quiet:
                        print(f"whisperkv: waiting for another process writing into {folder} ...",
                              file=sys.stderr, flush=True)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            held.fd = fd
            remove_leftovers(folder)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                os.close(held.fd)  # closing the only descriptor of this open file releases the flock
                held.fd = -1


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete temporary files and folders of killed writers in `folder` (call with its lock held)."""
    removed = []
    for p in folder.iterdir():
        if p.name == WORKSPACE_NAME or TEMPORARY_NAME.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def workspace(folder: Path) -> Iterator[Path]:
    """A fresh folder under `folder/.tmp` for a compiler's intermediate files, removed afterwards.

    In the cache rather than the system temp folder so that the files of a killed compile are found and
    removed by the next lock holder (remove_leftovers); call with the lock held.
    """
    parent = folder / WORKSPACE_NAME
    parent.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="build.", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The one way into the cache


def cached(target: Path, build: Callable[[], object], *, what: str, force: bool = False, build_if_missing: bool = True,
           quiet: bool = False, hint: str = "") -> Path:
    """`target` (a file or a folder in a cache folder), checked against its record; built on a miss.

    `build()` writes `target` atomically (its temporaries named as atomic_path names them); it runs with
    the folder's lock held, after the folder proved writable, and the record is written right after it.
    A mismatch with `build_if_missing=False` is a NotCachedError (`hint` says how to fix it).
    """
    reason = "rebuild requested" if force else check_record(target)
    if reason is None:
        return target  # the warm path: only reads, so a read-only cache works
    if not build_if_missing:
        raise NotCachedError(f"{target}: {what} {reason}{' (' + hint + ')' if hint else ''}")
    folder = target.parent
    writable_folder(folder, why=f"needed because {target.name} {reason}" if not force else "")
    with cache_lock(folder, quiet=quiet):
        if force or check_record(target) is not None:  # another process may have built it while we waited
            record_path(target).unlink(missing_ok=True)  # no window where an old record vouches for a new file
            build()
            write_record(target)
    return target


# ----------------------------------------------------------------------------------------------
# Shared libraries handed over by path


_ELF_MAGIC = b"\x7fELF"
_PT_LOAD = 1
_ET_DYN = 3


@functools.cache
def _host_elf() -> tuple[int, int, int] | None:
    """(class, byte order, machine) of this interpreter's own executable; None on a non-ELF host."""
    try:
        with open(sys.executable, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if head[:4] != _ELF_MAGIC or len(head) < 20:
        return None
    order = "<" if head[5] == 1 else ">"
    return head[4], head[5], struct.unpack(order + "H", head[18:20])[0]


def elf_problem(path: Path) -> str | None:
    """None when `path` looks like a whole shared library for this machine; else what is wrong.

    Checks, in pure Python, before anything dlopens the file: the ELF magic, class, byte order and
    machine of this host, a shared object, the program header table and every PT_LOAD segment's bytes
    inside the file, and the section header table inside the file. That catches truncated, empty and
    foreign files (dlopen maps the segments of a truncated file past its end and dies with SIGBUS when it
    touches them). It is no checksum: bytes flipped inside the code can pass, and a damaged dynamic
    section can still crash the loader; cached files are checked against their record instead.
    Always None on a host whose own executable is not ELF (its libraries are another format).
    """
    host = _host_elf()
    if host is None:
        return None
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _elf_problem(f, f.read(64), size, host)
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"


def _elf_problem(f, head: bytes, size: int, host: tuple[int, int, int]) -> str | None:
    if size == 0:
        return "empty file"
    if head[:4] != _ELF_MAGIC:
        return "no ELF magic"
    if len(head) < 20:
        return f"truncated: {size} bytes"
    klass, order_byte = head[4], head[5]
    if klass not in (1, 2) or order_byte not in (1, 2):
        return "bad ELF class or byte order"
    if (klass, order_byte) != host[:2]:
        return f"{32 * klass}-bit {'little' if order_byte == 1 else 'big'}-endian, not this machine's"
    order = "<" if order_byte == 1 else ">"
    # ELF header: e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
    # e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx (addresses are 4 or 8 bytes by class).
    fmt = order + ("HHIQQQIHHHHHH" if klass == 2 else "HHIIIIIHHHHHH")
    ehsize = 16 + struct.calcsize(fmt)
    if len(head) < ehsize:
        return f"truncated ELF header: {size} bytes"
    e_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = struct.unpack(
        fmt, head[16:ehsize])
    if machine != host[2]:
        return f"ELF machine {machine}, this machine is {host[2]}"
    if e_type != _ET_DYN:
        return f"ELF type {e_type}, not a shared object"
    phdr = order + ("IIQQQQQQ" if klass == 2 else "IIIIIIII")
    if phnum == 0 or phentsize != struct.calcsize(phdr):
        return "no usable program header table"
    if phoff + phnum * phentsize > size:
        return f"truncated: program headers end at byte {phoff + phnum * phentsize}, file has {size}"
    if shoff and shentsize * shnum and shoff + shnum * shentsize > size:
        return f"truncated: section headers end at byte {shoff + shnum * shentsize}, file has {size}"
    f.seek(phoff)
    table = f.read(phnum * phentsize)
    for i in range(phnum):
        fields = struct.unpack_from(phdr, table, i * phentsize)
        # 64-bit: type, flags, offset, vaddr, paddr, filesz, ...; 32-bit: type, offset, vaddr, paddr, filesz
        p_type, offset, filesz = (fields[0], fields[2], fields[5]) if klass == 2 else fields[0:2] + fields[4:5]
        if p_type == _PT_LOAD and offset + filesz > size:
            return f"truncated: segment {i} ends at byte {offset + filesz}, file has {size}"
    return None


def loader_crash(path: Path) -> str | None:
    """None when the dynamic loader survives opening `path` in a child process; else how it died.

    For shared libraries that have no record to check (handed over by path): flipped bytes in the dynamic
    section or the relocations pass every structural check and can crash the loader inside dlopen; here
    they crash a throw-away child instead (~50 ms) and become an error message. A child that merely fails
    to load the file (an unresolved symbol, say) is no crash: the real load reports that itself.
    """
    code = "import ctypes, os, sys\ntry:\n    ctypes.CDLL(sys.argv[1], mode=os.RTLD_LAZY)\nexcept OSError:\n    pass\n"
    try:
        child = subprocess.run([sys.executable, "-I", "-c", code, str(path)], capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:  # 120 s: dlopen of a healthy library takes milliseconds
        return "the dynamic loader hangs on it"
    if child.returncode < 0:
        return f"it crashes the dynamic loader ({signal.Signals(-child.returncode).name})"
    return None
