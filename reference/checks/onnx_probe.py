"""The operation-level localisation of candidates that run an ONNX graph: the divergent call re-run through a
copy of the candidate's own graph in which the operations are graph outputs (what Polygraphy's "mark all"
does), matched to the reference's intermediates (checks/hooked.py) by node name.

whisperkv's exporter (backends/onnx/export.py) names the node that computes each of the reference's
intermediates after it: the LayerNormalization `decoder.blocks.0.attn_ln`, the query's bias Add
`decoder.blocks.0.attn.query`, the Softmax `decoder.blocks.0.attn.weights`, ... A graph none of whose node
names is one of the reference's (an Optimum export from PyTorch names its nodes `/model/decoder/layers.0/...`)
is not probed: its names are not recognised, the report says so, and the layer localisation stands.

Two engines are probed:
- onnxruntime (backends/onnx/ort.py, and `verify --candidate FOLDER` of .onnx files): the copy is loaded in
  a session of its own. A decoder_model_merged's branch is run as a graph of its own (a branch's values
  cannot be outputs of the enclosing graph).
- tvm-onnx (backends/onnx/tvm_onnx.py): the copy is compiled the way the candidate's library was
  (specialised, imported, scheduled, `tvm.compile`), seconds for tiny.en. TVM's own instrumentation cannot
  name operations: `VirtualMachine.set_instrument` sees each kernel call of the candidate's library, but the
  kernels are fused (an attention's scores and weights never exist in memory, a projection's bias and the
  residual after it are one kernel) and `from_onnx` keeps no node names (docs/verify.md, "Not yet").

The candidate's own protocol call runs (its feeds, dtypes, batch handling unchanged): for that call only, the
engine's session (or virtual machine) of each part is replaced by one that runs both the candidate's and the
copy on the same feeds, records the named outputs and returns the candidate's own. Where the copy's graph
outputs differ from the candidate's beyond the tolerance, the copy does not reproduce the candidate (a
compiled kernel whose fusion exposing intermediates changed, an optimiser's rewrite): no operation is named
then, and the report says why. Only the named nodes are exposed: the others are never compared, and each
exposed output is kept to the end of the run (tiny.en's encoder attention weights are 54 MB per layer).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .compare import close, distance, scale_of

# the prefixes export.merge_decoders gives a merged graph's branch nodes (decoder_model's, decoder_with_past's)
BRANCH_PREFIXES = ("no_past", "with_past")
_PROTOBUF_LIMIT = 2**31 - 2**24  # a serialised model over 2 GB must keep its weights in external files

NOT_RECOGNISED = ("operation-level localisation needs the node names of whisperkv's exporter (whisperkv "
                  "export-onnx); this graph's names are not recognised ({file}): the localisation above stands")


class NamesNotRecognised(Exception):
    """No node of the candidate's graph is named after one of the reference's intermediates."""


def probe_for(backend: Any) -> GraphProbe | None:
    """A probe for a backend that runs .onnx files in onnxruntime sessions or through tvm-onnx's libraries;
    None for any other (a folder of compiled libraries has no graph to name operations by)."""
    bindings = getattr(backend, "bindings", None)
    if not isinstance(bindings, dict) or not bindings:
        return None
    if any(Path(getattr(b, "path", "")).suffix != ".onnx" for b in bindings.values()):
        return None
    sessions = getattr(backend, "sessions", None)
    if isinstance(sessions, dict) and set(sessions) == set(bindings):
        return OrtProbe(backend)
    vms = getattr(backend, "vms", None)
    if isinstance(vms, dict) and set(vms) == set(bindings) and all(
            hasattr(backend, a) for a in ("inputs", "compile_copy")):
        return TvmOnnxProbe(backend)
    return None


def strip_branch(name: str) -> str:
    """A merged graph's branch node name -> the name its decoder gave it."""
    for prefix in BRANCH_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def reference_layout(name: str, x: np.ndarray) -> np.ndarray:
    """A graph's intermediate in the reference's layout: float32, and the convolutions' [1, d, t] as the
    reference's [t, d] (its conv1d is time-major); other size-1 axes are the comparison's business."""
    x = np.asarray(x)
    if x.dtype != np.float32 and np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)  # an fp16 graph's values, widened exactly
    if name.startswith("encoder.conv") and x.ndim == 3 and x.shape[0] == 1:
        x = x[0].T
    return x


def mark_named(model: Any, names: frozenset[str]) -> dict[str, str]:
    """Add the outputs of the nodes named after one of `names` to the graph's outputs (untyped: both engines
    infer the type, as for Polygraphy's marked outputs); -> reference name -> tensor."""
    named: dict[str, str] = {}
    for node in model.graph.node:
        name = strip_branch(node.name)
        if name in names and node.output and name not in named:
            named[name] = node.output[0]
    exposed = {o.name for o in model.graph.output}
    for tensor in named.values():
        if tensor not in exposed:
            model.graph.output.add().name = tensor
            exposed.add(tensor)
    return named


class GraphProbe:
    """Named intermediates of a candidate that runs ONNX graphs, for checks/diagnose.py's first_operation."""

    engine_attribute = ""  # the backend's dict part -> engine object, replaced during a probed call

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.names: frozenset[str] = frozenset()  # the reference's intermediates of the probed call
        self.tolerance = 0.0
        self.recorded: dict[str, np.ndarray] = {}
        self.unreproduced = ""  # where the copy's outputs differ from the candidate's: which, and by how much
        self.graph_outputs: dict[str, list[str]] = {}  # part -> its graph's outputs, in file order

    def intermediates(self, call: str, args: Sequence[Any], names: Sequence[str], tolerance: float
                      ) -> dict[str, np.ndarray]:
        """Run the backend's protocol call `call` on `args` with the graphs' nodes named after `names` exposed;
        -> name -> value (in the reference's layout), for those of `names` the graphs have. Raises
        NamesNotRecognised where no node of a graph the call runs is named after one of them; sets
        `unreproduced` where the copy's outputs differ from the candidate's by more than `tolerance`."""
        self.names, self.tolerance, self.recorded, self.unreproduced = frozenset(names), tolerance, {}, ""
        engines = getattr(self.backend, self.engine_attribute)
        saved = dict(engines)
        try:
            for part, engine in saved.items():
                engines[part] = self.recording(part, engine)
            getattr(self.backend, call)(*(self.native(a) for a in args))
        finally:
            engines.clear()
            engines.update(saved)
        return {name: reference_layout(name, x) for name, x in self.recorded.items()}

    def recording(self, part: str, engine: Any) -> Any:
        raise NotImplementedError

    def native(self, x: Any) -> Any:
        """The reference's float arrays (features, slots; in lists too) as the engine's own, as the lockstep
        hands the candidate what it returned (TVM takes compact tensors, not numpy views); tokens stay numpy."""
        if isinstance(x, list | tuple):
            return type(x)(self.native(v) for v in x)
        convert = getattr(self.backend, "_native", None)
        if convert is not None and isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
            return convert(np.ascontiguousarray(x, np.float32))
        return x

    def load(self, part: str) -> Any:
        import onnx

        model = onnx.load(str(self.backend.bindings[part].path))
        self.graph_outputs.setdefault(part, [o.name for o in model.graph.output])
        return model

    def named_or_refuse(self, part: str, model: Any) -> dict[str, str]:
        named = mark_named(model, self.names)
        if not named:
            raise NamesNotRecognised(NOT_RECOGNISED.format(file=Path(self.backend.bindings[part].path).name))
        return named

    def check_reproduced(self, part: str, names: Sequence[str], theirs: Sequence[Any], ours: Sequence[Any]) -> None:
        """The copy's graph outputs against the candidate's, on the same feeds (the first that differs is kept)."""
        for name, c, o in zip(names, theirs, ours, strict=True):
            c, o = np.asarray(c, np.float32), np.asarray(o, np.float32)
            if not self.unreproduced and not close(c, o, self.tolerance):
                self.unreproduced = (f"{Path(self.backend.bindings[part].path).name} output {name}: max |Δ| "
                                     f"{distance(c, o):.3g} (scale {scale_of(c):.3g})")


# ----------------------------------------------------------------------------------------------
# onnxruntime


class _Session:
    """One graph (or one branch of a merged graph) with the named nodes' outputs as graph outputs."""

    def __init__(self, model: Any, named: dict[str, str], outputs: list[str], providers: list[str]) -> None:
        import onnxruntime as ort

        self.named = named  # reference name -> tensor
        self.outputs = outputs  # the copy's names of the original graph outputs, in file order
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only, as the backend's own sessions
        if model.ByteSize() < _PROTOBUF_LIMIT:
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
            return
        import onnx

        with tempfile.TemporaryDirectory(prefix="whisperkv-probe-") as tmp:  # onnxruntime reads it at load
            path = os.path.join(tmp, "model.onnx")
            onnx.save_model(model, path, save_as_external_data=True, location="weights")
            self.session = ort.InferenceSession(path, opts, providers=providers)


class _SessionRecording:
    """Stands in for the backend's session of one part during a probed call."""

    def __init__(self, probe: OrtProbe, part: str, original: Any) -> None:
        self.probe, self.part, self.original = probe, part, original

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any], *args: Any) -> list[Any]:
        theirs = self.original.run(output_names, input_feed, *args)
        copy, feeds = self.probe.instrumented(self.part, input_feed, self.original)
        names = [o.name for o in copy.session.get_outputs()]
        values = dict(zip(names, copy.session.run(None, feeds), strict=True))
        self.probe.recorded.update({ref: values[t] for ref, t in copy.named.items()})
        by_file = dict(zip(self.probe.graph_outputs[self.part], copy.outputs, strict=True))
        wanted = list(output_names) if output_names is not None else list(by_file)
        self.probe.check_reproduced(self.part, wanted, theirs, [values[by_file[o]] for o in wanted])
        return theirs


class OrtProbe(GraphProbe):
    engine_attribute = "sessions"

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        self._condition: dict[str, str | None] = {}  # part -> the input a merged graph's If branches on
        self._built: dict[tuple, _Session] = {}  # (part, branch, names) -> the instrumented copy

    def recording(self, part: str, engine: Any) -> Any:
        return _SessionRecording(self, part, engine)

    def load(self, part: str) -> Any:
        model = super().load(part)
        ifs = [n for n in model.graph.node if n.op_type == "If"]
        inputs = {i.name for i in model.graph.input}
        self._condition.setdefault(part, ifs[0].input[0] if len(ifs) == 1 and ifs[0].input[0] in inputs else None)
        return model

    def instrumented(self, part: str, feeds: dict[str, Any], original: Any) -> tuple[_Session, dict[str, Any]]:
        """The instrumented copy of `part` these feeds run (of a merged graph, the branch they select), and the
        feeds it takes."""
        model = self.load(part) if part not in self.graph_outputs else None
        branch, condition = "", self._condition[part]
        if condition is not None and condition in feeds:
            branch = "then_branch" if bool(np.asarray(feeds[condition]).ravel()[0]) else "else_branch"
            feeds = {k: v for k, v in feeds.items() if k != condition}
        key = (part, branch, self.names)
        if key not in self._built:
            # (the loaded model becomes the copy: nothing else holds it, and its weights are not copied twice)
            model = model if model is not None else self.load(part)
            outputs = self.graph_outputs[part]
            if branch:
                outputs = _lift_branch(model, branch)
            named = self.named_or_refuse(part, model)
            providers = list(original.get_providers()) if hasattr(original, "get_providers") else [
                "CPUExecutionProvider"]
            self._built[key] = _Session(model, named, outputs, providers)
        return self._built[key], feeds


def _lift_branch(model: Any, branch: str) -> list[str]:
    """A merged graph -> its If's `branch` as the graph, reading the enclosing graph's inputs (the condition
    dropped) and initializers; -> the branch's names of the If's outputs, in order."""
    import onnx

    g = model.graph
    at = next(i for i, n in enumerate(g.node) if n.op_type == "If")
    sub = onnx.GraphProto()
    sub.CopyFrom(next(a.g for a in g.node[at].attribute if a.name == branch))
    condition = g.node[at].input[0]
    del g.node[at]
    g.node.extend(sub.node)
    del g.input[next(i for i, v in enumerate(g.input) if v.name == condition)]
    del g.output[:]
    g.output.extend(sub.output)
    return [o.name for o in sub.output]


# ----------------------------------------------------------------------------------------------
# tvm-onnx


class _Library:
    """The copy compiled as backends/onnx/tvm_onnx.py compiles the candidate's graph."""

    def __init__(self, backend: Any, part: str, model: Any, named: dict[str, str], n_outputs: int) -> None:
        # The backend compiles it (checks never import a backend): its VM and its weights, transformed once.
        self.vm, self.params = backend.compile_copy(part, model)
        exposed = [o.name for o in model.graph.output]
        self.named = {ref: exposed.index(t) for ref, t in named.items()}  # reference name -> output index
        self.n_outputs = n_outputs


class _VmRecording:
    """Stands in for the backend's virtual machine of one part during a probed call: its `main`."""

    def __init__(self, probe: TvmOnnxProbe, part: str, original: Any) -> None:
        self.probe, self.part, self.original = probe, part, original

    def __getitem__(self, name: str) -> Any:
        return self.main if name == "main" else self.original[name]

    def main(self, *args: Any) -> Any:
        theirs = self.original["main"](*args)
        library = self.probe.library(self.part)
        inputs = args[: len(self.probe.backend.inputs[self.part])]  # then the candidate's weights: not ours
        result = library.vm["main"](*inputs, *library.params)
        values = [result] if hasattr(result, "numpy") else list(result)  # one tensor, or a tuple of them
        self.probe.recorded.update({ref: values[i].numpy() for ref, i in library.named.items()})
        listed = [theirs] if library.n_outputs == 1 else list(theirs)
        self.probe.check_reproduced(self.part, self.probe.graph_outputs[self.part], [t.numpy() for t in listed],
                                    [v.numpy() for v in values[: library.n_outputs]])
        return theirs


class TvmOnnxProbe(GraphProbe):
    engine_attribute = "vms"

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        self._built: dict[tuple, _Library] = {}  # (part, names) -> the compiled copy

    def recording(self, part: str, engine: Any) -> Any:
        return _VmRecording(self, part, engine)

    def library(self, part: str) -> _Library:
        key = (part, self.names)
        if key not in self._built:
            model = self.load(part)
            n_outputs = len(model.graph.output)
            self._built[key] = _Library(self.backend, part, model, self.named_or_refuse(part, model), n_outputs)
        return self._built[key]
