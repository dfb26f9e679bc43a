"""Run a candidate backend beside the numpy reference, stage by stage, and name the first wrong step.

Both backends get the same mel window and the same start sequence; after that the reference's token is
fed to both (teacher forcing), so each step compares like with like even after the candidate has gone
wrong. At every stage we compare the encoder output, the logits and every KV slot. The first stage
outside the tolerance (or whose greedy token differs, under the tie rule) is the divergence; then each
mutant of checks/mutants.py is replayed on the same inputs, and the one the candidate reproduces names
the bug.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import kv as kvslots
from ..backend import Backend
from ..decoding import Decoder, DecodingOptions, Greedy, State, TeacherForcing, apply_filters
from ..model import NumpyModel
from ..tokenizer import Tokenizer
from ..weights import Checkpoint
from .mutants import MUTANTS, make_mutant

DEFAULT_TOLERANCE = 1e-3  # relative, on features, logits and slots: see Tolerance


def positive_tolerance(text: str) -> float:
    """The type of --tolerance options: a finite number > 0 (nan and inf would switch every check off)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0")
    return value


@dataclass(frozen=True)
class Tolerance:
    # fp32 backends differ from the reference by reassociation only: ~1e-5 of the value scale on
    # tiny.en (CTranslate2: 1.5e-5). Every mutant moves some number by > 1e-2 of it. 1e-3 sits between.
    relative: float = DEFAULT_TOLERANCE
    # the tie rule of docs/architecture.md: top-two reference logits closer than this (relative to the
    # largest |logit|) make either choice acceptable, and the comparison of that window ends there.
    tie: float = 1e-3


@dataclass
class Stage:
    window: int
    stage: str  # "encode", "prefill" or "step"
    step: int  # 0 for encode and prefill, then 1, 2, ...
    input_tokens: list[int]
    ref_token: int | None = None
    cand_token: int | None = None
    ref_top: list[tuple[int, float]] = field(default_factory=list)
    cand_top: list[tuple[int, float]] = field(default_factory=list)
    max_abs: float = 0.0  # encoder output or logits
    scale: float = 1.0  # max |reference value| it is measured against
    slot_max_abs: list[float | None] = field(default_factory=list)  # None where the shapes differ
    ref_slot_shapes: list[list[int]] = field(default_factory=list)
    cand_slot_shapes: list[list[int]] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)
    # prefill only: no_speech_prob, read at the <|startoftranscript|> row (not the last one), both sides
    ref_no_speech_prob: float | None = None
    cand_no_speech_prob: float | None = None
    verdict: str = "agree"  # "agree", "tie" or "diverge"
    reason: str = ""


@dataclass
class Diagnosis:
    cause: str
    explanation: str
    evidence: str


@dataclass
class Report:
    audio: str
    candidate: str
    agree: bool
    windows: int
    steps: int
    ties: int
    first_divergence: Stage | None
    diagnosis: Diagnosis | None
    stages: list[Stage]

    def as_dict(self, all_stages: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not all_stages:
            d.pop("stages")
        return d


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, counting equal infinities as equal and any other non-finite difference as inf."""
    if a.shape != b.shape:
        return float("inf")
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
    return float(diff.max()) if diff.size else 0.0


def _scale(x: np.ndarray) -> float:
    finite = np.abs(x[np.isfinite(x)])
    return float(max(1.0, finite.max())) if finite.size else 1.0


def _probability(p: float) -> float | None:
    """A no_speech_prob for the report (None where the tokenizer has no <|nocaptions|>), to 4 decimals."""
    return None if math.isnan(p) else round(p, 4)


def _top(logits: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    order = np.argsort(-np.nan_to_num(logits, nan=-np.inf), kind="stable")[:k]
    return [(int(i), float(logits[i])) for i in order]


class Lockstep:
    """Reference and candidate fed identical inputs, one stage at a time."""

    def __init__(self, reference: Backend, candidate: Backend, tokenizer: Tokenizer, tolerance: Tolerance,
                 options: DecodingOptions) -> None:
        self.ref, self.cand, self.tok, self.tol = reference, candidate, tokenizer, tolerance
        rules = Decoder(reference, tokenizer, options)  # the decoding rules both sides are judged by
        self.options, self.filters, self.start = rules.options, rules.filters, rules.start_sequence

    def choose(self, logits: np.ndarray, sampled: Sequence[int]) -> tuple[int, np.ndarray]:
        return apply_filters(self.filters, logits, sampled)

    def compare_slots(self, stage: Stage, ref_kv: list, cand_kv: list, which: Sequence[int]) -> None:
        stage.ref_slot_shapes = [list(s.shape) for s in ref_kv]
        stage.cand_slot_shapes = [list(s.shape) for s in cand_kv]  # native shapes: no copy of 18 MB per step
        stage.slot_max_abs = [None] * len(ref_kv)
        for i in which:
            r, c = ref_kv[i], self.cand.to_numpy(cand_kv[i])
            if not np.all(np.isfinite(c)):
                stage.nonfinite.append(f"slot {i} ({kvslots.slot_name(i)})")
            if r.shape == c.shape:
                stage.slot_max_abs[i] = distance(r, c)

    def judge(self, stage: Stage, ref_logits: np.ndarray, cand_logits: np.ndarray, sampled: list[int],
              ref_kv: list, compared: Sequence[int]) -> None:
        """Fill the verdict of a prefill/step stage from its logits and the slots already compared."""
        # NaN or +inf: -inf is how a backend may legitimately suppress a token, judged by distance instead
        if np.any(np.isnan(cand_logits) | np.isposinf(cand_logits)):
            stage.nonfinite.append("logits")
        stage.ref_token, ref_filtered = self.choose(ref_logits, sampled)
        stage.cand_token, cand_filtered = self.choose(cand_logits, sampled)
        stage.ref_top, stage.cand_top = _top(ref_filtered), _top(cand_filtered)
        stage.scale, stage.max_abs = _scale(ref_logits), distance(ref_logits, cand_logits)
        bad_slots = [i for i in compared if stage.slot_max_abs[i] is None
                     or stage.slot_max_abs[i] > self.tol.relative * _scale(ref_kv[i])]
        if stage.nonfinite:
            stage.verdict, stage.reason = "diverge", f"non-finite values in {', '.join(stage.nonfinite)}"
        elif bad_slots:
            i = bad_slots[0]
            what = ("shape " + str(stage.cand_slot_shapes[i]) + " != " + str(stage.ref_slot_shapes[i])
                    if stage.slot_max_abs[i] is None else f"max |Δ| {stage.slot_max_abs[i]:.3g}")
            stage.verdict, stage.reason = "diverge", f"slot {i} ({kvslots.slot_name(i)}): {what}"
        elif stage.ref_token != stage.cand_token:
            (best, top1), (second, top2) = stage.ref_top[:2]
            if top1 - top2 < self.tol.tie * stage.scale and stage.cand_token == second:
                stage.verdict, stage.reason = "tie", f"reference top-2 within {top1 - top2:.3g}: either is accepted"
            else:
                stage.verdict = "diverge"
                stage.reason = f"token {stage.cand_token} != reference {stage.ref_token}"
        elif stage.max_abs > self.tol.relative * stage.scale:
            stage.verdict, stage.reason = "diverge", f"logits max |Δ| {stage.max_abs:.3g} (scale {stage.scale:.3g})"

    def judge_start_rows(self, stage: Stage, ref_rows: np.ndarray, cand_rows: np.ndarray) -> None:
        """Prefill: the logits of the start positions before the last (the last was judged with the token).

        no_speech_prob is read at <|startoftranscript|>, not at the last row: a backend that returns the last
        row everywhere passes every token check and still decides silence differently."""
        if stage.verdict != "agree":
            return
        if cand_rows.shape != ref_rows.shape:
            stage.verdict = "diverge"
            stage.reason = f"prefill logits shape {list(cand_rows.shape)} != reference {list(ref_rows.shape)}"
            return
        for row in range(len(ref_rows) - 1):
            scale, delta = _scale(ref_rows[row]), distance(ref_rows[row], cand_rows[row])
            stage.max_abs = max(stage.max_abs, delta)
            if delta > self.tol.relative * scale:
                stage.verdict = "diverge"
                stage.reason = (f"prefill logits at start position {row} ({self.tok.token_text(self.start[row])}) "
                                f"max |Δ| {delta:.3g} "
                                f"(scale {scale:.3g}); no_speech_prob {stage.cand_no_speech_prob} != reference "
                                f"{stage.ref_no_speech_prob}")
                return

    def window(self, index: int, mel: np.ndarray, stages: list[Stage]) -> tuple[Stage | None, dict]:
        """Compare one window; returns (the first non-agreeing stage or None, the replay context)."""
        ref_feat = self.ref.encode(mel[None])
        cand_feat = self.cand.encode(mel[None])
        enc = Stage(index, "encode", 0, [])
        c = self.cand.to_numpy(cand_feat)
        enc.scale, enc.max_abs = _scale(ref_feat), distance(ref_feat, c)
        if not np.all(np.isfinite(c)):
            enc.nonfinite.append("audio features")
        if enc.nonfinite or enc.max_abs > self.tol.relative * enc.scale:
            enc.verdict = "diverge"
            enc.reason = f"encoder output max |Δ| {enc.max_abs:.3g} (scale {enc.scale:.3g})"
        stages.append(enc)
        context = {"features": ref_feat, "history": []}
        if enc.verdict != "agree":
            return enc, context

        # Two machines in lockstep: the reference decodes greedily, the candidate is teacher-forced with
        # the reference's choices (appended to `forced` before the candidate's turn), so every stage
        # compares like with like.
        n_layer = self.ref.dims.n_text_layer
        forced: list[int] = []
        ref_run = Decoder(self.ref, self.tok, self.options, strategy=Greedy).begin([ref_feat])
        cand_run = self.teacher_forced(self.cand, forced).begin([cand_feat])
        ref_run.advance()  # START: zeroed slots
        cand_run.advance()
        stage = enc
        while ref_run.state is not State.DONE:
            kind = ref_run.state
            inputs = list(self.start) if kind is State.PREFILL else [forced[-1]]
            history = list(forced)  # the tokens fed so far: what a replay needs to reach this stage
            ref_run.advance()
            forced.append(ref_run.rows[0].tokens[-1] if ref_run.rows else self.tok.eot)
            cand_run.advance()
            stage = Stage(index, kind.value, ref_run.steps, inputs)
            compared = range(kvslots.n_slots(n_layer)) if kind is State.PREFILL else kvslots.self_slots(n_layer)
            self.compare_slots(stage, ref_run.kv, cand_run.kv, compared)
            cand_logits = np.asarray(cand_run.logits)[0]
            self.judge(stage, ref_run.logits[0], cand_logits, history, ref_run.kv, compared)
            if kind is State.PREFILL:
                stage.ref_no_speech_prob = _probability(ref_run.groups[0].no_speech_prob)
                stage.cand_no_speech_prob = _probability(cand_run.groups[0].no_speech_prob)
                self.judge_start_rows(stage, ref_run.prefill_logits[0], np.asarray(cand_run.prefill_logits)[0])
            stages.append(stage)
            context.update(history=history, cand_logits=cand_logits, cand_kv=cand_run.kv)
            if stage.verdict != "agree":
                return stage, context
        return None, context

    def teacher_forced(self, backend: Backend, forced: list[int]) -> Decoder:
        """A machine that feeds `backend` the tokens of `forced` (which may grow while it runs), then EOT."""
        return Decoder(backend, self.tok, self.options, strategy=lambda: TeacherForcing(forced, self.tok.eot))


def replay(lockstep: Lockstep, model: Backend, features: Any, history: list[int]) -> tuple[np.ndarray, list]:
    """The logits and slots `model` has after the start sequence and `history` (teacher-forced)."""
    run = lockstep.teacher_forced(model, list(history)).begin([features])
    run.advance()  # START
    run.advance()  # PREFILL
    while run.steps < len(history):
        run.advance()
    return np.asarray(run.logits)[0], run.kv


def diagnose(lockstep: Lockstep, stage: Stage, context: dict, checkpoint: Checkpoint) -> Diagnosis:
    """Test the classic causes against the evidence of the first divergent stage."""
    if stage.stage == "encode":
        if stage.nonfinite:
            return _fallback(stage)
        return Diagnosis("encoder output differs", "the encoder's output differs from the reference's; the decoder "
                         "was not compared", stage.reason)
    if stage.verdict == "tie":
        return Diagnosis("tie", "the reference's two best tokens are within the tie margin", stage.reason)
    # Replay every mutant to this stage; the one whose numbers the candidate reproduces names the bug.
    history = context["history"]
    scores = {}
    for name in MUTANTS:
        mutant = make_mutant(name, checkpoint, lockstep.tok)
        m_logits, m_kv = replay(lockstep, mutant, context["features"], history)
        scores[name] = _match(m_logits, m_kv, context["cand_logits"], context["cand_kv"], lockstep)
    best = min(scores, key=scores.get)
    if scores[best] <= lockstep.tol.relative:
        cls = MUTANTS[best]
        return Diagnosis(cls.cause, cls.explanation,
                         f"{stage.stage} {stage.step}: {stage.reason}; the candidate reproduces the "
                         f"'{best}' mutant within {scores[best]:.2g} (relative)")
    return _fallback(stage)


def _match(m_logits: np.ndarray, m_kv: list, cand_logits, cand_kv, lockstep: Lockstep) -> float:
    """Largest relative difference between a mutant's state and the candidate's (inf if shapes differ)."""
    worst = distance(m_logits, cand_logits) / _scale(m_logits)
    for m, c in zip(m_kv, cand_kv, strict=False):
        worst = max(worst, distance(m, lockstep.cand.to_numpy(c)) / _scale(m))
    return worst


def _fallback(stage: Stage) -> Diagnosis:
    """No mutant reproduces the candidate: read the evidence directly."""
    if stage.nonfinite:
        cls = MUTANTS["fp16_overflow"]
        return Diagnosis(cls.cause, cls.explanation, f"{stage.stage} {stage.step}: {stage.reason}")
    shapes_ref, shapes_cand = stage.ref_slot_shapes, stage.cand_slot_shapes
    for i, (r, c) in enumerate(zip(shapes_ref, shapes_cand, strict=False)):
        layer, kind = kvslots.slot_of(i)
        if kind.is_self and r != c and len(c) == 4 and c[2] < r[2]:
            cls = MUTANTS["not_appended"]
            return Diagnosis(cls.cause, cls.explanation, f"slot {i} holds {c[2]} positions, the reference {r[2]}")
    if stage.stage == "prefill":
        cross = [i for i in range(len(stage.slot_max_abs)) if not kvslots.slot_of(i)[1].is_self]
        if any(stage.slot_max_abs[i] is None or stage.slot_max_abs[i] > 0 for i in cross):
            cls = MUTANTS["cross_wrong_input"]
            return Diagnosis(cls.cause, cls.explanation, stage.reason)
    return Diagnosis("unknown", "the candidate diverges in a way none of the classic causes explains", stage.reason)


def verify(reference: NumpyModel, candidate: Backend, tokenizer: Tokenizer, checkpoint: Checkpoint,
           windows: Sequence[np.ndarray], audio: str = "", tolerance: Tolerance | None = None,
           options: DecodingOptions | None = None) -> Report:
    lock = Lockstep(reference, candidate, tokenizer, tolerance or Tolerance(), options or DecodingOptions())
    stages: list[Stage] = []
    first, diagnosis, ties = None, None, 0
    for index, mel in enumerate(windows):
        bad, context = lock.window(index, mel, stages)
        if bad is not None and bad.verdict == "tie":
            ties += 1
            continue
        if bad is not None:
            first = bad
            diagnosis = diagnose(lock, bad, context, checkpoint)
            break
    steps = sum(1 for s in stages if s.stage == "step")
    return Report(audio=audio, candidate=getattr(candidate, "name", type(candidate).__name__), agree=first is None,
                  windows=len(windows), steps=steps, ties=ties, first_divergence=first, diagnosis=diagnosis,
                  stages=stages)


def describe(report, tokenizer) -> list[str]:
    """The text form of a verification report."""
    lines = [f"verify {report.audio}: candidate {report.candidate} vs reference numpy, {report.windows} window(s)"]
    if report.agree:
        lines.append(f"AGREE: {report.steps} steps compared, {report.ties} tie(s)")
        return lines
    s, d = report.first_divergence, report.diagnosis
    lines.append(f"DIVERGE at window {s.window}, {s.stage} step {s.step}: {s.reason}")
    if s.stage != "encode":
        lines.append(f"  input      {' '.join(tokenizer.token_text(t) for t in s.input_tokens)}")
        lines.append(f"  reference  chose {tokenizer.token_text(s.ref_token)!r}; top-5 "
                     + ", ".join(f"{tokenizer.token_text(i)!r} {v:.3f}" for i, v in s.ref_top))
        lines.append(f"  candidate  chose {tokenizer.token_text(s.cand_token)!r}; top-5 "
                     + ", ".join(f"{tokenizer.token_text(i)!r} {v:.3f}" for i, v in s.cand_top))
        lines.append(f"  logits     max |Δ| {s.max_abs:.3g} (reference scale {s.scale:.3g})")
        for i, delta in enumerate(s.slot_max_abs):
            if delta is None and s.ref_slot_shapes[i] == s.cand_slot_shapes[i]:
                continue  # not compared at this stage
            shown = (f"max |Δ| {delta:.3g}" if delta is not None
                     else f"shape {s.cand_slot_shapes[i]} != reference {s.ref_slot_shapes[i]}")
            lines.append(f"  slot {i:>2}    {shown}")
    lines.append(f"DIAGNOSIS: {d.cause}: {d.explanation}")
    lines.append(f"  evidence: {d.evidence}")
    return lines
