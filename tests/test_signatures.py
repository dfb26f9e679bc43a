"""Each signature rule (reference/checks/signatures.py) names its cause from the evidence of the bug it describes;
no rule names a cause the evidence does not support; the localisation (checks/localise.py) points where the bug
is. On a small random model with tiny.en's vocabulary: each verify takes a fraction of a second.

The evidence is real: the first divergent stage of a mutant (checks/mutants.py) run in lockstep with the
reference, as `verify` sees it.
"""

from __future__ import annotations

import numpy as np
import pytest

from whisperkv.reference import kv as kvslots
from whisperkv.reference.checks import causes, compare, signatures
from whisperkv.reference.checks import localise as loc
from whisperkv.reference.checks.hooked import Hooked
from whisperkv.reference.checks.mutants import MUTANTS, make_mutant
from whisperkv.reference.checks.verify import Lockstep, Tolerance, compare_windows, verify
from whisperkv.reference.decoding import DecodingOptions
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.model import NumpyModel

from .helpers import TINY_VOCAB_DIMS, random_windows, small_checkpoint

# the rule that must name each mutant's cause (the others are named by replaying the mutant)
RULE_OF = {
    "vocab_one_short": signatures.vocabulary_width,
    "fp16_overflow": signatures.non_finite,
    "nan_logits": signatures.non_finite,
    "start_rows_copied": signatures.start_rows_copied,
    "self_keys_transposed": signatures.permuted_layout,
    "cross_keys_transposed": signatures.permuted_layout,
    "heads_mixed": signatures.permuted_layout,
    "self_state_leaks": signatures.leaked_state,
    "not_appended": signatures.length_cap,
    "cache_cut": signatures.length_cap,
    "cache_sliding": signatures.length_cap,
    "swapped_slots": signatures.exchanged,
    "cross_kv_exchanged": signatures.exchanged,
    "stale_cross": signatures.stale_window,
    "zero_cross": signatures.cross_input,
    "cross_from_zero_features": signatures.cross_input,
    "cross_wrong_input": signatures.cross_input,
    "eot_ignored": signatures.suppressed_tokens,
    "keys_prescaled": signatures.constant_ratio,
    "logits_scaled": signatures.constant_ratio,
    "log_probs": signatures.constant_offset,
    "biases_dropped": signatures.bias_dropped,
    "no_ln_post": signatures.ln_post_missing,
    "no_causal_mask": signatures.causal_mask,
    "wrong_start": signatures.other_input,
    "position_off_by_one": signatures.other_input,
    "previous_token_fed": signatures.other_input,
    "position_not_reset": signatures.other_input,
}
# bugs no rule can see from the numbers verify holds: only a replay names them
REPLAY_ONLY = ["no_final_ln", "attention_scale", "softmax_wrong_axis", "no_conv_gelu", "conv_strides", "conv_padding"]


@pytest.fixture(scope="module")
def small(tiny_en):
    """(checkpoint, tokenizer, two windows) of a small random model with tiny.en's vocabulary and tokenizer."""
    return small_checkpoint(TINY_VOCAB_DIMS, seed=1), tiny_en.tokenizer, random_windows(TINY_VOCAB_DIMS, 1, 2)


def evidence_of(candidate, checkpoint, tokenizer, mels) -> signatures.Evidence:
    lock = Lockstep(NumpyModel(checkpoint), candidate, tokenizer, Tolerance(), DecodingOptions())
    with np.errstate(all="ignore"):  # the mutants' NaN and overflows are the point
        _, first, ev = compare_windows(lock, mels)
    assert first is not None, f"{candidate.name} was not caught"
    return ev


def test_every_rule_has_a_mutant_and_every_mutant_a_namer() -> None:
    assert set(RULE_OF.values()) == set(signatures.RULES) - {signatures.encoder_positions_missing}  # (below)
    assert set(RULE_OF) | set(REPLAY_ONLY) | {"no_encoder_positions", "gelu_tanh"} == set(MUTANTS)


@pytest.mark.parametrize("name", sorted(RULE_OF))
def test_each_rule_names_its_bug_and_no_rule_names_another(small, name: str) -> None:
    checkpoint, tok, mels = small
    ev = evidence_of(make_mutant(name, checkpoint, tok), checkpoint, tok, mels)
    found = RULE_OF[name](ev)
    assert found is not None and found.cause.label == MUTANTS[name].cause, found
    assert found.rule == RULE_OF[name].__name__ and found.evidence
    wrong = {rule.__name__: f.cause.label for rule in signatures.RULES if (f := rule(ev)) is not None
             and f.cause.label != MUTANTS[name].cause}
    assert not wrong, f"rules naming another cause on {name}'s evidence: {wrong}"


@pytest.mark.parametrize("name", REPLAY_ONLY)
def test_no_rule_names_what_it_cannot_see(small, name: str) -> None:
    checkpoint, tok, mels = small
    ev = evidence_of(make_mutant(name, checkpoint, tok), checkpoint, tok, mels)
    assert signatures.first_finding(ev) is None
    report = verify(NumpyModel(checkpoint), make_mutant(name, checkpoint, tok), tok, checkpoint, mels)
    assert report.diagnosis.found_by == f"mutant {name}"  # the replay names it instead


def test_positions_missing_from_the_encoder_show_in_the_padding(tiny_en) -> None:
    # an audio context of 12 (24 mel frames): the last 10 frames are padding, so audio positions 7..10 read
    # identical input frames; without positional embedding nothing tells them apart
    dims = ModelDims(n_mels=4, n_audio_ctx=12, n_audio_state=8, n_audio_head=2, n_audio_layer=2, n_vocab=51864,
                     n_text_ctx=16, n_text_state=8, n_text_head=2, n_text_layer=2)
    checkpoint, tok = small_checkpoint(dims, seed=2), tiny_en.tokenizer
    mel = random_windows(dims, 2)[0]
    mel[:, 14:] = -1.5
    assert signatures.identical_input_positions(mel) == [8, 9, 10]
    ev = evidence_of(make_mutant("no_encoder_positions", checkpoint, tok), checkpoint, tok, [mel])
    found = signatures.encoder_positions_missing(ev)
    assert found is not None and found.cause == causes.ENCODER_POSITION
    # a window without padding gives the rule nothing to read: it says nothing
    ev.mel = random_windows(dims, 3)[0]
    assert signatures.encoder_positions_missing(ev) is None


class CrossNoise(NumpyModel):
    """Cross K/V off by 1% noise: wrong, but by no relation to any other input (a broken cross kernel)."""

    name = "cross-noise"

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        rng = np.random.default_rng(0)
        cross = set(kvslots.cross_slots(self.dims.n_text_layer))
        return logits, [s + np.float32(0.01) * rng.standard_normal(s.shape).astype(np.float32) * np.abs(s).max()
                        if i in cross else s for i, s in enumerate(kv)]


def test_cross_slots_that_merely_differ_are_localised_not_named(small) -> None:
    checkpoint, tok, mels = small
    report = verify(NumpyModel(checkpoint), CrossNoise(checkpoint), tok, checkpoint, mels)
    d = report.diagnosis
    assert d.cause == causes.UNKNOWN.label and d.part == loc.CROSS and d.layer == 0
    assert "layer 0's cross key and value" in d.where and "cross_wrong_input" in d.replayed


class VocabTwoShort(NumpyModel):
    """Logits two entries short: no rule claims this width."""

    name = "vocab-2"

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        return logits[..., :-2], kv


def test_another_vocabulary_width_is_stated_with_both_widths_and_not_named(small) -> None:
    checkpoint, tok, mels = small
    report = verify(NumpyModel(checkpoint), VocabTwoShort(checkpoint), tok, checkpoint, mels)
    assert report.first_divergence.reason.startswith("logits n_vocab 51864 vs 51862")
    assert report.diagnosis.cause == causes.UNKNOWN.label and report.diagnosis.part == loc.SHAPES


class NanSlots(NumpyModel):
    """NaN in a value slot without any inf: an invalid operation, not an overflow."""

    name = "nan-slots"

    def step(self, tokens, kv):
        logits, present = super().step(tokens, kv)
        present = list(present)
        present[1] = present[1].copy()
        present[1][0, 0, -1, 0] = np.nan
        return logits, present


def test_nan_without_overflow_is_located_but_not_called_an_overflow(small) -> None:
    checkpoint, tok, mels = small
    report = verify(NumpyModel(checkpoint), NanSlots(checkpoint), tok, checkpoint, mels)
    first = report.first_divergence
    assert (first.stage, first.step) == ("step", 1)
    # the start sequence (2 tokens) and the first step's token: 3 positions x 2 heads x head_dim 4 = 24 values
    assert first.reason == "first non-finite value: slot 1 (0.self.value): NaN at [0, 0, 2, 0] (1 of 24 values " \
                           "non-finite)"
    assert report.diagnosis.cause != causes.FP16_OVERFLOW.label


# ----------------------------------------------------------------------------------------------
# The localisation


@pytest.mark.parametrize(("name", "part", "layer", "words"), [
    ("attention_scale", loc.LAYER, 0, "layers 0..0's self K/V agree, layer 1's do not: inside decoder layer 0 "
                                      "after its K/V projections"),
    ("biases_dropped", loc.PROJECTION, 0, "layer 0's self value differs and its key agrees"),
    ("zero_cross", loc.CROSS, 0, "layer 0's cross key and value"),
    ("no_final_ln", loc.OUTPUT, 1, "every slot agrees, the logits do not"),
    ("position_off_by_one", loc.INPUT, 0, "layer 0's self K and V both differ"),
    ("swapped_slots", loc.PAST, 0, "changed positions the step was given"),
    ("cross_keys_transposed", loc.SHAPES, 0, "slot 2 (0.cross.key) shape [1, 2, 4, 6] vs reference [1, 2, 6, 4]"),
    ("stale_cross", loc.CROSS, 0, "window 1; windows 0..0 agreed at this same stage: suspect state carried across"),
    ("conv_padding", loc.ENCODER, None, "the encoder"),
])
def test_the_localisation_reads_the_layers_in_order(small, name: str, part: str, layer, words: str) -> None:
    checkpoint, tok, mels = small
    ev = evidence_of(make_mutant(name, checkpoint, tok), checkpoint, tok, mels)
    assert (ev.where.part, ev.where.layer) == (part, layer), ev.where
    assert words in ev.where.text


# ----------------------------------------------------------------------------------------------
# The comparison of one array


def test_compare_states_shapes_dtypes_relative_and_the_first_non_finite() -> None:
    ref = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
    c = compare.compare("x", ref, np.array([[1.0, -4.0], [2.0, 0.75]], np.float64))
    assert (c.max_abs, c.scale, c.relative, c.at) == (0.25, 4.0, 0.0625, [1, 1])  # exact in binary
    assert c.summary() == "max |Δ| 0.25 (0.062 of scale 4) at [1, 1] (0.75 vs 0.5); dtype float64 vs reference float32"
    short = compare.compare("logits", ref[0], ref[0, :1])
    assert short.max_abs is None and short.summary() == "shape [1] vs reference [2]"
    bad = compare.compare("s", ref, np.array([[1.0, np.inf], [np.nan, 0.5]], np.float32))
    assert bad.nonfinite == "+inf at [0, 1] (2 of 4 values non-finite)" and not bad.within(1.0)
    assert compare.first_nonfinite(np.array([0.0, -np.inf]), allow_neg_inf=True) == ""  # a suppressed logit
    assert compare.ratio(ref, ref * np.float32(0.5)) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------
# The operation, for candidates that expose their intermediates (checks/hooked.py's `intermediates`)


@pytest.mark.parametrize(("name", "operation"), [
    ("attention_scale", "decoder layer 0, self-attention scores (decoder.blocks.0.attn.scores)"),
    ("softmax_wrong_axis", "decoder layer 0, self-attention weights (decoder.blocks.0.attn.weights)"),
    ("no_causal_mask", "decoder layer 0, self-attention scores (decoder.blocks.0.attn.scores)"),
])
def test_the_first_differing_operation_is_named(small, name: str, operation: str) -> None:
    checkpoint, tok, mels = small
    report = verify(NumpyModel(checkpoint), make_mutant(name, checkpoint, tok), tok, checkpoint, mels)
    assert report.diagnosis.operation.startswith(operation + ": ")
    assert report.diagnosis.operation.endswith("every operation before it agrees")


class PositionsDoubled(Hooked):
    """Adds the encoder's positional embedding twice: a bug no rule and no mutant describes."""

    name = "positions-doubled"

    def encoder_positions(self, x):
        return super().encoder_positions(super().encoder_positions(x))


def test_an_unknown_encoder_bug_is_localised_to_its_operation(small) -> None:
    checkpoint, tok, mels = small
    report = verify(NumpyModel(checkpoint), PositionsDoubled(checkpoint), tok, checkpoint, mels)
    d = report.diagnosis
    assert report.first_divergence.stage == "encode" and d.cause == causes.UNKNOWN.label
    assert d.operation.startswith("encoder positional embedding (encoder.positional_embedding): max |Δ|")
    # a candidate without the hook gets no operation, and nothing is invented
    plain = verify(NumpyModel(checkpoint), make_mutant("swapped_slots", checkpoint, tok), tok, checkpoint, mels)
    assert plain.diagnosis.operation == ""


def test_hooked_is_the_reference_bit_for_bit(small) -> None:
    checkpoint, tok, mels = small
    ref, hooked = NumpyModel(checkpoint), Hooked(checkpoint)
    feats = ref.encode(mels[0][None])
    assert np.array_equal(feats, hooked.encode(mels[0][None]))
    start = np.asarray([tok.sot_sequence()])
    (r_logits, r_kv), (h_logits, h_kv) = (m.prefill(start, [feats], m.zero_kv()) for m in (ref, hooked))
    assert np.array_equal(r_logits, h_logits) and all(np.array_equal(a, b) for a, b in zip(r_kv, h_kv, strict=True))
    (r_logits, r_present), (h_logits, h_present) = (m.step(np.asarray([7]), r_kv) for m in (ref, hooked))
    assert np.array_equal(r_logits, h_logits)
    assert all(np.array_equal(a, b) for a, b in zip(r_present, h_present, strict=True))
    names = [n for n, _ in hooked.intermediates("step", np.asarray([7]), r_kv)]
    assert names[0] == "decoder.embedding" and names[-1] == "decoder.logits" and len(names) == len(set(names))
