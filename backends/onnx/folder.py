"""Importing an Optimum-layout folder: find its files (the three, or the encoder and decoder_model_merged)
and check each one's inputs and outputs.

A folder is accepted when every part has exactly the inputs layout.py names (the optional variants
included), with the right dtypes, and every fixed dimension equal to what the checkpoint's ModelDims
imply; every required output must be there too (extra outputs are ignored). Anything else is refused
with an OnnxFolderError naming the file and the tensor, before a single token is decoded: a model of
other dims would otherwise fail deep inside the runtime, or worse, run and return nonsense.

Signatures come from either an onnx ModelProto or an onnxruntime session, so each engine checks what
it actually loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisperkv.reference.dims import ModelDims
from whisperkv.reference.errors import InputError

from . import layout


class OnnxFolderError(InputError):
    """An ONNX folder that cannot be used; the message names the file and the tensor."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64, ...
    shape: tuple[int | str | None, ...]  # an int for a fixed size, the axis name (or None) for a dynamic one


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class PartBinding:
    """What one checked file takes and gives: the backends bind by these names, never by position."""

    part: str
    path: Path
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]

    def takes(self, name: str) -> bool:
        return name in self.inputs


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(double)": "float64", "tensor(bool)": "bool"}


def signature_from_session(session: Any) -> Signature:
    """From an onnxruntime.InferenceSession."""
    def info(a: Any) -> TensorInfo:
        return TensorInfo(a.name, _ORT_DTYPES.get(a.type, a.type), tuple(a.shape))

    return Signature(tuple(info(a) for a in session.get_inputs()), tuple(info(a) for a in session.get_outputs()))


def signature_from_model(model: Any) -> Signature:
    """From an onnx.ModelProto (initializers listed as graph inputs, as old exporters did, are not inputs)."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}

    def info(v: Any) -> TensorInfo:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        return TensorInfo(v.name, str(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims)

    return Signature(tuple(info(v) for v in model.graph.input if v.name not in initializers),
                     tuple(info(v) for v in model.graph.output))


# ----------------------------------------------------------------------------------------------
# Files


def find_files(folder: str | os.PathLike, fp16: bool | None = None, suffix: str = ".onnx",
               merged: bool = False) -> dict[str, Path]:
    """part -> path of encoder_model, decoder_model, decoder_with_past_model (`_fp16` ones with fp16=True),
    as .onnx files or (suffix=".so") as the libraries TVM compiled from them.

    fp16=None takes the plain files when any of them is there, else the `_fp16` ones.

    merged=True (an engine that runs `If`, onnxruntime, or that splits the merged file into the two
    decoders its If holds, the TVM engines: split.py) also accepts decoder_model_merged in place of the two
    decoders, and then returns {encoder_model, decoder_model_merged}. A folder holding both forms
    (Optimum's default export writes all four files) gives the two separate decoders: they are plain
    graphs, with no dummy inputs to feed and no branch to dispatch, and they are what every engine here
    runs, so such a folder behaves exactly as it did before merged files were accepted.
    """
    folder = Path(folder)
    what = "an Optimum Whisper folder" if suffix == ".onnx" else "a folder of compiled Optimum Whisper libraries"
    if not folder.is_dir():
        raise OnnxFolderError(f"{folder}: no such folder (expected {what})")
    candidates = (*layout.PARTS, layout.MERGED) if merged else layout.PARTS
    if fp16 is None:
        fp16 = not any((folder / layout.file_name(p, False, suffix)).is_file() for p in candidates) and any(
            (folder / layout.file_name(p, True, suffix)).is_file() for p in candidates)
    paths = {part: folder / layout.file_name(part, fp16, suffix) for part in layout.PARTS}
    merged_path = folder / layout.file_name(layout.MERGED, fp16, suffix)
    separate = all(p.is_file() for p in paths.values())
    if merged and not separate and paths[layout.ENCODER].is_file() and merged_path.is_file():
        return {layout.ENCODER: paths[layout.ENCODER], layout.MERGED: merged_path}
    for path in paths.values():
        if not path.is_file():
            names = ", ".join(layout.file_name(p, fp16, suffix) for p in layout.PARTS)
            if merged:
                names = (f"{layout.file_name(layout.ENCODER, fp16, suffix)} and either "
                         f"{layout.file_name(layout.DECODER, fp16, suffix)} + "
                         f"{layout.file_name(layout.DECODER_WITH_PAST, fp16, suffix)} or "
                         f"{layout.file_name(layout.MERGED, fp16, suffix)}")
            elif merged_path.is_file():
                names += f"; this engine does not run {merged_path.name}"
            raise OnnxFolderError(f"{path}: missing ({what} has {names})")
    return paths


# ----------------------------------------------------------------------------------------------
# One file's signature against the layout


def _dtype_ok(want: str, got: str) -> bool:
    return got in ("float32", "float16") if want == "float" else got == want


def _check_tensor(path: Path, role: str, spec: layout.TensorSpec, got: TensorInfo, dims: ModelDims) -> None:
    if not _dtype_ok(spec.dtype, got.dtype):
        want = "float32 or float16" if spec.dtype == "float" else spec.dtype
        raise OnnxFolderError(f"{path}: {role} {got.name} has dtype {got.dtype}, expected {want}")
    if len(got.shape) != len(spec.shape):
        raise OnnxFolderError(f"{path}: {role} {got.name} has rank {len(got.shape)} {list(got.shape)}, "
                              f"expected rank {len(spec.shape)} {list(spec.shape)}")
    for axis, (want, have) in enumerate(zip(spec.shape, got.shape, strict=True)):
        # A dynamic axis in the file (a name or None) cannot be checked; a fixed one must match exactly.
        what = spec.what[axis] if axis < len(spec.what) and spec.what[axis] else ""
        if isinstance(want, str) and what:
            want = getattr(dims, what)
        if isinstance(want, int) and isinstance(have, int) and want != have:
            what = what or "fixed by the layout"
            raise OnnxFolderError(f"{path}: {role} {got.name} dim {axis} is {have}, expected {want} ({what})")


def check_part(part: str, path: str | os.PathLike, signature: Signature, dims: ModelDims) -> PartBinding:
    """Refuse a file whose inputs or outputs differ from the layout; return its bindings."""
    path = Path(path)
    everything = layout.inputs(part, dims, cache_position=True,
                               past_encoder_hidden_states=part == layout.DECODER_WITH_PAST)
    expected = {s.name: s for s in everything}
    required = [s.name for s in layout.inputs(part, dims)]
    got_inputs = {t.name: t for t in signature.inputs}
    missing = [n for n in required if n not in got_inputs]
    extra = [n for n in got_inputs if n not in expected]
    if extra:
        hint = f" (missing: {', '.join(missing)}; renamed?)" if missing else ""
        raise OnnxFolderError(f"{path}: unexpected input {extra[0]}{hint}: an Optimum {part} takes "
                              f"{', '.join(required)} and optionally "
                              f"{', '.join(layout.OPTIONAL_INPUTS[part]) if part in layout.OPTIONAL_INPUTS else '-'}")
    if missing:
        raise OnnxFolderError(f"{path}: missing input {missing[0]}"
                              + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    for name, info in got_inputs.items():
        _check_tensor(path, "input", expected[name], info, dims)
    got_outputs = {t.name: t for t in signature.outputs}
    for spec in layout.outputs(part, dims):
        if spec.name not in got_outputs:
            raise OnnxFolderError(f"{path}: missing output {spec.name}")
        _check_tensor(path, "output", spec, got_outputs[spec.name], dims)
    return PartBinding(part, path, got_inputs, got_outputs)
