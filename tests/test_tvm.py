"""The TVM backend against the numpy reference.

A handful of small model shapes is compiled once per session (a few seconds each, into a cache under
pytest's tmp folder); hypothesis then draws weights, mels, start sequences and batches of rows (the rows
sharing audio windows or not) for them, and the real tiny.en is verified on every shared clip (the slow
tier; the fast tier verifies one short clip).
Greedy agreement is `verify`'s: one tolerance, one tie rule. Skipped only when tvm is not installed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import whisperkv.backends.tvm.threads  # noqa: F401  (sets TVM_NUM_THREADS before tvm is imported)

pytest.importorskip("tvm")

from whisperkv.backends.tvm import TVMBackend  # noqa: E402
from whisperkv.backends.tvm import compile as tvm_compile  # noqa: E402
from whisperkv.backends.tvm.model import ModelConfig, max_token_rows, param_specs  # noqa: E402
from whisperkv.reference import kv as kvslots  # noqa: E402
from whisperkv.reference.checks.verify import Tolerance, verify  # noqa: E402
from whisperkv.reference.decoding import DecodingOptions  # noqa: E402
from whisperkv.reference.dims import ModelDims  # noqa: E402
from whisperkv.reference.model import NumpyModel  # noqa: E402
from whisperkv.reference.weights import Checkpoint, random_weights  # noqa: E402

from .helpers import CLIP_PARAMS, ToyTokenizer, as_tokenizer, assert_agrees, no_speech_prob  # noqa: E402
from .helpers import windows as clip_windows  # noqa: E402

# Shapes chosen to reach every code path of the kernels: column blocks of 64 (encoder), 32, 16 and 8
# (head_dim 24), decoder gemvs over 1 and 2 column blocks at a time (4: the real tiny.en below),
# audio lengths that are and are not multiples of the 6-row tile and of the key block, a vocabulary
# that needs padding, one and several layers, and fp16 decoder weights. Each config names the vector
# registers its tiles are sized for (AVX-512's, AVX2's, NEON's), so every host compiles and checks all
# three tilings: LLVM splits vectors wider than the host's, which changes speed, never results.
CONFIGS = {
    "even": ModelConfig(ModelDims(n_mels=16, n_audio_ctx=24, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                                  n_vocab=96, n_text_ctx=24, n_text_state=64, n_text_head=4, n_text_layer=2),
                        vector_lanes=16, vector_registers=32),
    "odd": ModelConfig(ModelDims(n_mels=5, n_audio_ctx=9, n_audio_state=48, n_audio_head=3, n_audio_layer=1,
                                 n_vocab=77, n_text_ctx=13, n_text_state=48, n_text_head=2, n_text_layer=1),
                       vector_lanes=8, vector_registers=16),
    "fp16": ModelConfig(ModelDims(n_mels=8, n_audio_ctx=37, n_audio_state=32, n_audio_head=1, n_audio_layer=1,
                                  n_vocab=50, n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=3),
                        decoder_weight_dtype="float16", vector_lanes=4, vector_registers=32),
}

# float32 math in another order (blocked gemms vs BLAS, polynomial exp/erf within 3 ulp) differs from
# the reference by ~1e-6 relative per operation, a few 1e-6 after a few layers. A wrong head, slot, mask,
# bias or position changes results by O(0.1), so 1e-4 (relative to the largest value) separates the two.
# On these small random models it is also verify()'s relative tolerance (its tie rule stays the default);
# the real tiny.en is deeper and is verified at verify()'s default (1e-3), as every backend is.
TOLERANCE = 1e-4


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= TOLERANCE * scale, f"{what}: max |tvm - numpy| = {err:.3g} > {TOLERANCE} x {scale:.3g}"


@pytest.fixture(scope="session")
def libraries(tmp_path_factory) -> dict[str, str]:
    """Compile every config once into a private cache; later backends only load the .so."""
    cache = tmp_path_factory.mktemp("whisperkv-cache")
    paths = {}
    for name, cfg in CONFIGS.items():
        path = tvm_compile.library_path(cfg, directory=cache)
        tvm_compile.compile_library(cfg, path, quiet=True)
        paths[name] = str(path)
    return paths


def small_checkpoint(name: str, seed: int) -> Checkpoint:
    cfg = CONFIGS[name]
    w = random_weights(cfg.dims, seed)
    if cfg.decoder_weight_dtype == "float16":
        # fp16 storage is exact only for fp16-representable weights (as in the bundled checkpoint).
        w = {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}
    return Checkpoint(cfg.dims, w, Path("/nonexistent"), cfg.decoder_weight_dtype, "random")


def make_pair(libraries, name: str, seed: int) -> tuple[TVMBackend, NumpyModel]:
    cfg = CONFIGS[name]
    ck = small_checkpoint(name, seed)
    tvm_model = TVMBackend((cfg.dims, ck.weights), decoder_weight_dtype=cfg.decoder_weight_dtype,
                           library=libraries[name], compile_if_missing=False)
    return tvm_model, NumpyModel(ck)


configs = st.sampled_from(sorted(CONFIGS))
seeds = st.integers(0, 2**31 - 1)
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


def random_mel(dims: ModelDims, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, dims.n_mels, dims.n_mel_frames)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Each function on its own, so a failure points at one of them


@SETTINGS
@given(name=configs, seed=seeds)
def test_encoder_matches_reference(libraries, name: str, seed: int) -> None:
    tvm_model, ref = make_pair(libraries, name, seed)
    mel = random_mel(ref.dims, seed)
    assert_close(tvm_model.to_numpy(tvm_model.encode(mel)), ref.encode(mel), "audio features")


@SETTINGS
@given(name=configs, seed=seeds, data=st.data())
def test_prefill_matches_reference(libraries, name: str, seed: int, data: st.DataObject) -> None:
    tvm_model, ref = make_pair(libraries, name, seed)
    d = ref.dims
    rows = data.draw(st.integers(1, 4), label="rows")
    tokens = draw_tokens(data, d, (rows, data.draw(st.integers(1, min(5, d.n_text_ctx)), label="start length")))
    # The same audio features for both, so only prefill is under test; rows may share a window.
    (logits, kv), (want_logits, want_kv) = prefill_both(tvm_model, ref, tokens, draw_windows(data, rows), seed)
    assert_close(logits, want_logits, "prefill logits")
    assert len(kv) == kvslots.n_slots(d.n_text_layer)
    for i, (got, want) in enumerate(zip(kv, want_kv, strict=True)):
        assert_close(tvm_model.to_numpy(got), want, f"slot {kvslots.slot_name(i)}")


@SETTINGS
@given(name=configs, seed=seeds, data=st.data())
def test_step_matches_reference(libraries, name: str, seed: int, data: st.DataObject) -> None:
    tvm_model, ref = make_pair(libraries, name, seed)
    d = ref.dims
    rows = data.draw(st.integers(1, 4), label="rows")
    past = data.draw(st.integers(0, d.n_text_ctx - 1), label="past length")
    tokens = draw_tokens(data, d, (rows,))
    # Slots from numpy (random past self K/V and cross K/V, every row its own): only step is under test, and
    # plain tensors are taken where the backend's own cross slots would be.
    rng = np.random.default_rng(seed)
    kv = [rng.standard_normal(kvslots.slot_shape(d, i, past, rows)).astype(np.float32)
          for i in range(kvslots.n_slots(d.n_text_layer))]
    logits, present = tvm_model.step(tokens, [tvm_model.from_numpy(s) for s in kv])
    want_logits, want_present = ref.step(tokens, kv)
    assert_close(logits, want_logits, "step logits")
    assert len(present) == 2 * d.n_text_layer
    for got, want in zip(present, want_present, strict=True):
        assert_close(tvm_model.to_numpy(got), want, "present self slot")


# ----------------------------------------------------------------------------------------------
# Rows: a batch is its rows side by side, select picks rows


def draw_tokens(data: st.DataObject, dims: ModelDims, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    ids = data.draw(st.lists(st.integers(0, dims.n_vocab - 1), min_size=size, max_size=size), label="tokens")
    return np.asarray(ids, dtype=np.int64).reshape(shape)


def draw_windows(data: st.DataObject, rows: int) -> list[int]:
    """The audio window of each row: rows that draw the same one share its features (as beams do)."""
    return data.draw(st.lists(st.integers(0, rows - 1), min_size=rows, max_size=rows), label="window of each row")


def prefill_both(tvm_model: TVMBackend, ref: NumpyModel, tokens: np.ndarray, windows: list[int], seed: int
                 ) -> tuple[tuple[np.ndarray, list], tuple[np.ndarray, list]]:
    """Prefill `tokens` (B, n) on both backends with the same audio features (the reference's encoder output,
    one per distinct window, copied to TVM), row b reading window windows[b]: -> (tvm's, numpy's) results."""
    features = {w: ref.encode(random_mel(ref.dims, seed + w)) for w in set(windows)}
    native = {w: tvm_model.from_numpy(f) for w, f in features.items()}
    rows = len(windows)
    return (tvm_model.prefill(tokens, [native[w] for w in windows], tvm_model.zero_kv(rows)),
            ref.prefill(tokens, [features[w] for w in windows], ref.zero_kv(rows)))


def decode_batch(backend: TVMBackend, dims: ModelDims, tokens: np.ndarray, features: list, steps: np.ndarray
                 ) -> tuple[list[np.ndarray], list]:
    """Prefill tokens (B, n) with B features, then one step per column of steps (B, k): the logits of each
    call (B, n, n_vocab) then (B, n_vocab), and the final slots."""
    logits, kv = backend.prefill(tokens, features, backend.zero_kv(len(tokens)))
    assert logits.shape == (*tokens.shape, dims.n_vocab)
    out = [logits]
    for column in steps.T:
        logits, present = backend.step(column, kv)
        assert logits.shape == (len(tokens), dims.n_vocab)
        kv = kvslots.remap_present(kv, present)
        out.append(logits)
    return out, kv


@SETTINGS
@given(name=configs, seed=seeds, data=st.data())
def test_a_batch_is_its_rows_side_by_side(libraries, name: str, seed: int, data: st.DataObject) -> None:
    """Row b of a batch of N gets the logits and slots it gets on its own, through prefill and several
    steps: no row reads another's tokens, slots or audio (one batch mixes rows of shared and own windows;
    N single rows go through the one-row-at-a-time linears, most batches through the row tiles)."""
    tvm_model, ref = make_pair(libraries, name, seed)
    d = ref.dims
    rows = data.draw(st.integers(1, 4), label="rows")
    n = data.draw(st.integers(1, min(4, d.n_text_ctx - 1)), label="start length")
    tokens = draw_tokens(data, d, (rows, n))
    steps = draw_tokens(data, d, (rows, data.draw(st.integers(1, min(3, d.n_text_ctx - n)), label="steps")))
    windows = draw_windows(data, rows)
    features = {w: tvm_model.encode(random_mel(d, seed + w)) for w in set(windows)}
    batch_logits, batch_kv = decode_batch(tvm_model, d, tokens, [features[w] for w in windows], steps)
    for r in range(rows):
        one_logits, one_kv = decode_batch(tvm_model, d, tokens[r : r + 1], [features[windows[r]]], steps[r : r + 1])
        for call, (got, want) in enumerate(zip(batch_logits, one_logits, strict=True)):
            assert_close(got[r], want[0], f"row {r} of {rows}, call {call}: logits")
        for i, (got, want) in enumerate(zip(batch_kv, one_kv, strict=True)):
            assert_close(tvm_model.to_numpy(got)[r], tvm_model.to_numpy(want)[0],
                         f"row {r} of {rows}: slot {kvslots.slot_name(i)}")


@SETTINGS
@given(name=configs, seed=seeds, data=st.data())
def test_select_returns_exactly_the_rows_asked_for(libraries, name: str, seed: int, data: st.DataObject) -> None:
    """Any rows in any order, repeats allowed, from the backend's own slots (after prefill and a step) or from
    numpy ones; and a select of a select. A copy: exact equality."""
    tvm_model, _ = make_pair(libraries, name, seed)
    d = tvm_model.dims
    batch = data.draw(st.integers(1, 4), label="rows")
    if data.draw(st.booleans(), label="slots from prefill and a step"):
        windows = draw_windows(data, batch)
        features = {w: tvm_model.encode(random_mel(d, seed + w)) for w in set(windows)}
        tokens = draw_tokens(data, d, (batch, 2))
        _, kv = decode_batch(tvm_model, d, tokens[:, :1], [features[w] for w in windows], tokens[:, 1:])
    else:
        rng = np.random.default_rng(seed)
        past = data.draw(st.integers(0, d.n_text_ctx), label="past length")
        kv = [tvm_model.from_numpy(rng.standard_normal(kvslots.slot_shape(d, i, past, batch)).astype(np.float32))
              for i in range(kvslots.n_slots(d.n_text_layer))]
    before = [tvm_model.to_numpy(s) for s in kv]
    rows = data.draw(st.lists(st.integers(0, batch - 1), min_size=1, max_size=6), label="rows to select")
    picked = tvm_model.select(kv, rows)
    assert kvslots.batch_size(picked) == len(rows)
    for i, slot in enumerate(picked):
        assert slot.shape == (len(rows), *before[i].shape[1:])
        assert np.array_equal(tvm_model.to_numpy(slot), before[i][rows]), kvslots.slot_name(i)
    again = data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=6), label="rows of the rows")
    for i, slot in enumerate(tvm_model.select(picked, again)):
        assert np.array_equal(tvm_model.to_numpy(slot), before[i][rows][again]), kvslots.slot_name(i)
    for i, slot in enumerate(kv):  # slots are never written: the source batch is unchanged
        assert np.array_equal(tvm_model.to_numpy(slot), before[i])


def test_select_refuses_rows_outside_the_batch(libraries) -> None:
    tvm_model, _ = make_pair(libraries, "odd", 0)
    kv = tvm_model.zero_kv(2)
    for rows in ([2], [0, -1], []):
        with pytest.raises(ValueError, match="select"):
            tvm_model.select(kv, rows)


@SETTINGS
@given(name=configs, seed=seeds, data=st.data())
def test_batched_decoding_matches_reference(libraries, name: str, seed: int, data: st.DataObject) -> None:
    """Prefill, steps, a select that reorders, repeats and drops rows, more steps: the batched TVM logits and
    slots against the batched numpy reference at every call."""
    tvm_model, ref = make_pair(libraries, name, seed)
    d = ref.dims
    rows = data.draw(st.integers(1, 4), label="rows")
    n = data.draw(st.integers(1, min(3, d.n_text_ctx - 2)), label="start length")
    tokens = draw_tokens(data, d, (rows, n))
    (got, kv), (want, ref_kv) = prefill_both(tvm_model, ref, tokens, draw_windows(data, rows), seed)
    assert_close(got, want, "prefill logits")
    budget = d.n_text_ctx - n
    for call in range(min(4, budget)):
        if call == 1:
            picked = data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=5), label="select")
            kv, ref_kv = tvm_model.select(kv, picked), ref.select(ref_kv, picked)
        step = draw_tokens(data, d, (kvslots.batch_size(ref_kv),))
        (got, present), (want, ref_present) = tvm_model.step(step, kv), ref.step(step, ref_kv)
        assert_close(got, want, f"step {call} logits")
        kv, ref_kv = kvslots.remap_present(kv, present), kvslots.remap_present(ref_kv, ref_present)
    for i, (slot, want_slot) in enumerate(zip(kv, ref_kv, strict=True)):
        assert_close(tvm_model.to_numpy(slot), want_slot, f"slot {kvslots.slot_name(i)}")


def test_malformed_calls_are_refused(libraries) -> None:
    tvm_model, ref = make_pair(libraries, "odd", 0)
    d = tvm_model.dims
    features = tvm_model.from_numpy(ref.encode(random_mel(d, 0)))
    with pytest.raises(ValueError, match=r"prefill expects integer tokens of shape \(B, n\)"):
        tvm_model.prefill([1, 2], [features], tvm_model.zero_kv())  # the batch-1 API of the seed
    with pytest.raises(ValueError, match="2 rows of tokens but 1 audio features"):
        tvm_model.prefill(np.ones((2, 2), np.int64), [features], tvm_model.zero_kv(2))
    with pytest.raises(ValueError, match="every slot needs 2 rows"):
        tvm_model.prefill(np.ones((2, 2), np.int64), [features, features], tvm_model.zero_kv(1))
    _, kv = tvm_model.prefill(np.ones((1, 2), np.int64), [features], tvm_model.zero_kv())
    with pytest.raises(ValueError, match=r"step expects integer tokens of shape \(B,\)"):
        tvm_model.step(np.ones((1, 1), np.int64), kv)
    with pytest.raises(ValueError, match="every slot needs 3 rows"):
        tvm_model.step(np.ones(3, np.int64), kv)
    with pytest.raises(ValueError, match="out of range"):
        tvm_model.step(np.asarray([d.n_vocab]), kv)


def test_more_token_rows_than_the_library_plans_for_are_refused(libraries) -> None:
    # decode's intermediates are planned for MAX_PLANNED_BATCH rows of n_text_ctx tokens; past that TVM
    # itself would refuse the call with a storage error, this says what to do
    tvm_model, _ = make_pair(libraries, "odd", 0)
    rows = max_token_rows(tvm_model.dims) + 1
    with pytest.raises(ValueError, match="split the batch"):
        tvm_model.step(np.zeros(rows, np.int64), tvm_model.zero_kv(rows))


# ----------------------------------------------------------------------------------------------
# Greedy decoding, step by step: verify(), teacher-forced, under its tie rule


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(name=configs, seed=seeds, data=st.data())
def test_greedy_sequences_agree(libraries, name: str, seed: int, data: st.DataObject) -> None:
    tvm_model, ref = make_pair(libraries, name, seed)
    d = ref.dims
    start = data.draw(st.lists(st.integers(0, d.n_vocab - 1), min_size=1, max_size=3), label="start sequence")
    # The drawn start sequence, no filters, the whole context as budget: every position of the small
    # model is compared (encoder output, logits and every slot) unless the last id (its EOT) wins first.
    options = DecodingOptions(suppress_tokens=None, suppress_blank=False, sample_len=d.n_text_ctx - len(start))
    report = verify(ref, tvm_model, as_tokenizer(ToyTokenizer(start, d.n_vocab)), small_checkpoint(name, seed),
                    [random_mel(d, seed)[0]], tolerance=Tolerance(relative=TOLERANCE), options=options)
    # A tie (possible with random weights) ends the comparison and is accepted, as the agreement rule
    # says. Real audio must have none: see below.
    assert_agrees(report, ties_allowed=True)


# ----------------------------------------------------------------------------------------------
# The real tiny.en on every shared clip: same tokens, zero ties


@pytest.fixture(scope="module")
def tiny_tvm(tiny_en, tmp_path_factory):
    # Its own library path: the test must show a cold compile works, not reuse a user's cache.
    return TVMBackend(tiny_en.checkpoint, library=tmp_path_factory.mktemp("whisperkv-tiny") / "tiny.so", quiet=True)


def test_tiny_en_uses_fp16_weights_only_when_the_file_had_them(tiny_en, tiny_tvm) -> None:
    assert tiny_en.checkpoint.stored_dtype == "float16"
    assert tiny_tvm.config.decoder_weight_dtype == "float16"


@pytest.mark.parametrize("clip", CLIP_PARAMS)
def test_tiny_en_agrees_with_reference_on_clip(tiny_en, tiny_tvm, clip: str) -> None:
    mels = clip_windows(clip, tiny_en.dims.n_mels)
    report = verify(tiny_en.backend, tiny_tvm, tiny_en.tokenizer, tiny_en.checkpoint, mels, audio=clip)
    assert_agrees(report)  # same tokens at every step, zero ties: the shared clips have none
    for i, mel in enumerate(mels):
        # one float32 softmax at the SOT position each, which verify() does not read (it compares the last
        # start position's logits); 1e-4 catches a read at the wrong position (O(0.01..1)), ~1e-6 observed
        got, want = (no_speech_prob(b, tiny_en.tokenizer, mel) for b in (tiny_tvm, tiny_en.backend))
        assert abs(got - want) < 1e-4, (clip, i)


# ----------------------------------------------------------------------------------------------
# The library cache


def test_library_for_other_dims_is_refused(libraries) -> None:
    other = CONFIGS["odd"]
    with pytest.raises(tvm_compile.LibraryMismatchError, match="compiled for another model.*dims"):
        tvm_compile.load_library(other, libraries["even"], compile_if_missing=False)
    # The same dims with another weight dtype are refused too: the parameters would be misread.
    fp32_even = CONFIGS["even"]
    fp16_even = replace(fp32_even, decoder_weight_dtype="float16")
    with pytest.raises(tvm_compile.LibraryMismatchError, match="decoder_weight_dtype"):
        tvm_compile.load_library(fp16_even, libraries["even"], compile_if_missing=False)
    # And through the backend's constructor.
    with pytest.raises(tvm_compile.LibraryMismatchError):
        TVMBackend((other.dims, random_weights(other.dims)), library=libraries["even"], compile_if_missing=False)


def test_a_damaged_library_is_refused_with_its_path(tmp_path) -> None:
    junk = tmp_path / "whisper-damaged.so"
    junk.write_bytes(b"\x7fELF but not really a library")
    with pytest.raises(tvm_compile.LibraryMismatchError, match="not a loadable TVM library") as e:
        tvm_compile.load_library(CONFIGS["even"], junk, compile_if_missing=False)
    assert str(junk) in str(e.value) and "\n" not in str(e.value)


def test_cache_key_separates_dims_and_dtype(libraries) -> None:
    paths = {tvm_compile.library_path(cfg) for cfg in CONFIGS.values()}
    assert len(paths) == len(CONFIGS)
    assert tvm_compile.library_path(CONFIGS["even"]) != tvm_compile.library_path(
        replace(CONFIGS["even"], decoder_weight_dtype="float16"))


def test_encoder_tiles_follow_the_vector_registers(libraries) -> None:
    dims = CONFIGS["even"].dims
    avx512 = ModelConfig(dims, vector_lanes=16, vector_registers=32)
    avx2 = ModelConfig(dims, vector_lanes=8, vector_registers=16)
    # 6 rows of accumulators, as many vectors across as the registers hold with room for the operands
    assert avx512.encoder_tile == (6, 64) and avx2.encoder_tile == (6, 16)
    # The encoder's packed weights are laid out for the tile: another layout, so another library name.
    assert param_specs(avx512)["encode"] != param_specs(avx2)["encode"]
    assert tvm_compile.library_path(avx512) != tvm_compile.library_path(avx2)
    with pytest.raises(ValueError, match="vector_lanes"):
        ModelConfig(dims, vector_lanes=12)
    # A library built for other registers than this host's runs with its own layout (library_config); that
    # its results are unchanged is what every test above checks: at most one of CONFIGS matches this host.
    backend = TVMBackend((dims, random_weights(dims)), library=libraries["even"], compile_if_missing=False)
    assert (backend.config.vector_lanes, backend.config.vector_registers) == (16, 32)


def test_host_vectors_agree_with_llvm() -> None:
    # The tvm-free reading of /proc/cpuinfo (what picks the tiles without loading the compiler) against
    # LLVM's view of the same CPU (what the compiler targets).
    from whisperkv.backends.tvm.params import host_vectors
    from whisperkv.backends.tvm.schedule_rules import cpu_info

    info = cpu_info(tvm_compile.host_target())
    assert host_vectors() == (info.lanes, info.registers)


@pytest.mark.slow  # two compiles; test_library_for_other_dims_is_refused covers the cache in the fast tier
def test_cache_write_is_atomic(libraries, tmp_path, monkeypatch) -> None:
    cfg = CONFIGS["odd"]
    target = tmp_path / "lib.so"

    # A process killed between export and rename leaves neither the library nor a temp file.
    def killed(src, dst):
        raise KeyboardInterrupt


    monkeypatch.setattr(whisperkv.reference.files.os, "replace", killed)  # the one atomic-write helper's rename
    with pytest.raises(KeyboardInterrupt):
        tvm_compile.compile_library(cfg, target, quiet=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    # A complete write replaces whatever was there (e.g. another process's identical library) in one step.
    target.write_bytes(b"an older library")
    tvm_compile.compile_library(cfg, target, quiet=True)
    assert [p.name for p in tmp_path.iterdir()] == ["lib.so"]
    vm, _ = tvm_compile.load_library(cfg, target, compile_if_missing=False)
    assert tvm_compile.read_config(vm)["dims"] == cfg.dims.as_dict()


@pytest.mark.slow  # a compile; test_library_for_other_dims_is_refused covers the cache in the fast tier
def test_compile_prints_progress(libraries, tmp_path, capsys) -> None:
    tvm_compile.compile_library(CONFIGS["odd"], tmp_path / "lib.so")
    err = capsys.readouterr().err
    assert "compiling the TVM backend" in err and "compiled in" in err


def test_backend_stops_openblas_from_spinning_against_tvm(libraries) -> None:
    # OpenBLAS workers busy-wait ~0.1 s after each BLAS call; after the log-mel's matrix product that
    # stole one of the 2 cores from the encoder (215 ms instead of 137 ms on tiny.en).
    import ctypes
    import os

    from whisperkv.backends.tvm import threads

    np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)  # numpy's OpenBLAS is loaded
    make_pair(libraries, "odd", 0)
    getters = ("openblas_get_num_threads", "openblas_get_num_threads64_", "scipy_openblas_get_num_threads64_",
               "scipy_openblas_get_num_threads")
    checked = 0
    for path in threads._QUIETED:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
        getter = next((getattr(lib, g) for g in getters if hasattr(lib, g)), None)
        if getter is not None:
            assert getter() == 1, path
            checked += 1
    if not checked:
        pytest.skip("no OpenBLAS loaded in this process")
