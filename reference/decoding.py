"""The decoding state machine: one window of audio features -> greedy tokens, through any backend.

    START    build the start sequence from the tokenizer (never from hard-coded ids)
    PREFILL  start sequence + audio features + zeroed slots -> first logits and all 4*L slots
    STEP     one token + slots -> logits + present self slots, remapped into the self slots
    DONE     <|endoftext|> sampled, or the budget of sampled tokens spent

Defaults equal openai-whisper's `decode()` at temperature 0 without timestamps: the `-1` suppression
set, blank suppression at the first sampled token, at most n_text_ctx // 2 (224) sampled tokens,
no_speech_prob from the softmax at the <|startoftranscript|> position, avg_logprob over the sampled
tokens plus EOT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from . import kv as kvslots
from .backend import Backend
from .tokenizer import Tokenizer


class State(Enum):
    START = "start"
    PREFILL = "prefill"
    STEP = "step"
    DONE = "done"


@dataclass(frozen=True)
class DecodingOptions:
    language: str | None = None  # multilingual checkpoints only; None means English
    task: str = "transcribe"  # or "translate" (multilingual checkpoints only)
    sample_len: int | None = None  # budget of sampled tokens; None: n_text_ctx // 2, as openai-whisper
    suppress_tokens: Sequence[int] | str | None = "-1"  # "-1": openai-whisper's default set
    suppress_blank: bool = True
    top_k_trace: int = 5  # how many top logits a trace event carries


# ----------------------------------------------------------------------------------------------
# Logit filters: each edits the logits of one step in place, before the argmax.


class LogitFilter:
    def apply(self, logits: np.ndarray, sampled: Sequence[int]) -> None:  # [n_vocab] -> in place
        raise NotImplementedError


class SuppressTokens(LogitFilter):
    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = np.asarray(sorted(set(ids)), dtype=np.int64)

    def apply(self, logits: np.ndarray, sampled: Sequence[int]) -> None:
        logits[self.ids] = -np.inf


class SuppressBlank(LogitFilter):
    """No transcript starts with a space or ends before it begins."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.ids = np.asarray(tokenizer.encode(" ") + [tokenizer.eot], dtype=np.int64)

    def apply(self, logits: np.ndarray, sampled: Sequence[int]) -> None:
        if not sampled:
            logits[self.ids] = -np.inf


def suppression_ids(tokenizer: Tokenizer, spec: Sequence[int] | str | None) -> list[int]:
    """openai-whisper's `_get_suppress_tokens`: a list or "-1"-style string, plus the control tokens."""
    if spec is None or spec == "":
        return []
    ids = [int(t) for t in spec.split(",")] if isinstance(spec, str) else [int(t) for t in spec]
    out = set(t for t in ids if t >= 0) | set(tokenizer.control_tokens)  # always suppressed, as in openai-whisper
    if -1 in ids:
        out |= set(tokenizer.non_speech_tokens)
    return sorted(out)


def apply_filters(filters: Sequence[LogitFilter], logits: np.ndarray, sampled: Sequence[int]) -> tuple[int, np.ndarray]:
    """-> (the greedy token, the filtered float32 copy of the logits). NaN never wins the argmax."""
    filtered = np.array(logits, dtype=np.float32)  # a copy: the filters write into it
    for f in filters:
        f.apply(filtered, sampled)
    return int(np.argmax(np.nan_to_num(filtered, nan=-np.inf))), filtered


def build_filters(tokenizer: Tokenizer, options: DecodingOptions) -> list[LogitFilter]:
    filters: list[LogitFilter] = []
    if options.suppress_blank:
        filters.append(SuppressBlank(tokenizer))
    ids = suppression_ids(tokenizer, options.suppress_tokens)
    if ids:
        filters.append(SuppressTokens(ids))
    return filters


# ----------------------------------------------------------------------------------------------
# Results and trace events


@dataclass(frozen=True)
class TraceEvent:
    state: State
    step: int  # 0 for prefill, then 1, 2, ... for each step
    input_tokens: tuple[int, ...]  # what the backend was given
    slot_shapes: tuple[tuple[int, ...], ...]  # all 4*L slots after the transition
    token: int | None  # the token chosen from this transition's logits (None at START / DONE)
    logprob: float | None  # its log-probability after filtering
    top: tuple[tuple[int, float], ...]  # (id, filtered logit) of the best few, best first
    margin: float | None  # filtered top-1 minus top-2 logit: how close this choice was to a tie


@dataclass
class DecodingResult:
    start_sequence: list[int]
    tokens: list[int]  # sampled ids: no start sequence, no EOT
    text: str
    avg_logprob: float
    no_speech_prob: float
    finished: str  # "eot" or "budget"
    events: list[TraceEvent] = field(default_factory=list)


EventSink = Callable[[TraceEvent], None]


def log_softmax(x: np.ndarray) -> np.ndarray:  # [n] -> [n]
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def chosen_logprob(logits: np.ndarray, token: int) -> float:
    """log_softmax(logits)[token] for the argmax token, without a full float64 log_softmax per step.

    With m = logits[token] the maximum, the answer is -log(sum(exp(logits - m))): float32 exps of values
    <= 0, summed in float64. It differs from the float64 log_softmax by ~1e-8 and costs a tenth of it.
    # [n_vocab] float32, argmax -> float
    """
    return -float(np.log(np.exp(logits - logits[token]).sum(dtype=np.float64)))


# ----------------------------------------------------------------------------------------------
# The machine


class Decoder:
    """Drives one backend through START -> PREFILL -> STEP* -> DONE for one window.

    The machine is explicit (`advance` does one transition) so that two of them can run in lockstep
    (verification) and so that traces are a by-product, not a separate code path.
    """

    def __init__(self, backend: Backend, tokenizer: Tokenizer, options: DecodingOptions | None = None,
                 trace: bool = False) -> None:
        self.backend, self.tokenizer = backend, tokenizer
        self.options = options or DecodingOptions()
        self.trace = trace
        self.filters = build_filters(tokenizer, self.options)
        dims = backend.dims
        self.sample_len = self.options.sample_len or dims.n_text_ctx // 2
        self.start_sequence = tokenizer.sot_sequence(self.options.language, self.options.task)
        if len(self.start_sequence) + self.sample_len > dims.n_text_ctx:
            raise ValueError(f"start sequence {len(self.start_sequence)} + sample_len {self.sample_len} "
                             f"exceeds n_text_ctx {dims.n_text_ctx}")

    def run(self, audio_features: Any, on_event: EventSink | None = None) -> DecodingResult:
        run = self.begin(audio_features)
        while run.state is not State.DONE:
            event = run.advance()
            if on_event is not None and event is not None:
                on_event(event)
        return run.result()

    def begin(self, audio_features: Any) -> WindowRun:
        return WindowRun(self, audio_features)


class WindowRun:
    """The mutable state of one window's decoding."""

    def __init__(self, decoder: Decoder, audio_features: Any) -> None:
        self.d = decoder
        self.audio_features = audio_features
        self.state = State.START
        self.kv: list[Any] = []
        self.sampled: list[int] = []
        self.sum_logprob = 0.0
        self.no_speech_prob = float("nan")
        self.finished = ""
        self.events: list[TraceEvent] = []

    # One transition per call; returns the trace event it emitted (when tracing).
    def advance(self) -> TraceEvent | None:
        d, b = self.d, self.d.backend
        if self.state is State.START:
            self.kv = b.zero_kv()
            self.state = State.PREFILL
            return self._emit(State.START, 0, (), None)
        if self.state is State.PREFILL:
            tokens = d.start_sequence
            logits, self.kv = b.prefill(tokens, self.audio_features, self.kv)
            want = (len(tokens), b.dims.n_vocab)
            if logits.shape != want:
                raise ValueError(f"backend {b.name}: prefill returned logits {logits.shape}, expected {want}")
            sot_index = tokens.index(d.tokenizer.sot)
            if d.tokenizer.no_speech is not None:
                probs = np.exp(log_softmax(logits[sot_index].astype(np.float64)))
                self.no_speech_prob = float(probs[d.tokenizer.no_speech])
            return self._choose(State.PREFILL, 0, tuple(tokens), logits[-1])
        if self.state is State.STEP:
            token = self.sampled[-1]
            logits, present = b.step(token, self.kv)
            self.kv = kvslots.remap_present(self.kv, present)
            return self._choose(State.STEP, len(self.sampled), (token,), logits)
        raise RuntimeError("advance() after DONE")

    def _choose(self, state: State, step: int, inputs: tuple[int, ...], logits: np.ndarray) -> TraceEvent | None:
        token, logits = apply_filters(self.d.filters, logits, self.sampled)
        logprob = chosen_logprob(logits, token)
        self.sum_logprob += logprob
        tok = self.d.tokenizer
        if token == tok.eot:
            self.state, self.finished = State.DONE, "eot"
        else:
            self.sampled.append(token)
            if len(self.sampled) >= self.d.sample_len:
                self.state, self.finished = State.DONE, "budget"
            else:
                self.state = State.STEP
        return self._emit(state, step, inputs, token, logprob, logits)

    def _emit(self, state: State, step: int, inputs: tuple[int, ...], token: int | None,
              logprob: float | None = None, logits: np.ndarray | None = None) -> TraceEvent | None:
        if not self.d.trace:
            return None
        top: tuple[tuple[int, float], ...] = ()
        margin = None
        if logits is not None:
            k = self.d.options.top_k_trace
            best = np.argpartition(-logits, k)[:k]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple((int(i), float(logits[i])) for i in best)
            margin = top[0][1] - top[1][1]
        event = TraceEvent(state, step, inputs, tuple(kvslots.shapes(self.kv)), token, logprob, top, margin)
        self.events.append(event)
        return event

    def result(self) -> DecodingResult:
        if self.state is not State.DONE:
            raise RuntimeError("result() before DONE")
        # openai-whisper divides by the sampled length + 1: the EOT (or, at the budget, the EOT that
        # its finalize() appends) counts as a token.
        avg = self.sum_logprob / (len(self.sampled) + 1)
        return DecodingResult(
            start_sequence=list(self.d.start_sequence), tokens=list(self.sampled),
            text=self.d.tokenizer.decode(self.sampled).strip(), avg_logprob=avg,
            no_speech_prob=self.no_speech_prob, finished=self.finished, events=self.events,
        )
