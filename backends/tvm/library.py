"""The compiled library in the cache: its name, its checks and its loading, with the TVM runtime alone.

- Name: `whisper-{dims}-w{dtype}-{digest}.so` in the cache folder (backends/cache.py). The digest hashes
  everything the code depends on: the config record (format, dims, weight dtype, the vector registers the
  tiles are sized for), the host (the CPU as /proc/cpuinfo describes it, and the threads the library was
  built for), apache-tvm's version and the source of the model definition and kernels, so editing a
  kernel never loads a stale library. The host is
  named by what the kernel reports, not by LLVM's name for it (`llvm_get_system_cpu()`, which compile.py
  gives the compiler): asking LLVM would load the compiler.
- Checked before it is dlopened: a cached library against its record (size and sha256), a library handed
  over by path structurally and by a trial load in a child process (backends/cache.py); then the record
  it carries inside (a `whisperkv_config` function) against the model's config: LibraryMismatchError.
- Built on a miss: `cached_library` imports compile.py (and with it tvm) only then.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

from whisperkv.reference.dims import ModelDims
from whisperkv.reference.errors import InputError

from ..cache import (
    NotCachedError,
    cache_dir,
    cached,
    check_record,
    elf_problem,
    loader_crash,
    sources_digest,
    workspace,
)
from . import runtime, threads
from .params import ModelConfig, cpuinfo

# bump when the calling convention between backend.py and the library changes (2: rows; 3: the record
# names the vector registers the tiles were sized for)
LIBRARY_FORMAT = 3


class LibraryMismatchError(InputError):
    """A compiled library that was built for other dims / dtype than the model being loaded."""


# `load_library(..., compile_if_missing=False)` with no library there (an InputError, and still the
# FileNotFoundError it used to be).
LibraryNotFoundError = NotCachedError


def config_record(cfg: ModelConfig) -> dict:
    return {"format": LIBRARY_FORMAT, "dims": cfg.dims.as_dict(), "decoder_weight_dtype": cfg.decoder_weight_dtype,
            "vectors": [cfg.vector_lanes, cfg.vector_registers]}


@functools.cache
def host_cpu() -> str:
    """This machine's CPU as the kernel describes it: vendor, family, model, name and feature flags (a VM
    that hides AVX-512 from its guest is another host than the bare metal)."""
    fields = cpuinfo()
    if not fields:  # not Linux
        return f"{platform.machine()} {platform.processor()}"
    keep = ("vendor_id", "cpu family", "model", "model name", "CPU implementer", "CPU part", "isa", "Features")
    flags = " ".join(sorted(fields.get("flags", "").split()))
    return json.dumps([platform.machine(), *(fields.get(k, "") for k in keep), flags])


def host_key(num_cores: int | None = None) -> str:
    """What the library's name says about the machine it runs on: the CPU and the threads it was built for."""
    return json.dumps({"cpu": hashlib.sha256(host_cpu().encode()).hexdigest()[:16],
                       "num-cores": num_cores or threads.n_threads()})


SOURCES = ("kernels.py", "model.py", "params.py", "compile.py")  # what the compiled code depends on


@functools.cache
def source_hash() -> str:
    return sources_digest(Path(__file__).parent, SOURCES)


RULE_SOURCES = ("schedule_rules.py", "kernels.py")  # what a library scheduled by schedule_rules depends on


@functools.cache
def rules_digest() -> str:
    """A digest of schedule_rules.py and kernels.py (its exp and erf), read as files (importing them imports
    the compiler): part of the cache key of every library scheduled by them (a changed rule rebuilds them)."""
    return sources_digest(Path(__file__).parent, RULE_SOURCES)


def library_key(cfg: ModelConfig, target: Any = None) -> str:
    """The digest in the library's name (`target`: a tvm Target given to the compiler instead of this host)."""
    machine = str(target) if target is not None else host_key()
    key = json.dumps([config_record(cfg), machine, runtime.tvm_version(), source_hash()], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def library_path(cfg: ModelConfig, target: Any = None, directory: Path | None = None) -> Path:
    """Where the library for `cfg` lives in the cache (`directory` overrides the cache folder)."""
    return (directory or cache_dir()) / f"whisper-{cfg.key()}-{library_key(cfg, target)}.so"


def cached_library(cfg: ModelConfig, *, force: bool = False, compile_if_missing: bool = True, quiet: bool = False,
                   directory: Path | None = None) -> Path:
    """The path of `cfg`'s library in the cache, checked against its record; compiled on a miss, a
    mismatch or `force` (NotCachedError instead when not `compile_if_missing`)."""
    path = library_path(cfg, directory=directory)

    def build() -> None:
        from .compile import compile_library  # the compiler: imported only to compile

        with workspace(path.parent) as ws:
            compile_library(cfg, path, quiet=quiet, workspace_dir=ws)

    return cached(path, build, what="compiled library", force=force, build_if_missing=compile_if_missing,
                  quiet=quiet, hint="run `whisperkv compile`")


def load_module(path: Path) -> Any:
    """dlopen a TVM library, after the checks that keep a damaged file from crashing dlopen: its record
    (cached libraries), else the structural check and a trial load in a child process."""
    problem = None if check_record(path) is None else (elf_problem(path) or loader_crash(path))
    try:
        if problem is None:
            return runtime.load_module(path)
    except Exception as e:  # a file that passes the check can still be refused: TVM raises its own types
        problem = str(e).splitlines()[0][:200]
    raise LibraryMismatchError(f"{path}: not a loadable TVM library ({problem})")


_DTYPE_CODES = {"float32": 0, "float16": 1}
_DIM_NAMES = list(ModelDims.__dataclass_fields__)


def config_values(cfg: ModelConfig) -> list[int]:
    """The record as the library carries it: (format, the ten dims in ModelDims order, weight dtype code,
    vector lanes, vector registers)."""
    rec = config_record(cfg)
    return [rec["format"], *(rec["dims"][k] for k in _DIM_NAMES), _DTYPE_CODES[rec["decoder_weight_dtype"]],
            *rec["vectors"]]


def read_config(vm: Any) -> dict:
    values = [int(v) for v in vm["whisperkv_config"]()]
    codes = {v: k for k, v in _DTYPE_CODES.items()}
    if values[0] != LIBRARY_FORMAT:  # an older record has other fields: its format is enough to refuse it
        return {"format": values[0]}
    return {"format": values[0], "dims": dict(zip(_DIM_NAMES, values[1:11], strict=True)),
            "decoder_weight_dtype": codes.get(values[11], "?"), "vectors": values[12:14]}


def check_library(vm: Any, cfg: ModelConfig, path: Path | str) -> None:
    """Refuse a library built for another model: running it would read weights with the wrong shapes."""
    try:
        got = read_config(vm)
    except Exception as e:  # noqa: BLE001 - any failure here means "not one of ours"
        raise LibraryMismatchError(f"{path}: not a whisperkv TVM library (no config record: {e})") from e
    want = config_record(cfg)
    if got != want:
        diffs = []
        if got.get("dims") != want["dims"]:
            gd, wd = ModelDims(**got["dims"]) if "dims" in got else None, cfg.dims
            diffs.append(f"dims {gd.key() if gd else '?'} != model {wd.key()}")
        for k in ("format", "decoder_weight_dtype", "vectors"):
            if got.get(k) != want[k]:
                diffs.append(f"{k} {got.get(k)!r} != {want[k]!r}")
        raise LibraryMismatchError(f"{path}: library was compiled for another model or CPU: {'; '.join(diffs)}")


def library_config(vm: Any, cfg: ModelConfig) -> ModelConfig:
    """`cfg` with the vector registers the library's tiles were sized for. A library handed over by path may
    have been built for another CPU's registers (or a test's): tiles change its speed, not its results, and
    the weights are packed to match its layout (param_specs). `cfg` itself when the record is not readable
    (check_library then says why)."""
    try:
        got = read_config(vm)
        lanes, registers = got["vectors"]
        return replace(cfg, vector_lanes=int(lanes), vector_registers=int(registers))
    except Exception:  # noqa: BLE001 - not one of ours, or an older format: check_library refuses it
        return cfg


def load_library(cfg: ModelConfig, path: Path | str | None = None, compile_if_missing: bool = True,
                 quiet: bool = False) -> tuple[runtime.VM, Path]:
    """The VM for `cfg`, from the cache (checked; compiled on a miss) or from an explicit path (checked
    structurally; compiled there if missing and `compile_if_missing`; its vector registers may differ from
    `cfg`'s: see library_config)."""
    explicit = path is not None
    if path is None:
        path = cached_library(cfg, compile_if_missing=compile_if_missing, quiet=quiet)
    else:
        path = Path(path)
        if not path.exists():
            if not compile_if_missing:
                raise LibraryNotFoundError(f"{path}: no compiled library there (run `whisperkv compile`)")
            from .compile import compile_library

            compile_library(cfg, path, quiet=quiet)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    vm = _LOADED.get(key)
    if vm is None:
        vm = runtime.VM(load_module(path))
    # also for a cached VM: the same file may be asked for by another config
    check_library(vm, library_config(vm, cfg) if explicit else cfg, path)
    _LOADED[key] = vm
    return vm, path


# Loaded libraries by (path, mtime): every backend of the same model shape shares one VM (the weights
# are call arguments, not part of the VM), so creating a backend per checkpoint is cheap.
_LOADED: dict[tuple[str, int], runtime.VM] = {}

