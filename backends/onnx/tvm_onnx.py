"""The Optimum folder compiled by TVM: `tvm.relax.frontend.onnx.from_onnx`, one library per graph.

    TVMOnnxBackend(checkpoint)                     # exports the checkpoint, compiles (cached), runs
    TVMOnnxBackend(checkpoint, onnx_dir="optimum-folder/")

This is the seed's route (Optimum ONNX -> TVM Relax -> .so), done so that it can be checked:
- inputs are bound by name (protocol.py), never by position, and the folder is checked first (folder.py);
- a folder whose decoders come as decoder_model_merged alone is compiled as the two decoders its If holds
  (split.py: TVM 0.27's importer cannot import the If); a folder with both forms uses the separate files;
- weights are library parameters (`keep_params_in_input=True`), read from the ONNX initializers at load
  time: a library depends on the graph, not the weights, and its cache key hashes the graph without
  the initializer values (plus the schedules' source, target and TVM version). What the graph computes
  from the weights alone (the tied embedding's transpose for the logits: 80 MB for tiny.en, 88 ms of a
  100 ms decode step by `profile_calls`, the VM's instrumentation; bias reshapes; an fp16 export's casts of
  its biases and gains) is lifted by LiftTransformParams into `main_transform_params`, run once at load;
- a float32 export's matmul weights whose values float16 holds exactly (tiny.en's: its checkpoint is
  float16) are stored as float16 and widened inside the kernels (`narrow_exact`, before the import): the
  decode step's logits read 40 MB instead of 80 MB, with the same numbers summed in float32;
- an fp16 export is computed in float32 (`schedule_rules.compute_in_float32`, before the lift): its matmul
  weights stay float16 in memory and are widened inside the kernels, everything else computes in float32
  (TVM's float16 arithmetic put tiny.en's encoder 0.108 of its scale from the float32 model);
- the graph inputs are specialised before import: the encoder length fixed to n_audio_ctx (Optimum names
  that axis "encoder_sequence_length / 2", which TVM parses as an expression it cannot compute from any
  input), and the encoder's batch fixed to 1 (`encode` takes one window). The decoders keep batch_size
  symbolic, so one library runs any number of rows; everything else is static but the self-KV length;
- a warm start reads no ONNX file: each part's library, its transformed weights (the outputs of
  `main_transform_params`, written once into the library folder and memory-mapped) and its signature are
  found through a start record that the ONNX folder's stat stamps vouch for (start_record.py); onnx is
  imported only when a file must be read (0.3 s to ready for tiny.en, against 2.2-2.4 s);
- compiled libraries are cached like the native backend's: checked against their record before they are
  loaded, compiled under the folder's lock (backends/cache.py). A cached library is loaded and run as the
  native backend's are, by tvm-ffi and libtvm_runtime (runtime.VM): a warm start never imports the compiler
  (`import tvm`, ~0.9 s); `graph_key` describes the host without it (library.host_key);
- TVM_NUM_THREADS is set (to the CPUs this process may use) before tvm is imported, as backends/tvm does:
  the runtime uses one thread otherwise.
- rows are moved by `gather_rows`: one tensor-to-tensor copy per run of consecutive rows, through views of
  the TVM tensors (no numpy round trip, no Python loop over elements).
- the kernels are scheduled by backends/tvm/schedule_rules.py (attentions fused into one function each,
  then legalize, fuse, `schedule_for_cpu`): TVM's default lowering of an imported graph is unscheduled
  (~1.7 GFLOP/s; 40 s for the 11 s JFK clip), scheduled it runs about as fast as the native backend.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# isort: off
# backends.tvm sets TVM_NUM_THREADS, which the runtime reads once, when tvm is imported: it comes first.
from whisperkv.backends.tvm import threads as _threads
from whisperkv.backends.tvm import runtime
from whisperkv.backends.tvm.library import host_key, load_module, rules_digest  # no compiler: tvm-ffi only
from whisperkv.backends.tvm.runtime import ALLOCATOR_NAME, POOLED_ALLOCATOR_NAME  # see allocator_for
# isort: on

if TYPE_CHECKING:  # the compiler (tvm, relax, schedule_rules) is imported only to compile; onnx only to read a
    import onnx  # file, which a warm start does not (start_record.py)
    import tvm

from whisperkv.reference.dims import ModelDims
from whisperkv.reference.weights import Checkpoint

from ..cache import CacheError, cached, workspace  # noqa: E402
from . import layout, split  # noqa: E402
from .cache import cache_dir, exported_folder  # noqa: E402
from .folder import PartBinding, Signature, check_part  # noqa: E402
from .protocol import OptimumBackend  # noqa: E402
from .start_record import SharedParams, StartRecord, folder_stamps, start_key  # noqa: E402

# bump when the way libraries are built or called changes (2: the decoders' batch_size left symbolic;
# 3: scheduled by backends/tvm/schedule_rules.py, weight transforms lifted into main_transform_params;
# fp16 graphs computed in float32 and wide products read as column panels since: the cache key hashes
# schedule_rules.py, so no bump was needed)
LIBRARY_FORMAT = 3
TRANSFORM_PARAMS = "main_transform_params"  # run once at load: what the graph computes from weights alone


def specialize(model: onnx.ModelProto, dims: ModelDims, batch: int | None = 1) -> onnx.ModelProto:
    """Fix the encoder-length axes to n_audio_ctx in the graph inputs (in place), and batch_size to `batch`
    (None: left symbolic, for a library that runs any number of rows)."""
    fixed = {"encoder_sequence_length / 2": dims.n_audio_ctx, "encoder_sequence_length_out": dims.n_audio_ctx}
    if batch is not None:
        fixed["batch_size"] = batch
    for value in model.graph.input:
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in fixed:
                d.dim_value = fixed[d.dim_param]  # setting dim_value clears dim_param (a oneof)
    return model


def float16_exactly(w: np.ndarray) -> np.ndarray | None:
    """`w` (float32) as float16 if float16 holds every value exactly, else None (infinities and NaN: None).
    Decided on the bits (numpy's float16 round trip of a whole weight took ~0.5 s for tiny.en's decoder, on
    every load): a float32 value is a float16 normal when its 13 low mantissa bits are zero and its
    magnitude within [2^-14, 65504], and ±0 is exact; the few smaller values (float16 subnormals, or no
    float16 at all) are decided by the round trip, one by one."""
    bits = np.ascontiguousarray(w, np.float32).view(np.uint32)
    if (bits & 0x1FFF).any():  # more mantissa than float16's 10 bits: the common refusal, in one pass
        return None
    magnitude = bits & 0x7FFFFFFF
    if magnitude.max(initial=0) > 0x477FE000:  # 65504, float16's largest (infinities and NaN above it)
        return None
    # nonzero magnitudes below 2^-14 (a zero wraps to the largest): float16 subnormals or none, a few values
    # of a trained matrix, decided by the round trip
    small = bits[(magnitude - np.uint32(1)) < 0x38800000 - 1].view(np.float32)
    if not np.array_equal(small.astype(np.float16).astype(np.float32), small):
        return None
    return w.astype(np.float16)


def narrow_exact(model: onnx.ModelProto, seen: dict[str, tuple[bytes, bytes | None]] | None = None) -> list[str]:
    """Store as float16 (in place) every float32 initializer that a MatMul reads, directly or through
    Transposes read only by MatMuls, and whose values float16 holds exactly; -> their names, graph order.

    Why: tiny.en's checkpoint is float16, so its float32 export holds float16 values in float32: the decode
    step's logits gemv read 80 MB of them per step where 40 MB hold the same numbers. Exact, so the project's
    rule (float16 storage only where the checkpoint is float16) holds: a weight with one value float16 cannot
    hold stays float32. The rewritten graph is for TVM's import only: each such MatMul is written as the fp16
    export writes its products (its other operands Cast to float16, its result Cast back to float32), which
    schedule_rules.compute_in_float32 (import_graph) turns into a float32 product whose float16 weight is
    widened inside the kernel: the casts of float32 values are dropped, so no activation is ever rounded,
    and the product sums in float32 what the float32 graph summed. Another reader of a narrowed weight
    (the token embedding's Gather) reads it as float16 and widens what it read (exact); any other reads a
    float32 copy (a cast of weights only: lifted into main_transform_params, run once at load).

    `seen`: name -> (float32 bytes, float16 bytes or None), shared by the calls for one folder's graphs."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def products_only(name: str) -> bool:  # every reader a MatMul, or a Transpose whose readers all are
        return bool(readers.get(name)) and all(
            n.op_type == "MatMul" or (n.op_type == "Transpose" and products_only(n.output[0]))
            for n in readers[name])

    def feeds_a_product(name: str) -> bool:
        return any(n.op_type == "MatMul" or (n.op_type == "Transpose" and products_only(n.output[0]))
                   for n in readers.get(name, ()))

    narrowed: list[str] = []
    for i, t in enumerate(g.initializer):
        if t.data_type != onnx.TensorProto.FLOAT or not feeds_a_product(t.name):
            continue
        if t.HasField("raw_data") and not t.external_data:
            # the stored bytes read in place (little-endian float32, ONNX's raw_data); a weight another graph
            # of the folder holds too (the decoders share theirs) is decided once: equal bytes, same answer
            raw = t.raw_data
            if seen is not None and t.name in seen and seen[t.name][0] == raw:
                half_bytes = seen[t.name][1]
            else:
                half = float16_exactly(np.frombuffer(raw, "<f4").reshape(t.dims))
                half_bytes = None if half is None else half.astype("<f2", copy=False).tobytes()
                if seen is not None:
                    seen[t.name] = (raw, half_bytes)
            if half_bytes is None:
                continue
            t.data_type, t.raw_data = onnx.TensorProto.FLOAT16, half_bytes
        else:
            half = float16_exactly(numpy_helper.to_array(t))
            if half is None:
                continue
            g.initializer[i].CopyFrom(numpy_helper.from_array(half, t.name))
        narrowed.append(t.name)
    if not narrowed:
        return narrowed
    half_values = set(narrowed)  # float16 names now: the weights and their Transposes read by products
    for node in g.node:
        if node.op_type == "Transpose" and node.input[0] in half_values and products_only(node.output[0]):
            half_values.add(node.output[0])
    nodes: list[onnx.NodeProto] = []
    wide: dict[str, str] = {}
    cast = onnx.helper.make_node

    def widened(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """`node` giving float16, then the Cast back to its float32 output. The Cast takes the node's name:
        verify's probe exposes a named node's output (reference/checks/onnx_probe.py), the float32 one."""
        out, name = node.output[0], node.name
        node.output[0], node.name = f"{out}.f16", f"{name}.f16" if name else ""
        return [node, cast("Cast", [node.output[0]], [out], name=name or None, to=onnx.TensorProto.FLOAT)]

    for node in g.node:
        if node.op_type == "MatMul" and half_values & set(node.input):
            for k, name in enumerate(node.input):
                if name not in half_values:  # the activation: a cast compute_in_float32 drops
                    nodes.append(cast("Cast", [name], [f"{node.output[0]}.in{k}.f16"], to=onnx.TensorProto.FLOAT16))
                    node.input[k] = nodes[-1].output[0]
            nodes += widened(node)
        elif node.op_type == "Gather" and node.input[0] in half_values:  # rows read as float16, then widened
            nodes += widened(node)
        elif node.op_type == "Transpose" and node.output[0] in half_values:
            nodes.append(node)
        else:
            for k, name in enumerate(node.input):
                if name in half_values:  # a float32 copy (one per weight), made once at load
                    if name not in wide:
                        wide[name] = f"{name}.f32"
                        nodes.append(cast("Cast", [name], [wide[name]], to=onnx.TensorProto.FLOAT))
                    node.input[k] = wide[name]
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    stale = half_values - set(narrowed)  # declared float32 by the file: no longer true
    kept = [v for v in g.value_info if v.name not in stale]
    del g.value_info[:]
    g.value_info.extend(kept)
    return narrowed


def graph_key(model: onnx.ModelProto, machine: Any = None) -> str:
    """A hash of everything a compiled library depends on: nodes, inputs, outputs, the initializers'
    names, dtypes and shapes (not their values), the schedules' source, the machine and TVM's version.
    Hashed after narrow_exact: which weights it stored as float16 is in their dtypes and the casts it
    added, so a graph whose weights float16 cannot hold never loads a library built for narrowed ones.
    `machine`: this host (library.host_key: its CPU and threads, what host_target compiles for), or a
    target given to the compiler instead. Computed without the compiler: a warm start never imports it."""
    h = hashlib.sha256(json.dumps(_graph_independent_key(machine)).encode())
    g = model.graph
    for item in (*g.node, *g.input, *g.output):
        h.update(item.SerializeToString(deterministic=True))
    for t in g.initializer:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)}".encode())
    return h.hexdigest()[:24]


def _graph_independent_key(machine: Any = None) -> list[Any]:
    return [LIBRARY_FORMAT, rules_digest(), str(machine) if machine is not None else host_key(),
            runtime.tvm_version()]


def weights_digest(model: onnx.ModelProto) -> str:
    """sha256 of the initializers' names, dtypes, shapes and values, in graph order (after narrow_exact: the
    values as stored): with graph_key, what `main_transform_params`' outputs depend on."""
    from onnx import numpy_helper

    h = hashlib.sha256()
    for t in model.graph.initializer:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)}".encode())
        h.update(t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes())
    return h.hexdigest()


def import_graph(model: onnx.ModelProto, keep_params: bool = True, target: tvm.target.Target | None = None
                 ) -> tvm.IRModule:
    """from_onnx, then the passes every library gets before scheduling. keep_params: the weights are
    parameters (the first `num_input` of main's are the graph inputs) and whatever the graph computes from
    them alone (the tied embedding's transpose, fp16 -> fp32 casts of biases and gains, bias reshapes) is
    lifted into `main_transform_params`, run once at load instead of on every call; otherwise they are
    constants and FoldConstant computes those transforms at build time. Float16 computation becomes float32
    first (schedule_rules.compute_in_float32), so that the casts it adds to weights are lifted too. With a
    `target`, the wide products of the weights (the logits) read them as column panels, packed at load too
    (schedule_rules.pack_wide_matmuls)."""
    from tvm import relax
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.onnx import from_onnx

    from whisperkv.backends.tvm import schedule_rules

    with warnings.catch_warnings():  # one "Renaming name a.b to a_b" per dotted tensor name
        warnings.simplefilter("ignore", UserWarning)
        mod = from_onnx(model, keep_params_in_input=keep_params)
    if keep_params:
        mod, _ = detach_params(mod)  # the weights are passed at run time
    mod = relax.transform.DecomposeOpsForInference()(mod)
    # float32 compute for an fp16 export before the lift: the casts of small weights (biases, gains) that
    # meet float32 activations are then lifted and run once at load; the matmul weights stay float16 and
    # are widened inside the kernels (schedule_rules.compute_in_float32)
    mod = schedule_rules.compute_in_float32(mod)
    mod = schedule_rules.channels_last_convs(mod)  # before the lift: the weights' transposes run at load
    if target is not None:
        mod = schedule_rules.pack_wide_matmuls(mod, target)
    if keep_params:
        mod = relax.transform.LiftTransformParams()(mod)
    return mod


def scheduled_module(model: onnx.ModelProto, target: tvm.target.Target, keep_params: bool = True) -> tvm.IRModule:
    """The graph imported, legalized, fused and scheduled for `target` (schedule_rules), ready for tvm.compile."""
    from whisperkv.backends.tvm import schedule_rules

    mod = schedule_rules.prepare(import_graph(model, keep_params, target))
    return schedule_rules.schedule_for_cpu(mod, target)


def prepare_part(part: str, model: onnx.ModelProto, dims: ModelDims,
                 seen: dict[str, tuple[bytes, bytes | None]] | None = None) -> list[str]:
    """`model` (in place) as this backend compiles it: specialised (the encoder to batch 1) and its float16-exact
    weights narrowed (narrow_exact); -> the narrowed initializers' names."""
    specialize(model, dims, batch=1 if part == layout.ENCODER else None)
    return narrow_exact(model, seen)


def build(model: onnx.ModelProto, target: tvm.target.Target) -> Any:
    """Import, schedule and compile one graph (weights as parameters) -> its executable, in memory."""
    import tvm

    return tvm.compile(scheduled_module(model, target), target)


def compile_graph(model: onnx.ModelProto, path: Path, target: tvm.target.Target,
                  workspace_dir: Path | None = None) -> float:
    """`build` and export one graph to `path` (atomically); returns the seconds it took.
    `workspace_dir`: where the compiler puts its intermediate files (default: a system temp folder)."""
    from whisperkv.backends.tvm.compile import write_library

    t0 = time.perf_counter()
    write_library(build(model, target), path, workspace_dir)
    return time.perf_counter() - t0


def transformed_weights(module: Any, model: onnx.ModelProto) -> list[Any]:
    """`main_transform_params` of a built graph (its runtime module) on its weights: what `main` takes after
    its inputs. Run on a VM of its own that frees with malloc: a pooled VM would keep the transform's
    temporaries (copies, packed panels) for the process's life (tiny.en's three graphs: +80 MB resident)."""
    return list(runtime.VM(module, ALLOCATOR_NAME)[TRANSFORM_PARAMS](weights_of(model)))


def allocator_for(part: str) -> str:
    """The memory allocator of one part's Relax VM. The decode step (decoder_with_past_model) frees every
    buffer with its last use (runtime.ALLOCATOR_NAME: its self K/V grow a position a step, so a pool of
    freed sizes would only grow). The encoder and the prefill (decoder_model) ask for the same sizes call
    after call, so theirs are pooled: a prefill's outputs are the rows' cross K/V, 18 MB per row for
    tiny.en, and malloc'ed afresh they page-fault on every call (6 rows: 30,000 faults, 234-505 ms against
    188-193 ms pooled, tiny.en, Zen 3, 2 threads). The pool holds each size seen once: a file's batches
    of rows have two sizes, the full batch and the last."""
    return ALLOCATOR_NAME if part == layout.DECODER_WITH_PAST else POOLED_ALLOCATOR_NAME


def profile_calls(vm: Any, run: Any) -> dict[str, tuple[int, float]]:
    """Call `run()` (which calls into `vm`) with the Relax VM's instrumentation on: symbol -> (calls, seconds),
    every kernel and builtin the VM called, most expensive first. (TVM 0.27's VM has no `profile`; this is
    what found the per-call weight transposes and casts that `main_transform_params` now does once.)"""
    spent: dict[str, list] = {}
    started: dict[str, float] = {}

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            started[symbol] = time.perf_counter()
        else:
            entry = spent.setdefault(symbol, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - started[symbol]
        return 0  # VMInstrumentReturnKind.kNoOp: run the call as usual

    set_instrument = vm.module["set_instrument"]  # a backend's runtime.VM, or a relax.VirtualMachine
    set_instrument(instrument)
    try:
        run()
    finally:
        set_instrument(None)
    return {k: (v[0], v[1]) for k, v in sorted(spent.items(), key=lambda kv: -kv[1][1])}


def gather_rows(picks: Sequence[tuple[Any, int]], like: Any) -> Any:
    """A new TVM tensor whose row i is row picks[i][1] of tensor picks[i][0] (axis 0), with the row shape
    and dtype of `like`. One copy per run of consecutive rows of one source, between views of the two
    allocations: the rows never leave TVM's memory (a beam reorder or a dropped row is a few memcpys)."""
    row_shape = tuple(like.shape[1:])
    out = runtime.empty((len(picks), *row_shape), str(like.dtype))
    row_bytes = int(np.prod(row_shape)) * np.dtype(str(like.dtype)).itemsize
    i = 0
    while i < len(picks) and row_bytes:  # rows of no elements (self slots of length 0): nothing to copy
        source, first = picks[i]
        n = 1
        while i + n < len(picks) and picks[i + n][0] is source and picks[i + n][1] == first + n:
            n += 1
        view = (n, *row_shape)
        runtime.copy_into(runtime.view(out, view, i * row_bytes), runtime.view(source, view, first * row_bytes))
        i += n
    return out


class TVMTensors:
    """The native-array half of an engine whose arrays are TVM tensors (tvm-ffi's, on the CPU)."""

    def encode(self, mel: np.ndarray) -> Any:
        # numpy's OpenBLAS at one thread, as the native backend has it (threads.quiet_blas_threads): after
        # the log-mel's BLAS calls its workers busy-wait ~0.1 s on the cores the encoder's pool needs (JFK's
        # one encode per run took 348-382 ms in bench.py against 296-314 for a 172 s window's). The engines'
        # __init__ call it too; here for an OpenBLAS loaded since (scipy's).
        _threads.quiet_blas_threads()
        return super().encode(mel)  # type: ignore[misc]

    def _native(self, x: np.ndarray) -> Any:
        return runtime.tensor(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return runtime.to_numpy(x)

    def _take(self, x: Any, rows: list[int]) -> Any:
        return gather_rows([(x, r) for r in rows], x)

    def _stack(self, xs: Sequence[Any]) -> Any:
        return gather_rows([(x, 0) for x in xs], xs[0])


def weights_of(model: onnx.ModelProto) -> list[Any]:
    """The initializers, in graph order: the order from_onnx appends them to main's parameters."""
    from onnx import numpy_helper

    return [runtime.as_tensor(np.ascontiguousarray(numpy_helper.to_array(t))) for t in model.graph.initializer]


class TVMOnnxBackend(TVMTensors, OptimumBackend):
    name = "tvm-onnx"

    def __init__(self, checkpoint: Checkpoint, onnx_dir: str | os.PathLike | None = None, fp16: bool | None = None,
                 library_dir: str | os.PathLike | None = None, quiet: bool = True) -> None:
        _threads.quiet_blas_threads()  # (TVMTensors.encode)
        folder = Path(onnx_dir) if onnx_dir is not None else exported_folder(checkpoint, fp16=bool(fp16), quiet=quiet)
        self.folder = folder
        library_dir = Path(library_dir) if library_dir is not None else cache_dir() / "tvm-onnx"
        self.compile_seconds: dict[str, float] = {}  # parts compiled by this instance (cache misses)
        self.vms: dict[str, runtime.VM] = {}
        self.params: dict[str, list[Any]] = {}
        self.inputs: dict[str, list[str]] = {}
        self.narrowed: dict[str, list[str]] = {}  # part -> float32 initializers stored as float16 (narrow_exact)
        self.warm_parts: list[str] = []  # parts started from their start record (start_record.py): no file read
        self._shared = SharedParams(library_dir)
        self._params_file: dict[str, str] = {}  # part -> its params file (in the library folder)
        dims = checkpoint.dims
        bindings: dict[str, PartBinding] = {}
        files = split.part_files(folder, fp16)
        self._part_order = [part for part, _ in files]
        keys = {part: start_key([*_graph_independent_key(), dims.key()], part) for part, _ in files}
        cold: dict[str, Path] = {}
        for part, path in files:
            record = StartRecord.find(library_dir, path, part, keys[part])
            if record is None or not self._start_warm(part, path, record, library_dir, dims, bindings):
                cold[part] = path
        if cold:
            seen: dict[str, tuple[bytes, bytes | None]] = {}  # the decoders' shared weights, decided once
            # stamped before anything is read: a file written while this start reads it leaves a stale record
            stamps = {path: folder_stamps(path) for path in set(cold.values())}
            # decoder_model_merged alone is compiled as its two branches (split.py): TVM cannot import its If
            for part, path, model, bindings[part] in split.parts(folder, dims, fp16, only=set(cold)):
                record = self._start_cold(part, path, model, bindings[part], library_dir, dims, seen, quiet)
                if record is not None:
                    record.write(library_dir, path, part, keys[part], stamps[path])
        super().__init__(dims, bindings)

    def _start_warm(self, part: str, path: Path, record: StartRecord, library_dir: Path, dims: ModelDims,
                    bindings: dict[str, PartBinding]) -> bool:
        """One part from its start record: the library loaded, the transformed weights mapped; False when the
        params file, or one it refers to, fails (the part then starts cold, which writes its own again)."""
        params = self._shared.tensors(record.params)
        if params is None:
            return False
        bindings[part] = check_part(part, path, record.signature, dims)  # the file's signature against these dims
        self.vms[part] = runtime.VM(load_module(library_dir / record.library), allocator_for(part))
        self.params[part] = params
        self._params_file[part] = record.params
        self.inputs[part] = [t.name for t in record.signature.inputs]
        self.narrowed[part] = record.narrowed
        self.warm_parts.append(part)
        return True

    def _start_cold(self, part: str, path: Path, model: onnx.ModelProto, binding: PartBinding, library_dir: Path,
                    dims: ModelDims, seen: dict[str, tuple[bytes, bytes | None]], quiet: bool) -> StartRecord | None:
        """One part from its file: prepared, its library compiled on a miss, its transformed weights written
        into the library folder and mapped (kept in memory when that folder cannot be written: then no
        record) -> its start record, to be written."""
        narrowed = self.narrowed[part] = prepare_part(part, model, dims, seen)
        library = library_dir / f"{part}-{graph_key(model)}.so"  # graph_key hashes narrow_exact's choice
        cached(library, partial(self._compile, part, path, model, library, quiet), what="compiled library",
               quiet=quiet)
        module = load_module(library)
        self.vms[part] = runtime.VM(module, allocator_for(part))
        initializers = {t.name for t in model.graph.initializer}
        self.inputs[part] = [v.name for v in model.graph.input if v.name not in initializers]
        params = library.with_name(f"{library.stem}-w{weights_digest(model)[:16]}.params")
        earlier = [self._params_file[p] for p in self._part_order[: self._part_order.index(part)]
                   if p in self._params_file]

        def write_params() -> None:
            arrays = [np.from_dlpack(t) for t in transformed_weights(module, model)]
            self._shared.write(params.name, arrays, earlier, {"part": part, "library": library.name})

        tensors = self._shared.tensors(params.name)  # (one whose record holds: a touched folder, same weights)
        if tensors is None:
            try:
                cached(params, write_params, what="transformed weights", quiet=quiet, force=params.exists())
            except CacheError:  # a cache that cannot be written: the weights in memory, no record
                self.params[part] = transformed_weights(module, model)
                return None
            tensors = self._shared.tensors(params.name)
            if tensors is None:
                raise CacheError(f"{params}: written, but not readable back")
        self.params[part] = tensors
        self._params_file[part] = params.name
        signature = Signature(tuple(binding.inputs.values()), tuple(binding.outputs.values()))
        return StartRecord(library.name, params.name, signature, narrowed)

    @functools.cached_property
    def target(self) -> tvm.target.Target:
        """This host's llvm target: only to compile (it imports the compiler); graph_key describes the host
        without it."""
        from whisperkv.backends.tvm.compile import host_target

        return host_target()

    def _compile(self, part: str, source: Path, model: onnx.ModelProto, library: Path, quiet: bool) -> None:
        if not quiet:
            print(f"whisperkv: compiling {source.name} with TVM ...", file=sys.stderr, flush=True)
        with workspace(library.parent) as ws:
            self.compile_seconds[part] = compile_graph(model, library, self.target, ws)

    def compile_copy(self, part: str, model: onnx.ModelProto) -> tuple[runtime.VM, list[Any]]:
        """A copy of one part's graph (verify's probe adds graph outputs to it: reference/checks/onnx_probe.py)
        compiled as this backend compiles its own, in memory -> (its VM, its weights transformed once)."""
        prepare_part(part, model, self.dims)
        module = build(model, self.target).mod  # the Executable's runtime module
        return runtime.VM(module, allocator_for(part)), transformed_weights(module, model)

    def _run(self, part: str, feeds: dict[str, Any], outputs: list[str]) -> list[Any]:
        # main's parameters: the graph inputs in file order, then the weights; outputs in file order.
        args = [feeds[name] for name in self.inputs[part]]
        result = self.vms[part]["main"](*args, *self.params[part])
        produced = [o.name for o in self.bindings[part].outputs.values()]
        result = [result] if len(produced) == 1 else list(result)
        by_name = dict(zip(produced, result, strict=True))
        return [by_name[name] for name in outputs]
