"""One test per property a Whisper backend must have to decode what the reference decodes.

Run: whisperkv conformance --candidate SPEC (see __init__.py for the plain pytest command line).
Each failure message says what was expected, what came back, and (for the lockstep tests) the first
divergent step with the likely cause.
"""

from __future__ import annotations

import numpy as np
import pytest

from ... import kv as kvslots
from ...backend import max_batch
from ..verify import distance


def _scale(x: np.ndarray) -> float:
    return float(max(1.0, np.abs(x).max()))


def test_zero_kv_has_the_slot_layout(whisperkv_suite) -> None:
    suite = whisperkv_suite
    dims, cand = suite.checkpoint.dims, suite.candidate
    slots = [cand.to_numpy(s) for s in cand.zero_kv()]
    want = [kvslots.slot_shape(dims, i, 0) for i in range(kvslots.n_slots(dims.n_text_layer))]
    assert [s.shape for s in slots] == want, (
        f"zero_kv() must return {len(want)} slots of one row: self (1, heads, 0, head_dim), cross (1, heads, "
        f"n_audio_ctx, head_dim); got {[s.shape for s in slots]}")


def test_encoder_output_matches_the_reference(whisperkv_suite) -> None:
    suite = whisperkv_suite
    for path, mel in suite.windows:
        ref = suite.reference.encode(mel[None])
        got = suite.candidate.to_numpy(suite.candidate.encode(mel[None]))
        assert got.shape == ref.shape, f"{path}: encode() returned {got.shape}, expected {ref.shape}"
        d = distance(ref, got)
        assert d <= suite.tolerance.relative * _scale(ref), (
            f"{path}: encoder output differs from the reference by max |Δ| {d:.3g} (scale {_scale(ref):.3g})")


def _prefill_both(suite, mel):
    """One row through both prefills: -> (start, logits [n, n_vocab] and slots of each, as numpy)."""
    start = suite.tokenizer.sot_sequence()
    tokens = np.asarray([start])
    ref_logits, ref_kv = suite.reference.prefill(tokens, [suite.reference.encode(mel[None])], suite.reference.zero_kv())
    cand = suite.candidate
    cand_logits, cand_kv = cand.prefill(tokens, [cand.encode(mel[None])], cand.zero_kv())
    cand_logits = np.asarray(cand_logits)
    if cand_logits.ndim != 3 or cand_logits.shape[0] != 1:
        pytest.fail(f"prefill() of one row must return logits (1, len(start sequence), n_vocab); got "
                    f"{cand_logits.shape}", pytrace=False)
    return start, ref_logits[0], ref_kv, cand_logits[0], [cand.to_numpy(s) for s in cand_kv]


def test_prefill_returns_logits_for_every_start_token(whisperkv_suite) -> None:
    suite = whisperkv_suite
    start, ref_logits, _, cand_logits, _ = _prefill_both(whisperkv_suite, suite.windows[0][1])
    # every start position's logits, not only the last: no_speech_prob is read at <|startoftranscript|>
    assert cand_logits.shape == ref_logits.shape, (
        f"prefill() must return logits of shape (1, len(start sequence), n_vocab) = (1, *{ref_logits.shape}) "
        f"(no_speech_prob is read at <|startoftranscript|>); got {cand_logits.shape}")
    for row, token in enumerate(start):
        d = distance(ref_logits[row], cand_logits[row])
        assert d <= suite.tolerance.relative * _scale(ref_logits[row]), (
            f"prefill logits at start position {row} ({suite.tokenizer.token_text(token)}) differ from the "
            f"reference by max |Δ| {d:.3g}: no_speech_prob is read at <|startoftranscript|>, not the last row")


def test_prefill_computes_cross_kv_from_the_audio(whisperkv_suite) -> None:
    suite = whisperkv_suite
    dims = suite.checkpoint.dims
    for path, mel in suite.windows:
        _, _, ref_kv, _, cand_kv = _prefill_both(whisperkv_suite, mel)
        for i in kvslots.cross_slots(dims.n_text_layer):
            assert cand_kv[i].shape == ref_kv[i].shape, f"{path}: cross slot {i} shape {cand_kv[i].shape}"
            assert np.abs(cand_kv[i]).max() > 0, (
                f"{path}: cross slot {i} ({kvslots.slot_name(i)}) is all zeros after prefill: the zeroed "
                "placeholders were kept instead of projecting the encoder output")
            d = distance(ref_kv[i], cand_kv[i])
            assert d <= suite.tolerance.relative * _scale(ref_kv[i]), (
                f"{path}: cross slot {i} ({kvslots.slot_name(i)}) differs from the projection of the audio "
                f"features by max |Δ| {d:.3g}")


def test_prefill_fills_the_self_slots_with_the_start_sequence(whisperkv_suite) -> None:
    suite = whisperkv_suite
    dims = suite.checkpoint.dims
    start, _, ref_kv, _, cand_kv = _prefill_both(whisperkv_suite, suite.windows[0][1])
    for i in kvslots.self_slots(dims.n_text_layer):
        assert cand_kv[i].shape == ref_kv[i].shape, (
            f"self slot {i} ({kvslots.slot_name(i)}) after prefill of {len(start)} tokens has shape "
            f"{cand_kv[i].shape}, expected {ref_kv[i].shape}")
        d = distance(ref_kv[i], cand_kv[i])
        assert d <= suite.tolerance.relative * _scale(ref_kv[i]), f"self slot {i}: max |Δ| {d:.3g}"


def test_step_appends_one_position_to_every_self_slot(whisperkv_suite) -> None:
    suite = whisperkv_suite
    dims, cand = suite.checkpoint.dims, suite.candidate
    start, _, _, cand_logits, _ = _prefill_both(whisperkv_suite, suite.windows[0][1])
    _, kv = cand.prefill(np.asarray([start]), [cand.encode(suite.windows[0][1][None])], cand.zero_kv())
    logits, present = cand.step(np.asarray([np.argmax(cand_logits[-1])]), kv)
    assert np.asarray(logits).shape == (1, dims.n_vocab), f"step() of one row: logits shape {np.asarray(logits).shape}"
    assert len(present) == 2 * dims.n_text_layer, (
        f"step() must return the {2 * dims.n_text_layer} present self slots (layer-major: key, value); "
        f"got {len(present)}")
    shapes = [cand.to_numpy(p).shape for p in present]
    want = [kvslots.slot_shape(dims, i, len(start) + 1) for i in kvslots.self_slots(dims.n_text_layer)]
    assert shapes == want, f"present self slots after one step: {shapes}, expected {want}"


def test_every_step_matches_the_reference(whisperkv_suite) -> None:
    suite = whisperkv_suite
    from ..verify import describe

    for path in dict(suite.windows):
        report = suite.report(path)
        if not report.agree:
            pytest.fail("\n".join(describe(report, suite.tokenizer)), pytrace=False)


def test_no_ties_on_real_speech(whisperkv_suite) -> None:
    suite = whisperkv_suite
    # docs/architecture.md's agreement rule: a tie is accepted but reported; on real speech it must be rare.
    for path in dict(suite.windows):
        report = suite.report(path)
        assert report.ties == 0, f"{path}: {report.ties} window(s) ended in a tie of the reference's top two logits"


def test_transcript_equals_the_reference(whisperkv_suite) -> None:
    suite = whisperkv_suite
    from ...decoding import Decoder

    for path, mel in suite.windows:
        ref = Decoder(suite.reference, suite.tokenizer).run(suite.reference.encode(mel[None]))
        got = Decoder(suite.candidate, suite.tokenizer).run(suite.candidate.encode(mel[None]))
        assert got.tokens == ref.tokens, f"{path}: candidate said {got.text!r}, reference {ref.text!r}"
        assert got.finished == ref.finished, f"{path}: candidate finished by {got.finished}, reference {ref.finished}"


def _takes_two_rows(suite) -> None:
    if max_batch(suite.candidate) == 1:
        pytest.skip("the candidate declares max_batch = 1 (one row per call): batches are not claimed")


def test_select_takes_the_rows_asked_for(whisperkv_suite) -> None:
    suite = whisperkv_suite
    _takes_two_rows(suite)
    cand, start = suite.candidate, suite.tokenizer.sot_sequence()
    mels = [mel for _, mel in suite.windows][:2]
    features = [cand.encode(m[None]) for m in (mels * 2)[:2]]
    _, kv = cand.prefill(np.asarray([start, start]), features, cand.zero_kv(2))
    rows = [1, 0, 1]  # reordered, repeated, and a different batch size: what beam search asks
    out = cand.select(kv, rows)
    assert len(out) == len(kv), f"select() returned {len(out)} slots, expected {len(kv)}"
    for i, (got, slot) in enumerate(zip(out, kv, strict=True)):
        got, slot = cand.to_numpy(got), cand.to_numpy(slot)
        assert np.array_equal(got, slot[rows]), (
            f"select(kv, {rows}): slot {i} ({kvslots.slot_name(i)}) does not hold exactly those rows")


def test_a_batch_of_windows_equals_each_window_alone(whisperkv_suite) -> None:
    suite = whisperkv_suite
    _takes_two_rows(suite)
    from ...decoding import Decoder

    cand, tok = suite.candidate, suite.tokenizer
    mels = [mel for _, mel in suite.windows]
    features = [cand.encode(m[None]) for m in mels]
    together = Decoder(cand, tok).run_batch(features)
    for (path, _), f, got in zip(suite.windows, features, together, strict=True):
        alone = Decoder(cand, tok).run(f)
        assert got.tokens == alone.tokens, (
            f"{path}: decoded in a batch of {len(features)} the candidate said {got.text!r}, alone {alone.text!r}")
