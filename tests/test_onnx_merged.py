"""decoder_model_merged.onnx: our export of it (Optimum's merge: one If on use_cache_branch), and onnxruntime
running a folder that holds it in place of, or beside, the two separate decoders; the TVM engines (tvm-onnx,
compile-onnx) running a merged-only folder as the If's two branches split into the two decoders (split.py).

The merged graph's branches are our two decoder graphs node for node, so the tolerances are those of
tests/test_onnx.py: float32 onnxruntime against float32 numpy differs by summation order only (~1e-6 on
the random models: SMALL_ATOL; on tiny.en, verify()'s relative 1e-3), far below what a wrong branch, flag,
slot or position moves (O(0.1) and more). Random models cost milliseconds; the one tiny.en export (~5 s)
and a short real clip (~3 s) dominate the file's runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisperkv.reference import kv as kvslots
from whisperkv.reference.checks.verify import verify
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.model import NumpyModel
from whisperkv.reference.tokenizer import Tokenizer
from whisperkv.reference.weights import Checkpoint, default_model_dir

from .helpers import (
    FP32_LOGIT_ATOL,
    SHORT_CLIP,
    SMALL,
    SMALL_ATOL,
    TINY_VOCAB_DIMS,
    assert_agrees,
    assert_logits_within,
    compare_with_reference,
    no_speech_prob,
    random_windows,
    small_checkpoint,
    small_dims,
    windows,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from whisperkv.backends.onnx import layout  # noqa: E402
from whisperkv.backends.onnx.export import build_models, export_onnx, merge_decoders  # noqa: E402
from whisperkv.backends.onnx.folder import OnnxFolderError, check_part, signature_from_model  # noqa: E402
from whisperkv.backends.onnx.ort import OnnxRuntimeBackend  # noqa: E402

SEPARATE = (layout.DECODER, layout.DECODER_WITH_PAST)


def merged_folder(checkpoint: Checkpoint, out: Path, keep_separate: bool = False, fp16: bool = False,
                  **variant) -> Path:
    """An export with decoder_model_merged; without keep_separate the two decoders are removed."""
    export_onnx(checkpoint, out, fp16=fp16, merged=True, **variant)
    if not keep_separate:
        for part in SEPARATE:
            (out / layout.file_name(part, fp16)).unlink()
    return out


def dims_of(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def names_read(graph) -> set[str]:
    return {name for node in graph.node for name in node.input}


# ----------------------------------------------------------------------------------------------
# The export


def test_merged_export_is_one_if_on_use_cache_branch_with_optimums_inputs_and_outputs() -> None:
    # Written out from docs/architecture.md's description of a real Optimum export, not from layout.py.
    models = build_models(small_checkpoint(SMALL), merged=True)
    model = models[layout.MERGED]
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    kv = [f"{i}.{side}.{kv}" for i in range(SMALL.n_text_layer) for side in ("decoder", "encoder")
          for kv in ("key", "value")]
    assert [v.name for v in graph.input] == (["input_ids", "encoder_hidden_states"]
                                             + [f"past_key_values.{n}" for n in kv] + ["use_cache_branch"])
    flag = graph.input[-1]
    assert flag.type.tensor_type.elem_type == onnx.TensorProto.BOOL and dims_of(flag) == [1]
    assert [v.name for v in graph.output] == ["logits"] + [f"present.{n}" for n in kv]
    assert dims_of(graph.input[2]) == ["batch_size", SMALL.n_text_head, "past_decoder_sequence_length",
                                       SMALL.text_head_dim]
    (node,) = graph.node
    assert node.op_type == "If" and list(node.input) == ["use_cache_branch"]
    branches = {a.name: a.g for a in node.attribute}
    then, orelse = branches["then_branch"], branches["else_branch"]
    # else = decoder_model: never reads a past; then = decoder_with_past: never reads the audio
    assert not any(n.startswith("past_key_values.") for n in names_read(orelse))
    assert "encoder_hidden_states" not in names_read(then) and "encoder_hidden_states" in names_read(orelse)
    assert len(then.output) == len(orelse.output) == len(graph.output)
    # The weights are stored once, in the enclosing graph, read by both branches.
    names = [t.name for t in graph.initializer]
    assert len(names) == len(set(names))
    assert set(names) == {t.name for p in SEPARATE for t in models[p].graph.initializer}
    assert not then.initializer and not orelse.initializer
    assert {"decoder.token_embedding.weight"} <= names_read(then) & names_read(orelse)


def run_merged(model, dims: ModelDims, flag: bool, pasts: dict[str, np.ndarray], tokens: list[int]) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"input_ids": np.asarray([tokens], np.int64), "use_cache_branch": np.array([flag]),
             "encoder_hidden_states": rng.standard_normal((1, dims.n_audio_ctx, dims.n_text_state)).astype(np.float32),
             **pasts}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


@pytest.mark.parametrize("mode", ["empty", "pasts"])
def test_the_cached_branch_encoder_presents(mode: str) -> None:
    # Optimum's merge fills the outputs decoder_with_past lacks with empty constants; "pasts" passes them on.
    models = build_models(small_checkpoint(SMALL))
    model = merge_decoders(models[layout.DECODER], models[layout.DECODER_WITH_PAST], SMALL, mode)
    rng = np.random.default_rng(1)
    n = kvslots.n_slots(SMALL.n_text_layer)
    first = run_merged(model, SMALL, False, {layout.kv_name("past_key_values", s): np.zeros(
        (1, SMALL.n_text_head, 0, SMALL.text_head_dim), np.float32) for s in range(n)}, [1, 2])
    assert first["present.0.encoder.key"].shape == (1, SMALL.n_text_head, SMALL.n_audio_ctx, SMALL.text_head_dim)
    pasts = {layout.kv_name("past_key_values", s): rng.standard_normal(kvslots.slot_shape(SMALL, s, 2)).astype(
        np.float32) for s in range(n)}
    out = run_merged(model, SMALL, True, pasts, [3])
    assert out["present.0.decoder.key"].shape[2] == 3  # the cached branch appended one position
    for s in kvslots.cross_slots(SMALL.n_text_layer):
        got = out[layout.kv_name("present", s)]
        if mode == "empty":
            assert got.shape == (0, SMALL.n_text_head, 1, SMALL.text_head_dim)
        else:
            np.testing.assert_array_equal(got, pasts[layout.kv_name("past_key_values", s)])


def test_export_onnx_command_writes_the_merged_file_too(tmp_path: Path) -> None:
    from whisperkv.reference.app.cli import main  # export-onnx comes through the whisperkv.commands entry point
    from whisperkv.reference.weights import save_huggingface

    save_huggingface(small_checkpoint(SMALL), tmp_path / "model")
    assert main(["export-onnx", str(tmp_path / "out"), "--model", str(tmp_path / "model"), "--merged"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(layout.file_name(p) for p in (*layout.PARTS, layout.MERGED))


# ----------------------------------------------------------------------------------------------
# onnxruntime over a merged folder, against the numpy reference


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(dims=small_dims(), seed=st.integers(0, 2**31), cache_position=st.booleans(), past_ehs=st.booleans(),
       n_start=st.integers(1, 3))
def test_a_merged_folder_equals_the_reference_on_random_models(tmp_path_factory, dims, seed, cache_position,
                                                              past_ehs, n_start) -> None:
    checkpoint = small_checkpoint(dims, seed)
    out = merged_folder(checkpoint, tmp_path_factory.mktemp("merged"), cache_position=cache_position,
                        past_encoder_hidden_states=past_ehs)
    backend = OnnxRuntimeBackend(checkpoint, onnx_dir=out)
    assert backend.merged and set(backend.sessions) == {layout.ENCODER, layout.MERGED}
    n_steps = min(3, dims.n_text_ctx - n_start)
    compare_with_reference(backend, NumpyModel(checkpoint), seed, n_start, n_steps, SMALL_ATOL)


def test_a_merged_file_passing_the_pasts_on_runs_the_same(tmp_path: Path) -> None:
    checkpoint = small_checkpoint(SMALL, seed=4)
    models = build_models(checkpoint)
    onnx.save(models[layout.ENCODER], str(tmp_path / "encoder_model.onnx"))
    onnx.save(merge_decoders(models[layout.DECODER], models[layout.DECODER_WITH_PAST], SMALL, "pasts"),
              str(tmp_path / "decoder_model_merged.onnx"))
    backend = OnnxRuntimeBackend(checkpoint, onnx_dir=tmp_path)
    assert backend.merged
    compare_with_reference(backend, NumpyModel(checkpoint), 4, n_start=3, n_steps=4, atol=SMALL_ATOL)


def test_with_both_forms_the_separate_decoders_are_used(tmp_path: Path) -> None:
    checkpoint = small_checkpoint(SMALL, seed=5)
    backend = OnnxRuntimeBackend(checkpoint, onnx_dir=merged_folder(checkpoint, tmp_path, keep_separate=True))
    assert not backend.merged and set(backend.sessions) == set(layout.PARTS)  # the merged file is not loaded
    compare_with_reference(backend, NumpyModel(checkpoint), 5, n_start=2, n_steps=3, atol=SMALL_ATOL)


def test_fp16_merged_equals_fp16_separate(tmp_path: Path) -> None:
    # Same float16 graphs, in or out of the If: equal up to kernel choice (the fp16 rounding of the
    # activations is the same on both sides, so a bound far below fp16's own error still holds).
    checkpoint = small_checkpoint(SMALL, seed=6)
    both = merged_folder(checkpoint, tmp_path / "both", keep_separate=True, fp16=True)
    only = merged_folder(checkpoint, tmp_path / "only", fp16=True)
    separate, merged = OnnxRuntimeBackend(checkpoint, onnx_dir=both), OnnxRuntimeBackend(checkpoint, onnx_dir=only)
    assert merged.merged and merged.fp16 and merged.name == "onnxruntime-fp16" and not separate.merged
    rng = np.random.default_rng(6)
    mel = rng.standard_normal((1, SMALL.n_mels, SMALL.n_mel_frames)).astype(np.float32)
    features = [separate.encode(mel), separate.encode(-mel)]  # two rows: the merged path's batch too
    start = np.array([[1, 2], [2, 1]])
    (a, kv_a), (b, kv_b) = (x.prefill(start, features, x.zero_kv(2)) for x in (separate, merged))
    # the merged file's branches are the separate graphs node for node: only onnxruntime's fp16 kernel choice
    # could differ, at float32 rounding (~1e-7 on these O(1) logits); 1e-5 still fails on a wrong branch
    np.testing.assert_allclose(b, a, atol=1e-5)
    kv_a, kv_b = separate.select(kv_a, [1, 0, 1]), merged.select(kv_b, [1, 0, 1])
    for t in (3, 4, 5):
        tokens = np.array([t, t + 1, t + 2])
        (a, p_a), (b, p_b) = separate.step(tokens, kv_a), merged.step(tokens, kv_b)
        np.testing.assert_allclose(b, a, atol=1e-5)
        kv_a, kv_b = kvslots.remap_present(kv_a, p_a), kvslots.remap_present(kv_b, p_b)


def test_the_audio_features_fed_to_the_cached_branch_follow_select(small_merged: Path) -> None:
    # The cached branch reads no node of encoder_hidden_states, but it is a graph input of batch_size rows:
    # the prefill's features are kept per row and every select re-selects them with the slots.
    backend = OnnxRuntimeBackend(small_checkpoint(SMALL), onnx_dir=small_merged)
    rng = np.random.default_rng(7)
    mels = rng.standard_normal((2, 1, SMALL.n_mels, SMALL.n_mel_frames)).astype(np.float32)
    features = [backend.encode(m) for m in mels]
    _, kv = backend.prefill(np.array([[1, 2], [3, 4]]), features, backend.zero_kv(2))
    kv = backend.select(kv, [1, 1, 0])
    np.testing.assert_array_equal(backend._features, np.concatenate([features[i] for i in (1, 1, 0)]))
    logits, _ = backend.step(np.array([5, 6, 7]), kv)
    assert logits.shape == (3, SMALL.n_vocab)
    backend.prefill(np.array([[1, 2]]), features[:1], backend.zero_kv(1))  # another batch: its features now
    with pytest.raises(RuntimeError, match=r"decoder_model_merged\.onnx takes encoder_hidden_states, kept for "
                                           r"the 1 row\(s\) of the last prefill or select"):
        backend.step(np.array([5, 6, 7]), kv)


# ----------------------------------------------------------------------------------------------
# verify: tiny dims with tiny.en's vocabulary, so the real tokenizer and the state machine's filters apply

VERIFY_DIMS = TINY_VOCAB_DIMS


def test_verify_agrees_on_a_merged_folder_opened_as_a_candidate(tmp_path: Path) -> None:
    from whisperkv.backends import open_folder

    ck = small_checkpoint(VERIFY_DIMS, 8)
    candidate = open_folder(merged_folder(ck, tmp_path), ck)  # `whisperkv verify --candidate FOLDER`'s route
    assert isinstance(candidate, OnnxRuntimeBackend) and candidate.merged
    tokenizer = Tokenizer(default_model_dir() / "tokenizer.json", multilingual=False)
    mels = random_windows(VERIFY_DIMS, 8, n=2)
    report = verify(NumpyModel(ck), candidate, tokenizer, ck, mels)
    assert_agrees(report, ties_allowed=True)  # random weights: a tie is possible and accepted
    assert report.steps > 0  # the comparison went through the cached branch
    other = small_checkpoint(VERIFY_DIMS, 9)
    assert not verify(NumpyModel(other), candidate, tokenizer, other, mels).agree  # not vacuous


# ----------------------------------------------------------------------------------------------
# Refusals name the file and the tensor


@pytest.fixture(scope="module")
def small_merged(tmp_path_factory) -> Path:
    return merged_folder(small_checkpoint(SMALL), tmp_path_factory.mktemp("small-merged"))


def refusal(folder: Path) -> str:
    with pytest.raises(OnnxFolderError) as e:
        OnnxRuntimeBackend(small_checkpoint(SMALL), onnx_dir=folder)
    return str(e.value)


def edited_merged(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "encoder_model.onnx").write_bytes((src / "encoder_model.onnx").read_bytes())
    model = onnx.load(str(src / "decoder_model_merged.onnx"))
    edit(model.graph)
    onnx.save(model, str(dst / "decoder_model_merged.onnx"))
    return dst


def test_a_folder_without_either_decoder_form_is_refused(small_merged: Path, tmp_path: Path) -> None:
    folder = edited_merged(small_merged, tmp_path / "f", lambda g: None)
    (folder / "decoder_model_merged.onnx").unlink()
    msg = refusal(folder)
    assert "decoder_model.onnx: missing" in msg
    assert "decoder_model.onnx + decoder_with_past_model.onnx or decoder_model_merged.onnx" in msg


def test_a_flag_of_the_wrong_dtype_is_refused(small_merged: Path) -> None:
    # onnxruntime refuses such a file itself when loading it (If takes a bool); the check on the file's
    # own signature (what an engine without that validation, TVM, would get) refuses it too.
    path = small_merged / "decoder_model_merged.onnx"
    model = onnx.load(str(path))
    model.graph.input[-1].type.tensor_type.elem_type = onnx.TensorProto.INT64
    with pytest.raises(OnnxFolderError, match=r"decoder_model_merged\.onnx: input use_cache_branch has dtype int64, "
                                              r"expected bool"):
        check_part(layout.MERGED, path, signature_from_model(model), SMALL)


def test_a_merged_file_without_the_flag_or_an_output_is_refused(small_merged: Path, tmp_path: Path) -> None:
    def rename_flag(graph) -> None:
        graph.input[-1].name = "use_cache"
        graph.node[0].input[0] = "use_cache"

    msg = refusal(edited_merged(small_merged, tmp_path / "a", rename_flag))
    assert "decoder_model_merged.onnx: unexpected input use_cache (missing: use_cache_branch" in msg

    def drop_output(graph) -> None:
        graph.output.remove(next(v for v in graph.output if v.name == "present.1.encoder.value"))

    msg = refusal(edited_merged(small_merged, tmp_path / "b", drop_output))
    assert "decoder_model_merged.onnx: missing output present.1.encoder.value" in msg


# ----------------------------------------------------------------------------------------------
# tiny.en on real speech


@pytest.mark.slow  # exports tiny.en (~5 s) and verifies a clip; the small merged folders above are the fast tier's
def test_tiny_en_merged_folder_agrees_with_the_reference(tiny_en, tmp_path_factory) -> None:
    backend = OnnxRuntimeBackend(tiny_en.checkpoint, onnx_dir=merged_folder(tiny_en.checkpoint,
                                                                             tmp_path_factory.mktemp("tiny-merged")))
    assert backend.merged
    mels = windows(SHORT_CLIP, tiny_en.dims.n_mels)  # 2.8 s: one window
    report = verify(tiny_en.backend, backend, tiny_en.tokenizer, tiny_en.checkpoint, mels, audio=SHORT_CLIP)
    assert_agrees(report)
    assert_logits_within(report, FP32_LOGIT_ATOL)
    # the SOT position's float32 softmax, which verify() does not read; 1e-4 catches a wrong position (O(0.01..1))
    for mel in mels:
        got, want = (no_speech_prob(b, tiny_en.tokenizer, mel) for b in (backend, tiny_en.backend))
        assert abs(got - want) < 1e-4


# ----------------------------------------------------------------------------------------------
# TVM: the merged file compiled as its two branches (backends/onnx/split.py; docs/schedules.md, "The merged
# decoder"), since TVM 0.27 cannot import its If


@pytest.mark.parametrize("mode", ["empty", "pasts"])
@pytest.mark.parametrize("variant", [{}, {"cache_position": True, "past_encoder_hidden_states": True}],
                         ids=["optimum-0.1", "cache_position+encoder_hidden_states"])
def test_the_split_branches_are_the_two_decoders(variant: dict, mode: str) -> None:
    # Each branch lifted out binds as the separate file (same input and output names, checked by check_part)
    # and computes what it computes: onnxruntime runs the same nodes on the same weights, so the outputs are
    # bit-equal (no tolerance). The cached branch's placeholders for the cross presents are dropped, with
    # the nodes that made them; its encoder_hidden_states input too, since no node of the branch reads it.
    import onnxruntime as ort

    from whisperkv.backends.onnx.split import split_merged

    models = build_models(small_checkpoint(SMALL, seed=10), **variant)
    split = split_merged(merge_decoders(models[layout.DECODER], models[layout.DECODER_WITH_PAST], SMALL, mode))
    rng = np.random.default_rng(10)
    for part in SEPARATE:
        model, separate = split[part], models[part]
        onnx.checker.check_model(model, full_check=True)
        binding = check_part(part, "split", signature_from_model(model), SMALL)
        assert [v.name for v in model.graph.output] == [v.name for v in separate.graph.output]
        assert set(binding.inputs) == {v.name for v in separate.graph.input} - (
            {"encoder_hidden_states"} if part == layout.DECODER_WITH_PAST else set())
        assert "use_cache_branch" not in binding.inputs and not any(n.op_type == "If" for n in model.graph.node)
        n_new, past = (2, 0) if part == layout.DECODER else (1, 3)
        feeds = {"input_ids": rng.integers(0, SMALL.n_vocab, (2, n_new)),
                 "encoder_hidden_states": rng.standard_normal((2, SMALL.n_audio_ctx, SMALL.n_text_state)).astype(
                     np.float32),
                 "cache_position": np.arange(past, past + n_new)}
        for s in range(kvslots.n_slots(SMALL.n_text_layer)):
            feeds[layout.kv_name("past_key_values", s)] = rng.standard_normal(
                kvslots.slot_shape(SMALL, s, past, batch=2)).astype(np.float32)
        want = ort.InferenceSession(separate.SerializeToString()).run(
            None, {k: v for k, v in feeds.items() if k in {v.name for v in separate.graph.input}})
        got = ort.InferenceSession(model.SerializeToString()).run(None, {k: feeds[k] for k in binding.inputs})
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_file_that_is_no_merged_decoder_is_refused_by_the_split(small_merged: Path) -> None:
    from whisperkv.backends.onnx.split import split_merged

    model = onnx.load(str(small_merged / "decoder_model_merged.onnx"))
    model.graph.node[0].input[0] = "encoder_hidden_states"
    with pytest.raises(OnnxFolderError, match=r"m\.onnx: not an Optimum merged decoder \(expected one If on the "
                                              r"graph input use_cache_branch"):
        split_merged(model, "m.onnx")


@pytest.mark.slow  # three small TVM compiles for tvm-onnx, three more for compile-onnx (~2 s each)
def test_tvm_engines_run_a_merged_only_folder_as_its_two_branches(small_merged: Path, tmp_path: Path) -> None:
    # tvm-onnx and compile-onnx on a folder with only encoder_model + decoder_model_merged: the two decoders
    # compiled from the If's branches, run as the separate files are (no flag, no empty pasts), equal to the
    # numpy reference within SMALL_ATOL (float32 both sides: summation order only, as for the separate files
    # in tests/test_onnx.py).
    pytest.importorskip("tvm")
    from whisperkv.backends.onnx.tvm_libs import TVMLibraryFolderBackend, compile_onnx_folder, find_libraries
    from whisperkv.backends.onnx.tvm_onnx import TVMOnnxBackend

    checkpoint = small_checkpoint(SMALL)
    backend = TVMOnnxBackend(checkpoint, onnx_dir=small_merged, library_dir=tmp_path / "cache")
    assert set(backend.compile_seconds) == set(layout.PARTS) and not backend.merged
    assert backend.bindings[layout.DECODER].path.name == "decoder_model_merged.onnx"  # errors name the user's file
    compare_with_reference(backend, NumpyModel(checkpoint), 11, n_start=3, n_steps=4, atol=SMALL_ATOL)

    seconds = compile_onnx_folder(small_merged, tmp_path / "libs", SMALL, batch=None)
    assert set(seconds) == set(layout.PARTS)
    assert sorted(p.name for p in find_libraries(tmp_path / "libs").values()) == sorted(
        layout.file_name(p, suffix=".so") for p in layout.PARTS)
    compare_with_reference(TVMLibraryFolderBackend(checkpoint, tmp_path / "libs"), NumpyModel(checkpoint), 12,
                           n_start=2, n_steps=4, atol=SMALL_ATOL)


@pytest.mark.slow  # exports tiny.en (~5 s), compiles its three graphs (~15 s) and verifies a 2.8 s clip
def test_tvm_onnx_runs_a_tiny_en_merged_only_folder_as_the_reference(tiny_en, tmp_path_factory) -> None:
    pytest.importorskip("tvm")
    from whisperkv.backends.onnx.tvm_onnx import TVMOnnxBackend

    folder = merged_folder(tiny_en.checkpoint, tmp_path_factory.mktemp("tiny-merged-tvm"))
    backend = TVMOnnxBackend(tiny_en.checkpoint, onnx_dir=folder, library_dir=tmp_path_factory.mktemp("tvm-lib"))
    mels = windows(SHORT_CLIP, tiny_en.dims.n_mels)
    report = verify(tiny_en.backend, backend, tiny_en.tokenizer, tiny_en.checkpoint, mels, audio=SHORT_CLIP)
    assert_agrees(report)
    # float32 both sides, the separate files' bound (tests/test_onnx.py's tvm-onnx test: schedules change
    # summation orders, exp / erf are few-ulp polynomials; ~1e-4 measured)
    assert_logits_within(report, FP32_LOGIT_ATOL)


def test_tvm_importer_still_cannot_import_the_merged_decoder() -> None:
    # TVM 0.27's from_onnx fails inside the If's branches (docs/schedules.md quotes why). This test is the
    # reminder: when an upgraded TVM imports the merged file, it fails here, and the merged decoder can be
    # compiled as one library (only the taken branch runs) instead of being split into two (split.py).
    pytest.importorskip("tvm")
    from tvm.relax.frontend.onnx import from_onnx

    model = build_models(small_checkpoint(SMALL), merged=True)[layout.MERGED]
    with pytest.raises(Exception, match=r"requires argument 0 \(x1\) to be a tensor"):  # noqa: PT011 - TVM's error
        from_onnx(model, keep_params_in_input=True)
