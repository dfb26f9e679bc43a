"""Hypothesis properties of the numpy model and the KV slot layout, on random small models."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisperkv.reference import kv as kvslots
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.model import NumpyModel
from whisperkv.reference.weights import random_weights

from .helpers import forced_run


@st.composite
def small_models(draw: st.DrawFn) -> NumpyModel:
    head_dim = draw(st.sampled_from([2, 4, 8]))
    a_heads, t_heads = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # At least 4 wide: a layer norm over 2 values maps them to +-|d| / sqrt(d^2 + eps), which for two
    # nearly equal inputs amplifies float32 reassociation (1e-7) to 1e-3 (hypothesis found one); Whisper's
    # widths are >= 384.
    head_dim = max(head_dim, 4 // (a_heads * t_heads))
    n_state = head_dim * a_heads * t_heads  # divisible by both head counts
    dims = ModelDims(
        n_mels=draw(st.integers(1, 6)), n_audio_ctx=draw(st.integers(1, 8)), n_audio_state=n_state,
        n_audio_head=a_heads, n_audio_layer=draw(st.integers(1, 3)), n_vocab=draw(st.integers(8, 64)),
        n_text_ctx=draw(st.integers(4, 16)), n_text_state=n_state, n_text_head=t_heads,
        n_text_layer=draw(st.integers(1, 3)),
    )
    return NumpyModel((dims, random_weights(dims, seed=draw(st.integers(0, 2**31)))))


def random_inputs(model: NumpyModel, seed: int, n_tokens: int) -> tuple[np.ndarray, list[int]]:
    d = model.dims
    rng = np.random.default_rng(seed)
    mel = rng.standard_normal((1, d.n_mels, d.n_mel_frames)).astype(np.float32)
    tokens = rng.integers(0, d.n_vocab - 1, size=n_tokens).tolist()  # n_vocab - 1 is the toy EOT (helpers.forced_run)
    return mel, tokens


# float32 results of the same math computed in different matrix shapes (one row at a time vs all rows
# at once) differ by reassociation only: ~1e-6 relative here. A wrong position, mask or slot changes
# logits by O(0.1), so 1e-4 separates the two by three orders of magnitude.
CACHE_TOLERANCE = 1e-4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=small_models(), seed=st.integers(0, 2**31), data=st.data())
def test_kv_cache_equals_full_recompute(model: NumpyModel, seed: int, data: st.DataObject) -> None:
    n_ctx = model.dims.n_text_ctx
    n_total = data.draw(st.integers(2, n_ctx), label="tokens")
    n_prompt = data.draw(st.integers(1, n_total - 1), label="prompt")
    mel, tokens = random_inputs(model, seed, n_total)
    features = model.encode(mel)

    full, _ = model.prefill(np.asarray([tokens]), [features], model.zero_kv())  # [1, n_total, n_vocab], no cache

    # the machine, teacher-forced: prefill the prompt, then one step per token (its budget may stop it
    # before the last one: n_ctx - n_prompt tokens are sampled, the last of them never fed)
    runs = list(forced_run(model, tokens[:n_prompt], features, tokens[n_prompt:]))
    cached = np.stack([logits[0] for logits, _ in runs])  # the logits at positions n_prompt - 1, n_prompt, ...
    want = full[0, n_prompt - 1 : n_prompt - 1 + len(cached)]
    np.testing.assert_allclose(cached, want, rtol=0, atol=CACHE_TOLERANCE * max(1.0, np.abs(full).max()))
    # the self slots grew to exactly the number of positions fed
    fed = n_prompt + len(cached) - 1
    assert len(cached) >= n_total - n_prompt  # every position but (at the budget) the last was compared
    last_kv = runs[-1][1]
    assert kvslots.shapes(last_kv) == [kvslots.slot_shape(model.dims, i, fed) for i in range(len(last_kv))]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=small_models(), seed=st.integers(0, 2**31), data=st.data())
def test_a_batch_of_rows_equals_rows_one_by_one(model: NumpyModel, seed: int, data: st.DataObject) -> None:
    # rows decoded side by side (beams, samples, windows) never see each other
    n_rows = data.draw(st.integers(1, 4), label="rows")
    n_start = data.draw(st.integers(1, model.dims.n_text_ctx - 1), label="start")
    rng = np.random.default_rng(seed)
    d = model.dims
    features = [model.encode(rng.standard_normal((1, d.n_mels, d.n_mel_frames)).astype(np.float32))
                for _ in range(n_rows)]
    tokens = rng.integers(0, d.n_vocab, (n_rows, n_start))
    steps = rng.integers(0, d.n_vocab, (d.n_text_ctx - n_start, n_rows))
    logits, kv = model.prefill(tokens, features, model.zero_kv(n_rows))
    alone = [model.prefill(tokens[i : i + 1], features[i : i + 1], model.zero_kv()) for i in range(n_rows)]
    for t in steps:
        for i in range(n_rows):
            np.testing.assert_allclose(logits[i], alone[i][0][0], rtol=0,
                                       atol=CACHE_TOLERANCE * max(1.0, np.abs(alone[i][0]).max()))
            for a, b in zip(kv, alone[i][1], strict=True):
                np.testing.assert_allclose(a[i : i + 1], b, rtol=0, atol=CACHE_TOLERANCE * max(1.0, np.abs(b).max()))
        logits, present = model.step(t, kv)
        kv = kvslots.remap_present(kv, present)
        for i in range(n_rows):
            one, one_present = model.step(t[i : i + 1], alone[i][1])
            alone[i] = (one, kvslots.remap_present(alone[i][1], one_present))


@settings(max_examples=60, deadline=None)
@given(model=small_models(), rows=st.lists(st.integers(0, 3), min_size=1, max_size=6), seed=st.integers(0, 2**31))
def test_select_takes_the_rows_asked_for(model: NumpyModel, rows: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    kv = [rng.standard_normal(kvslots.slot_shape(model.dims, i, 3, batch=4)).astype(np.float32)
          for i in range(kvslots.n_slots(model.dims.n_text_layer))]
    out = model.select(kv, rows)
    for a, b in zip(out, kv, strict=True):
        np.testing.assert_array_equal(a, b[rows])  # exact: a copy of the rows, in the order asked
    with pytest.raises(ValueError, match="out of range"):
        model.select(kv, [*rows, 4])


@settings(max_examples=30, deadline=None)
@given(model=small_models(), seed=st.integers(0, 2**31), garbage=st.sampled_from(["random", "nan", "huge"]))
def test_prefill_never_reads_the_zeroed_slots(model: NumpyModel, seed: int, garbage: str) -> None:
    mel, tokens = random_inputs(model, seed, min(3, model.dims.n_text_ctx))
    features = model.encode(mel)
    clean_logits, clean_kv = model.prefill(np.asarray([tokens]), [features], model.zero_kv())
    rng = np.random.default_rng(seed)
    dirty = [
        {"random": rng.standard_normal(s.shape), "nan": np.full(s.shape, np.nan), "huge": np.full(s.shape, 3e38)}[
            garbage
        ].astype(np.float32)
        for s in model.zero_kv()
    ]
    logits, kv = model.prefill(np.asarray([tokens]), [features], dirty)
    np.testing.assert_array_equal(logits, clean_logits)  # bit-identical: the garbage is never read
    for a, b in zip(kv, clean_kv, strict=True):
        np.testing.assert_array_equal(a, b)


@given(n_layer=st.integers(1, 64))
def test_slot_remap_is_a_bijection_onto_the_self_slots(n_layer: int) -> None:
    n = kvslots.n_slots(n_layer)
    selfs, crosses = kvslots.self_slots(n_layer), kvslots.cross_slots(n_layer)
    assert len(set(selfs)) == len(selfs) == 2 * n_layer
    assert set(selfs).isdisjoint(crosses) and set(selfs) | set(crosses) == set(range(n))
    for i in range(n):
        assert kvslots.slot_index(*kvslots.slot_of(i)) == i
    kv = [object() for _ in range(n)]
    present = [object() for _ in range(2 * n_layer)]
    out = kvslots.remap_present(kv, present)
    # every present slot lands exactly once, in a self slot; every cross slot is the very same object
    assert sorted(out.index(p) for p in present) == sorted(selfs)
    assert all(out[i] is kv[i] for i in crosses)
    # layer-major order: layer i's key then value
    for layer in range(n_layer):
        assert out[kvslots.slot_index(layer, kvslots.SlotKind.SELF_KEY)] is present[2 * layer]
        assert out[kvslots.slot_index(layer, kvslots.SlotKind.SELF_VALUE)] is present[2 * layer + 1]


def test_seed_layout_for_four_layers() -> None:
    # docs/architecture.md's worked example: the seed's 16 slots, self slots at [0, 1, 4, 5, 8, 9, 12, 13].
    assert kvslots.self_slots(4) == [0, 1, 4, 5, 8, 9, 12, 13]
    assert [kvslots.slot_name(i) for i in range(4)] == ["0.self.key", "0.self.value", "0.cross.key", "0.cross.value"]


def test_remap_rejects_wrong_counts() -> None:
    with pytest.raises(ValueError, match="present slots"):
        kvslots.remap_present([None] * 8, [None] * 3)
    with pytest.raises(ValueError, match="multiple of 4"):
        kvslots.remap_present([None] * 7, [None] * 2)


def test_context_overflow_is_an_error() -> None:
    dims = ModelDims(2, 2, 4, 1, 1, 8, 4, 4, 1, 1)
    model = NumpyModel((dims, random_weights(dims)))
    features = model.encode(np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="context overflow"):
        model.prefill(np.asarray([[1, 2, 3, 4, 5]]), [features], model.zero_kv())
