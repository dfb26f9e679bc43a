"""Signature rules: small named tests of the first divergent stage's numbers, each naming one cause.

A rule looks at what `verify` already holds (both sides' logits and slots at that stage, the window before,
the reference model to recompute an alternative cheaply) and returns a Finding only when its evidence
supports the cause: an exact relation (within the tolerance) between the candidate's numbers and the
reference's under one hypothesis: another slot, a constant factor, the previous window, a cut or permuted
layout, another input token or position. Otherwise it returns None, and the next rule (then the mutant
replay, then "unknown" with the localisation) gets its turn. RULES is the order they are tried in.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .. import kv as kvslots
from ..model import NumpyModel, cross_kv, decode, layer_norm, linear, split_heads
from . import causes
from . import localise as loc
from .compare import close, ratio, scale_of

FLOAT16_MAX = 65504.0  # the largest finite float16


@dataclass
class WindowMemory:
    """What verify keeps of the window before the divergent one (rules about state carried across windows)."""

    window: int
    ref_cross: dict[int, np.ndarray]  # slot index -> the reference's cross K/V of that window
    cand_cross: dict[int, np.ndarray]  # the candidate's, as numpy
    ref_self: dict[int, np.ndarray]  # the final self K/V of that window
    cand_self: dict[int, np.ndarray]
    positions: int  # positions its self slots held at the end (start sequence + tokens fed)


@dataclass
class Evidence:
    """The first divergent stage, with both sides' numbers as numpy."""

    stage: object  # verify.Stage
    where: loc.Localisation
    reference: NumpyModel
    tokenizer: object
    tolerance: float
    start: list[int]
    history: list[int]  # the sampled tokens fed before this stage
    mel: np.ndarray  # the window [n_mels, frames]
    ref_features: np.ndarray
    cand_features: np.ndarray | None
    ref_kv_before: list[np.ndarray]  # the reference's slots before this stage (zero_kv at prefill)
    ref_kv: list[np.ndarray]  # after it
    cand_kv: list[np.ndarray | None]  # None: not returned (a step's cross slots) or not convertible
    ref_logits: np.ndarray | None  # the last start position's (prefill) or the step's [n_vocab]
    cand_logits: np.ndarray | None  # as returned (any width)
    ref_rows: np.ndarray | None = None  # prefill: every start position [n, n_vocab]
    cand_rows: np.ndarray | None = None
    previous: WindowMemory | None = None
    # an encoder divergence: the candidate's prefill of that window, which decoded from its own features
    cand_prefill_rows: np.ndarray | None = None
    cand_prefill_kv: list[np.ndarray | None] | None = None

    @property
    def at(self) -> str:
        return f"{self.stage.stage} {self.stage.step}"

    def differing_slots(self) -> list[int]:
        """Slots compared at this stage whose shape or values differ, in slot order."""
        return [i for i, c in enumerate(self.stage.slots) if c is not None and not c.within(self.tolerance)]

    def close(self, ref: np.ndarray, cand: np.ndarray | None) -> bool:
        return cand is not None and close(ref, cand, self.tolerance)


@dataclass
class Finding:
    cause: causes.Cause
    evidence: str
    rule: str


def _slot(i: int) -> str:
    return f"slot {i} ({kvslots.slot_name(i)})"


def _finding(cause: causes.Cause, evidence: str, rule: Callable) -> Finding:
    return Finding(cause, evidence, rule.__name__)


# ----------------------------------------------------------------------------------------------
# Shapes and widths


def vocabulary_width(ev: Evidence) -> Finding | None:
    """Logits one entry short, and otherwise the reference's first n_vocab - 1."""
    c = ev.stage.logits
    if c is None or c.same_shape or ev.cand_logits is None or ev.ref_logits is None:
        return None
    ref, cand = ev.ref_logits, ev.cand_logits.reshape(-1)
    n_ref, n_cand = ref.shape[-1], cand.shape[-1]
    if n_cand == n_ref - 1 and ev.close(ref[:-1], cand):
        missing = ev.tokenizer.token_text(n_ref - 1)
        return _finding(causes.VOCAB_SHORT, f"{ev.at}: logits n_vocab {n_ref} vs {n_cand}; the candidate's equal the "
                        f"reference's first {n_cand}: id {n_ref - 1} ({missing}) is missing", vocabulary_width)
    return None


def permuted_layout(ev: Evidence) -> Finding | None:
    """The first differing array is the reference's with its axes permuted (or heads reshaped, not transposed)."""
    target = _first_differing_array(ev)
    if target is None:
        return None
    name, ref, cand, axes = target
    # (first: where heads and length are equally many, the reshape and a transpose of those axes are one thing)
    if ref.ndim == 4 and ref.shape == cand.shape:
        mixed = np.ascontiguousarray(ref.transpose(0, 2, 1, 3)).reshape(ref.shape)
        if ev.close(mixed, cand):
            return _finding(causes.HEADS_MIXED, f"{ev.at}: {name} equals the reference's (batch, length, heads, "
                            "head_dim) memory reshaped to (batch, heads, length, head_dim)", permuted_layout)
    for perm in itertools.permutations(range(ref.ndim)):
        if perm == tuple(range(ref.ndim)):
            continue
        moved = ref.transpose(perm)
        if moved.shape == cand.shape and ev.close(moved, cand):
            layout = ", ".join(axes[p] for p in perm)
            return _finding(causes.LAYOUT_TRANSPOSED, f"{ev.at}: {name} has shape {list(cand.shape)}, the reference "
                            f"{list(ref.shape)}; it holds the reference's numbers as ({layout})", permuted_layout)
    return None


SLOT_AXES = ("batch", "heads", "length", "head_dim")
FEATURE_AXES = ("batch", "audio position", "state")


def _first_differing_array(ev: Evidence) -> tuple[str, np.ndarray, np.ndarray, Sequence[str]] | None:
    if ev.stage.stage == "encode":
        if ev.cand_features is None:
            return None
        return "the audio features", ev.ref_features, ev.cand_features, FEATURE_AXES
    for i in ev.differing_slots():
        if ev.cand_kv[i] is not None:
            return _slot(i), ev.ref_kv[i], ev.cand_kv[i], SLOT_AXES
    return None


def leaked_state(ev: Evidence) -> Finding | None:
    """At prefill the self slots hold more positions than the start sequence: the previous window's in front."""
    prev = ev.previous
    if ev.stage.stage != "prefill" or prev is None:
        return None
    n = len(ev.start)
    first = kvslots.self_slots(len(ev.ref_kv) // kvslots.SLOTS_PER_LAYER)[0]
    cand = ev.cand_kv[first]
    if cand is None or cand.ndim != 4 or cand.shape[2] <= n:
        return None
    extra = cand.shape[2] - n
    for side, slots in (("candidate's", prev.cand_self), ("reference's", prev.ref_self)):
        old = slots.get(first)
        if old is not None and old.shape[2] == extra and ev.close(old, cand[:, :, :extra]):
            return _finding(causes.SELF_STATE_LEAKED, f"prefill of window {ev.stage.window}: {_slot(first)} holds "
                            f"{cand.shape[2]} positions for a start sequence of {n}; its first {extra} equal the "
                            f"{side} final self K/V of window {prev.window}", leaked_state)
    return None


def length_cap(ev: Evidence) -> Finding | None:
    """At a step the self slots hold fewer positions than the reference's: not appended, cut, or a sliding window."""
    if ev.stage.stage != "step":
        return None
    for i in ev.differing_slots():
        ref, cand = ev.ref_kv[i], ev.cand_kv[i]
        if cand is None or cand.ndim != 4 or cand.shape[:2] != ref.shape[:2] or cand.shape[2] >= ref.shape[2]:
            continue
        kept, held = cand.shape[2], ref.shape[2]
        lead = f"{ev.at}: {_slot(i)} holds {kept} position(s), the reference {held}"
        if kept == 1 and ev.close(ref[:, :, -1:], cand):
            return _finding(causes.NOT_APPENDED, f"{lead}: only the newest", length_cap)
        if ev.close(ref[:, :, :kept], cand):
            return _finding(causes.CACHE_CUT, f"{lead}: the reference's first {kept} (it stopped growing at {kept})",
                            length_cap)
        if ev.close(ref[:, :, -kept:], cand):
            return _finding(causes.CACHE_SLIDING, f"{lead}: the reference's last {kept} (the oldest were dropped)",
                            length_cap)
        return None
    return None


# ----------------------------------------------------------------------------------------------
# Slots that are other slots


def exchanged(ev: Evidence) -> Finding | None:
    """The first differing slot equals another slot of the reference (its K/V partner, or another layer's)."""
    for i in ev.differing_slots():
        cand = ev.cand_kv[i]
        if cand is None:
            continue
        layer, kind = kvslots.slot_of(i)
        others = [i ^ 1] + [j for j in range(len(ev.ref_kv)) if j not in (i, i ^ 1)]
        for j in others:
            if ev.ref_kv[j].shape != cand.shape or not ev.close(ev.ref_kv[j], cand):
                continue
            _, other_kind = kvslots.slot_of(j)
            lead = f"{ev.at}: {_slot(i)} equals the reference's {_slot(j)}"
            if kind.is_self and other_kind.is_self:
                return _finding(causes.SELF_SLOTS_SWAPPED, lead, exchanged)
            if j == i ^ 1:
                return _finding(causes.CROSS_KV_EXCHANGED, lead, exchanged)
            if other_kind == kind:
                return _finding(causes.CROSS_WRONG_WEIGHTS, f"{lead}: projected with layer "
                                f"{kvslots.slot_of(j)[0]}'s weights (or written to the wrong layer's slot)", exchanged)
        return None
    return None


def stale_window(ev: Evidence) -> Finding | None:
    """Cross slots of this window equal the previous window's: they were not recomputed."""
    prev = ev.previous
    if ev.stage.stage != "prefill" or prev is None:
        return None
    for i in ev.differing_slots():
        if kvslots.slot_of(i)[1].is_self:
            continue
        cand = ev.cand_kv[i]
        for side, slots in (("reference's", prev.ref_cross), ("candidate's", prev.cand_cross)):
            old = slots.get(i)
            if old is not None and ev.close(old, cand):
                return _finding(causes.CROSS_STALE, f"prefill of window {ev.stage.window}: {_slot(i)} equals the "
                                f"{side} of window {prev.window}", stale_window)
        return None
    return None


def cross_input(ev: Evidence) -> Finding | None:
    """Cross slots that are the placeholders, the projection of zero features, or the self-attention's projection."""
    if ev.stage.stage != "prefill":
        return None
    n_layer = len(ev.ref_kv) // kvslots.SLOTS_PER_LAYER
    cross = kvslots.cross_slots(n_layer)
    bad = [i for i in ev.differing_slots() if i in cross]
    if not bad or any(ev.cand_kv[i] is None for i in cross):
        return None
    if all(not np.any(ev.cand_kv[i]) for i in cross):
        return _finding(causes.ZERO_CROSS, f"prefill: every cross slot ({', '.join(map(str, cross))}) is all zeros",
                        cross_input)
    layer = kvslots.slot_of(bad[0])[0]
    w, heads = ev.reference.weights, ev.reference.dims.n_text_head
    k, v = cross_kv(np.zeros_like(ev.ref_features), w, layer, heads)
    if ev.close(k, ev.cand_kv[cross[2 * layer]]) and ev.close(v, ev.cand_kv[cross[2 * layer + 1]]):
        return _finding(causes.CROSS_FROM_ZEROS, f"prefill: layer {layer}'s cross K/V equal the projections of "
                        "all-zero features (key 0, value its bias)", cross_input)
    p = f"decoder.blocks.{layer}.attn"
    k = split_heads(linear(ev.ref_features, w[f"{p}.key.weight"]), heads)
    v = split_heads(linear(ev.ref_features, w[f"{p}.value.weight"], w[f"{p}.value.bias"]), heads)
    if ev.close(k, ev.cand_kv[cross[2 * layer]]) and ev.close(v, ev.cand_kv[cross[2 * layer + 1]]):
        return _finding(causes.CROSS_WRONG_WEIGHTS, f"prefill: layer {layer}'s cross K/V equal the audio features "
                        "projected with the self-attention's key/value weights", cross_input)
    return None


# ----------------------------------------------------------------------------------------------
# Numbers off by a pattern


def non_finite(ev: Evidence) -> Finding | None:
    """The first non-finite value: a float16 overflow (inf beside values within float16's range) or NaN logits
    with finite slots. The stage's reason names where it is in any case."""
    stage = ev.stage
    slots = [i for i, c in enumerate(stage.slots) if c is not None and c.nonfinite]
    if slots:
        i = slots[0]
        return _overflow(ev, _slot(i), ev.cand_kv[i], stage.slots[i].nonfinite)
    if stage.logits is not None and stage.logits.nonfinite and ev.cand_logits is not None:
        if "NaN" in stage.logits.nonfinite.split(" at ")[0]:
            return _finding(causes.NAN_LOGITS, f"{ev.at}: logits {stage.logits.nonfinite}; every slot compared at this "
                            "stage is finite", non_finite)
        return _overflow(ev, "the logits", ev.cand_logits, stage.logits.nonfinite)
    if stage.features is not None and stage.features.nonfinite and ev.cand_features is not None:
        return _overflow(ev, "the audio features", ev.cand_features, stage.features.nonfinite)
    return None


def _overflow(ev: Evidence, name: str, values: np.ndarray | None, where: str) -> Finding | None:
    if values is None or not np.any(np.isinf(values)):
        return None
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    if top > FLOAT16_MAX:
        return None  # values beyond float16's range are finite: not a float16 overflow
    return _finding(causes.FP16_OVERFLOW, f"{ev.at}: {name}: {where}; its finite values stay within float16's "
                    f"range (max |x| {top:.4g} <= {FLOAT16_MAX:g})", non_finite)


def suppressed_tokens(ev: Evidence) -> Finding | None:
    """Some logits are -inf where the reference's are finite, and every other logit agrees."""
    ref, cand = ev.ref_logits, ev.cand_logits
    if ref is None or cand is None or cand.reshape(-1).shape != ref.shape:
        return None
    cand = cand.reshape(-1)
    gone = np.isneginf(cand) & np.isfinite(ref)
    if not gone.any() or not ev.close(ref[~gone], cand[~gone]):
        return None
    ids = [int(i) for i in np.flatnonzero(gone)]
    if ids == [ev.tokenizer.eot]:
        return _finding(causes.EOT_IGNORED, f"{ev.at}: the <|endoftext|> logit is -inf (the reference's "
                        f"{ref[ids[0]]:.3g}); every other logit agrees", suppressed_tokens)
    shown = ", ".join(ev.tokenizer.token_text(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")
    return _finding(causes.TOKENS_SUPPRESSED, f"{ev.at}: {len(ids)} logit(s) -inf where the reference's are finite "
                    f"({shown}); every other logit agrees", suppressed_tokens)


def constant_ratio(ev: Evidence) -> Finding | None:
    """The first differing array is a constant multiple of the reference's: report the factor."""
    target = _first_differing_array(ev)
    if target is None and ev.stage.logits is not None and not ev.stage.logits.within(ev.tolerance) \
            and ev.cand_logits is not None:
        target = ("the logits", ev.ref_logits, ev.cand_logits.reshape(-1), ())
    if target is None:
        return None
    name, ref, cand, _ = target
    if ref.shape != cand.shape:
        return None
    c = ratio(ref, cand)
    # (a factor near 0 is an array of zeros, near 1 no scale at all: other mechanisms)
    if not np.isfinite(c) or abs(c) <= ev.tolerance or abs(c - 1) <= ev.tolerance \
            or not ev.close(ref * np.float32(c), cand):
        return None
    lead = f"{ev.at}: {name} = {c:.4g} x the reference's"
    head_dim = ev.reference.dims.text_head_dim
    if name.startswith("slot") and "self.key" in name and abs(c - head_dim ** -0.25) < 1e-3:
        return _finding(causes.KEYS_PRESCALED, f"{lead} (head_dim^-1/4 = {head_dim ** -0.25:.4g})", constant_ratio)
    if name == "the logits":
        return _finding(causes.LOGITS_SCALED, lead, constant_ratio)
    return _finding(causes.SCALED, lead, constant_ratio)


def constant_offset(ev: Evidence) -> Finding | None:
    """Every logit is the reference's plus one constant (only the logits differ)."""
    ref, cand = ev.ref_logits, ev.cand_logits
    if ref is None or cand is None or ev.differing_slots() or cand.reshape(-1).shape != ref.shape:
        return None
    delta = cand.reshape(-1).astype(np.float64) - ref
    if not np.all(np.isfinite(delta)):
        return None
    shift = float(np.median(delta))
    if abs(shift) <= ev.tolerance * scale_of(ref) or not ev.close(ref + np.float32(shift), cand.reshape(-1)):
        return None
    top = float(ref.max())
    log_sum_exp = top + float(np.log(np.exp(ref.astype(np.float64) - top).sum()))
    lead = f"{ev.at}: every logit = the reference's {shift:+.4g}; the slots agree"
    if abs(shift + log_sum_exp) <= ev.tolerance * scale_of(ref):
        return _finding(causes.LOG_PROBS, f"{lead}; {shift:+.4g} = -log(sum(exp(logits)))", constant_offset)
    return _finding(causes.LOGITS_SHIFTED, lead, constant_offset)


def bias_dropped(ev: Evidence) -> Finding | None:
    """Value slots equal the reference's minus their projection's bias."""
    w, heads = ev.reference.weights, ev.reference.dims.n_text_head
    missing = []
    for i in ev.differing_slots():
        layer, kind = kvslots.slot_of(i)
        if kind not in (kvslots.SlotKind.SELF_VALUE, kvslots.SlotKind.CROSS_VALUE) or ev.cand_kv[i] is None:
            continue
        name = f"decoder.blocks.{layer}.{'attn' if kind.is_self else 'cross_attn'}.value.bias"
        bias = w[name].reshape(1, heads, 1, -1)
        if ev.close(ev.ref_kv[i] - bias, ev.cand_kv[i]):
            missing.append(f"{_slot(i)} = reference - {name}")
        elif not missing:
            return None  # the first differing value slot is not a missing bias
    if not missing:
        return None
    return _finding(causes.BIASES_DROPPED, f"{ev.at}: " + "; ".join(missing), bias_dropped)


def ln_post_missing(ev: Evidence) -> Finding | None:
    """The reference's ln_post applied to the candidate's features gives the reference's features."""
    if ev.stage.stage != "encode" or ev.cand_features is None or ev.cand_features.shape != ev.ref_features.shape:
        return None
    w = ev.reference.weights
    normed = layer_norm(ev.cand_features.astype(np.float32), w["encoder.ln_post.weight"], w["encoder.ln_post.bias"])
    if ev.close(ev.ref_features, normed):
        return _finding(causes.NO_LN_POST, "encode: the reference's ln_post applied to the candidate's features gives "
                        "the reference's features", ln_post_missing)
    return None


def encoder_positions_missing(ev: Evidence) -> Finding | None:
    """Audio positions whose input frames are identical (the padding after the audio) get identical features
    from the candidate, and different ones from the reference: the encoder has no positional information."""
    if ev.stage.stage != "encode" or ev.cand_features is None or ev.cand_features.shape != ev.ref_features.shape:
        return None
    same = identical_input_positions(ev.mel)
    if len(same) < 2:
        return None
    ref, cand = ev.ref_features[0, same], ev.cand_features[0, same]
    if ev.close(cand[:1].repeat(len(same), axis=0), cand) and not ev.close(ref[:1].repeat(len(same), axis=0), ref):
        return _finding(causes.ENCODER_POSITION, f"encode: the candidate's features are identical at the {len(same)} "
                        f"audio positions {same[0]}..{same[-1]}, whose input frames are identical (padding), where the "
                        "reference's differ: nothing tells those positions apart", encoder_positions_missing)
    return None


def identical_input_positions(mel: np.ndarray) -> list[int]:
    """Audio positions t whose front-end input (mel frames 2t - 2 .. 2t + 2: two convolutions of width 3, the
    second of stride 2) is one column repeated, the same column for all of them: the padding after the audio."""
    frames = mel.shape[1]
    if frames < 8 or not np.array_equal(mel[:, -1], mel[:, -2]):
        return []
    column = mel[:, -1:]
    equal = np.all(mel == column, axis=0)  # [frames]
    return [t for t in range(1, frames // 2 - 1) if equal[2 * t - 2: 2 * t + 3].all()]


def causal_mask(ev: Evidence) -> Finding | None:
    """At prefill, the first differing layer differs at earlier start positions only: they saw later ones."""
    n = len(ev.start)
    if ev.stage.stage != "prefill" or ev.where.part != loc.LAYER or n < 2:
        return None
    positions = ev.where.positions
    if not positions or n - 1 in positions:
        return None
    return _finding(causes.CAUSAL_MASK, f"prefill: layer {ev.where.layer + 1}'s self K/V differ at start position(s) "
                    f"{positions} and agree at the last ({n - 1}), which may see every position: the earlier ones "
                    "saw later positions", causal_mask)


# ----------------------------------------------------------------------------------------------
# Another input


def other_input(ev: Evidence) -> Finding | None:
    """The stage's output equals the reference's for another input: other start tokens, another fed token, or
    positions offset (by one, or by the previous window's length)."""
    if ev.stage.stage not in ("prefill", "step") or ev.ref_logits is None:
        return None
    for cause, tokens, offset, described in _alternatives(ev):
        logits, present = _decode_alternative(ev, tokens, offset)
        if _reproduces(ev, logits, present):
            return _finding(cause, f"{ev.at}: the candidate's logits and self K/V equal the reference's {described}",
                            other_input)
    return None


def _alternatives(ev: Evidence) -> list[tuple[causes.Cause, list[int], int, str]]:
    """(cause, input tokens, position offset, description) hypotheses, the likeliest first."""
    tok, prev = ev.tokenizer, ev.previous
    out: list[tuple[causes.Cause, list[int], int, str]] = []
    if ev.stage.stage == "prefill":
        given = list(ev.start)
        names = " ".join(tok.token_text(t) for t in given)
        out += [(causes.WRONG_START, [tok.eot], 0, f"for the start sequence <|endoftext|> alone (given {names})"),
                (causes.WRONG_START, given[:1], 0, f"for the start sequence {tok.token_text(given[0])} alone")]
    else:
        given = [ev.stage.input_tokens[-1]]
        before = ev.history[-2] if len(ev.history) >= 2 else ev.start[-1]
        out.append((causes.WRONG_TOKEN_FED, [before], 0, f"fed {tok.token_text(before)!r} (the token before) instead "
                    f"of {tok.token_text(given[0])!r}"))
    out += [(causes.POSITION_OFFSET, given, 1, "with positions read one row late (p + 1)"),
            (causes.POSITION_OFFSET, given, -1, "with positions read one row early (p - 1)")]
    if prev is not None and prev.positions:
        out.append((causes.POSITION_NOT_RESET, given, prev.positions, f"with positions offset by {prev.positions}, the "
                    f"positions window {prev.window} used"))
    return out


def _decode_alternative(ev: Evidence, tokens: list[int], offset: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The reference's logits (last position) and present self slots for `tokens` fed at this stage."""
    model = ev.reference
    w = model.weights
    if offset:
        w = dict(w)
        w["decoder.positional_embedding"] = np.roll(w["decoder.positional_embedding"], -offset, axis=0)
    kv = list(ev.ref_kv_before)
    for i in kvslots.cross_slots(model.dims.n_text_layer):
        kv[i] = ev.ref_kv[i]  # prefill's placeholders replaced by the window's cross K/V
    logits, present = decode([tokens], kv, w, model.dims)
    return logits[0], present


def _reproduces(ev: Evidence, logits: np.ndarray, present: list[np.ndarray]) -> bool:
    cand_logits = ev.cand_rows[-1] if ev.cand_rows is not None else ev.cand_logits
    if cand_logits is None or not ev.close(logits, cand_logits.reshape(-1)):
        return False
    selfs = kvslots.self_slots(ev.reference.dims.n_text_layer)
    return all(ev.close(p, ev.cand_kv[i]) for i, p in zip(selfs, present, strict=True))


def start_rows_copied(ev: Evidence) -> Finding | None:
    """Every start position's logits equal the last one's, where the reference's first and last differ."""
    ref, cand = ev.ref_rows, ev.cand_rows
    if ev.stage.stage != "prefill" or ref is None or cand is None or cand.shape != ref.shape or len(ref) < 2:
        return None
    if ev.close(ref[0], ref[-1]) or not ev.close(ref[-1], cand[-1]):
        return None
    if all(ev.close(cand[-1], row) for row in cand[:-1]):
        s = ev.stage
        return _finding(causes.START_ROWS_COPIED, f"prefill: every start position's logits equal the last's; the "
                        f"reference's first ({ev.tokenizer.token_text(ev.start[0])}) differs from its last by max |Δ| "
                        f"{float(np.abs(ref[0] - ref[-1]).max()):.3g}; no_speech_prob {s.cand_no_speech_prob} vs "
                        f"reference {s.ref_no_speech_prob}", start_rows_copied)
    return None


# The order: shapes and non-finite values first (they make every later comparison meaningless), then the exact
# relations to other slots and windows, then patterns of values, then the hypotheses that recompute.
RULES: list[Callable[[Evidence], Finding | None]] = [
    vocabulary_width, non_finite, start_rows_copied, permuted_layout, leaked_state, length_cap, exchanged,
    stale_window, cross_input, suppressed_tokens, constant_ratio, constant_offset, bias_dropped, ln_post_missing,
    encoder_positions_missing, causal_mask, other_input,
]


def first_finding(ev: Evidence) -> Finding | None:
    """The first rule (in RULES order) whose evidence names a cause."""
    for rule in RULES:
        found = rule(ev)
        if found is not None:
            return found
    return None

