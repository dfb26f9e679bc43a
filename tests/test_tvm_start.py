"""The TVM backend's lean start: a warm cache runs without `import tvm`, with weights memory-mapped from a
packed file, and without reading the checkpoint's weights (reference/weights.py's notes).

The fresh-interpreter tests run children with WHISPERKV_CACHE_DIR set to a private cache: a small random
shape (compiled once, ~5 s, as test_cache.py's) in the fast tier, the real tiny.en on the short clip in the
slow tier (a whole-model compile). The packed-weights file is damaged as test_cache.py damages libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm_ffi")

import whisperkv.backends.tvm.threads  # noqa: E402,F401  (sets TVM_NUM_THREADS before the runtime starts)
import whisperkv.reference.files  # noqa: E402
from whisperkv.backends import cache as wcache  # noqa: E402
from whisperkv.backends.tvm import packed  # noqa: E402
from whisperkv.backends.tvm.params import ModelConfig, pack_params  # noqa: E402
from whisperkv.reference import weights as wweights  # noqa: E402
from whisperkv.reference.dims import ModelDims  # noqa: E402
from whisperkv.reference.files import TEMPORARY_NAME  # noqa: E402
from whisperkv.reference.weights import Checkpoint, load_checkpoint, random_weights, save_huggingface  # noqa: E402

from .helpers import AUDIO_DIR, SHORT_CLIP  # noqa: E402

SMALL = ModelDims(n_mels=5, n_audio_ctx=9, n_audio_state=48, n_audio_head=3, n_audio_layer=1,
                  n_vocab=77, n_text_ctx=13, n_text_state=48, n_text_head=2, n_text_layer=1)
COMPILER_MODULES = ("tvm", "tvm.relax", "tvm.ir", "tvm.tirx", "tvm.te", "tvm.target")
TOLERANCE = 1e-4  # test_tvm.py's, for small random models


def child_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WHISPERKV_CACHE_DIR", "XDG_CACHE_HOME")}
    env["WHISPERKV_CACHE_DIR"] = str(cache)
    return env


def run_child(code: str, cache: Path, *args: str) -> dict:
    # 600 s: far above a compile (~5-10 s) even on a loaded machine; only a hang would reach it.
    p = subprocess.run([sys.executable, "-c", code, *args], env=child_env(cache), capture_output=True, text=True,
                       timeout=600, cwd=cache)
    assert p.returncode == 0, f"rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def small_folder(where: Path, seed: int = 0) -> Path:
    """A Hugging Face folder of random SMALL weights, old enough for a note written after it (the note must be
    written in a later tick of the file system's clock than the files' last change: weights._read_note)."""
    ck = Checkpoint(SMALL, random_weights(SMALL, seed), Path("/nonexistent"), "float32", "random")
    folder = save_huggingface(ck, where)
    time.sleep(0.05)  # > one tick of the kernel's coarse clock (<= 10 ms)
    return folder


# A fresh interpreter: the backend from the warm cache, one encode + prefill; what it imported and mapped.
SMALL_CHILD = """
import json, sys
import numpy as np
from whisperkv.reference.weights import load_checkpoint
from whisperkv.backends.tvm.backend import TVMBackend
ck = load_checkpoint(sys.argv[1])
backend = TVMBackend(ck, compile_if_missing=sys.argv[2] == "compile", quiet=True)
d = ck.dims
mel = np.random.default_rng(0).standard_normal((1, d.n_mels, d.n_mel_frames)).astype(np.float32)
logits, _ = backend.prefill(np.array([[1, 2, 3]]), [backend.encode(mel)], backend.zero_kv(1))
maps = open("/proc/self/maps").read()
print(json.dumps({"modules": sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")),
                  "weights_read": ck.weights_loaded, "logits": logits.tolist(),
                  "mapped": sorted({line.split()[-1] for line in maps.splitlines() if line.endswith(".weights")})}))
"""


def reference_logits(folder: Path) -> np.ndarray:
    from whisperkv.reference.model import NumpyModel

    ref = NumpyModel(load_checkpoint(folder))
    d = ref.dims
    mel = np.random.default_rng(0).standard_normal((1, d.n_mels, d.n_mel_frames)).astype(np.float32)
    logits, _ = ref.prefill(np.array([[1, 2, 3]]), [ref.encode(mel)], ref.zero_kv(1))
    return logits


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) <= TOLERANCE * scale


@pytest.fixture(scope="module")
def small_start(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(cache, checkpoint folder, the first child's result): the first start compiles, packs and notes."""
    cache = tmp_path_factory.mktemp("start-cache")
    folder = small_folder(tmp_path_factory.mktemp("start-ckpt") / "small")
    first = run_child(SMALL_CHILD, cache, str(folder), "compile")
    return cache, folder, first


def test_a_warm_start_runs_without_the_compiler_on_mapped_weights(small_start) -> None:
    cache, folder, first = small_start
    assert first["weights_read"]  # the first start read (and checked) them, to pack them
    warm = run_child(SMALL_CHILD, cache, str(folder), "refuse")  # compile_if_missing=False: nothing to build
    assert [m for m in warm["modules"] if m in COMPILER_MODULES] == [] and warm["modules"] == []
    assert not warm["weights_read"]  # the note vouched for the files: the weights were never read
    weights_files = sorted(str(p) for p in cache.glob("*.weights"))
    assert len(weights_files) == 1 and warm["mapped"] == weights_files  # memory-mapped, not copied
    assert wcache.check_record(Path(weights_files[0])) is None
    want = reference_logits(folder)
    assert_close(np.array(first["logits"], np.float32), want)
    assert_close(np.array(warm["logits"], np.float32), want)


ONNX_CHILD = """
import json, sys
import numpy as np
from whisperkv.reference.weights import load_checkpoint
from whisperkv.backends.onnx.tvm_onnx import TVMOnnxBackend
ck = load_checkpoint(sys.argv[1])
backend = TVMOnnxBackend(ck, quiet=True)
d = ck.dims
mel = np.random.default_rng(0).standard_normal((1, d.n_mels, d.n_mel_frames)).astype(np.float32)
logits, _ = backend.prefill(np.array([[1, 2, 3]]), [backend.encode(mel)], backend.zero_kv(1))
maps = open("/proc/self/maps").read()
data = {part: [int(np.from_dlpack(t).ctypes.data) for t in backend.params[part]] for part in backend.params}
print(json.dumps({"modules": sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")),
                  "onnx_imported": "onnx" in sys.modules, "warm": sorted(backend.warm_parts),
                  "step_params": len(data["decoder_with_past_model"]),
                  "step_params_shared": len(set(data["decoder_with_past_model"]) & set(data["decoder_model"])),
                  "weights_read": ck.weights_loaded, "compiled": sorted(backend.compile_seconds),
                  "mapped": sorted({line.split()[-1] for line in maps.splitlines() if line.endswith(".params")}),
                  "logits": logits.tolist()}))
"""
ONNX_PARTS = ["decoder_model", "decoder_with_past_model", "encoder_model"]


@pytest.fixture(scope="module")
def onnx_start(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(cache, checkpoint folder, the first child's result): the first tvm-onnx start exports and compiles."""
    pytest.importorskip("onnx")
    folder = small_folder(tmp_path_factory.mktemp("onnx-ckpt") / "small")
    cache = tmp_path_factory.mktemp("onnx-cache")
    return cache, folder, run_child(ONNX_CHILD, cache, str(folder))


def params_files(cache: Path) -> list[str]:
    return sorted(str(p) for p in (cache / "tvm-onnx").glob("*.params"))


@pytest.mark.slow  # three small TVM compiles (~15 s), shared by the tests below
def test_a_warm_tvm_onnx_start_runs_without_the_compiler_or_the_onnx_files(onnx_start) -> None:
    # the seed's route, warm: the cached libraries are loaded by tvm-ffi and libtvm_runtime (runtime.VM), the
    # export is found by the checkpoint's digest, and each part's start record (start_record.py) stands for
    # its ONNX file: no compiler, no onnx, no weights read, the transformed weights mapped; the same logits
    cache, folder, first = onnx_start
    assert first["compiled"] == ONNX_PARTS and first["warm"] == [] and first["onnx_imported"]
    warm = run_child(ONNX_CHILD, cache, str(folder))
    assert warm["compiled"] == [] and warm["modules"] == [] and not warm["weights_read"]
    assert warm["warm"] == ONNX_PARTS and not warm["onnx_imported"]
    files = {Path(p).name.split("-")[0]: Path(p) for p in params_files(cache)}
    assert sorted(files) == ONNX_PARTS and all(wcache.check_record(p) is None for p in files.values())
    # the step's weights are the prefill's (start_record.SharedParams): the same mapped tensors, not a copy, and
    # its file holds none of them (its header only: nothing of it mapped)
    assert warm["step_params"] > 0 and warm["step_params_shared"] == warm["step_params"]
    assert files["decoder_with_past_model"].stat().st_size < 64 * 1024
    assert warm["mapped"] == sorted(str(files[p]) for p in ("decoder_model", "encoder_model"))  # mapped, not copied
    want = reference_logits(folder)
    assert_close(np.array(first["logits"], np.float32), want)
    assert_close(np.array(warm["logits"], np.float32), want)


@pytest.mark.slow  # (onnx_start)
def test_a_touched_onnx_folder_or_damaged_params_start_cold_and_rewrite_them(onnx_start) -> None:
    cache, folder, _ = onnx_start
    want = reference_logits(folder)
    (export,) = (cache / "onnx").glob("*/encoder_model.onnx")
    # another stamp on any file of the folder (here the encoder's, same bytes): every part of it starts from
    # its file again (the stamps cover the folder: external data), compiles nothing, and writes its record
    export.write_bytes(export.read_bytes())
    time.sleep(0.05)  # (small_folder: a later tick of the file system's clock for the record)
    cold = run_child(ONNX_CHILD, cache, str(folder))
    assert cold["warm"] == [] and cold["onnx_imported"] and cold["compiled"] == []
    assert_close(np.array(cold["logits"], np.float32), want)
    assert run_child(ONNX_CHILD, cache, str(folder))["warm"] == ONNX_PARTS
    # a flipped byte in one part's transformed weights: its record refuses the file, that part starts cold and
    # writes it again (the same bytes: the transform is deterministic); so does every part whose file refers
    # into it (the step's, into the prefill's); the others stay warm
    for damaged, still_warm in (("encoder_model", ["decoder_model", "decoder_with_past_model"]),
                                ("decoder_model", ["encoder_model"])):
        good = {p: p.read_bytes() for p in map(Path, params_files(cache))}
        path = next(p for p in good if p.name.startswith(f"{damaged}-"))
        data = bytearray(good[path])
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        assert "does not match its record" in wcache.check_record(path)
        repaired = run_child(ONNX_CHILD, cache, str(folder))
        assert repaired["warm"] == still_warm and repaired["compiled"] == []
        assert {p: p.read_bytes() for p in map(Path, params_files(cache))} == good
        assert all(wcache.check_record(p) is None for p in good)
        assert repaired["step_params_shared"] == repaired["step_params"]
        assert_close(np.array(repaired["logits"], np.float32), want)


def test_a_damaged_packed_weights_file_is_rebuilt_before_it_is_mapped(small_start) -> None:
    cache, folder, _ = small_start
    (path,) = cache.glob("*.weights")
    good = path.read_bytes()
    for damage in ("flip", "cut"):
        if damage == "flip":
            data = bytearray(good)
            data[len(data) // 2] ^= 0xFF  # one byte inside a tensor: the header would still parse
            path.write_bytes(bytes(data))
        else:
            path.write_bytes(good[: len(good) // 3])
        assert "does not match its record" in wcache.check_record(path)
        warm = run_child(SMALL_CHILD, cache, str(folder), "refuse")
        assert warm["weights_read"] and warm["modules"] == []  # repacked from the checkpoint, no compiler
        assert path.read_bytes() == good and wcache.check_record(path) is None  # packing is deterministic
        assert_close(np.array(warm["logits"], np.float32), reference_logits(folder))


def test_packed_weights_are_written_atomically_and_mapped_without_a_copy(tmp_path, monkeypatch) -> None:
    directory = tmp_path / "cache"
    monkeypatch.setenv("WHISPERKV_CACHE_DIR", str(directory))
    ck = load_checkpoint(small_folder(tmp_path / "small"))
    cfg = ModelConfig(SMALL)
    digest = ck.weights_digest()  # (writes the checkpoint's note now, before rename is made to fail)

    def killed(src, dst):
        raise KeyboardInterrupt

    rename = os.replace
    monkeypatch.setattr(whisperkv.reference.files.os, "replace", killed)  # the atomic writer's rename
    with pytest.raises(KeyboardInterrupt):
        packed.cached_weights(cfg, ck, directory=directory, quiet=True)
    assert not list(directory.glob("*.weights*"))
    assert not [p for p in directory.iterdir() if TEMPORARY_NAME.match(p.name)]
    monkeypatch.setattr(whisperkv.reference.files.os, "replace", rename)

    path = packed.cached_weights(cfg, ck, directory=directory, quiet=True)
    assert path == packed.packed_path(cfg, digest, directory) and wcache.check_record(path) is None
    mapped = packed.map_packed(path, cfg, ck.weights_digest())
    want = pack_params(ck.weights, cfg)
    for fn, arrays in want.items():
        for got, w in zip(mapped[fn], arrays, strict=True):
            assert np.array_equal(got, w) and got.dtype == w.dtype
            assert isinstance(got.base, np.memmap) or isinstance(got, np.memmap)  # a view of the mapping
            assert got.ctypes.data % packed.ALIGN == 0
    # Another checkpoint (another digest) gets another file; the wrong digest is refused.
    with pytest.raises(packed.PackedWeightsError):
        packed.map_packed(path, cfg, "0" * 64)


def test_an_unchanged_stamp_skips_the_hash_and_any_write_brings_it_back(tmp_path, monkeypatch) -> None:
    target = tmp_path / "big.bin"
    target.write_bytes(os.urandom(1 << 16))
    time.sleep(0.05)  # the record is written in a later tick than the file: its stamp vouches
    wcache.write_record(target)
    rec = json.loads(wcache.record_path(target).read_text())
    assert rec["files"]["big.bin"]["stamp"] == wweights.file_stamp(target)
    calls = []
    digest = wcache._digest
    monkeypatch.setattr(wcache, "_digest", lambda p: calls.append(p) or digest(p))
    assert wcache.check_record(target) is None and calls == []  # vouched for: not hashed
    assert wcache.check_record(target, full=True) is None and len(calls) == 1
    monkeypatch.setenv("WHISPERKV_CACHE_VERIFY", "full")
    assert wcache.check_record(target) is None and len(calls) == 2
    monkeypatch.delenv("WHISPERKV_CACHE_VERIFY")
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))  # same size, same inode: the stamp's times change
    assert "sha256 differs" in wcache.check_record(target)


def test_checkpoint_weights_are_read_lazily_only_under_a_trusted_note(tmp_path, monkeypatch) -> None:
    folder = small_folder(tmp_path / "small")
    monkeypatch.setenv("WHISPERKV_CACHE_DIR", str(tmp_path / "cache"))
    reads = []
    real = wweights.load_huggingface
    monkeypatch.setattr(wweights, "load_huggingface", lambda f: reads.append(f) or real(f))

    eager = load_checkpoint(folder)  # no note yet: read and checked at once, as always
    assert eager.weights_loaded and len(reads) == 1
    digest = eager.weights_digest()  # what the TVM backend asks: hashes the files once, writes the note
    assert digest is not None and len(reads) == 1
    assert list((tmp_path / "cache" / "checkpoints").glob("*.json"))

    lazy = load_checkpoint(folder)
    assert not lazy.weights_loaded and len(reads) == 1  # dims, dtype and digest from the note
    assert (lazy.dims, lazy.stored_dtype, lazy.format, lazy.weights_digest()) == (
        eager.dims, eager.stored_dtype, eager.format, digest)
    assert lazy.tokenizer_path == eager.tokenizer_path
    w = lazy.weights  # first use: read and checked now
    assert len(reads) == 2 and set(w) == set(eager.weights)
    assert all(np.array_equal(w[k], eager.weights[k]) for k in w)

    # Any change to the files (here a rewrite with other weights) voids the note: read at once again.
    time.sleep(0.05)
    small_folder(tmp_path / "small", seed=1)
    changed = load_checkpoint(folder)
    assert changed.weights_loaded and len(reads) == 3
    assert changed.weights_digest() != digest


def test_a_warm_onnx_export_is_found_without_reading_the_weights(tmp_path, monkeypatch) -> None:
    # the ONNX routes (onnxruntime, tvm-onnx) key their export by the checkpoint files' digest, which a warm
    # start knows from the note: finding the export reads no weights. Weights from no file, or replaced in
    # memory, are keyed by their own hash.
    pytest.importorskip("onnx")
    from whisperkv.backends.onnx.cache import exported_folder

    folder = small_folder(tmp_path / "small")
    monkeypatch.setenv("WHISPERKV_CACHE_DIR", str(tmp_path / "cache"))
    eager = load_checkpoint(folder)
    export = exported_folder(eager, directory=tmp_path / "onnx")  # written; the note too (weights_digest)
    lazy = load_checkpoint(folder)
    assert exported_folder(lazy, directory=tmp_path / "onnx") == export
    assert not lazy.weights_loaded
    lazy.weights = {k: w * 2 for k, w in eager.weights.items()}  # other weights: another export
    assert exported_folder(lazy, directory=tmp_path / "onnx") != export


def test_a_note_from_a_read_only_cache_is_simply_not_written(tmp_path, monkeypatch) -> None:
    folder = small_folder(tmp_path / "small")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("WHISPERKV_CACHE_DIR", str(blocker))  # no folder can be made there
    ck = load_checkpoint(folder)
    assert ck.weights_digest() is not None  # still computed; the next start just reads the weights again
    assert load_checkpoint(folder).weights_loaded


# ----------------------------------------------------------------------------------------------
# The real tiny.en, as the command line runs it

TINY_CHILD = """
import json, sys
opened = []  # every file Python opens (model.bin is read with Path.read_bytes)
sys.addaudithook(lambda event, args: event == "open" and opened.append(str(args[0])))
import whisperkv
model = whisperkv.load_model(backend="tvm")
result = model.transcribe(sys.argv[1], without_timestamps=True)
print(json.dumps({"modules": sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")),
                  "weights_read": model.checkpoint.weights_loaded, "tokens": result.tokens,
                  "model_bin_opened": any(p.endswith("model.bin") for p in opened),
                  "tokenizers": "tokenizers" in sys.modules}))
"""


@pytest.mark.slow  # compiles the whole tiny.en into a private cache
def test_tiny_en_warm_start_decodes_the_reference_tokens_without_the_compiler(tiny_en, tmp_path) -> None:
    clip = str(AUDIO_DIR / SHORT_CLIP)
    first = run_child(TINY_CHILD, tmp_path, clip)  # compiles, packs, notes
    warm = run_child(TINY_CHILD, tmp_path, clip)
    assert first["modules"] != [] and warm["modules"] == []  # only the compiling start imported tvm
    assert first["model_bin_opened"] and not warm["weights_read"] and not warm["model_bin_opened"]
    assert first["tokenizers"] and not warm["tokenizers"]  # the tokenizer's table was built once, then read
    want = tiny_en.transcribe(clip, without_timestamps=True).tokens
    assert want and first["tokens"] == want and warm["tokens"] == want


def test_idle_tvm_workers_spin_briefly_unless_the_user_says_otherwise(tmp_path) -> None:
    from whisperkv.backends.tvm import threads

    code = "import os, whisperkv.backends.tvm; print(os.environ['TVM_THREAD_POOL_SPIN_COUNT'])"
    env = {k: v for k, v in child_env(tmp_path).items() if k != "TVM_THREAD_POOL_SPIN_COUNT"}
    for preset, want in ((None, str(threads.SPIN_COUNT)), ("77", "77")):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=env if preset is None else {**env, "TVM_THREAD_POOL_SPIN_COUNT": preset})
        assert p.stdout.strip() == want
    assert threads.SPIN_COUNT < 300_000  # TVM's own default, whose spin a process's exit waits for


def test_a_tensors_file_maps_back_every_array_aligned_and_refuses_a_cut_one(tmp_path) -> None:
    # packed.write_tensors / map_tensors: tvm-onnx's transformed weights (start_record.py) in the packed format
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(7).astype(np.float16),
              np.arange(4, dtype=np.int64).reshape(2, 2), np.zeros((0, 3), np.float32), np.array(2.5, np.float32),
              rng.standard_normal((2, 3, 4)).astype(np.float32)[:, ::2]]  # (not contiguous: written as it reads)
    path = packed.write_tensors(tmp_path / "t.params", {"part": "x"}, arrays)
    meta, mapped = packed.map_tensors(path)
    assert meta == {"part": "x"} and len(mapped) == len(arrays)
    for got, want in zip(mapped, arrays, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert got.size == 0 or got.ctypes.data % packed.ALIGN == 0  # what DLPack needs to share it uncopied
    path.write_bytes(path.read_bytes()[:-8])  # the last tensor cut short
    with pytest.raises(packed.PackedWeightsError, match="past the file"):
        packed.map_tensors(path)
