"""The operation-level localisation of ONNX candidates (reference/checks/onnx_probe.py): a bug planted at one
operation of an exported graph is named by that operation, through the exporter's node names; a correct export
reports no divergence; a graph whose names are not the exporter's is said to be so, and the layer
localisation stands.

The fast tier plants the bugs in the export of a small random model with three layers on each side and tiny.en's
vocabulary (the real tokenizer's rules apply; a verify takes about a second), run by onnxruntime (three files and
decoder_model_merged); the slow tier compiles two of them with tvm-onnx, and plants three in tiny.en's own
export, on the bundled short clip.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from whisperkv.reference.checks import causes
from whisperkv.reference.checks import localise as loc
from whisperkv.reference.checks.hooked import Hooked
from whisperkv.reference.checks.verify import Report, describe, verify
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.model import NumpyModel

from .helpers import SHORT_CLIP, random_windows, small_checkpoint, windows

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from whisperkv.backends.onnx import layout  # noqa: E402
from whisperkv.backends.onnx.export import build_models, merge_decoders  # noqa: E402
from whisperkv.backends.onnx.ort import OnnxRuntimeBackend  # noqa: E402
from whisperkv.reference.checks.onnx_probe import NOT_RECOGNISED  # noqa: E402

# three layers on each side, so that "encoder layer 2" and "decoder layer 2" exist; tiny.en's vocabulary, so
# the real tokenizer's start sequence and filters apply
DIMS = ModelDims(n_mels=4, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=3, n_vocab=51864,
                 n_text_ctx=16, n_text_state=8, n_text_head=2, n_text_layer=3)
DECODERS = (layout.DECODER, layout.DECODER_WITH_PAST)
AGREES = "every operation before it agrees"

# ----------------------------------------------------------------------------------------------
# Planting a bug in an exported graph (in place)

Plant = Callable[[onnx.ModelProto], None]


def node_named(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def rewire(model: onnx.ModelProto, old: str, new: str) -> None:
    """Every node that read tensor `old` reads `new`."""
    for node in model.graph.node:
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = new


def drop_bias(name: str, keep_name: bool = True) -> Plant:
    """The linear `name` without its bias Add. keep_name: the MatMul takes the name (an exporter that forgot the
    bias names what it computes); else the graph has no node of that name any more."""
    def plant(model: onnx.ModelProto) -> None:
        add = node_named(model, name)
        matmul = next(n for n in model.graph.node if n.output[0] == add.input[0])
        rewire(model, add.output[0], matmul.output[0])
        model.graph.node.remove(add)
        if keep_name:
            matmul.name = name
    return plant


def scale_after(name: str, factor: float) -> Plant:
    """The result of node `name` multiplied by `factor`; the Mul takes the name (it computes the named value)."""
    def plant(model: onnx.ModelProto) -> None:
        node = node_named(model, name)
        out = node.output[0]
        at = list(model.graph.node).index(node)
        rewire(model, out, out + "/scaled")
        node.name = ""
        model.graph.node.insert(at + 1, helper.make_node(
            "Constant", [], [out + "/factor"], value=numpy_helper.from_array(np.array(factor, np.float32))))
        model.graph.node.insert(at + 2, helper.make_node("Mul", [out, out + "/factor"], [out + "/scaled"],
                                                         name=name))
    return plant


def swap_key_value(module: str) -> Plant:
    """The attention `module` (`decoder.blocks.2.attn`) scores q against V and weighs K: K and V swapped."""
    def plant(model: onnx.ModelProto) -> None:
        by_output = {n.output[0]: n for n in model.graph.node}
        scores = node_named(model, f"{module}.scores")  # MatMul(q, Transpose(k)), or the mask's Add after it
        matmul = scores if scores.op_type == "MatMul" else by_output[scores.input[0]]
        transpose = by_output[matmul.input[1]]
        weights = node_named(model, f"{module}.weights")
        weigh = next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[0] == weights.output[0])
        transpose.input[0], weigh.input[1] = weigh.input[1], transpose.input[0]
    return plant


def foreign_names(model: onnx.ModelProto) -> None:
    """Node names as a PyTorch export writes them (`/model/decoder/layers.0/...`): none is the reference's."""
    for i, node in enumerate(model.graph.node):
        node.name = f"/model/{node.op_type}_{i}"


def write_candidate(folder: Path, models: dict[str, onnx.ModelProto], plant: Plant | None, parts: Sequence[str],
                    dims: ModelDims, merged: bool = False) -> Path:
    """An Optimum folder of `models`, `plant` applied to copies of `parts`; merged: the encoder and
    decoder_model_merged (built from the two, planted, decoders) only."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = {}
    for part in layout.PARTS:
        model = onnx.ModelProto()
        model.CopyFrom(models[part])
        if plant is not None and part in parts:
            plant(model)
        out[part] = model
    if merged:
        out = {layout.ENCODER: out[layout.ENCODER],
               layout.MERGED: merge_decoders(out[layout.DECODER], out[layout.DECODER_WITH_PAST], dims)}
    for part, model in out.items():
        onnx.save_model(model, str(folder / layout.file_name(part)))
    return folder


# ----------------------------------------------------------------------------------------------
# The small model


@pytest.fixture(scope="module")
def small(tiny_en):
    """(checkpoint, tokenizer, one window, the export as ModelProtos) of a small random model."""
    checkpoint = small_checkpoint(DIMS, seed=1)
    return checkpoint, tiny_en.tokenizer, random_windows(DIMS, 1, 1), build_models(checkpoint)


def verify_small(small, folder: Path) -> tuple[Report, OnnxRuntimeBackend]:
    checkpoint, tok, mels, _ = small
    candidate = OnnxRuntimeBackend(checkpoint, onnx_dir=folder, threads=1)
    return verify(NumpyModel(checkpoint), candidate, tok, checkpoint, mels), candidate


def test_the_exporter_names_a_node_after_every_intermediate_of_the_reference(small) -> None:
    checkpoint, tok, mels, models = small
    hooked = Hooked(checkpoint)
    features = hooked.encode(mels[0][None])
    start = np.asarray([tok.sot_sequence()])
    _, kv = hooked.prefill(start, [features], hooked.zero_kv())
    calls = {layout.ENCODER: hooked.intermediates("encode", mels[0][None]),
             layout.DECODER: hooked.intermediates("prefill", start, [features], hooked.zero_kv()),
             layout.DECODER_WITH_PAST: hooked.intermediates("step", np.asarray([7]), kv)}
    for part, recorded in calls.items():
        names = [n.name for n in models[part].graph.node if n.name]
        assert len(names) == len(set(names)), part  # one node per name: the match is one-to-one
        assert {name for name, _ in recorded} <= set(names), part


def test_a_correct_export_agrees_and_the_probe_leaves_the_backend_as_it_was(small, tmp_path) -> None:
    report, candidate = verify_small(small, write_candidate(tmp_path / "ok", small[3], None, (), DIMS))
    assert report.agree, "\n".join(describe(report, small[1]))
    # the probe runs only after a divergence; run it anyway: it must read every intermediate and restore the
    # backend's sessions
    from whisperkv.reference.checks.onnx_probe import probe_for

    sessions = dict(candidate.sessions)
    checkpoint, _, mels, _ = small
    # (1e-3: verify's default tolerance; the copy is the same graph in the same engine)
    probe = probe_for(candidate)
    got = probe.intermediates("encode", [mels[0][None]], ["encoder.conv1", "encoder.ln_post"], 1e-3)
    assert not probe.unreproduced
    assert set(got) == {"encoder.conv1", "encoder.ln_post"} and got["encoder.conv1"].shape == (DIMS.n_mel_frames,
                                                                                                DIMS.n_audio_state)
    assert candidate.sessions == sessions


# name -> (plant, parts planted, the divergent stage, the operation named)
PLANTED = {
    "decoder MLP bias dropped": (drop_bias("decoder.blocks.1.mlp.0"), DECODERS, "prefill",
                                 "decoder layer 1, MLP first linear (decoder.blocks.1.mlp.0)"),
    "encoder attention weights scaled": (
        scale_after("encoder.blocks.2.attn.weights", 0.9), (layout.ENCODER,), "encode",
        "encoder layer 2, attention weights (encoder.blocks.2.attn.weights)"),
    "self-attention K and V swapped": (swap_key_value("decoder.blocks.2.attn"), DECODERS, "prefill",
                                       "decoder layer 2, self-attention scores (decoder.blocks.2.attn.scores)"),
    "cross-attention output bias dropped at steps only": (
        drop_bias("decoder.blocks.0.cross_attn.out"), (layout.DECODER_WITH_PAST,), "step",
        "decoder layer 0, cross-attention output projection (decoder.blocks.0.cross_attn.out)"),
}
# every bug with the three files; the decoders' also with decoder_model_merged (the encoder is the same file)
CASES = [pytest.param(bug, False, id=f"{bug}, three files") for bug in PLANTED] + [
    pytest.param(bug, True, id=f"{bug}, merged") for bug, (_, parts, _, _) in PLANTED.items()
    if layout.ENCODER not in parts]


def assert_named(report: Report, tokenizer, stage: str, operation: str) -> None:
    text = "\n".join(describe(report, tokenizer))
    assert not report.agree and report.first_divergence.stage == stage, text
    d = report.diagnosis
    assert d.operation.startswith(f"{operation}: max |Δ| ") and d.operation.endswith(AGREES), text
    assert f"  operation  {d.operation}" in text


@pytest.mark.parametrize(("bug", "merged"), CASES)
def test_a_planted_bug_is_named_by_its_operation(small, tmp_path, bug: str, merged: bool) -> None:
    plant, parts, stage, operation = PLANTED[bug]
    report, candidate = verify_small(small, write_candidate(tmp_path / "bug", small[3], plant, parts, DIMS, merged))
    assert candidate.merged == merged
    assert_named(report, small[1], stage, operation)


def test_a_missing_named_node_is_the_operation(small, tmp_path) -> None:
    # the Add removed and nothing named in its place: the graph no longer computes that operation by name
    folder = write_candidate(tmp_path / "bug", small[3], drop_bias("decoder.blocks.1.mlp.0", keep_name=False),
                             DECODERS, DIMS)
    report, _ = verify_small(small, folder)
    assert report.diagnosis.operation == ("decoder layer 1, MLP first linear (decoder.blocks.1.mlp.0): the "
                                          "candidate's graph has no node of that name")


def test_foreign_node_names_are_said_to_be_so_and_the_layer_localisation_stands(small, tmp_path) -> None:
    def plant(model: onnx.ModelProto) -> None:
        swap_key_value("decoder.blocks.1.attn")(model)
        foreign_names(model)

    report, _ = verify_small(small, write_candidate(tmp_path / "bug", small[3], plant, DECODERS, DIMS))
    d = report.diagnosis
    assert d.operation == NOT_RECOGNISED.format(file="decoder_model.onnx")
    # the bug is in decoder layer 1: layer 2's self K/V are the first to differ
    assert d.cause == causes.UNKNOWN.label and (d.part, d.layer) == (loc.LAYER, 1), d.where


class Miscompiled:
    """An engine session whose logits come out 1.5 times too large: a fault the graph does not contain (as a
    kernel the engine compiled wrongly)."""

    def __init__(self, session) -> None:
        self.session = session

    def run(self, names, feeds, *args):
        out = self.session.run(names, feeds, *args)
        return [o * np.float32(1.5) if n == "logits" else o for n, o in zip(names, out, strict=True)]

    def get_providers(self) -> list[str]:
        return self.session.get_providers()


def test_a_fault_outside_the_graph_is_not_blamed_on_an_operation(small, tmp_path) -> None:
    checkpoint, tok, mels, models = small
    candidate = OnnxRuntimeBackend(checkpoint, onnx_dir=write_candidate(tmp_path / "ok", models, None, (), DIMS),
                                   threads=1)
    candidate.sessions[layout.DECODER] = Miscompiled(candidate.sessions[layout.DECODER])
    report = verify(NumpyModel(checkpoint), candidate, tok, checkpoint, mels)
    d = report.diagnosis
    assert report.first_divergence.stage == "prefill" and d.cause == causes.LOGITS_SCALED.label
    assert d.operation.startswith("the candidate's graph, run with its operations exposed, does not reproduce the "
                                  "candidate on the same inputs (decoder_model.onnx output logits: max |Δ| ")
    assert isinstance(candidate.sessions[layout.DECODER], Miscompiled)  # the probe put it back


# ----------------------------------------------------------------------------------------------
# tvm-onnx: the copy compiled as the candidate's libraries were


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory) -> Path:
    """Shared by the TVM tests: the parts a bug leaves alone are compiled once."""
    return tmp_path_factory.mktemp("tvm-onnx-libraries")


@pytest.mark.slow  # compiles two decoder libraries and the probe's copy: ~30 s on 2 shared cores
@pytest.mark.parametrize("bug", ["decoder MLP bias dropped", "cross-attention output bias dropped at steps only"])
def test_a_planted_bug_in_a_tvm_onnx_candidate_is_named_by_its_operation(small, tmp_path, library_dir,
                                                                        bug: str) -> None:
    tvm_onnx = pytest.importorskip("whisperkv.backends.onnx.tvm_onnx")
    checkpoint, tok, mels, models = small
    plant, parts, stage, operation = PLANTED[bug]
    folder = write_candidate(tmp_path / "bug", models, plant, parts, DIMS)
    candidate = tvm_onnx.TVMOnnxBackend(checkpoint, onnx_dir=folder, library_dir=library_dir)
    assert_named(verify(NumpyModel(checkpoint), candidate, tok, checkpoint, mels), tok, stage, operation)


# ----------------------------------------------------------------------------------------------
# tiny.en on real speech


@pytest.fixture(scope="module")
def tiny_models(tiny_en) -> dict[str, onnx.ModelProto]:
    return build_models(tiny_en.checkpoint)


@pytest.mark.slow  # tiny.en: 10..50 s each on 2 shared cores (an encoder bug replays three encoder hypotheses first)
@pytest.mark.parametrize("bug", ["decoder MLP bias dropped", "encoder attention weights scaled",
                                 "self-attention K and V swapped"])
def test_a_planted_bug_in_tiny_en_is_named_by_its_operation(tiny_en, tiny_models, tmp_path, bug: str) -> None:
    plant, parts, stage, operation = PLANTED[bug]
    folder = write_candidate(tmp_path / "bug", tiny_models, plant, parts, tiny_en.dims)
    candidate = OnnxRuntimeBackend(tiny_en.checkpoint, onnx_dir=folder)
    report = verify(tiny_en.backend, candidate, tiny_en.tokenizer, tiny_en.checkpoint, windows(SHORT_CLIP))
    assert_named(report, tiny_en.tokenizer, stage, operation)
