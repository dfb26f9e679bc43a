"""Running a built Relax library with the TVM runtime alone: `tvm_ffi` and libtvm_runtime, never `import tvm`.

`import tvm` loads the whole compiler (libtvm_compiler, ~250 MB with LLVM, and the Python packages of Relax,
TIR, TE, ...): ~0.9 s on a 2-core Xeon, 1.7-2.5 s on a busy 2-core EPYC, 195 MB, against ~50 ms for
`tvm_ffi` once numpy is imported. Running a library that is already built needs none of it. TVM 0.27's
supported pieces:

- `tvm_ffi` (the apache-tvm-ffi package) is the FFI every TVM object crosses: `tvm_ffi.load_module(path)`
  dlopens an exported library, `tvm_ffi.get_global_func`, `tvm_ffi.from_dlpack`, `tvm_ffi.Tensor`.
- libtvm_runtime.so (shipped in the apache-tvm wheel, `tvm/lib/`) holds the Relax VM, its builtins, the
  thread pool and the tensor functions (`runtime.TVMTensor*`). `tvm/base.py` loads it RTLD_GLOBAL before
  anything else, so that a library's references to `TVMBackend*` resolve; here too. Its path is found with
  `importlib.util.find_spec("tvm")`, which locates the package without running its `__init__`.
- An exported Relax library carries its VM executable; `mod["vm_load_executable"]()` gives the VM module and
  `vm["vm_initialization"](device_type, device_id, allocator)` sets it up: what `tvm.runtime.vm.
  VirtualMachine.__init__` does (kDLCPU = 1, device 0), but with the naive allocator (see ALLOCATOR).
- Tensors: the VM returns `tvm_ffi.Tensor` (`tvm.runtime.Tensor`, a subclass, when tvm happens to be imported:
  both work here). numpy arrays become tensors by DLPack without a copy (`tvm_ffi.from_dlpack`, 64-byte
  aligned, writable: numpy refuses to export a read-only array under the DLPack version tvm_ffi asks for,
  hence copy-on-write mappings in packed.py; nor an empty one, whose numpy strides are not the compact ones
  a call is checked against, hence TVM allocates those); tensors become numpy arrays by DLPack too.

TVM_NUM_THREADS must be set before the runtime's thread pool starts: threads.py is imported first.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import threads  # noqa: F401  (sets TVM_NUM_THREADS before the runtime library is loaded)

KDL_CPU = 1  # DLPack's device type of the CPU
# tvm.runtime.vm.VirtualMachine.NAIVE_ALLOCATOR: every buffer is malloc'ed and freed with its last use. The
# pooled allocator (2, relax.VirtualMachine's default) keeps every freed buffer for a later request of the
# same size, forever; a decode step returns self slots one position longer than the last, for a number of
# rows that shrinks as windows finish, so nearly every step asks for sizes never seen before and the pool
# only grows: 938 MB peak RSS for the 172 s clip with timestamps, 556 MB in fixed windows, against 370 and
# 325 MB with this one, which was faster too (fresh pages cost a fault each; malloc reuses warm ones).
ALLOCATOR = 1
ALLOCATOR_NAME = "naive"  # the same, as relax.VirtualMachine(..., memory_cfg=) names it (the ONNX routes' VMs)
POOLED_ALLOCATOR_NAME = "pooled"  # the pool, for VMs whose calls repeat their sizes (tvm_onnx.allocator_for)
ALLOCATOR_CODES = {ALLOCATOR_NAME: ALLOCATOR, POOLED_ALLOCATOR_NAME: 2}  # memory_cfg name -> the VM's code
ALIGNMENT = 64  # TVM's kernels take 64-byte aligned data only (tvm.runtime.from_dlpack requires it)

_FFI: Any = None


def tvm_package_dir() -> Path:
    """The installed `tvm` package's folder, found without importing it."""
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the TVM backend needs apache-tvm (pip install 'whisperkv[tvm]')")
    return Path(next(iter(spec.submodule_search_locations)))


def tvm_version() -> str:
    """apache-tvm's version as its `_version.py` says it (`tvm.__version__`), without importing tvm."""
    try:
        text = (tvm_package_dir() / "_version.py").read_text()
    except OSError:  # a source build without one: tvm/libinfo.py falls back the same way
        return "unknown"
    for line in text.splitlines():  # `__version__ = version = '0.27.0.post1'`
        if line.startswith("__version__") and "'" in line:
            return line.split("'")[1]
    return "unknown"


def ffi() -> Any:
    """The `tvm_ffi` module, with libtvm_runtime loaded into this process (once)."""
    global _FFI
    if _FFI is None:
        import tvm_ffi

        if "tvm" not in sys.modules:  # tvm/base.py loaded it already otherwise
            lib = tvm_package_dir() / "lib" / "libtvm_runtime.so"
            ctypes.CDLL(str(lib), ctypes.RTLD_GLOBAL)
        _FFI = tvm_ffi
    return _FFI


def _func(name: str) -> Any:
    f = _FUNCS.get(name)
    if f is None:
        f = _FUNCS[name] = ffi().get_global_func(name)
    return f


_FUNCS: dict[str, Any] = {}


def is_tensor(x: Any) -> bool:
    return _FFI is not None and isinstance(x, _FFI.Tensor)


def aligned_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """An uninitialized C-contiguous numpy array whose data is ALIGNMENT-byte aligned."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    # np.ndarray with an offset, not a slice: numpy gives an empty slice its base's address
    return np.ndarray(tuple(shape), dtype, buffer=raw, offset=-raw.ctypes.data % ALIGNMENT)


def as_tensor(a: np.ndarray) -> Any:
    """A numpy array shared as a tensor (no copy) when it is aligned, contiguous and writable; else an
    aligned copy is shared. The tensor keeps the array alive."""
    if a.size == 0:
        return tensor(a)
    if not (a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % ALIGNMENT == 0):
        copy = aligned_empty(a.shape, a.dtype)
        copy[...] = a
        a = copy
    return ffi().from_dlpack(a, require_alignment=ALIGNMENT, require_contiguous=True)


def tensor(values: Any, dtype: Any = None) -> Any:
    """A fresh tensor holding a copy of `values` (numpy arrays given to the backend may change later)."""
    a = np.asarray(values, dtype=dtype)
    if a.size == 0:  # numpy's strides of an empty array are not the compact ones TVM checks calls against
        return empty(a.shape, str(a.dtype))
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return ffi().from_dlpack(out, require_alignment=ALIGNMENT, require_contiguous=True)


def to_numpy(t: Any) -> np.ndarray:
    """A numpy copy of a CPU tensor (as `tvm.runtime.Tensor.numpy()` gives)."""
    return np.array(np.from_dlpack(t), copy=True)


def empty(shape: Sequence[int], dtype: str) -> Any:
    f = ffi()
    return _func("runtime.TVMTensorAllocWithScope")(f.Shape([int(s) for s in shape]), f.dtype(dtype),
                                                    f.device("cpu", 0), None)


def view(t: Any, shape: Sequence[int], byte_offset: int) -> Any:
    """A view of `t`'s memory (tvm.runtime.Tensor._create_view)."""
    f = ffi()
    return _func("runtime.TVMTensorCreateView")(t, f.Shape([int(s) for s in shape]), f.dtype(str(t.dtype)),
                                                byte_offset)


def copy_into(dst: Any, src: Any) -> None:
    """Tensor to tensor copy (tvm.runtime.Tensor.copyto)."""
    _func("runtime.TVMTensorCopyFromTo")(src, dst)


class VM:
    """A Relax VM on the CPU over a loaded library module: `vm["encode"](...)`, as relax.VirtualMachine."""

    def __init__(self, module: Any, allocator: str = ALLOCATOR_NAME) -> None:
        self.module = module["vm_load_executable"]()
        self.module["vm_initialization"](KDL_CPU, 0, ALLOCATOR_CODES[allocator])

    def __getitem__(self, name: str) -> Any:
        return self.module[name]


def load_module(path: str | os.PathLike) -> Any:
    """dlopen an exported TVM library (no checks: library.load_module checks first)."""
    return ffi().load_module(str(path))
