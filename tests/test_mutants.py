"""The bug catalogue (reference/checks/mutants.py) on real speech: `verify` catches every mutant at the stage its
bug first shows, names it by the cause that states its mechanism, judges its impact, and never crashes.

tiny.en on the bundled short clip (one window); the bugs that live across windows get a second clip as a
second window. The reference's features, and those of every mutant whose encoder is the reference's, are
computed once per window (the same numbers: only the time is saved).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from whisperkv.reference.checks import impact
from whisperkv.reference.checks import localise as loc
from whisperkv.reference.checks.mutants import MUTANTS, make_mutant
from whisperkv.reference.checks.verify import describe, verify
from whisperkv.reference.model import NumpyModel

from .helpers import SHORT_CLIP, windows

SECOND_CLIP = "speechbrain_example1_birch_canoe.wav"  # 3.3 s: another short window, other words

# mutant -> (window, stage, step) where it must first be caught, and what names it ("rule" or "mutant")
EXPECTED = {
    "wrong_start": (0, "prefill", 0, "rule"),
    "zero_cross": (0, "prefill", 0, "rule"),
    "cross_wrong_input": (0, "prefill", 0, "rule"),
    "swapped_slots": (0, "step", 1, "rule"),  # presents are first returned by the first step
    "not_appended": (0, "step", 1, "rule"),
    "position_off_by_one": (0, "prefill", 0, "rule"),
    "no_final_ln": (0, "prefill", 0, "mutant"),
    "fp16_overflow": (0, "step", 1, "rule"),
    "eot_ignored": (0, "step", 1, "rule"),  # its <|endoftext|> logit is -inf from the first step on
    "no_causal_mask": (0, "prefill", 0, "rule"),
    "attention_scale": (0, "prefill", 0, "mutant"),
    "softmax_wrong_axis": (0, "prefill", 0, "mutant"),
    "biases_dropped": (0, "prefill", 0, "rule"),
    "keys_prescaled": (0, "prefill", 0, "rule"),
    "self_keys_transposed": (0, "prefill", 0, "rule"),
    "cross_keys_transposed": (0, "prefill", 0, "rule"),
    "heads_mixed": (0, "prefill", 0, "rule"),
    "cross_kv_exchanged": (0, "prefill", 0, "rule"),
    "cross_from_zero_features": (0, "prefill", 0, "rule"),
    "stale_cross": (1, "prefill", 0, "rule"),  # window 0 is right: the state is carried into window 1
    "self_state_leaks": (1, "prefill", 0, "rule"),
    "position_not_reset": (1, "prefill", 0, "rule"),
    "cache_cut": (0, "step", 3, "rule"),  # 2 start tokens + 2 steps fill its 4 positions; the third overflows
    "cache_sliding": (0, "step", 3, "rule"),
    "previous_token_fed": (0, "step", 1, "rule"),
    "vocab_one_short": (0, "prefill", 0, "rule"),
    "nan_logits": (0, "step", 1, "rule"),
    "logits_scaled": (0, "prefill", 0, "rule"),
    "log_probs": (0, "prefill", 0, "rule"),
    "start_rows_copied": (0, "prefill", 0, "rule"),
    "no_conv_gelu": (0, "encode", 0, "mutant"),
    "conv_strides": (0, "encode", 0, "mutant"),
    "conv_padding": (0, "encode", 0, "mutant"),
    "no_encoder_positions": (0, "encode", 0, "rule"),  # the clip's padding shows it
    "no_ln_post": (0, "encode", 0, "rule"),
    "gelu_tanh": (0, "encode", 0, "mutant"),
}
ACROSS_WINDOWS = {name for name, (window, *_) in EXPECTED.items() if window > 0}
# severities that are the point of a mutant (the rest are asserted to be one of the four)
SEVERITY = {
    "gelu_tanh": impact.NUMERIC_DRIFT,  # a precision choice of many ports: tokens unchanged, drift only
    "self_keys_transposed": impact.VALUES_WRONG,  # its own decoding is right; whoever reads its slots is not
    "eot_ignored": impact.CATASTROPHIC,  # it runs on past the end
    "nan_logits": impact.CATASTROPHIC,
    "zero_cross": impact.CATASTROPHIC,  # deaf to the audio
}
# one of each kind in the fast tier: a rule at prefill, a rule at a step, a replay, a shape, an encoder replay
FAST = {"zero_cross", "swapped_slots", "no_final_ln", "vocab_one_short", "gelu_tanh"}
MAX_REPLAYS = 3  # replay is cheap beside the lockstep because only the mutants the evidence allows are tried
# an encoder hypothesis costs an encoder pass: the evidence orders them so that the right one is the first
FIRST_REPLAY = {"no_conv_gelu", "conv_strides", "conv_padding", "gelu_tanh", "no_final_ln"}


def test_the_catalogue_has_25_kinds_and_each_an_expectation() -> None:
    assert set(EXPECTED) == set(MUTANTS) and len(MUTANTS) >= 25


class _EncodeCache:
    """Features by window, shared by the reference and every mutant whose encoder is the reference's."""

    def __init__(self) -> None:
        self.features: dict[str, np.ndarray] = {}

    def wrap(self, model: NumpyModel) -> NumpyModel:
        encode = model.encode

        def cached(mel: np.ndarray) -> np.ndarray:
            key = hashlib.blake2b(np.ascontiguousarray(mel).tobytes(), digest_size=16).hexdigest()
            if key not in self.features:
                self.features[key] = encode(mel)
            return self.features[key].copy()

        model.encode = cached
        return model


@pytest.fixture(scope="module")
def setting(tiny_en):
    cache = _EncodeCache()
    first = windows(SHORT_CLIP)
    return tiny_en, cache, cache.wrap(NumpyModel(tiny_en.checkpoint)), first, first + windows(SECOND_CLIP)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in EXPECTED])
def test_each_mutant_is_caught_at_its_stage_and_named(setting, name: str) -> None:
    tiny_en, cache, reference, one, two = setting
    mutant = make_mutant(name, tiny_en.checkpoint, tiny_en.tokenizer)
    if loc.ENCODER not in mutant.shows_in:
        cache.wrap(mutant)
    report = verify(reference, mutant, tiny_en.tokenizer, tiny_en.checkpoint, two if name in ACROSS_WINDOWS else one)
    text = "\n".join(describe(report, tiny_en.tokenizer))
    first, d = report.first_divergence, report.diagnosis
    window, stage, step, namer = EXPECTED[name]
    assert not report.agree and first.verdict == "diverge", text
    assert (first.window, first.stage, first.step) == (window, stage, step), text
    assert d.cause == mutant.cause and d.found_by.split()[0] == namer, text
    assert d.where and d.explanation == mutant.explanation
    assert len(d.replayed) <= MAX_REPLAYS, d.replayed
    if name in FIRST_REPLAY:
        assert d.replayed == [name]
    assert report.impact.severity == SEVERITY.get(name, report.impact.severity), text
    assert report.impact.severity in (impact.NUMERIC_DRIFT, impact.VALUES_WRONG, impact.DECISIONS,
                                      impact.CATASTROPHIC)
    if name == "eot_ignored":  # the user would see a transcript that does not end
        assert report.impact.windows[0].runaway and "still going" in text
