"""Compile the Relax module (model.py) for this CPU and cache the shared library.

- Target: the host CPU as LLVM names it (`llvm_get_system_cpu()`; "-mcpu=native" is rejected by
  TVM 0.27) and the number of CPUs this process may use.
- Cache: `$WHISPERKV_CACHE_DIR` or `$XDG_CACHE_HOME/whisperkv` (default `~/.cache/whisperkv`). The file
  name hashes everything the code depends on: dims, weight dtype, target, TVM version and the source
  of the model definition and kernels, so editing a kernel never loads a stale library.
- Checked, locked, atomic (backends/cache.py): a cached library is loaded only if it matches the record
  of its size and sha256 beside it, and rebuilt otherwise; compiles into one folder are serialized by a
  lock, so two processes compile once; the library is exported to a temporary file and `os.replace`d
  into place, the compiler's intermediate files go to the cache's `.tmp/`, and whatever a killed
  compile left is removed by the next one. A library handed over by path has no record: it is checked
  structurally (elf_problem) and loaded once in a child process (loader_crash) before it is dlopened.
- Each library carries its own ModelConfig (a `whisperkv_config` function returning JSON); a library
  whose recorded dims differ from the model's is refused before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import tvm  # noqa: E402,I001
from tvm import relax  # noqa: E402

from whisperkv.reference.dims import ModelDims
from whisperkv.reference.errors import InputError
from whisperkv.reference.files import atomic_path

from ..cache import NotCachedError, cache_dir, cached, check_record, elf_problem, loader_crash, workspace
from . import threads  # noqa: F401  (sets TVM_NUM_THREADS before tvm is imported)
from .model import ModelConfig, build_module

LIBRARY_FORMAT = 2  # bump when the calling convention between backend.py and the library changes (2: rows)


class LibraryMismatchError(InputError):
    """A compiled library that was built for other dims / dtype than the model being loaded."""


# `load_library(..., compile_if_missing=False)` with no library there (an InputError, and still the
# FileNotFoundError it used to be).
LibraryNotFoundError = NotCachedError


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    cores = num_cores or threads.n_threads()
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": cores})


def _source_hash() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("kernels.py", "model.py", "compile.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def config_record(cfg: ModelConfig) -> dict:
    return {"format": LIBRARY_FORMAT, "dims": cfg.dims.as_dict(), "decoder_weight_dtype": cfg.decoder_weight_dtype}


def library_path(cfg: ModelConfig, target: tvm.target.Target | None = None, directory: Path | None = None) -> Path:
    """Where the library for `cfg` lives in the cache (`directory` overrides the cache folder)."""
    target = target or host_target()
    key = json.dumps([config_record(cfg), str(target), tvm.__version__, _source_hash()], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return (directory or cache_dir()) / f"whisper-{cfg.key()}-{digest}.so"


def _pipeline() -> tvm.transform.Pass:
    # The default CPU pipeline minus FuseOps/FuseTIR: every heavy kernel is already a scheduled PrimFunc,
    # and fusing them would discard the schedules. LegalizeOps only has the reshapes left, which
    # RewriteDataflowReshape then turns into zero-copy views.
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return tvm.transform.Sequential(
        [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern()]
        + cpu.dataflow_lower_passes(None)
        + cpu.finalize_passes(None)
    )


_DTYPE_CODES = {"float32": 0, "float16": 1}
_DIM_NAMES = list(ModelDims.__dataclass_fields__)


def _add_config_function(cfg: ModelConfig, mod: tvm.IRModule) -> tvm.IRModule:
    # The record travels inside the library as a Relax function returning a shape of ints:
    # (format, the ten dims in ModelDims order, decoder weight dtype code).
    rec = config_record(cfg)
    values = [rec["format"], *(rec["dims"][k] for k in _DIM_NAMES), _DTYPE_CODES[rec["decoder_weight_dtype"]]]
    bb = relax.BlockBuilder(mod)
    with bb.function("whisperkv_config", []):
        bb.emit_func_output(relax.ShapeExpr(values))
    return bb.get()


def compile_library(cfg: ModelConfig, path: Path, target: tvm.target.Target | None = None, quiet: bool = False,
                    workspace_dir: Path | None = None) -> Path:
    """Build and export atomically to `path` (no record, no lock: cached_library adds those).

    `workspace_dir`: where the compiler puts its intermediate files (default: a system temp folder)."""
    target = target or host_target()
    t0 = time.perf_counter()
    if not quiet:
        print(f"whisperkv: compiling the TVM backend for {cfg.key()} ({target.attrs.get('mcpu')}), "
              "once per model shape ...", file=sys.stderr, flush=True)
    mod = _add_config_function(cfg, build_module(cfg))
    with target:
        mod = _pipeline()(mod)
    write_library(tvm.compile(mod, target, relax_pipeline=None), path, workspace_dir)
    if not quiet:
        print(f"whisperkv: compiled in {time.perf_counter() - t0:.1f} s -> {path}", file=sys.stderr, flush=True)
    return path


def write_library(executable: Any, path: Path, workspace_dir: Path | None = None) -> None:
    """export_library through a temporary name beside `path`: a reader never sees half a library.

    `workspace_dir` (an empty folder) receives the object files export_library links; by default TVM
    makes a folder in the system temp folder, which a killed process leaves behind forever."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".so") as tmp:
        executable.export_library(str(tmp), workspace_dir=str(workspace_dir) if workspace_dir else None)


def cached_library(cfg: ModelConfig, *, force: bool = False, compile_if_missing: bool = True, quiet: bool = False,
                   directory: Path | None = None) -> Path:
    """The path of `cfg`'s library in the cache, checked against its record; compiled on a miss, a
    mismatch or `force` (NotCachedError instead when not `compile_if_missing`)."""
    path = library_path(cfg, directory=directory)

    def build() -> None:
        with workspace(path.parent) as ws:
            compile_library(cfg, path, quiet=quiet, workspace_dir=ws)

    return cached(path, build, what="compiled library", force=force, build_if_missing=compile_if_missing,
                  quiet=quiet, hint="run `whisperkv compile`")


def load_module(path: Path) -> tvm.runtime.Module:
    """dlopen a TVM library, after the checks that keep a damaged file from crashing dlopen: its record
    (cached libraries), else the structural check and a trial load in a child process."""
    problem = None if check_record(path) is None else (elf_problem(path) or loader_crash(path))
    try:
        if problem is None:
            return tvm.runtime.load_module(str(path))
    except Exception as e:  # a file that passes the check can still be refused: TVM raises its own types
        problem = str(e).splitlines()[0][:200]
    raise LibraryMismatchError(f"{path}: not a loadable TVM library ({problem})")


def read_config(vm: relax.VirtualMachine) -> dict:
    values = [int(v) for v in vm["whisperkv_config"]()]
    codes = {v: k for k, v in _DTYPE_CODES.items()}
    return {"format": values[0], "dims": dict(zip(_DIM_NAMES, values[1:11], strict=True)),
            "decoder_weight_dtype": codes.get(values[11], "?")}


def check_library(vm: relax.VirtualMachine, cfg: ModelConfig, path: Path | str) -> None:
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
        for k in ("format", "decoder_weight_dtype"):
            if got.get(k) != want[k]:
                diffs.append(f"{k} {got.get(k)!r} != {want[k]!r}")
        raise LibraryMismatchError(f"{path}: library was compiled for another model: {'; '.join(diffs)}")


def load_library(cfg: ModelConfig, path: Path | str | None = None, compile_if_missing: bool = True,
                 quiet: bool = False) -> tuple[relax.VirtualMachine, Path]:
    """The VM for `cfg`, from the cache (checked; compiled on a miss) or from an explicit path (checked
    structurally; compiled there if missing and `compile_if_missing`)."""
    if path is None:
        path = cached_library(cfg, compile_if_missing=compile_if_missing, quiet=quiet)
    else:
        path = Path(path)
        if not path.exists():
            if not compile_if_missing:
                raise LibraryNotFoundError(f"{path}: no compiled library there (run `whisperkv compile`)")
            compile_library(cfg, path, quiet=quiet)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    vm = _LOADED.get(key)
    if vm is None:
        vm = relax.VirtualMachine(load_module(path), tvm.cpu())
    check_library(vm, cfg, path)  # also for a cached VM: the same file may be asked for by another config
    _LOADED[key] = vm
    return vm, path


# Loaded libraries by (path, mtime): every backend of the same model shape shares one VM (the weights
# are call arguments, not part of the VM), so creating a backend per checkpoint is cheap.
_LOADED: dict[tuple[str, int], relax.VirtualMachine] = {}
