"""Name the cause of the first divergence: the signature rules first, then a replay of the mutants the
evidence allows, else "unknown" with the localisation (docs/verify.md, section 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import kv as kvslots
from ..backend import Backend
from ..weights import Checkpoint
from . import causes, onnx_probe, signatures
from . import localise as loc
from .compare import SMALL_DRIFT, close, compare, distance, scale_of
from .hooked import Hooked, operation_name
from .mutants import MUTANTS, Mutant, features_key, make_mutant

if TYPE_CHECKING:  # (verify.py imports this module: the lockstep is only a type here)
    from .verify import Lockstep


@dataclass
class Diagnosis:
    cause: str
    explanation: str
    evidence: str
    found_by: str = ""  # "rule NAME" or "mutant NAME"; "" for unknown
    where: str = ""  # the localisation, in words
    part: str = ""  # the part of the model (checks/localise.py)
    layer: int | None = None
    replayed: list[str] = field(default_factory=list)  # the mutants replayed (those compatible with the evidence)
    # the first operation whose result differs, given the reference's inputs at that stage: for candidates that
    # expose their intermediates (a python hook, checks/hooked.py's `intermediates`; an ONNX graph's node names,
    # checks/onnx_probe.py); "" for the others
    operation: str = ""


def _match(m_logits: np.ndarray, m_kv: list, ev: signatures.Evidence) -> float:
    """Largest relative difference between a mutant's numbers and the candidate's (inf if shapes differ)."""
    if ev.cand_logits is None:
        return float("inf")
    worst = distance(m_logits, ev.cand_logits) / scale_of(m_logits)
    for m, c in zip(m_kv, ev.cand_kv, strict=False):
        if c is not None:
            worst = max(worst, distance(np.asarray(m), c) / scale_of(np.asarray(m)))
    return worst


def decoder_on_own_features(lockstep: Lockstep, ev: signatures.Evidence, model: Backend | None = None
                            ) -> bool | None:
    """After an encoder divergence: does `model` (the reference by default), prefilled from the candidate's
    own features, give the candidate's prefill? None where that cannot be judged."""
    rows, kv = ev.cand_prefill_rows, ev.cand_prefill_kv
    if rows is None or kv is None or ev.cand_features is None or ev.cand_features.shape != ev.ref_features.shape:
        return None
    model = model or lockstep.ref
    logits, slots = model.prefill(np.asarray([lockstep.start]), [ev.cand_features.astype(np.float32)],
                                  model.zero_kv())
    if np.asarray(logits)[0].shape != rows.shape or not ev.close(np.asarray(logits)[0], rows):
        return False
    return all(c is not None and ev.close(np.asarray(r), c) for r, c in zip(slots, kv, strict=True))


def compatible_mutants(ev: signatures.Evidence, decoder_agrees: bool | None = None) -> list[str]:
    """The replayable mutants that first show where the evidence points. At the encoder: a divergence of a few
    1e-3 is a precision choice, a larger one a structural bug (each replays only its own kind); a decoder that
    agrees given the candidate's own features rules out bugs shared with the decoder, and one that differs
    rules out bugs of the encoder alone."""
    names = [n for n, cls in MUTANTS.items() if cls.replayable and ev.where.part in cls.shows_in]
    if ev.where.part == loc.ENCODER and ev.stage.features is not None and ev.stage.features.relative is not None:
        small = ev.stage.features.relative < SMALL_DRIFT
        names = [n for n in names if MUTANTS[n].small_drift == small]
        if decoder_agrees is not None:
            names = [n for n in names if MUTANTS[n].in_decoder != decoder_agrees]
        names = _likeliest_first(ev, names)
    return names


def _likeliest_first(ev: signatures.Evidence, names: list[str]) -> list[str]:
    """Encoder hypotheses ordered by how well their padding-to-audio difference ratio fits the candidate's (each
    replay costs an encoder pass; the order saves passes, the replay still decides)."""
    padding = signatures.identical_input_positions(ev.mel)
    if not padding or ev.cand_features is None or ev.cand_features.shape != ev.ref_features.shape:
        return names
    diff = np.abs(ev.cand_features[0].astype(np.float64) - ev.ref_features[0]).mean(axis=1)
    audio = diff[: padding[0]].mean()
    if not audio > 0:
        return names
    observed = diff[padding].mean() / audio

    def misfit(name: str) -> float:
        expected = MUTANTS[name].padding_ratio
        return abs(math.log(max(observed, 1e-9) / expected)) if expected else math.inf

    return sorted(names, key=misfit)  # (stable: the catalogue's order among equals)


def replay_mutants(lockstep: Lockstep, ev: signatures.Evidence, checkpoint: Checkpoint, tried: list[str],
                   decoder_agrees: bool | None = None) -> tuple[str, float, str] | None:
    """The first compatible mutant whose numbers the candidate reproduces within the tolerance:
    (name, relative difference, what was compared); `tried` receives the names replayed."""
    memo = {features_key(ev.ref_features): [ev.ref_kv[i] for i in kvslots.cross_slots(
        lockstep.ref.dims.n_text_layer)]} if ev.stage.stage != "encode" else {}
    for name in compatible_mutants(ev, decoder_agrees):
        tried.append(name)
        mutant: Mutant = make_mutant(name, checkpoint, lockstep.tok)
        mutant.cross_memo = memo
        if ev.stage.stage != "encode":
            m_logits, m_kv = lockstep.replay(mutant, ev.ref_features, ev.history)
            score, what = _match(m_logits, m_kv, ev), "logits and slots"
        elif mutant.in_decoder and decoder_agrees is False:
            # a bug shared with the decoder shows there too, at a tenth of an encoder pass: its prefill from the
            # candidate's own features
            if not decoder_on_own_features(lockstep, ev, mutant):
                continue
            score, what = 0.0, "prefill from the candidate's own features"
        else:
            got = mutant.encode(ev.mel[None])
            score = distance(got, ev.cand_features) / scale_of(got) if got.shape == ev.cand_features.shape else math.inf
            what = "audio features"
        if score <= lockstep.tol.relative:
            return name, score, what
    return None


def diagnose(lockstep: Lockstep, ev: signatures.Evidence, checkpoint: Checkpoint) -> Diagnosis:
    """Localise the first divergence, then name its cause: a signature rule, else a replayed mutant, else
    "unknown" with the localisation; for candidates that expose their intermediates (a python hook, an ONNX
    graph), the first operation that differs (at the encoder only where the cause is unknown: it costs two
    encoder passes)."""
    d = _named(lockstep, ev, checkpoint)
    if not ev.stage.error and (ev.stage.stage != "encode" or d.cause == causes.UNKNOWN.label):
        d.operation = first_operation(lockstep, ev)
    return d


def _named(lockstep: Lockstep, ev: signatures.Evidence, checkpoint: Checkpoint) -> Diagnosis:
    stage, where = ev.stage, ev.where
    base: dict = {"where": where.text, "part": where.part, "layer": where.layer}
    if stage.error:
        c = causes.CANDIDATE_ERROR
        return Diagnosis(c.label, c.explanation, f"{stage.stage} {stage.step}: {stage.error}", **base)
    found = signatures.first_finding(ev)
    if found is not None:
        return Diagnosis(found.cause.label, found.cause.explanation, found.evidence, f"rule {found.rule}", **base)
    decoder_agrees = None
    if stage.stage == "encode":
        decoder_agrees = decoder_on_own_features(lockstep, ev)
        if decoder_agrees is not None:
            base["where"] += ("; given the candidate's own features the reference's decoder gives the candidate's "
                              "prefill: the encoder alone" if decoder_agrees else "; the decoder differs too, given "
                              "the same features: an operation the encoder and decoder share")
    tried: list[str] = []
    matched = replay_mutants(lockstep, ev, checkpoint, tried, decoder_agrees)
    if matched is not None:
        name, score, what = matched
        cls = MUTANTS[name]
        return Diagnosis(cls.cause, cls.explanation, f"{stage.stage} {stage.step}: {stage.reason}; the candidate "
                         f"reproduces the '{name}' mutant's {what} within {score:.2g} (relative)", f"mutant {name}",
                         replayed=tried, **base)
    c = causes.UNKNOWN
    tried_text = f"; no rule applies and no replayed mutant ({', '.join(tried)}) matches" if tried else \
        "; no rule applies and no mutant shows there"
    return Diagnosis(c.label, c.explanation, f"{stage.stage} {stage.step}: {stage.reason}{tried_text}",
                     replayed=tried, **base)


def first_operation(lockstep: Lockstep, ev: signatures.Evidence) -> str:
    """For a candidate that exposes its intermediates: run the divergent stage's call on both sides from the
    reference's inputs, and name the first intermediate (in the reference's order) that differs or that the
    candidate does not report. A python candidate exposes them through an `intermediates(call, *args)` hook;
    an ONNX candidate (onnxruntime, tvm-onnx) through its graph's node names (checks/onnx_probe.py). "" for the
    others."""
    backend = lockstep.cand.backend
    hook = getattr(backend, "intermediates", None)
    probe = onnx_probe.probe_for(backend) if hook is None else None
    if hook is None and probe is None:
        return ""
    reference = Hooked((lockstep.ref.dims, lockstep.ref.weights))
    try:
        call, args, cand_args = _stage_call(lockstep, ev, reference)
        ours = reference.intermediates(call, *args)
        if probe is not None:
            theirs = probe.intermediates(call, cand_args, [name for name, _ in ours], lockstep.tol.relative)
        elif hook is not None:
            theirs = dict(hook(call, *cand_args))
    except onnx_probe.NamesNotRecognised as e:
        return str(e)
    except Exception as e:  # a hook that fails says nothing about the bug
        return f"the candidate's intermediates could not be read ({causes.error_text(e)})"
    if probe is not None and probe.unreproduced:
        return (f"the candidate's graph, run with its operations exposed, does not reproduce the candidate on the "
                f"same inputs ({probe.unreproduced}): the fault is in how the engine compiled or fused operations "
                "(exposing intermediates changes that), not in an operation the graph names")
    missing = "the candidate's graph has no node of that name" if probe is not None else \
        "the candidate reports no such intermediate"
    for name, r in ours:
        if name not in theirs:
            return f"{operation_name(name)} ({name}): {missing}"
        c = same_layout(r, np.asarray(theirs[name]))
        if not close(r, c, lockstep.tol.relative):
            # (-inf is a masked score, not a fault)
            found = compare(name, r, c, allow_neg_inf=True).summary()
            return f"{operation_name(name)} ({name}): {found}; every operation before it agrees"
    return "every intermediate agrees, given the reference's inputs at this stage"


def same_layout(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """cand reshaped to ref's shape where they differ only by axes of size 1 (a graph keeps the batch axis and a
    step's one position, where the reference drops them); otherwise unchanged (the comparison reports both)."""
    if cand.shape != ref.shape and [d for d in cand.shape if d != 1] == [d for d in ref.shape if d != 1]:
        return cand.reshape(ref.shape)
    return cand


def _stage_call(lockstep: Lockstep, ev: signatures.Evidence, reference: Hooked) -> tuple[str, tuple, tuple]:
    """The protocol call of the divergent stage: (name, the reference's arguments, the candidate's)."""
    stage = ev.stage
    if stage.stage == "encode":
        args: tuple = (ev.mel[None],)
        return "encode", args, args
    if stage.stage == "prefill":
        tokens, features = np.asarray([lockstep.start]), [ev.ref_features]
        return "prefill", (tokens, features, reference.zero_kv()), (tokens, features, lockstep.cand.zero_kv())
    token = np.asarray([stage.input_tokens[-1]])
    return "step", (token, list(ev.ref_kv_before)), (token, list(ev.ref_kv_before))
