"""A folder of TVM libraries, one per Optimum graph, and no ONNX beside them: the seed's own files.

    compile_seed_style_folder(checkpoint, "libs/")       # encoder_model.so, decoder_model.so, ...
    compile_onnx_folder("optimum-folder/", "libs/", dims) # the same from an existing Optimum export
    whisperkv compile-onnx optimum-folder/ libs/          # (the command: backends/onnx/cli.py)
    TVMLibraryFolderBackend(checkpoint, "libs/")         # runs them through the backend protocol
    whisperkv verify AUDIO --candidate libs/             # backends.open_folder picks this backend

The seed's user compiled each Optimum model "the plain way": `from_onnx(model)` (the weights folded into
the graph as constants), `tvm.compile(mod, target)`, `export_library`, and waited 12 minutes a run on
TVM's unscheduled kernels. whisperkv builds the same libraries (same inputs, outputs and embedded weights)
with its CPU schedules (backends/tvm/schedule_rules.py): a run takes seconds, and this backend runs a
library built either way. Such a library carries no ONNX and no weights file, so everything this backend
knows about a graph comes from the library itself:

- Inputs are bound BY NAME. TVM 0.27's Relax VM exports `get_function_arity` and
  `get_function_param_name` (python/tvm/runtime/vm.py binds them as `_get_function_arity` /
  `_get_function_param_name`): main's parameters are the graph inputs under the names from_onnx gave them.
  from_onnx sanitizes names by default (`past_key_values.0.decoder.key` -> `past_key_values_0_decoder_key`,
  `_sanitize_name` in relax/frontend/onnx); a library built with `sanitize_input_names=False` keeps the
  ONNX names: both are accepted. The Optimum variant (cache_position; encoder_hidden_states kept in
  decoder_with_past) is read off those names. A parameter that is no Optimum input (weights compiled as
  parameters with `keep_params_in_input=True`, or another model) is refused, naming the file and the name.
- Only if a runtime exposes no names does binding fall back to Optimum's documented input order
  (layout.inputs), with the variant read off the arity; an ambiguous arity is refused rather than guessed.
- Outputs have no names in a compiled library: main returns a tuple in the ONNX graph's output order, which
  for an Optimum export is layout.outputs. Every call checks the output count and each output's shape
  against ModelDims, and names the file and the tensor when they differ. (Shapes cannot tell a key from a
  value of the same layer; `whisperkv verify` can.)
- Dims are not recorded in a library either: a library of other dims fails on its first call, with the
  file named.
- These files have no record of their contents (they are not the cache's): each is checked structurally
  before it is dlopened (backends/cache.py elf_problem), so a truncated, empty or foreign file is a
  one-line error naming it instead of a SIGBUS or segfault in the dynamic loader.
- Rows: the seed's libraries were compiled for batch 1 (from_onnx needs static sizes where Optimum's are
  expressions, and the seed fixed them all). How many rows a decoder library takes is read off the check
  its main makes on input_ids (`fixed_batch`): a library fixed to batch 1 sets max_batch = 1, and a larger
  batch is refused before it runs, naming the file (BatchTooLargeError); a symbolic batch_size sets no
  limit. A check this runtime does not print readably is taken as batch 1: that runs on every library.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# isort: off
# backends.tvm sets TVM_NUM_THREADS, which the runtime reads once, when tvm is imported: it comes first.
from whisperkv.backends.tvm import threads as _threads
from whisperkv.backends.tvm.compile import LibraryMismatchError, host_target, load_module, write_library
import onnx
import tvm
from tvm import relax
# isort: on

from whisperkv.reference.dims import ModelDims
from whisperkv.reference.weights import Checkpoint

from . import layout, split
from .export import export_onnx
from .folder import OnnxFolderError, PartBinding, TensorInfo, find_files
from .protocol import OptimumBackend
from .tvm_onnx import TVMTensors, allocator_for, narrow_exact, scheduled_module, specialize

SUFFIX = ".so"


def library_name(part: str, fp16: bool = False) -> str:
    return layout.file_name(part, fp16, SUFFIX)


def find_libraries(folder: str | os.PathLike, fp16: bool | None = None) -> dict[str, Path]:
    """part -> path of encoder_model.so, decoder_model.so, decoder_with_past_model.so (`_fp16.so` with fp16)."""
    return find_files(folder, fp16, SUFFIX)


# ----------------------------------------------------------------------------------------------
# Building a seed-style folder


def compile_embedded(model: onnx.ModelProto, path: Path, target: Any = None) -> float:
    """The seed's way, scheduled: from_onnx with the weights as constants (FoldConstant computes what the
    graph derives from them, such as the tied embedding's transpose, at build time), legalized, fused,
    scheduled for the CPU (backends/tvm/schedule_rules.py), tvm.compile, export_library (atomically).
    Returns the seconds it took."""
    t0 = time.perf_counter()
    target = target or host_target()
    write_library(tvm.compile(scheduled_module(model, target, keep_params=False), target), path)
    return time.perf_counter() - t0


def compile_onnx_folder(onnx_dir: str | os.PathLike, out_dir: str | os.PathLike, dims: ModelDims,
                        fp16: bool | None = None, target: Any = None, batch: int | None = 1) -> dict[str, float]:
    """An Optimum folder's three graphs (`*_fp16.onnx` with fp16) compiled, scheduled, each to
    `out_dir/{part}.so` (`{part}_fp16.so`) with its weights embedded: the seed's three libraries. Each graph
    is checked against `dims` first (folder.py: a wrong folder is refused naming the file and the tensor),
    then specialised: the encoder length to n_audio_ctx (Optimum's "encoder_sequence_length / 2" is an
    expression TVM cannot compute from any input), the encoder's batch to 1, the decoders' to `batch`
    (None: symbolic, libraries that run any number of rows). A folder with decoder_model_merged in place of
    the two decoders gives decoder_model.so and decoder_with_past_model.so from its If's two branches
    (split.py). Matmul weights whose values float16 holds exactly (a float32 export of a float16
    checkpoint: tiny.en's) are embedded as float16 and widened inside the kernels, as tvm-onnx does
    (tvm_onnx.narrow_exact): half the bytes per decode step, the same sums. Returns part -> seconds to compile."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    seen: dict[str, tuple[bytes, bytes | None]] = {}  # the decoders' shared weights, decided once
    for part, path, model, _ in split.parts(onnx_dir, dims, fp16):
        model = specialize(model, dims, batch=1 if part == layout.ENCODER else batch)
        narrow_exact(model, seen)  # weights float16 holds exactly embedded as float16 (tvm_onnx.narrow_exact)
        seconds[part] = compile_embedded(model, out / library_name(part, path.name.endswith("_fp16.onnx")), target)
    return seconds


def compile_seed_style_folder(checkpoint: Checkpoint, out_dir: str | os.PathLike, fp16: bool = False,
                              target: Any = None, cache_position: bool = False,
                              past_encoder_hidden_states: bool = False, batch: int | None = 1) -> dict[str, float]:
    """Export the checkpoint's three Optimum models (to a temporary folder) and compile each to
    `out_dir/{part}.so` (`{part}_fp16.so` with fp16) with its weights embedded; no .onnx is left beside
    them (compile_onnx_folder; batch 1 as the seed's, batch=None leaves the decoders' batch_size symbolic).
    Returns part -> seconds to compile."""
    with tempfile.TemporaryDirectory(prefix="whisperkv-onnx-") as tmp:
        export_onnx(checkpoint, tmp, fp16=fp16, cache_position=cache_position,
                    past_encoder_hidden_states=past_encoder_hidden_states)
        return compile_onnx_folder(tmp, out_dir, checkpoint.dims, fp16=fp16, target=target, batch=batch)


# ----------------------------------------------------------------------------------------------
# Binding a library's parameters


def relax_name(onnx_name: str) -> str:
    """The parameter name from_onnx gives a graph input by default (its `_sanitize_name`)."""
    name = onnx_name.replace(".", "_")
    return name if name[:1].isalpha() or name[:1] == "_" else "input_" + name


def param_names(vm: relax.VirtualMachine, function: str = "main") -> list[str] | None:
    """main's parameter names as the library records them, or None where the runtime does not say."""
    try:
        arity = int(vm.module["get_function_arity"](function))
        get_name = vm.module["get_function_param_name"]
        return [str(get_name(function, i)) for i in range(arity)]
    except (AttributeError, KeyError, RuntimeError, ValueError, TypeError):
        return None


def function_arity(vm: relax.VirtualMachine, function: str = "main") -> int | None:
    try:
        return int(vm.module["get_function_arity"](function))
    except (AttributeError, KeyError, RuntimeError, ValueError, TypeError):
        return None


def _info(spec: layout.TensorSpec, dims: ModelDims) -> TensorInfo:
    shape = tuple(getattr(dims, w) if w and isinstance(s, str) else s
                  for s, w in zip(spec.shape, spec.what or ("",) * len(spec.shape), strict=True))
    return TensorInfo(spec.name, "int64" if spec.dtype == "int64" else "float32", shape)


def bind_by_name(part: str, path: Path, params: Sequence[str], dims: ModelDims) -> list[str]:
    """main's parameter names -> the Optimum input names in parameter order; refuses anything else."""
    every = layout.inputs(part, dims, cache_position=True, past_encoder_hidden_states=part == layout.DECODER_WITH_PAST)
    known = {s.name: s.name for s in every} | {relax_name(s.name): s.name for s in every}
    unknown = [p for p in params if p not in known]
    if unknown:
        optional = ", ".join(layout.OPTIONAL_INPUTS.get(part, ())) or "-"
        required = [s.name for s in layout.inputs(part, dims)]
        raise OnnxFolderError(
            f"{path}: main takes parameter {unknown[0]!r}"
            + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f", which is no input of an Optimum {part} of these dims (inputs: {', '.join(required)}; "
            f"optional: {optional}). A library built with weights as parameters (keep_params_in_input=True) "
            "needs its weights at run time; this backend runs libraries with the weights embedded.")
    names = [known[p] for p in params]
    missing = [s.name for s in layout.inputs(part, dims) if s.name not in names]
    if missing:
        raise OnnxFolderError(f"{path}: main has no parameter {missing[0]}"
                              + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                              + f": not an Optimum {part} of these dims")
    return names


def bind_by_order(part: str, path: Path, arity: int | None, dims: ModelDims) -> list[str]:
    """No names: Optimum's documented input order, the variant chosen by the arity (refused if ambiguous)."""
    if arity is None:
        raise OnnxFolderError(f"{path}: this TVM runtime reports neither the names nor the number of main's "
                              "parameters: cannot bind its inputs")
    variants: dict[int, set[tuple[str, ...]]] = {}
    for cache_position in (False, True):
        for past_ehs in (False, True):
            specs = layout.inputs(part, dims, cache_position=cache_position, past_encoder_hidden_states=past_ehs)
            variants.setdefault(len(specs), set()).add(tuple(s.name for s in specs))
    fits = sorted(variants.get(arity, ()))
    if len(fits) != 1:
        counts = ", ".join(str(n) for n in sorted(variants))
        why = ("several Optimum variants have that many inputs and the library does not name them" if fits
               else f"an Optimum {part} of these dims takes {counts}")
        raise OnnxFolderError(f"{path}: main takes {arity} parameters: {why}")
    return list(fits[0])


# ----------------------------------------------------------------------------------------------
# Rows a library takes

# main's check of one parameter's shape, as the VM executable prints it (TVM 0.27):
#   call  vm.builtin.match_shape in: %0, %9, i2, i0, i1, i1, i1, c[1] dst: %void
# parameter register %0, the shape heap, ndim, then (code, value) per axis; code 0 asserts the axis equals
# the value (a fixed size), 1 and 3 store or compare a symbolic size (builtin.h MatchShapeCode).
_MATCH_SHAPE = re.compile(r"call\s+vm\.builtin\.match_shape\s+in:\s*%(\d+),\s*%\w+,\s*i(\d+),\s*i(\d+),\s*i(\d+)")
ASSERT_EQUAL_TO_IMM, STORE_TO_HEAP, ASSERT_EQUAL_TO_LOAD = 0, 1, 3


def main_text(module: Any) -> str | None:
    """The bytecode of the library's main, as text; None where the runtime does not print it."""
    try:
        text = relax.VMExecutable(module).as_text()
    except Exception:  # noqa: BLE001 - no executable to print: the caller falls back to batch 1
        return None
    start = text.find("@main:")
    if start < 0:
        return None
    end = text.find("\n@", start + 1)
    return text[start:] if end < 0 else text[start:end]


def fixed_batch(text: str | None, param: int) -> int | None:
    """The batch size main's parameter number `param` is fixed to (axis 0), None if symbolic; 1 where
    `text` (main_text) shows no readable check of that parameter: batch 1 is what every library runs."""
    for m in _MATCH_SHAPE.finditer(text or ""):
        register, ndim, code, value = (int(g) for g in m.groups())
        if register == param and ndim >= 1:
            if code == ASSERT_EQUAL_TO_IMM:
                return value
            return None if code in (STORE_TO_HEAP, ASSERT_EQUAL_TO_LOAD) else 1
    return 1


# ----------------------------------------------------------------------------------------------
# The backend


class TVMLibraryFolderBackend(TVMTensors, OptimumBackend):
    name = "tvm-libs"

    def __init__(self, checkpoint: Checkpoint, folder: str | os.PathLike, fp16: bool | None = None) -> None:
        _threads.quiet_blas_threads()  # (TVMTensors.encode)
        dims = checkpoint.dims
        self.folder, self.device = Path(folder), tvm.cpu()
        self.vms: dict[str, relax.VirtualMachine] = {}
        self.order: dict[str, list[str]] = {}  # part -> Optimum input names in main's parameter order
        self.bound_by: dict[str, str] = {}  # part -> "name" or "order"
        bindings: dict[str, PartBinding] = {}
        for part, path in find_libraries(self.folder, fp16).items():
            try:
                module = load_module(path)
                vm = relax.VirtualMachine(module, self.device, allocator_for(part))
            except LibraryMismatchError as e:  # checked before dlopen, or refused by TVM: names the file
                raise OnnxFolderError(str(e)) from None
            except Exception as e:  # noqa: BLE001 - a library but no Relax VM: say which file
                raise OnnxFolderError(f"{path}: not a TVM Relax library this runtime can load "
                                      f"({str(e).splitlines()[0][:200]})") from e
            names = param_names(vm)
            if names is not None:
                self.order[part], self.bound_by[part] = bind_by_name(part, path, names, dims), "name"
            else:
                self.order[part], self.bound_by[part] = bind_by_order(part, path, function_arity(vm), dims), "order"
            specs = {s.name: s for s in layout.inputs(part, dims, cache_position=True,
                                                     past_encoder_hidden_states=True)}
            inputs = {n: _info(specs[n], dims) for n in self.order[part]}
            outputs = {s.name: _info(s, dims) for s in layout.outputs(part, dims)}
            bindings[part] = PartBinding(part, path, inputs, outputs)
            self.vms[part] = vm
            if part != layout.ENCODER:  # encode takes one window: only the decoders' batch matters
                self._limit_batch(path, fixed_batch(main_text(module), self.order[part].index("input_ids")))
        super().__init__(dims, bindings)

    def _limit_batch(self, path: Path, batch: int | None) -> None:
        """Lower max_batch to what the library at `path` takes (batch: its fixed batch_size, or None)."""
        if batch is None:
            return
        if batch != 1:  # it would run exactly `batch` rows, never one: refused rather than half-supported
            raise OnnxFolderError(f"{path}: compiled for batch_size {batch}; this backend runs decoder "
                                  "libraries of batch 1 (the seed's) or of a symbolic batch_size")
        self.max_batch, self.batch_limit = 1, self.batch_limit or path  # the first such library is named

    @property
    def variant(self) -> dict[str, bool]:
        """The Optimum variant the libraries were exported as (read off main's parameters)."""
        return {"cache_position": self.bindings[layout.DECODER].takes("cache_position"),
                "past_encoder_hidden_states": self.bindings[layout.DECODER_WITH_PAST].takes("encoder_hidden_states")}

    def _expected_shapes(self, part: str, feeds: dict[str, Any]) -> list[tuple[int, ...]]:
        d = self.dims
        n = int(feeds["input_ids"].shape[1]) if "input_ids" in feeds else 0
        batch = int(feeds["input_ids" if "input_ids" in feeds else "input_features"].shape[0])
        past = int(feeds["past_key_values.0.decoder.key"].shape[2]) if part == layout.DECODER_WITH_PAST else 0
        sizes = {"batch_size": batch, "decoder_sequence_length": n, "past_decoder_sequence_length + 1": past + 1}
        shapes = []
        for spec in layout.outputs(part, d):
            what = spec.what or ("",) * len(spec.shape)
            shapes.append(tuple(s if isinstance(s, int) else getattr(d, w) if w else sizes[s]
                                for s, w in zip(spec.shape, what, strict=True)))
        return shapes

    def _run(self, part: str, feeds: dict[str, Any], outputs: list[str]) -> list[Any]:
        path = self.bindings[part].path
        try:
            result = self.vms[part]["main"](*(feeds[name] for name in self.order[part]))
        except Exception as e:  # noqa: BLE001 - the VM checks each argument's dtype and shape on entry
            raise OnnxFolderError(f"{path}: the library refused its inputs "
                                  f"({', '.join(self.order[part])}): {e}") from e
        specs = layout.outputs(part, self.dims)
        result = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)  # one output, or an Array
        if len(result) != len(specs):
            raise OnnxFolderError(f"{path}: main returned {len(result)} outputs, an Optimum {part} of these dims "
                                  f"returns {len(specs)} ({specs[0].name}, then "
                                  f"{len(specs) - 1} present.* tensors, n_text_layer = {self.dims.n_text_layer})")
        for i, (spec, got, want) in enumerate(zip(specs, result, self._expected_shapes(part, feeds), strict=True)):
            if tuple(got.shape) != want:
                raise OnnxFolderError(f"{path}: output {i} (Optimum's {spec.name}) has shape {list(got.shape)}, "
                                      f"expected {list(want)}: compiled for other dims, or outputs out of order")
        by_name = {spec.name: r for spec, r in zip(specs, result, strict=True)}
        return [by_name[name] for name in outputs]

