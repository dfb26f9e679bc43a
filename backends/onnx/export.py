"""Write a checkpoint as Optimum's three Whisper ONNX models, with the `onnx` graph builders (no torch).

    export_onnx(load_checkpoint(), "out/")             # encoder_model.onnx, decoder_model.onnx, ...
    export_onnx(load_checkpoint(), "out/", fp16=True)  # encoder_model_fp16.onnx, ...

Names, order, dtypes and dynamic axes come from layout.py. The math is reference/model.py's, op for op:
weights are initializers, Linear is MatMul by the stored transposed weight (+ Add), GELU is the erf
formula, LayerNormalization (opset 17+) with eps 1e-5, attention is MatMul / Softmax / MatMul with q
scaled by head_dim^-0.5, the output projection is tied to the token embedding (one initializer).

fp16 (`fp16=True`): weights are stored as float16 and the matmuls, convolutions and GELU run in float16,
but LayerNormalization and Softmax run in float32 (Cast in, Cast out), because their reductions (a
variance over 384 values, a sum of exp over up to 1500 scores) lose most of float16's 11 bits, and a
masked score of -inf must stay -inf. Graph inputs and outputs stay float32, as in Optimum's fp16
exports; the KV tensors are widened on the way out, exactly (every float16 is a float32).

Node names: the node that computes one of the reference's named intermediates (reference/checks/hooked.py)
carries its name (`encoder.conv1`, `decoder.blocks.0.attn_ln`, `decoder.blocks.0.attn.query` on the bias Add,
`....attn.scores` on the masked scores, `....attn.weights` on the Softmax, `decoder.logits`), one node per
name, so that `verify` can name the first operation of an export that differs (reference/checks/onnx_probe.py);
the other nodes are unnamed. (The cache keys hash this file: a renamed node re-exports and recompiles.)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from whisperkv.reference import kv as kvslots
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.files import atomic_path
from whisperkv.reference.weights import Checkpoint, Weights

from . import layout

OPSET = 18  # what optimum-onnx 0.1.0 writes; LayerNormalization needs 17+
LN_EPS = 1e-5  # PyTorch's LayerNorm default, as reference/model.py
PRODUCER = "whisperkv"

_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64,
               "bool": TensorProto.BOOL}


class Graph:
    """A small graph builder: every op returns the name of its (single) output."""

    def __init__(self, weights: Weights, compute_dtype: str) -> None:
        self.weights, self.dtype = weights, compute_dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._producer: dict[str, onnx.NodeProto] = {}  # output -> the node that computes it
        self._count = 0

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        if output is None:
            self._count += 1
            output = f"/{op_type}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        self._producer[output] = self.nodes[-1]
        return output

    def name(self, x: str, name: str) -> str:
        """Name the node that produced `x` after the reference's intermediate `name` (checks/hooked.py:
        `decoder.blocks.0.attn.scores`, ...); -> x. `verify` adds the named nodes' outputs to a copy of the graph's
        outputs and matches them to the reference's intermediates by these names (reference/checks/onnx_probe.py).
        Node names, not tensor names: a tensor named `encoder.positional_embedding` would clash with the
        initializer of that name."""
        self._producer[x].name = name
        return x

    def weight(self, name: str, transpose: bool = False, dtype: str | None = None) -> str:
        """A checkpoint tensor as an initializer (once, however often it is used)."""
        key = f"{name}.T" if transpose else name
        if key not in self.initializers:
            w = self.weights[name].T if transpose else self.weights[name]
            array = np.ascontiguousarray(w, dtype=dtype or self.dtype)
            self.initializers[key] = numpy_helper.from_array(array, key)
        return key

    def const(self, value: float | int | list, dtype: str) -> str:
        # A Constant node, not an initializer: initializers are the weights and nothing else, which lets
        # an importer pass them as parameters (TVM) while shapes and scales stay compile-time constants.
        return self.op("Constant", [], value=numpy_helper.from_array(np.array(value, dtype=dtype)))

    def cast(self, x: str, dtype: str, output: str | None = None) -> str:
        return self.op("Cast", [x], output, to=_ONNX_TYPES[dtype])

    def to_compute(self, x: str) -> str:  # a float32 graph input -> the compute dtype
        return x if self.dtype == "float32" else self.cast(x, self.dtype)

    def output(self, x: str, name: str) -> str:  # the compute dtype -> a float32 graph output named `name`
        return self.op("Identity", [x], name) if self.dtype == "float32" else self.cast(x, "float32", name)

    def model(self, part: str, inputs: list[layout.TensorSpec], outputs: list[layout.TensorSpec]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, part, [_value_info(s) for s in inputs],
                                  [_value_info(s) for s in outputs], list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
        model.ir_version = 8  # readable by onnxruntime >= 1.14 and TVM's frontend
        return model


def _value_info(spec: layout.TensorSpec, name: str | None = None) -> onnx.ValueInfoProto:
    elem = _ONNX_TYPES["float32" if spec.dtype == "float" else spec.dtype]
    return helper.make_tensor_value_info(name or spec.name, elem, list(spec.shape))


# ----------------------------------------------------------------------------------------------
# Building blocks (x is [batch, n, d] in the compute dtype unless said otherwise)


def linear(g: Graph, x: str, prefix: str, bias: bool = True) -> str:  # [B, n, in] -> [B, n, out]
    y = g.op("MatMul", [x, g.weight(f"{prefix}.weight", transpose=True)])  # weight stored (in, out)
    return g.name(g.op("Add", [y, g.weight(f"{prefix}.bias")]) if bias else y, prefix)


def layer_norm(g: Graph, x: str, prefix: str) -> str:  # [B, n, d] -> [B, n, d], computed in float32
    x32 = g.cast(x, "float32") if g.dtype != "float32" else x
    y = g.op("LayerNormalization", [x32, g.weight(f"{prefix}.weight", dtype="float32"),
                                    g.weight(f"{prefix}.bias", dtype="float32")], axis=-1, epsilon=LN_EPS)
    return g.name(g.cast(y, g.dtype) if g.dtype != "float32" else y, prefix)


def gelu(g: Graph, x: str, name: str) -> str:  # [...] -> [...]: 0.5 x (1 + erf(x / sqrt 2)), torch's exact GELU
    e = g.op("Erf", [g.op("Mul", [x, g.const(1.0 / math.sqrt(2.0), g.dtype)])])
    return g.name(g.op("Mul", [g.op("Mul", [x, g.const(0.5, g.dtype)]), g.op("Add", [e, g.const(1.0, g.dtype)])]),
                  name)


def conv(g: Graph, x: str, prefix: str, stride: int) -> str:  # [B, c_in, t] -> [B, c_out, t / stride]
    return g.name(g.op("Conv", [x, g.weight(f"{prefix}.weight"), g.weight(f"{prefix}.bias")],
                       kernel_shape=[3], pads=[1, 1], strides=[stride]), prefix)


def split_heads(g: Graph, x: str, n_head: int, head_dim: int) -> str:  # [B, n, d] -> [B, h, n, hd]
    x = g.op("Reshape", [x, g.const([0, -1, n_head, head_dim], "int64")])  # 0 keeps the batch size
    return g.op("Transpose", [x], perm=[0, 2, 1, 3])


def merge_heads(g: Graph, x: str, d: int) -> str:  # [B, h, n, hd] -> [B, n, d]
    x = g.op("Transpose", [x], perm=[0, 2, 1, 3])
    return g.op("Reshape", [x, g.const([0, -1, d], "int64")])


def attend(g: Graph, q: str, k: str, v: str, head_dim: int, prefix: str, mask: str | None = None) -> str:
    # q [B, h, nq, hd], k/v [B, h, nk, hd], mask [nq, nk] float32 (0 or -inf) -> [B, h, nq, hd]
    # (prefix: the attention module, `decoder.blocks.0.attn`: its scores (masked) and weights are named)
    q = g.op("Mul", [q, g.const(head_dim ** -0.5, g.dtype)])  # scale q only, as the reference does
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])  # [B, h, nq, nk]
    if g.dtype != "float32":
        scores = g.cast(scores, "float32")
    if mask is not None:
        scores = g.op("Add", [scores, mask])
    p = g.op("Softmax", [g.name(scores, f"{prefix}.scores")], axis=-1)
    if g.dtype != "float32":
        p = g.cast(p, g.dtype)
    return g.op("MatMul", [g.name(p, f"{prefix}.weights"), v])


def attention_projections(g: Graph, h: str, prefix: str, n_head: int, head_dim: int) -> tuple[str, str, str]:
    # [B, n, d] -> q, k, v [B, h, n, hd]; Whisper's key projection has no bias.
    q = split_heads(g, linear(g, h, f"{prefix}.query"), n_head, head_dim)
    k = split_heads(g, linear(g, h, f"{prefix}.key", bias=False), n_head, head_dim)
    v = split_heads(g, linear(g, h, f"{prefix}.value"), n_head, head_dim)
    return q, k, v


def mlp(g: Graph, x: str, prefix: str) -> str:  # [B, n, d] -> [B, n, d] (the residual branch only)
    h = layer_norm(g, x, f"{prefix}.mlp_ln")
    return linear(g, gelu(g, linear(g, h, f"{prefix}.mlp.0"), f"{prefix}.mlp.gelu"), f"{prefix}.mlp.2")


# ----------------------------------------------------------------------------------------------
# Encoder


def encoder_block(g: Graph, x: str, prefix: str, dims: ModelDims) -> str:  # [B, ctx, d] -> [B, ctx, d]
    h = layer_norm(g, x, f"{prefix}.attn_ln")
    q, k, v = attention_projections(g, h, f"{prefix}.attn", dims.n_audio_head, dims.audio_head_dim)
    a = merge_heads(g, attend(g, q, k, v, dims.audio_head_dim, f"{prefix}.attn"), dims.n_audio_state)
    x = g.name(g.op("Add", [x, linear(g, a, f"{prefix}.attn.out")]), f"{prefix}.attn.residual")
    return g.name(g.op("Add", [x, mlp(g, x, prefix)]), f"{prefix}.mlp.residual")


def encoder_model(weights: Weights, dims: ModelDims, dtype: str) -> onnx.ModelProto:
    g = Graph(weights, dtype)
    x = g.to_compute("input_features")  # [B, n_mels, 2 ctx]
    x = gelu(g, conv(g, x, "encoder.conv1", stride=1), "encoder.conv1.gelu")  # [B, d, 2 ctx]
    x = gelu(g, conv(g, x, "encoder.conv2", stride=2), "encoder.conv2.gelu")  # [B, d, ctx]
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [B, ctx, d]
    x = g.name(g.op("Add", [x, g.weight("encoder.positional_embedding")]), "encoder.positional_embedding")
    for i in range(dims.n_audio_layer):
        x = encoder_block(g, x, f"encoder.blocks.{i}", dims)
    g.output(layer_norm(g, x, "encoder.ln_post"), "last_hidden_state")
    return g.model(layout.ENCODER, layout.inputs(layout.ENCODER, dims), layout.outputs(layout.ENCODER, dims))


# ----------------------------------------------------------------------------------------------
# Decoder


def first_positions(g: Graph) -> str:
    # -> positional embeddings [n, d] of positions 0 .. n - 1, n = input_ids' length.
    # Shapes flow only through Shape / Slice / Concat / ConstantOfShape here, never through arithmetic
    # (Add, Range): TVM's ONNX frontend turns Shape into a symbolic shape that most ops refuse.
    n = g.op("Shape", ["input_ids"], start=1, end=2)  # [1]
    return g.op("Slice", [g.weight("decoder.positional_embedding"), g.const([0], "int64"), n, g.const([0], "int64")])


def next_position(g: Graph, past_key: str, n_text_ctx: int) -> str:
    # -> positional embedding [1, d] of position `past` (the self-key length): decoder_with_past's
    # input_ids is [batch, 1], so slicing `past ..` then `0 .. 1` needs no arithmetic on shapes. (The
    # end is the table's length, not INT64_MAX: TVM does not clamp it and overflows.)
    past = g.op("Shape", [past_key], start=2, end=3)  # [1]
    table = g.weight("decoder.positional_embedding")
    rest = g.op("Slice", [table, past, g.const([n_text_ctx], "int64"), g.const([0], "int64")])  # [ctx - past, d]
    return g.op("Slice", [rest, g.const([0], "int64"), g.const([1], "int64"), g.const([0], "int64")])


def causal_mask(g: Graph) -> str:
    # -> [n, n] float32: 0 where key j <= query i, -inf after it (Trilu keeps the strict upper triangle
    # of an all -inf matrix). Only decoder_model needs it (no past, n start tokens); decoder_with_past
    # has a single query, which may see every key.
    n = g.op("Shape", ["input_ids"], start=1, end=2)  # [1]
    full = g.op("ConstantOfShape", [g.op("Concat", [n, n], axis=0)],
                value=numpy_helper.from_array(np.array([-np.inf], np.float32)))  # [n, n]
    return g.op("Trilu", [full, g.const(1, "int64")], upper=1)


def decoder_block(g: Graph, x: str, layer: int, dims: ModelDims, past_k: str | None, past_v: str | None,
                  cross_k: str, cross_v: str, mask: str | None) -> tuple[str, str, str]:
    # x [B, n, d], past self K/V [B, h, past, hd] or None, cross K/V [B, h, ctx, hd]
    #   -> x [B, n, d], present self K/V [B, h, past + n, hd]
    p, h_, hd = f"decoder.blocks.{layer}", dims.n_text_head, dims.text_head_dim
    h = layer_norm(g, x, f"{p}.attn_ln")
    q, k, v = attention_projections(g, h, f"{p}.attn", h_, hd)
    if past_k is not None:
        k = g.op("Concat", [past_k, k], axis=2)
        v = g.op("Concat", [past_v, v], axis=2)
    a = merge_heads(g, attend(g, q, k, v, hd, f"{p}.attn", mask), dims.n_text_state)
    x = g.name(g.op("Add", [x, linear(g, a, f"{p}.attn.out")]), f"{p}.attn.residual")

    h = layer_norm(g, x, f"{p}.cross_attn_ln")
    q = split_heads(g, linear(g, h, f"{p}.cross_attn.query"), h_, hd)
    a = merge_heads(g, attend(g, q, cross_k, cross_v, hd, f"{p}.cross_attn"), dims.n_text_state)
    x = g.name(g.op("Add", [x, linear(g, a, f"{p}.cross_attn.out")]), f"{p}.cross_attn.residual")
    return g.name(g.op("Add", [x, mlp(g, x, p)]), f"{p}.mlp.residual"), k, v


def cross_kv(g: Graph, audio: str, layer: int, dims: ModelDims) -> tuple[str, str]:
    # encoder_hidden_states [B, ctx, d] -> cross key, value [B, h, ctx, hd]
    p = f"decoder.blocks.{layer}.cross_attn"
    k = split_heads(g, linear(g, audio, f"{p}.key", bias=False), dims.n_text_head, dims.text_head_dim)
    v = split_heads(g, linear(g, audio, f"{p}.value"), dims.n_text_head, dims.text_head_dim)
    return k, v


def logits(g: Graph, x: str) -> str:  # [B, n, d] -> [B, n, n_vocab], tied to the token embedding
    x = layer_norm(g, x, "decoder.ln")
    return g.name(g.op("MatMul", [x, g.op("Transpose", [g.weight("decoder.token_embedding.weight")], perm=[1, 0])]),
                  "decoder.logits")


def embed(g: Graph, positions: str) -> str:  # input_ids [B, n] -> [B, n, d]
    tokens = g.op("Gather", [g.weight("decoder.token_embedding.weight"), "input_ids"])
    return g.name(g.op("Add", [tokens, positions]), "decoder.embedding")


def decoder_model(weights: Weights, dims: ModelDims, dtype: str, cache_position: bool = False) -> onnx.ModelProto:
    """The first call: start tokens + encoder output -> logits of every position and all 4L presents."""
    g = Graph(weights, dtype)
    positions = (g.op("Gather", [g.weight("decoder.positional_embedding"), "cache_position"]) if cache_position
                 else first_positions(g))
    x, mask = embed(g, positions), causal_mask(g)
    audio = g.to_compute("encoder_hidden_states")
    present: dict[int, str] = {}
    for i in range(dims.n_text_layer):
        ck, cv = cross_kv(g, audio, i, dims)
        x, k, v = decoder_block(g, x, i, dims, None, None, ck, cv, mask)
        for kind, t in zip(kvslots.SlotKind, (k, v, ck, cv), strict=True):
            present[kvslots.slot_index(i, kind)] = t
    g.output(logits(g, x), "logits")
    for slot in sorted(present):
        g.output(present[slot], layout.kv_name("present", slot))
    return g.model(layout.DECODER, layout.inputs(layout.DECODER, dims, cache_position),
                   layout.outputs(layout.DECODER, dims))


def decoder_with_past_model(weights: Weights, dims: ModelDims, dtype: str, cache_position: bool = False,
                            past_encoder_hidden_states: bool = False) -> onnx.ModelProto:
    """Every later call: one token + all 4L pasts -> logits and the 2L self presents (cross K/V are the pasts)."""
    g = Graph(weights, dtype)
    past = {s: g.to_compute(layout.kv_name("past_key_values", s)) for s in range(kvslots.n_slots(dims.n_text_layer))}
    if cache_position:
        positions = g.op("Gather", [g.weight("decoder.positional_embedding"), "cache_position"])
    else:  # the past length is the self-key length
        positions = next_position(g, layout.kv_name("past_key_values", 0), dims.n_text_ctx)
    x = embed(g, positions)
    present: dict[int, str] = {}
    for i in range(dims.n_text_layer):
        slot = {kind: past[kvslots.slot_index(i, kind)] for kind in kvslots.SlotKind}
        x, k, v = decoder_block(g, x, i, dims, slot[kvslots.SlotKind.SELF_KEY], slot[kvslots.SlotKind.SELF_VALUE],
                                slot[kvslots.SlotKind.CROSS_KEY], slot[kvslots.SlotKind.CROSS_VALUE], mask=None)
        present[kvslots.slot_index(i, kvslots.SlotKind.SELF_KEY)] = k
        present[kvslots.slot_index(i, kvslots.SlotKind.SELF_VALUE)] = v
    g.output(logits(g, x), "logits")
    for slot in kvslots.self_slots(dims.n_text_layer):
        g.output(present[slot], layout.kv_name("present", slot))
    # With past_encoder_hidden_states the input is declared but read by no node, as in the older exports.
    return g.model(layout.DECODER_WITH_PAST,
                   layout.inputs(layout.DECODER_WITH_PAST, dims, cache_position, past_encoder_hidden_states),
                   layout.outputs(layout.DECODER_WITH_PAST, dims))


# ----------------------------------------------------------------------------------------------
# decoder_model_merged: the two decoders as the branches of one If


CACHED_ENCODER_PRESENTS = ("empty", "pasts")


def _branch(model: onnx.ModelProto, prefix: str) -> tuple[list[onnx.NodeProto], dict[str, str]]:
    """model's nodes, every value they produce renamed `prefix + name`; -> (nodes, old name -> new name).

    Graph inputs and initializers keep their names: a branch reads them from the enclosing graph. The
    renaming keeps the two builders' intermediate names (both count /MatMul_1, ...) and their outputs
    (logits in both) apart from each other and from the If node's own outputs.
    """
    renamed: dict[str, str] = {}
    nodes = []
    for node in model.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [renamed.get(name, name) for name in node.input]
        for i, name in enumerate(node.output):
            renamed[name] = copy.output[i] = prefix + name
        copy.name = prefix + (node.name or node.output[0])
        nodes.append(copy)
    return nodes, renamed


def _shared_initializers(models: list[onnx.ModelProto]) -> list[onnx.TensorProto]:
    # Both decoders name each weight after the checkpoint tensor (graph.weight), so one copy serves both.
    out: dict[str, onnx.TensorProto] = {}
    for model in models:
        for t in model.graph.initializer:
            seen = out.setdefault(t.name, t)
            if seen is not t and (seen.data_type, list(seen.dims), seen.raw_data) != (t.data_type, list(t.dims),
                                                                                        t.raw_data):
                raise ValueError(f"initializer {t.name} differs between the two decoders: not one checkpoint")
    return list(out.values())


def merge_decoders(decoder: onnx.ModelProto, decoder_with_past: onnx.ModelProto, dims: ModelDims,
                   cached_encoder_presents: str = "empty") -> onnx.ModelProto:
    """decoder_model + decoder_with_past_model (as built here) -> decoder_model_merged.

    The semantics of Optimum's merge_decoders (optimum/onnx/graph_transformations.py), written for our
    own graphs: one `If` on use_cache_branch (bool [1]) whose else branch is decoder_model and whose then
    branch is decoder_with_past_model; the weights are initializers of the enclosing graph, one copy read
    by both branches; the inputs are decoder_model's, then those only decoder_with_past takes (the 16
    pasts), then use_cache_branch; the outputs are decoder_model's (logits and all 4L presents).

    decoder_with_past has no present.{i}.encoder.*; the cached branch needs them to have as many outputs
    as the other. "empty" (the default, what Optimum's merge writes) returns empty float32 constants of
    shape [0, n_text_head, 1, head_dim]; "pasts" returns the past_key_values.{i}.encoder.* it was given
    (Identity), for callers that carry all 16 presents forward. Our importer reads neither: it keeps the
    cross K/V of the first call.
    """
    if cached_encoder_presents not in CACHED_ENCODER_PRESENTS:
        raise ValueError(f"cached_encoder_presents: one of {CACHED_ENCODER_PRESENTS}, not {cached_encoder_presents!r}")
    outputs = layout.outputs(layout.MERGED, dims)
    branches = {}
    for model, prefix in ((decoder, "no_past"), (decoder_with_past, "with_past")):
        nodes, renamed = _branch(model, prefix)
        produced = {v.name for v in model.graph.output}
        for spec in outputs:
            if spec.name in produced:
                continue
            # only present.{i}.encoder.* can be missing, and only from decoder_with_past
            assert model is decoder_with_past and ".encoder." in spec.name, spec.name
            renamed[spec.name] = out = f"{prefix}{spec.name}"
            if cached_encoder_presents == "pasts":
                past = spec.name.replace("present.", "past_key_values.", 1)
                nodes.append(helper.make_node("Identity", [past], [out], name=out))
            else:
                empty = np.zeros((0, dims.n_text_head, 1, dims.text_head_dim), np.float32)
                nodes.append(helper.make_node("Constant", [], [out], name=out, value=numpy_helper.from_array(empty)))
        branches[prefix] = helper.make_graph(nodes, prefix, [], [_value_info(s, renamed[s.name]) for s in outputs])

    cache_position = any(v.name == "cache_position" for v in decoder.graph.input)
    inputs = layout.inputs(layout.MERGED, dims, cache_position)
    taken = {v.name for m in (decoder, decoder_with_past) for v in m.graph.input} | {layout.USE_CACHE_BRANCH.name}
    if taken != {s.name for s in inputs}:
        raise ValueError(f"the two decoders take {sorted(taken)}, not the merged layout's inputs")
    if_node = helper.make_node("If", [layout.USE_CACHE_BRANCH.name], [s.name for s in outputs], name="use_cache_branch",
                               then_branch=branches["with_past"], else_branch=branches["no_past"])
    graph = helper.make_graph([if_node], layout.MERGED, [_value_info(s) for s in inputs],
                              [_value_info(s) for s in outputs], _shared_initializers([decoder, decoder_with_past]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    model.ir_version = 8
    return model


# ----------------------------------------------------------------------------------------------
# The folder


def build_models(checkpoint: Checkpoint | tuple[ModelDims, Weights], fp16: bool = False,
                 cache_position: bool = False, past_encoder_hidden_states: bool = False,
                 merged: bool = False) -> dict[str, onnx.ModelProto]:
    """part name -> ModelProto, without writing anything (merged=True adds decoder_model_merged)."""
    dims, weights = (checkpoint.dims, checkpoint.weights) if isinstance(checkpoint, Checkpoint) else checkpoint
    dtype = "float16" if fp16 else "float32"
    models = {
        layout.ENCODER: encoder_model(weights, dims, dtype),
        layout.DECODER: decoder_model(weights, dims, dtype, cache_position),
        layout.DECODER_WITH_PAST: decoder_with_past_model(weights, dims, dtype, cache_position,
                                                          past_encoder_hidden_states),
    }
    if merged:
        models[layout.MERGED] = merge_decoders(models[layout.DECODER], models[layout.DECODER_WITH_PAST], dims)
    return models


def export_onnx(checkpoint: Checkpoint | tuple[ModelDims, Weights], out_dir: str | os.PathLike, fp16: bool = False,
                cache_position: bool = False, past_encoder_hidden_states: bool = False,
                merged: bool = False) -> dict[str, Path]:
    """Write encoder_model, decoder_model and decoder_with_past_model (`_fp16` suffixed with fp16) to out_dir,
    and with merged=True also decoder_model_merged (as Optimum's default export does; see merge_decoders).

    cache_position / past_encoder_hidden_states write the variants other Optimum versions produce (see
    layout.py); the default is what optimum-onnx 0.1.0 writes. Each file is written to a temporary name
    and renamed into place, so a reader never sees a half-written model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part, model in build_models(checkpoint, fp16, cache_position, past_encoder_hidden_states, merged).items():
        path = out / layout.file_name(part, fp16)
        with atomic_path(path, suffix=".onnx") as tmp:
            onnx.save_model(model, str(tmp))
        paths[part] = path
    return paths
