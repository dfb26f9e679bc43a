"""decoder_model_merged split into the two decoders it holds, for engines that cannot import its `If`.

    split_merged(model) -> {decoder_model: ModelProto, decoder_with_past_model: ModelProto}
    parts(folder, dims, fp16) -> (part, path, model, binding) per graph an engine compiles
    part_files(folder, fp16)  -> (part, path) of the same graphs, no file read

TVM 0.27's ONNX importer fails inside an `If`'s branches (docs/schedules.md, "The merged decoder"), but each
branch of Optimum's merged decoder is a whole decoder graph: the else branch is decoder_model, the then branch
decoder_with_past_model, both reading the enclosing graph's inputs and initializers by name. Lifted out, each
is a plain graph that binds exactly as the separate file does (layout.py's names), so tvm-onnx and
compile-onnx compile a merged-only folder as they compile the two files, and the protocol runs them as such
(no use_cache_branch, no empty pasts to feed: only the taken branch was ever computed anyway).

A split graph has
- as inputs, the merged graph's inputs (their declared types; decoder_with_past's input_ids [batch_size, 1]
  as layout.py has it) that the part takes: decoder_model's
  input_ids and encoder_hidden_states, decoder_with_past's input_ids and all 4L past_key_values, both
  cache_position where the merged file has it (it is the export's variant, taken by both decoders);
  decoder_with_past takes encoder_hidden_states only where its branch reads it (older Optimum's variant).
  The condition is dropped: the part decides the branch.
- as nodes, those of the branch that its kept outputs need (and any enclosing node other than the If they
  read: none in Optimum's merge); as initializers, the branch's own and the enclosing graph's they read.
- as outputs, the If's outputs (the merged graph's names and declared types) computed by the branch:
  all of them for decoder_model; for decoder_with_past all but present.*.encoder.*, which the cached branch
  fills with placeholders (Optimum's empty constants) and decoder_with_past_model does not have. A branch's
  own output name is tied to the If's by an Identity (free: from_onnx maps it to the same value).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from whisperkv.reference.dims import ModelDims

from . import layout
from .folder import OnnxFolderError, PartBinding, check_part, find_files, signature_from_model

ELSE, THEN = "else_branch", "then_branch"
BRANCH_OF = {layout.DECODER: ELSE, layout.DECODER_WITH_PAST: THEN}  # use_cache_branch False / True


def _reads(graph: Any) -> set[str]:
    """Every name a graph's nodes read, those of nested graphs (If / Loop / Scan bodies) included."""
    return set().union(*(_node_reads(node) for node in graph.node))


def _node_reads(node: Any) -> set[str]:
    names = {n for n in node.input if n}
    for attr in node.attribute:
        for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
            names |= _reads(sub)
    return names


def _the_if(model: Any, source: str) -> Any:
    g = model.graph
    ifs = [n for n in g.node if n.op_type == "If"]
    inputs = {v.name for v in g.input}
    if len(ifs) != 1 or ifs[0].input[0] != layout.USE_CACHE_BRANCH.name or ifs[0].input[0] not in inputs:
        raise OnnxFolderError(f"{source}: not an Optimum merged decoder (expected one If on the graph input "
                              f"{layout.USE_CACHE_BRANCH.name}; found {len(ifs)} If node(s))")
    return ifs[0]


def _is_cross_present(name: str) -> bool:
    return name.startswith("present.") and ".encoder." in name


def _declared(value: Any, part: str) -> Any:
    """A merged graph input as the separate `part` file declares it: decoder_with_past's input_ids is
    [batch_size, 1] (layout.py: one token per row), where the merged file's is [batch_size,
    decoder_sequence_length] for both branches. TVM needs that 1: with the new tokens' count symbolic as
    well as the past's, from_onnx loses the shape of the attention's query and fails at its Reshape."""
    from onnx import ValueInfoProto

    if part != layout.DECODER_WITH_PAST or value.name != "input_ids" or len(value.type.tensor_type.shape.dim) != 2:
        return value
    copy = ValueInfoProto()
    copy.CopyFrom(value)
    copy.type.tensor_type.shape.dim[1].dim_value = 1  # clears dim_param (a oneof)
    return copy


def split_branch(model: Any, part: str, source: str = "decoder_model_merged.onnx") -> Any:
    """One branch of a merged decoder as a standalone ModelProto that binds as the separate `part` file."""
    from onnx import helper

    if part not in BRANCH_OF:
        raise ValueError(f"part: one of {', '.join(BRANCH_OF)}, not {part!r}")
    g = model.graph
    node = _the_if(model, source)
    branch = next((a.g for a in node.attribute if a.name == BRANCH_OF[part]), None)
    if branch is None or len(branch.output) != len(node.output):
        raise OnnxFolderError(f"{source}: the If's {BRANCH_OF[part]} is missing or does not give its "
                              f"{len(node.output)} outputs")
    # The If's outputs this part gives, and the branch's names for them.
    kept = [(out, mine) for out, mine in zip(node.output, (o.name for o in branch.output), strict=True)
            if part == layout.DECODER or not _is_cross_present(out)]
    # The nodes the kept outputs need, found backwards: the branch's (not the cached branch's placeholders
    # for the cross presents), then the enclosing graph's other than the If (none in Optimum's merge).
    needed = {mine for _, mine in kept}
    live = []
    for n in reversed([*(n for n in g.node if n is not node), *branch.node]):
        if any(o in needed for o in n.output):
            live.append(n)
            needed |= _node_reads(n)
    live.reverse()

    # What the separate file takes even where the branch reads none of it (layout.inputs): a graph input
    # must be fed, and check_part refuses a decoder without them. cache_position is the export's variant.
    required = {"input_ids", layout.CACHE_POSITION.name}
    if part == layout.DECODER:
        required.add("encoder_hidden_states")
    else:
        required |= {v.name for v in g.input if v.name.startswith("past_key_values.")}
    inputs = [_declared(v, part) for v in g.input
              if v.name != node.input[0] and (v.name in needed or v.name in required)]
    initializers = [t for t in (*g.initializer, *branch.initializer) if t.name in needed]
    declared = {v.name: v for v in g.output}
    outputs, ties = [], []
    for out, mine in kept:
        outputs.append(declared.get(out) or next(o for o in branch.output if o.name == mine))
        if mine != out:
            ties.append(helper.make_node("Identity", [mine], [out], name=f"{part}.{out}"))
    graph = helper.make_graph([*live, *ties], part, inputs, outputs,
                              initializers, value_info=[*branch.value_info])
    split = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name=model.producer_name)
    split.ir_version = model.ir_version
    split.functions.extend(model.functions)
    return split


def split_merged(model: Any, source: str = "decoder_model_merged.onnx") -> dict[str, Any]:
    """A merged decoder -> {decoder_model: its else branch, decoder_with_past_model: its then branch}."""
    return {part: split_branch(model, part, source) for part in BRANCH_OF}


def load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:  # onnx raises protobuf's DecodeError and others for damaged files
        raise OnnxFolderError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from e


def part_files(folder: str | os.PathLike, fp16: bool | None = None) -> list[tuple[str, Path]]:
    """(part, file) of every graph `parts` gives, found without reading any file: a merged decoder's two
    branches both name the merged file."""
    return [(branch, path) for part, path in find_files(folder, fp16, merged=True).items()
            for branch in (BRANCH_OF if part == layout.MERGED else (part,))]


def parts(folder: str | os.PathLike, dims: ModelDims, fp16: bool | None = None,
          only: set[str] | None = None) -> Iterator[tuple[str, Path, Any, PartBinding]]:
    """The graphs an engine without `If` compiles from an Optimum folder, each checked against `dims`:
    (part, file, model, binding) for encoder_model, decoder_model, decoder_with_past_model. A folder with
    decoder_model_merged in place of the two decoders gives its two branches (file: the merged one, checked
    as a whole first, so that a damaged merged file is refused naming its own tensor). One model at a time
    is held by the caller: tiny.en's float32 decoder weights are ~150 MB per copy. `only`: these parts alone
    (a file none of them comes from is not read)."""
    for part, path in find_files(folder, fp16, merged=True).items():
        wanted = [p for p in (BRANCH_OF if part == layout.MERGED else (part,)) if only is None or p in only]
        if not wanted:
            continue
        model = load(path)
        if part != layout.MERGED:
            yield part, path, model, check_part(part, path, signature_from_model(model), dims)
            continue
        check_part(layout.MERGED, path, signature_from_model(model), dims)
        for branch_part in wanted:
            split = split_branch(model, branch_part, str(path))
            yield branch_part, path, split, check_part(branch_part, path, signature_from_model(split), dims)
        del model
