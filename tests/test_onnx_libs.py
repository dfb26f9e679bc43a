"""A folder of compiled TVM libraries and no ONNX (the seed's own files): built from a checkpoint, opened by
`whisperkv verify --candidate FOLDER`, bound by the libraries' parameter names, refused when incomplete.

The small folders use random weights of tiny dims but tiny.en's vocabulary (so the real tokenizer and the
state machine's filters apply): each compiles in ~2 s per library. One test runs the CLI on a real
tiny.en seed-style folder, the case the project exists for: ~30 s to export, compile (scheduled,
backends/tvm/schedule_rules.py) and verify one short clip. tests/test_onnx.py runs such folders of the fp32
and the fp16 exports on two clips.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from whisperkv.reference import kv as kvslots
from whisperkv.reference.backend import max_batch
from whisperkv.reference.checks.candidates import resolve_candidate
from whisperkv.reference.checks.verify import verify
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.errors import InputError
from whisperkv.reference.model import NumpyModel
from whisperkv.reference.registry import BackendUnavailable
from whisperkv.reference.tokenizer import Tokenizer
from whisperkv.reference.weights import Checkpoint, default_model_dir

from .helpers import (
    AUDIO_DIR,
    SHORT_CLIP,
    SMALL_ATOL,
    TINY_VOCAB_DIMS,
    assert_agrees,
    compare_with_reference,
    random_windows,
    small_checkpoint,
)

pytest.importorskip("onnx")
pytest.importorskip("tvm")

from whisperkv.backends import open_folder  # noqa: E402
from whisperkv.backends.onnx import layout, tvm_libs  # noqa: E402
from whisperkv.backends.onnx.folder import OnnxFolderError  # noqa: E402
from whisperkv.backends.onnx.protocol import BatchTooLargeError  # noqa: E402

# tiny dims, tiny.en's vocabulary; n_text_ctx 16 -> verify samples at most 8 tokens per window
DIMS = TINY_VOCAB_DIMS
SEED = 5


def checkpoint(dims: ModelDims = DIMS, seed: int = SEED) -> Checkpoint:
    return small_checkpoint(dims, seed)


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed-style-libs")
    seconds = tvm_libs.compile_seed_style_folder(checkpoint(), out)
    assert set(seconds) == set(layout.PARTS)
    return out


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(default_model_dir() / "tokenizer.json", multilingual=False)


def test_the_folder_holds_three_libraries_and_no_onnx(libs: Path) -> None:
    assert sorted(p.name for p in libs.iterdir()) == sorted(tvm_libs.library_name(p) for p in layout.PARTS)


def test_verify_finds_no_divergence_in_a_seed_style_folder(libs: Path, tokenizer: Tokenizer) -> None:
    ck = checkpoint()
    candidate = resolve_candidate(str(libs), ck, tokenizer)  # the CLI's route: a folder -> open_folder
    assert isinstance(candidate, tvm_libs.TVMLibraryFolderBackend)
    assert set(candidate.bound_by.values()) == {"name"}  # TVM 0.27 records main's parameter names
    assert candidate.variant == {"cache_position": False, "past_encoder_hidden_states": False}
    windows = random_windows(DIMS, SEED, n=2)
    report = verify(NumpyModel(ck), candidate, tokenizer, ck, windows)
    assert_agrees(report)  # no tie either: measured none for this seed
    assert report.steps > 0  # the comparison went past prefill
    # not vacuous: the weights are embedded in the libraries, so another checkpoint's reference disagrees
    other = checkpoint(seed=SEED + 1)
    report = verify(NumpyModel(other), candidate, tokenizer, other, windows)
    assert not report.agree and report.first_divergence.stage == "encode"


@pytest.mark.slow  # compiles a second folder of three libraries
def test_the_variant_is_read_off_the_parameter_names(tmp_path: Path) -> None:
    ck = checkpoint(seed=7)
    # batch=None: the decoders' batch_size left symbolic, so this folder also shows a library of any rows
    tvm_libs.compile_seed_style_folder(ck, tmp_path, fp16=True, cache_position=True, past_encoder_hidden_states=True,
                                       batch=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(tvm_libs.library_name(p, True) for p in layout.PARTS)
    backend = open_folder(tmp_path, ck)
    assert backend.variant == {"cache_position": True, "past_encoder_hidden_states": True}
    # fp16 weights inside: each rounded by at most 2^-11 (~5e-4) relative, over 8-wide dot products and two
    # layers of O(1) activations: a few 1e-3 at most. 2e-2 is fp16's precision here, still below the O(0.1)
    # that a wrong position, slot or weight moves these outputs by.
    compare_with_reference(backend, NumpyModel(ck), 7, n_start=2, n_steps=3, atol=2e-2)
    # Rows: no limit read off a symbolic batch_size, and two rows give what each gives alone. The same
    # kernels over one more row: the summation order may change (~1e-7 on these O(1) logits), a row that
    # reads the other's audio or tokens moves them by O(0.1); SMALL_ATOL is between.
    assert backend.max_batch is None
    rng = np.random.default_rng(7)
    features = [backend.encode(m) for m in rng.standard_normal((2, 1, DIMS.n_mels, DIMS.n_mel_frames)).astype(
        np.float32)]
    start = np.array([[1, 2], [3, 4]])
    both, kv = backend.prefill(start, features, backend.zero_kv(2))
    stepped, _ = backend.step(np.array([5, 6]), backend.select(kv, [1, 0]))
    for r in range(2):
        alone, kv = backend.prefill(start[r:r + 1], features[r:r + 1], backend.zero_kv(1))
        np.testing.assert_allclose(both[r], alone[0], atol=SMALL_ATOL)
        alone, _ = backend.step(np.array([6 - r]), kv)
        np.testing.assert_allclose(stepped[1 - r], alone[0], atol=SMALL_ATOL)


def test_a_batch_1_folder_runs_one_row_and_refuses_more_naming_the_library(libs: Path) -> None:
    # The seed's libraries are compiled for batch 1: max_batch says so (read off main's check of input_ids,
    # not guessed), every call with more rows is refused before it runs, and one row still decodes.
    backend = tvm_libs.TVMLibraryFolderBackend(checkpoint(), libs)
    assert max_batch(backend) == 1 and backend.batch_limit == libs / tvm_libs.library_name(layout.DECODER)
    ref = NumpyModel(checkpoint())
    mel = np.random.default_rng(SEED).standard_normal((1, DIMS.n_mels, DIMS.n_mel_frames)).astype(np.float32)
    features = backend.encode(mel)
    start = np.array([[1, 2]])
    logits, kv = backend.prefill(start, [features], backend.zero_kv())
    want, ref_kv = ref.prefill(start, [ref.encode(mel)], ref.zero_kv())
    np.testing.assert_allclose(logits, want, atol=SMALL_ATOL)  # float32 both sides: summation order only
    kv, ref_kv = backend.select(kv, [0]), ref.select(ref_kv, [0])
    (logits, present), (want, _) = backend.step(np.array([3]), kv), ref.step(np.array([3]), ref_kv)
    np.testing.assert_allclose(logits, want, atol=SMALL_ATOL)
    assert kvslots.shapes([backend.to_numpy(s) for s in present])[0] == (1, DIMS.n_text_head, 3, DIMS.text_head_dim)

    refused = r"^tvm-libs: \S*decoder_model\.so runs at most 1 row\(s\) per call, {} was given 2$"
    calls = {"prefill": lambda: backend.prefill(np.array([[1, 2], [1, 2]]), [features] * 2, backend.zero_kv()),
             "step": lambda: backend.step(np.array([3, 3]), kv),
             "select": lambda: backend.select(kv, [0, 0]),
             "zero_kv": lambda: backend.zero_kv(2)}
    for what, call in calls.items():
        with pytest.raises(BatchTooLargeError, match=refused.format(what)) as e:
            call()
        assert isinstance(e.value, InputError)  # the CLI's one-line error, no traceback


def test_the_batch_a_library_takes_is_read_off_its_shape_check() -> None:
    # main's check of input_ids as TVM 0.27 prints it: ndim 2, then (code, value) per axis; code 0 asserts
    # a fixed size, 1 stores a symbolic one. Anything unreadable is batch 1, which every library runs.
    fixed = "@main:\n  call  vm.builtin.match_shape in: %0, %9, i2, i0, i1, i0, i1, c[1] dst: %void\n"
    symbolic = "@main:\n  call  vm.builtin.match_shape in: %0, %55, i2, i1, i0, i1, i1, c[1] dst: %void\n"
    assert tvm_libs.fixed_batch(fixed, 0) == 1 and tvm_libs.fixed_batch(symbolic, 0) is None
    assert tvm_libs.fixed_batch(fixed.replace("i0, i1, i0", "i0, i4, i0"), 0) == 4
    assert tvm_libs.fixed_batch(symbolic, 1) == 1  # no check of parameter 1 in this text
    assert tvm_libs.fixed_batch(None, 0) == 1


def test_without_names_inputs_bind_in_optimums_order(libs: Path, monkeypatch) -> None:
    monkeypatch.setattr(tvm_libs, "param_names", lambda vm, function="main": None)
    backend = tvm_libs.TVMLibraryFolderBackend(checkpoint(), libs)
    assert set(backend.bound_by.values()) == {"order"}
    compare_with_reference(backend, NumpyModel(checkpoint()), SEED, n_start=3, n_steps=3, atol=SMALL_ATOL)


def test_without_names_an_ambiguous_arity_is_refused(tmp_path: Path) -> None:
    # decoder_with_past with one optional input: encoder_hidden_states or cache_position? Not guessed.
    with pytest.raises(OnnxFolderError, match=r"decoder_with_past_model\.so: main takes 10 parameters: several"):
        tvm_libs.bind_by_order(layout.DECODER_WITH_PAST, tmp_path / "decoder_with_past_model.so", 10, DIMS)


def test_a_folder_missing_a_library_is_refused_naming_it(libs: Path, tmp_path: Path, tokenizer: Tokenizer) -> None:
    for part in (layout.ENCODER, layout.DECODER):
        shutil.copy(libs / tvm_libs.library_name(part), tmp_path)
    with pytest.raises(OnnxFolderError, match=r"decoder_with_past_model\.so: missing"):
        resolve_candidate(str(tmp_path), checkpoint(), tokenizer)


def test_a_folder_with_neither_onnx_nor_libraries_is_refused(tmp_path: Path, tokenizer: Tokenizer) -> None:
    with pytest.raises(BackendUnavailable, match=r"no \*\.onnx and no \*\.so"):
        resolve_candidate(str(tmp_path), checkpoint(), tokenizer)


def test_libraries_of_other_dims_are_refused_naming_file_and_tensor(libs: Path) -> None:
    # one decoder layer fewer: decoder_with_past's main takes past_key_values.1.*, which such a model lacks
    fewer = dataclasses.replace(DIMS, n_text_layer=1)
    with pytest.raises(OnnxFolderError, match=r"decoder_with_past_model\.so: main takes parameter "
                                               r"'past_key_values_1_decoder_key' \(\+3 more\)"):
        tvm_libs.TVMLibraryFolderBackend(checkpoint(fewer), libs)
    # another vocabulary: nothing at load time says so; the first logits do, and the file is named
    other = tvm_libs.TVMLibraryFolderBackend(checkpoint(), libs)
    other.dims = dataclasses.replace(DIMS, n_vocab=51865)
    features = other.encode(np.zeros((1, DIMS.n_mels, DIMS.n_mel_frames), np.float32))
    with pytest.raises(OnnxFolderError, match=r"decoder_model\.so: output 0 \(Optimum's logits\) has shape "
                                               r"\[1, 2, 51864\], expected \[1, 2, 51865\]"):
        other.prefill(np.array([[1, 2]]), [features], other.zero_kv())
    # another encoder length: the VM's own shape check on entry, reported with the file
    wrong = other._native(np.zeros((1, DIMS.n_mels, DIMS.n_mel_frames + 2), np.float32))
    with pytest.raises(OnnxFolderError, match=r"encoder_model\.so: the library refused its inputs"):
        other._run(layout.ENCODER, {"input_features": wrong}, ["last_hidden_state"])


@pytest.mark.slow  # compiles tiny.en's three graphs (~15 s) and verifies a clip in a child process
def test_cli_verify_on_a_real_tiny_en_seed_style_folder(tiny_en, tmp_path: Path) -> None:
    # The seed's case: tiny.en's three Optimum models, each compiled the plain way to a .so, no .onnx.
    tvm_libs.compile_seed_style_folder(tiny_en.checkpoint, tmp_path)
    clip = AUDIO_DIR / SHORT_CLIP  # one window, 5 sampled tokens
    p = subprocess.run([sys.executable, "-m", "whisperkv", "verify", str(clip), "--candidate", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "candidate tvm-libs" in p.stdout and "AGREE" in p.stdout and "0 tie(s)" in p.stdout
