"""Run a candidate backend beside the numpy reference, stage by stage; name the first wrong step, its place,
its cause and what it changes for the user (docs/verify.md).

Both backends get the same mel window and the same start sequence; after that the reference's token is
fed to both (teacher forcing), so each stage compares like with like even after the candidate has gone
wrong. At every stage everything the protocol returns is compared: the audio features, the logits of every
start position, every KV slot, their shapes and dtypes, absolute and relative differences, the first
non-finite value (checks/compare.py). The first stage outside the tolerance (or whose greedy token differs,
under the tie rule) is the divergence. Then:
- localise (checks/localise.py): the window, the stage, the part of the model, the first layer whose slots
  differ, from the numbers already compared;
- impact (checks/impact.py): the comparison has gone on, teacher-forced, to the end of the clip; the choices
  the candidate makes differently, its own transcript, no_speech decisions, a severity;
- diagnose (checks/diagnose.py): the signature rules (checks/signatures.py) first, then a replay of the
  mutants (checks/mutants.py) compatible with the localisation; otherwise "unknown", with the localisation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import kv as kvslots
from ..backend import Backend, max_batch
from ..decoding import Decoder, DecodingOptions, Greedy, State, TeacherForcing, apply_filters
from ..model import NumpyModel
from ..tokenizer import Tokenizer
from ..weights import Checkpoint
from . import impact, signatures
from . import localise as loc
from .causes import error_text
from .compare import DEFAULT_TOLERANCE, Compared, compare, distance, positive_tolerance, unreadable  # noqa: F401
from .diagnose import Diagnosis, diagnose

__all__ = ["DEFAULT_TOLERANCE", "Report", "Stage", "Tolerance", "describe", "distance", "time_line", "verify"]



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
    cand_token: int | None = None  # the candidate's greedy choice given the reference's tokens so far
    ref_top: list[tuple[int, float]] = field(default_factory=list)
    cand_top: list[tuple[int, float]] = field(default_factory=list)
    max_abs: float = 0.0  # encoder output or logits (every start position at prefill); inf where shapes differ
    scale: float = 1.0  # max |reference value| it is measured against
    slot_max_abs: list[float | None] = field(default_factory=list)  # None where not compared or shapes differ
    ref_slot_shapes: list[list[int]] = field(default_factory=list)
    cand_slot_shapes: list[list[int]] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)  # "slot 5 (1.self.value): +inf at [0, 2, 3, 7] (...)"
    # prefill only: no_speech_prob, read at the <|startoftranscript|> row (not the last one), both sides
    ref_no_speech_prob: float | None = None
    cand_no_speech_prob: float | None = None
    verdict: str = "agree"  # "agree", "tie" or "diverge"
    reason: str = ""
    # everything compared, array by array
    features: Compared | None = None  # encode
    logits: Compared | None = None  # the last start position (prefill) or the step
    start_rows: list[Compared] = field(default_factory=list)  # prefill: the start positions before the last
    slots: list[Compared | None] = field(default_factory=list)  # None: not compared at this stage
    error: str = ""  # the candidate raised this


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
    impact: impact.Impact | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # where verify's time went (see Timer)

    def as_dict(self, all_stages: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not all_stages:
            d.pop("stages")
        return json_safe(d)


def json_safe(x: Any) -> Any:
    """NaN and infinities as the strings "nan", "inf", "-inf": JSON has no such numbers (a max |Δ| may be inf)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def _probability(p: float) -> float | None:
    """A no_speech_prob for the report (None where the tokenizer has no <|nocaptions|>), to 4 decimals."""
    return None if math.isnan(p) else round(p, 4)


def _top(logits: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The k best (id, logit), best first, the lower id first on equal logits; NaN never wins."""
    x = np.where(np.isnan(logits), -np.inf, logits)
    k = min(k, x.size)
    best = np.argpartition(-x, k - 1)[:k]  # O(n): a full sort of 51864 logits per stage cost more than the step
    order = best[np.lexsort((best, -x[best]))]
    return [(int(i), float(logits[i])) for i in order]


def conform(logits: np.ndarray, n_vocab: int) -> np.ndarray:
    """Logits made n_vocab wide (missing ids -inf, extra ones dropped), so the machine runs a candidate with
    another vocabulary width to the end; the comparison keeps the raw width."""
    width = logits.shape[-1]
    if width == n_vocab:
        return logits
    if width > n_vocab:
        return logits[..., :n_vocab]
    pad = np.full((*logits.shape[:-1], n_vocab - width), -np.inf, np.float32)
    return np.concatenate([logits.astype(np.float32), pad], axis=-1)


class Recorder:
    """The candidate as its teacher-forced machine sees it: the raw logits of each call kept for comparison,
    their width conformed to n_vocab (any other shape error is the machine's to report)."""

    def __init__(self, backend: Backend, dims) -> None:
        self.backend, self.dims = backend, dims
        self.name = getattr(backend, "name", type(backend).__name__)
        self.max_batch = max_batch(backend)
        self.raw: np.ndarray | None = None

    def encode(self, mel: np.ndarray) -> Any:
        return self.backend.encode(mel)

    def zero_kv(self, batch: int = 1) -> list[Any]:
        return self.backend.zero_kv(batch)

    def prefill(self, tokens, audio_features, kv):
        logits, kv = self.backend.prefill(tokens, audio_features, kv)
        self.raw = np.asarray(logits)
        return conform(self.raw, self.dims.n_vocab), kv

    def step(self, tokens, kv):
        logits, present = self.backend.step(tokens, kv)
        self.raw = np.asarray(logits)
        return conform(self.raw, self.dims.n_vocab), present

    def select(self, kv, rows):
        return self.backend.select(kv, rows)

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.backend.to_numpy(x)


class Timer:
    """Seconds spent per part of verify: the reference's decoding, the candidate's, comparing, diagnosing,
    judging the impact. 'reference' is the reference's own decoding of the clip (encode + greedy)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"reference": 0.0, "candidate": 0.0, "compare": 0.0, "diagnose": 0.0,
                                          "impact": 0.0}

    def run(self, part: str, f, *args):
        t = time.perf_counter()
        try:
            return f(*args)
        finally:
            self.seconds[part] += time.perf_counter() - t


@dataclass
class WindowRun:
    """One window compared to its end (or the candidate's failure)."""

    index: int
    stages: list[Stage]
    ref_tokens: list[int]
    mel: np.ndarray | None = None
    want_evidence: bool = False  # keep the numbers of this window's first divergence (for the diagnosis)
    previous: signatures.WindowMemory | None = None
    ref_features: np.ndarray | None = None
    cand_native: Any = None  # the candidate's features as it returned them: the free-run decodes from them
    cand_features: np.ndarray | None = None  # as numpy
    ref_cross: dict[int, np.ndarray] = field(default_factory=dict)
    cand_cross: dict[int, np.ndarray] = field(default_factory=dict)
    ref_no_speech: float | None = None
    cand_no_speech: float | None = None
    error: str = ""
    evidence: signatures.Evidence | None = None  # at this window's first divergence, when asked for
    memory: signatures.WindowMemory | None = None  # what the next window's rules may need

    def first(self, verdicts: Sequence[str] = ("diverge", "tie")) -> Stage | None:
        return next((s for s in self.stages if s.verdict in verdicts), None)


class Lockstep:
    """Reference and candidate fed identical inputs, one stage at a time."""

    def __init__(self, reference: Backend, candidate: Backend, tokenizer: Tokenizer, tolerance: Tolerance,
                 options: DecodingOptions, timer: Timer | None = None) -> None:
        self.ref, self.tok, self.tol = reference, tokenizer, tolerance
        self.cand = Recorder(candidate, reference.dims)
        self.timer = timer or Timer()
        rules = Decoder(reference, tokenizer, options)  # the decoding rules both sides are judged by
        self.options, self.filters, self.start = rules.options, rules.filters, rules.start_sequence

    def choose(self, logits: np.ndarray, sampled: Sequence[int]) -> tuple[int, np.ndarray]:
        return apply_filters(self.filters, logits, sampled)

    # ---- comparing one stage
    def compare_slots(self, stage: Stage, ref_kv: list, cand_kv: list, which: Sequence[int]) -> list:
        """Compare the slots `which`; -> the candidate's slots as numpy (None where not compared)."""
        stage.ref_slot_shapes = [list(s.shape) for s in ref_kv]
        stage.cand_slot_shapes = [list(getattr(s, "shape", ())) for s in cand_kv]  # native: no copy of 18 MB
        stage.slots = [None] * len(ref_kv)
        as_numpy: list = [None] * len(ref_kv)
        for i in which:
            name = f"slot {i} ({kvslots.slot_name(i)})"
            try:
                as_numpy[i] = np.asarray(self.cand.to_numpy(cand_kv[i]))
            except Exception as e:  # too few slots, or not an array: what the candidate returned is the finding
                stage.slots[i] = unreadable(name, ref_kv[i], error_text(e))
                continue
            stage.slots[i] = compare(name, ref_kv[i], as_numpy[i])
        stage.slot_max_abs = [None if c is None else c.max_abs for c in stage.slots]
        stage.nonfinite = [f"{c.name}: {c.nonfinite}" for c in stage.slots if c is not None and c.nonfinite]
        return as_numpy

    def judge(self, stage: Stage, ref_logits: np.ndarray, cand_raw: np.ndarray, cand_logits: np.ndarray,
              sampled: list[int]) -> None:
        """The verdict of a prefill/step stage from its logits and the slots already compared."""
        stage.logits = compare("logits", ref_logits, cand_raw, allow_neg_inf=True)
        if stage.logits.nonfinite:
            stage.nonfinite.append(f"logits: {stage.logits.nonfinite}")
        stage.ref_token, ref_filtered = self.choose(ref_logits, sampled)
        stage.cand_token, cand_filtered = self.choose(cand_logits, sampled)
        stage.ref_top, stage.cand_top = _top(ref_filtered), _top(cand_filtered)
        stage.scale = stage.logits.scale
        stage.max_abs = stage.logits.max_abs if stage.logits.max_abs is not None else float("inf")
        shape_bad = [c for c in stage.slots if c is not None and not c.same_shape]
        far = [c for c in stage.slots if c is not None and not c.within(self.tol.relative)]
        if not stage.logits.same_shape:
            stage.verdict, stage.reason = "diverge", _width_reason(stage.logits)
        elif shape_bad:
            stage.verdict, stage.reason = "diverge", f"{shape_bad[0].name}: shape {shape_bad[0].shapes()}"
        elif stage.nonfinite:
            stage.verdict, stage.reason = "diverge", f"first non-finite value: {stage.nonfinite[0]}"
        elif far:
            stage.verdict, stage.reason = "diverge", f"{far[0].name}: {far[0].summary()}"
        elif stage.ref_token != stage.cand_token:
            (best, top1), (second, top2) = stage.ref_top[:2]
            if top1 - top2 < self.tol.tie * stage.scale and stage.cand_token == second:
                stage.verdict, stage.reason = "tie", f"reference top-2 within {top1 - top2:.3g}: either is accepted"
            else:
                stage.verdict = "diverge"
                stage.reason = f"token {stage.cand_token} != reference {stage.ref_token}"
        elif not stage.logits.within(self.tol.relative):
            stage.verdict, stage.reason = "diverge", f"logits {stage.logits.summary()}"

    def judge_start_rows(self, stage: Stage, ref_rows: np.ndarray, cand_rows: np.ndarray) -> None:
        """Prefill: the logits of the start positions before the last (the last was judged with the token).

        no_speech_prob is read at <|startoftranscript|>, not at the last row: a backend that returns the last
        row everywhere passes every token check and still decides silence differently."""
        if cand_rows.shape != ref_rows.shape:
            return  # a width or count mismatch is judged on the last row already
        stage.start_rows = [compare(f"start position {row}", ref_rows[row], cand_rows[row], allow_neg_inf=True)
                            for row in range(len(ref_rows) - 1)]
        for row, c in enumerate(stage.start_rows):
            stage.max_abs = max(stage.max_abs, c.max_abs)
            if stage.verdict == "agree" and not c.within(self.tol.relative):
                stage.verdict = "diverge"
                stage.reason = (f"prefill logits at start position {row} ({self.tok.token_text(self.start[row])}) "
                                f"max |Δ| {c.max_abs:.3g} (scale {c.scale:.3g}); no_speech_prob "
                                f"{stage.cand_no_speech_prob} != reference {stage.ref_no_speech_prob}")

    # ---- one window
    def window(self, index: int, mel: np.ndarray, want_evidence: bool,
               previous: signatures.WindowMemory | None) -> WindowRun:
        """Compare one window to its end (teacher-forced past any divergence; a tie ends it)."""
        run = WindowRun(index, [], [], mel=mel, want_evidence=want_evidence, previous=previous)
        run.ref_features = self.timer.run("reference", self.ref.encode, mel[None])
        enc = Stage(index, "encode", 0, [])
        run.stages.append(enc)
        try:
            run.cand_native = self.timer.run("candidate", self.cand.encode, mel[None])
            run.cand_features = np.asarray(self.cand.to_numpy(run.cand_native))
        except Exception as e:  # a candidate's failure is a finding, not a crash of verify
            enc.error = run.error = error_text(e)
            enc.verdict, enc.reason = "diverge", f"the candidate raised {enc.error} in encode"
            self._keep_evidence(run, enc)
            return run
        self.timer.run("compare", self._judge_encode, enc, run.ref_features, run.cand_features)
        if enc.verdict != "agree":
            self._keep_evidence(run, enc)
        self._decode(run)
        return run

    def _judge_encode(self, enc: Stage, ref_feat: np.ndarray, cand_feat: np.ndarray) -> None:
        enc.features = compare("audio features", ref_feat, cand_feat)
        enc.scale = enc.features.scale
        enc.max_abs = enc.features.max_abs if enc.features.max_abs is not None else float("inf")
        if enc.features.nonfinite:
            enc.nonfinite.append(f"audio features: {enc.features.nonfinite}")
        if not enc.features.within(self.tol.relative):
            enc.verdict, enc.reason = "diverge", f"encoder output {enc.features.summary()}"

    def _decode(self, run: WindowRun) -> None:
        # Two machines in lockstep: the reference decodes greedily, the candidate is teacher-forced with
        # the reference's choices (appended to `forced` before the candidate's turn), so every stage
        # compares like with like.
        n_layer = self.ref.dims.n_text_layer
        forced: list[int] = []
        ref_run = Decoder(self.ref, self.tok, self.options, strategy=Greedy).begin([run.ref_features])
        cand_run = self.teacher_forced(self.cand, forced).begin([run.cand_native])
        ref_run.advance()  # START: zeroed slots
        cand_np: list = []
        while ref_run.state is not State.DONE:
            kind = ref_run.state
            inputs = list(self.start) if kind is State.PREFILL else [forced[-1]]
            history = list(forced)  # the tokens fed so far: what a replay needs to reach this stage
            before = ref_run.kv
            self.timer.run("reference", ref_run.advance)
            forced.append(ref_run.rows[0].tokens[-1] if ref_run.rows else self.tok.eot)
            stage = Stage(run.index, kind.value, ref_run.steps, inputs)
            run.stages.append(stage)
            try:
                if cand_run.state is State.START:  # zero_kv: the candidate's first call of the window
                    cand_run.advance()
                self.timer.run("candidate", cand_run.advance)
            except Exception as e:
                run.error = stage.error = error_text(e)
                stage.verdict, stage.reason = "diverge", f"the candidate raised {stage.error} in {kind.value}"
                self._keep_evidence(run, stage, history=history, before=before, ref_kv=ref_run.kv)
                break
            compared = range(kvslots.n_slots(n_layer)) if kind is State.PREFILL else kvslots.self_slots(n_layer)
            cand_np = self.timer.run("compare", self._judge_stage, stage, kind, ref_run, cand_run, compared, history)
            if kind is State.PREFILL:
                self._keep_decoder_evidence(run, cand_np)
                run.ref_cross = {i: ref_run.kv[i] for i in kvslots.cross_slots(n_layer)}
                run.cand_cross = {i: cand_np[i] for i in kvslots.cross_slots(n_layer)}
                run.ref_no_speech, run.cand_no_speech = stage.ref_no_speech_prob, stage.cand_no_speech_prob
            if stage.verdict == "diverge":
                raw = self.cand.raw
                prefill = kind is State.PREFILL
                self._keep_evidence(run, stage, history=history, before=before, ref_kv=ref_run.kv, cand_kv=cand_np,
                                    ref_logits=ref_run.logits[0], cand_logits=raw[0, -1] if prefill else raw[0],
                                    ref_rows=ref_run.prefill_logits[0] if prefill else None,
                                    cand_rows=raw[0] if prefill else None)
            if stage.verdict == "tie":
                break  # the agreement rule: either choice is accepted and this window's comparison ends
        run.ref_tokens = [t for t in forced if t != self.tok.eot]
        selfs = kvslots.self_slots(n_layer)
        run.memory = signatures.WindowMemory(
            run.index, run.ref_cross, run.cand_cross, {i: ref_run.kv[i] for i in selfs},
            {i: cand_np[i] for i in selfs if i < len(cand_np) and cand_np[i] is not None},
            kvslots.self_length(ref_run.kv))

    def _judge_stage(self, stage: Stage, kind: State, ref_run, cand_run, compared, history: list[int]) -> list:
        cand_np = self.compare_slots(stage, ref_run.kv, cand_run.kv, compared)
        raw = self.cand.raw
        cand_last = raw[0, -1] if kind is State.PREFILL else raw[0]
        self.judge(stage, ref_run.logits[0], cand_last, np.asarray(cand_run.logits)[0], history)
        if kind is State.PREFILL:
            stage.ref_no_speech_prob = _probability(ref_run.groups[0].no_speech_prob)
            stage.cand_no_speech_prob = _probability(cand_run.groups[0].no_speech_prob)
            self.judge_start_rows(stage, ref_run.prefill_logits[0], raw[0])
        return cand_np

    def _keep_decoder_evidence(self, run: WindowRun, cand_np: list) -> None:
        """After an encoder divergence: the candidate's prefill from its own features, to judge its decoder alone."""
        if run.evidence is not None and run.evidence.stage.stage == "encode" and run.want_evidence:
            run.evidence.cand_prefill_rows, run.evidence.cand_prefill_kv = self.cand.raw[0], list(cand_np)

    def _keep_evidence(self, run: WindowRun, stage: Stage, *, history: Sequence[int] = (), before: Sequence = (),
                       ref_kv: Sequence = (), cand_kv: Sequence | None = None, ref_logits: np.ndarray | None = None,
                       cand_logits: np.ndarray | None = None, ref_rows: np.ndarray | None = None,
                       cand_rows: np.ndarray | None = None) -> None:
        """The numbers of this window's first divergence, kept when the caller will diagnose it."""
        if not run.want_evidence or run.evidence is not None:
            return
        run.evidence = signatures.Evidence(
            stage=stage, where=loc.Localisation(run.index, ""), reference=self.ref, tokenizer=self.tok,
            tolerance=self.tol.relative, start=list(self.start), history=list(history), mel=run.mel,
            ref_features=run.ref_features, cand_features=run.cand_features, ref_kv_before=list(before),
            ref_kv=list(ref_kv), cand_kv=list(cand_kv) if cand_kv is not None else [None] * len(ref_kv),
            ref_logits=ref_logits, cand_logits=cand_logits, ref_rows=ref_rows, cand_rows=cand_rows,
            previous=run.previous)

    def replay(self, model: Backend, features: Any, history: list[int]) -> tuple[np.ndarray, list]:
        """The raw logits (last position) and slots `model` has after the start sequence and `history`."""
        recorder = Recorder(model, self.ref.dims)
        run = self.teacher_forced(recorder, list(history)).begin([features])
        run.advance()  # START
        run.advance()  # PREFILL
        while run.steps < len(history):
            run.advance()
        raw = recorder.raw
        return (raw[0, -1] if run.steps == 0 else raw[0]), run.kv

    def teacher_forced(self, backend: Backend, forced: list[int]) -> Decoder:
        """A machine that feeds `backend` the tokens of `forced` (which may grow while it runs), then EOT."""
        return Decoder(backend, self.tok, self.options, strategy=lambda: TeacherForcing(forced, self.tok.eot))


def _width_reason(c: Compared) -> str:
    if c.ref_shape[:-1] == c.cand_shape[:-1]:
        return f"logits n_vocab {c.ref_shape[-1]} vs {c.cand_shape[-1]} (the reference's vs the candidate's)"
    return f"logits shape {c.shapes()}"


def localise_evidence(ev: signatures.Evidence, runs: list[WindowRun], n_layer: int, tolerance: float) -> None:
    """Fill ev.where from the stage and the windows before it."""
    stage = ev.stage
    earlier = [s for r in runs[:-1] for s in r.stages]
    agreed_before = all(s.verdict != "diverge" for s in earlier)
    same = any(s.stage == stage.stage and s.step == stage.step and s.verdict == "agree" for s in earlier)
    ev.where = loc.localise(stage, n_layer, tolerance, agreed_before, same and stage.window > 0,
                            ev.ref_kv if stage.stage != "encode" else None,
                            ev.cand_kv if stage.stage != "encode" else None)


# ----------------------------------------------------------------------------------------------


def compare_windows(lock: Lockstep, windows: Sequence[np.ndarray]
                    ) -> tuple[list[WindowRun], Stage | None, signatures.Evidence | None]:
    """Every window compared to its end; -> the runs, the first divergent stage and its localised evidence."""
    runs: list[WindowRun] = []
    first, evidence, previous = None, None, None
    for index, mel in enumerate(windows):
        run = lock.window(index, mel, want_evidence=first is None, previous=previous)
        runs.append(run)
        previous = run.memory
        if first is None and run.first(("diverge",)) is not None:
            first, evidence = run.first(("diverge",)), run.evidence
            localise_evidence(evidence, runs, lock.ref.dims.n_text_layer, lock.tol.relative)
    return runs, first, evidence


def verify(reference: NumpyModel, candidate: Backend, tokenizer: Tokenizer, checkpoint: Checkpoint,
           windows: Sequence[np.ndarray], audio: str = "", tolerance: Tolerance | None = None,
           options: DecodingOptions | None = None) -> Report:
    """Compare `candidate` with `reference` on every window; diagnose the first divergence; judge its impact."""
    started = time.perf_counter()
    timer = Timer()
    lock = Lockstep(reference, candidate, tokenizer, tolerance or Tolerance(), options or DecodingOptions(), timer)
    diagnosis = report_impact = None
    # a broken candidate's NaN and overflows are findings, reported as such, not warnings on stderr
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        runs, first, evidence = compare_windows(lock, windows)
        if first is not None:  # (the impact first: the diagnosis may call a candidate that keeps state last)
            report_impact = timer.run("impact", impact.of_runs, lock, runs)
            diagnosis = timer.run("diagnose", diagnose, lock, evidence, checkpoint)
    stages = [s for r in runs for s in r.stages]
    timer.seconds["total"] = time.perf_counter() - started
    return Report(audio=audio, candidate=getattr(candidate, "name", type(candidate).__name__), agree=first is None,
                  windows=len(windows), steps=sum(1 for s in stages if s.stage == "step"),
                  ties=sum(1 for s in stages if s.verdict == "tie"), first_divergence=first, diagnosis=diagnosis,
                  stages=stages, impact=report_impact, seconds={k: round(v, 3) for k, v in timer.seconds.items()})


# ----------------------------------------------------------------------------------------------
# Text


def _tokens(tokenizer, ids: Sequence[int]) -> str:
    return " ".join(tokenizer.token_text(t) for t in ids)


def describe(report: Report, tokenizer) -> list[str]:
    """The text form of a verification report."""
    lines = [f"verify {report.audio}: candidate {report.candidate} vs reference numpy, {report.windows} window(s)"]
    if report.agree:
        lines.append(f"AGREE: {report.steps} steps compared, {report.ties} tie(s)")
        return lines
    s, d = report.first_divergence, report.diagnosis
    lines.append(f"DIVERGE at window {s.window}, {s.stage} step {s.step}: {s.reason}")
    lines.append(f"  where      {d.where}")
    if s.stage != "encode" and not s.error:
        lines += _stage_lines(s, tokenizer)
    elif s.features is not None:
        lines.append(f"  features   {s.features.summary()}")
    if d.operation:
        lines.append(f"  operation  {d.operation}")
    lines.append(f"DIAGNOSIS: {d.cause}: {d.explanation}")
    lines.append(f"  evidence: {d.evidence}" + (f" [{d.found_by}]" if d.found_by else ""))
    if report.impact is not None:
        lines += _impact_lines(report.impact, tokenizer)
    return lines


def _stage_lines(s: Stage, tokenizer) -> list[str]:
    lines = [f"  input      {_tokens(tokenizer, s.input_tokens)}",
             f"  reference  chose {tokenizer.token_text(s.ref_token)!r}; top-5 "
             + ", ".join(f"{tokenizer.token_text(i)!r} {v:.3f}" for i, v in s.ref_top),
             f"  candidate  chose {tokenizer.token_text(s.cand_token)!r}; top-5 "
             + ", ".join(f"{tokenizer.token_text(i)!r} {v:.3f}" for i, v in s.cand_top)]
    if s.stage == "prefill":
        lines.append(f"  no_speech  reference {s.ref_no_speech_prob}, candidate {s.cand_no_speech_prob}")
    lines.append(f"  logits     {s.logits.summary()}")
    for c in s.start_rows:
        if not c.same_shape or c.max_abs:
            lines.append(f"  {c.name}  {c.summary()}")
    for i, c in enumerate(s.slots):
        if c is not None:
            lines.append(f"  slot {i:>2} {kvslots.slot_name(i):<14} {c.summary()}")
    return lines


def _impact_lines(m: impact.Impact, tokenizer) -> list[str]:
    lines = [f"IMPACT: {m.severity}: {m.summary}"]
    for w in m.windows:
        if w.changed or w.error or w.no_speech_flipped or w.cand_text != w.ref_text:
            lines.append(f"  window {w.window}  reference  {w.ref_text!r}")
            lines.append(f"  {'':<8}  candidate  {w.cand_text!r}" + (" (still going: capped)" if w.runaway else "")
                         + (f" [failed: {w.error}]" if w.error else ""))
            if w.changed:  # the teacher-forced choices: the first is where free-running greedy parts ways
                shown = "; ".join(f"{'prefill' if step == 0 else f'step {step}'} {tokenizer.token_text(r)!r} -> "
                                  f"{tokenizer.token_text(c)!r}" for step, r, c in w.changed[:3])
                lines.append(f"  {'':<8}  choices    {shown}" + (" ..." if len(w.changed) > 3 else ""))
            if w.no_speech_flipped:
                lines.append(f"  {'':<8}  no_speech  {w.ref_no_speech_prob} vs {w.cand_no_speech_prob}: flipped")
    return lines


def time_line(report: Report) -> str:
    """Where verify's time went (not part of describe(): it differs from run to run)."""
    t = report.seconds
    ref, own = t["reference"], t["total"] - t["candidate"]
    return (f"time: {t['total']:.1f} s: reference decoding {ref:.1f} s, candidate {t['candidate']:.1f} s, compare "
            f"{t['compare']:.1f} s, diagnose {t['diagnose']:.1f} s, impact {t['impact']:.1f} s; without the "
            f"candidate's own time {own / ref if ref else 0:.2f}x the reference's decoding")


# ----------------------------------------------------------------------------------------------
# Several files


def summary_table(reports: Sequence[Report]) -> list[str]:
    """One row per file: verdict, where, cause, severity, time."""
    rows = [("file", "verdict", "first divergence", "cause", "impact", "time")]
    for r in reports:
        s, d = r.first_divergence, r.diagnosis
        rows.append((Path(r.audio).name, "AGREE" if r.agree else "DIVERGE",
                     "" if s is None else f"window {s.window} {s.stage} {s.step}", "" if d is None else d.cause,
                     "" if r.impact is None else r.impact.severity, f"{r.seconds.get('total', 0):.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    agree = sum(r.agree for r in reports)
    return ["SUMMARY", *lines, f"{agree} of {len(reports)} file(s) agree"]
