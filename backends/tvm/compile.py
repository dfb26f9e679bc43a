"""Compile the Relax module (model.py) for this CPU: the only module of the backend that imports tvm.

- Target: the host CPU as LLVM names it (`llvm_get_system_cpu()`; "-mcpu=native" is rejected by
  TVM 0.27) and the number of CPUs this process may use.
- Where the library goes and how it is checked and loaded is library.py's (no tvm there: a cached library
  runs with the TVM runtime alone, runtime.py); its names are re-exported here for the callers that compile.
- Atomic (backends/cache.py): the library is exported to a temporary file and `os.replace`d into place, the
  compiler's intermediate files go to the cache's `.tmp/`, and whatever a killed compile left is removed by
  the next one; `cached_library` (library.py) adds the lock and the record.
- Each library carries its own ModelConfig (a `whisperkv_config` function returning a shape of ints); a
  library whose recorded dims differ from the model's is refused before anything runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import tvm  # noqa: E402,I001
from tvm import relax  # noqa: E402

from whisperkv.reference.files import atomic_path

from . import threads  # noqa: F401  (sets TVM_NUM_THREADS before tvm is imported)
from .library import (  # noqa: F401  (the names callers used to find here)
    LIBRARY_FORMAT,
    LibraryMismatchError,
    LibraryNotFoundError,
    cached_library,
    check_library,
    config_record,
    config_values,
    library_path,
    load_library,
    load_module,
    read_config,
)
from .model import ModelConfig, build_module


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    cores = num_cores or threads.n_threads()
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": cores})


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


def _add_config_function(cfg: ModelConfig, mod: tvm.IRModule) -> tvm.IRModule:
    # The record travels inside the library as a Relax function returning a shape of ints:
    # (format, the ten dims in ModelDims order, decoder weight dtype code).
    values = config_values(cfg)
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
