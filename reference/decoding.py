"""The decoding state machine: windows of audio features -> tokens, through any backend, any strategy.

    START    build the start sequence from the tokenizer (never from hard-coded ids)
    PREFILL  start sequence + audio features + zeroed slots -> first logits and all 4*L slots
    STEP     one token per row + slots -> logits + present self slots, remapped into the self slots
    DONE     every row has ended: <|endoftext|> chosen, or the budget of sampled tokens spent

One loop for everything. A batch holds one *group* per window of audio and, per group, the rows its
strategy keeps alive: 1 for greedy and teacher forcing, best_of for sampling, beam_size for beam
search. After each transition the logit filters are applied per row and the group's `TokenDecoder`
(openai-whisper's seam) says which rows continue, from which row of the cache, with which token; the
machine turns that into one `select` of the backend's slots (beam reordering, dropping finished rows)
and feeds the new tokens to the next `step`. Groups never see each other: a window decoded in a batch
gets the tokens it gets alone.

Defaults equal openai-whisper's `decode()` at temperature 0 without timestamps: the `-1` suppression
set, blank suppression at the first sampled token, at most n_text_ctx // 2 (224) sampled tokens,
no_speech_prob from the softmax at the <|startoftranscript|> position, avg_logprob over the sampled
tokens plus EOT. Beam search, sampling and the final ranking follow openai-whisper's BeamSearchDecoder,
GreedyDecoder and MaximumLikelihoodRanker (docs/architecture.md, "Token choice").
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from . import kv as kvslots
from .backend import Backend, check_batch
from .errors import InputError
from .tokenizer import Tokenizer


class State(Enum):
    START = "start"
    PREFILL = "prefill"
    STEP = "step"
    DONE = "done"


class DecodingOptionsError(InputError):
    """Options that cannot be combined (as openai-whisper's DecodingTask refuses them)."""


@dataclass(frozen=True)
class DecodingOptions:
    language: str | None = None  # multilingual checkpoints only; None means English
    task: str = "transcribe"  # or "translate" (multilingual checkpoints only)
    temperature: float = 0.0  # 0: the best token (greedy or beam search); > 0: sample from softmax(logits / T)
    sample_len: int | None = None  # budget of sampled tokens; None: n_text_ctx // 2, as openai-whisper
    best_of: int | None = None  # independent samples per window (temperature > 0), the best one kept
    beam_size: int | None = None  # beams per window (temperature 0)
    patience: float | None = None  # beam search: stop after round(beam_size * patience) finished beams
    length_penalty: float | None = None  # ranking: None divides the log-probability by the length
    seed: int | None = None  # the sampling generator's seed: the same seed, the same samples
    suppress_tokens: Sequence[int] | str | None = "-1"  # "-1": openai-whisper's default set
    suppress_blank: bool = True
    # whisperkv's fixed-window mode by default; False: timestamp tokens, under openai's ApplyTimestampRules
    without_timestamps: bool = True
    max_initial_timestamp: float | None = 1.0  # the first timestamp is at most this many seconds
    prompt: Sequence[int] | str | None = None  # previous text (ids, or a string to encode): <|startofprev|> ...
    prefix: Sequence[int] | str | None = None  # forced first tokens of this window (after the start sequence)
    top_k_trace: int = 5  # how many top logits a trace event carries

    def __post_init__(self) -> None:  # openai-whisper's DecodingTask._verify_options, same rules
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise DecodingOptionsError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.temperature > 0 and self.beam_size is not None:  # (openai-whisper's transcribe drops it)
            raise DecodingOptionsError("beam search samples no tokens: beam_size needs temperature 0")
        if self.beam_size is not None and self.best_of is not None:
            raise DecodingOptionsError("beam_size and best_of can't be given together")
        if self.temperature == 0 and self.best_of is not None:
            raise DecodingOptionsError("best_of with greedy sampling (temperature 0) is not compatible")
        if self.patience is not None and self.beam_size is None:
            raise DecodingOptionsError("patience requires beam_size to be given")
        if self.patience is not None and not self.patience > 0:
            raise DecodingOptionsError(f"patience must be > 0, got {self.patience}")
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise DecodingOptionsError(f"length_penalty (alpha) should be a value between 0 and 1, "
                                       f"got {self.length_penalty}")
        for name in ("beam_size", "best_of", "sample_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DecodingOptionsError(f"{name} must be at least 1, got {value}")
        if self.max_initial_timestamp is not None and not self.max_initial_timestamp >= 0:
            raise DecodingOptionsError(f"max_initial_timestamp must be >= 0 seconds, got {self.max_initial_timestamp}")


# ----------------------------------------------------------------------------------------------
# Logit filters: each edits the logits of a transition in place, row by row, before the tokens are chosen.
# As openai-whisper's: they get every row at once (one vectorised write, not a Python loop per row) and
# each row's own sampled tokens.


class LogitFilter:
    def apply(self, logits: np.ndarray, tokens: Sequence[Sequence[int]]) -> None:
        """logits [rows, n_vocab] in place; tokens[i]: row i's sampled tokens so far."""
        raise NotImplementedError


class SuppressTokens(LogitFilter):
    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = np.asarray(sorted(set(ids)), dtype=np.int64)

    def apply(self, logits: np.ndarray, tokens: Sequence[Sequence[int]]) -> None:
        logits[:, self.ids] = -np.inf


class SuppressBlank(LogitFilter):
    """No transcript starts with a space or ends before it begins."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.ids = np.asarray(tokenizer.encode(" ") + [tokenizer.eot], dtype=np.int64)

    def apply(self, logits: np.ndarray, tokens: Sequence[Sequence[int]]) -> None:
        first = np.asarray([i for i, row in enumerate(tokens) if not row], dtype=np.int64)
        if first.size:
            logits[np.ix_(first, self.ids)] = -np.inf


def suppression_ids(tokenizer: Tokenizer, spec: Sequence[int] | str | None) -> list[int]:
    """openai-whisper's `_get_suppress_tokens`: a list or "-1"-style string, plus the control tokens."""
    if spec is None or spec == "":
        return []
    ids = [int(t) for t in spec.split(",")] if isinstance(spec, str) else [int(t) for t in spec]
    out = set(t for t in ids if t >= 0) | set(tokenizer.control_tokens)  # always suppressed, as in openai-whisper
    if -1 in ids:
        out |= set(tokenizer.non_speech_tokens)
    return sorted(out)


def filtered(filters: Sequence[LogitFilter], logits: np.ndarray, tokens: Sequence[Sequence[int]]) -> np.ndarray:
    """The filtered float32 copy of logits [rows, n_vocab]; NaN (a broken backend) never wins: it becomes -inf."""
    out = np.array(logits, dtype=np.float32)
    nan = np.isnan(out)
    if nan.any():  # (rare: checking is a tenth of the cost of nan_to_num on every row of every step)
        out[nan] = -np.inf
    for f in filters:
        f.apply(out, tokens)
    return out


def apply_filters(filters: Sequence[LogitFilter], logits: np.ndarray, sampled: Sequence[int]) -> tuple[int, np.ndarray]:
    """One row: logits [n_vocab] -> (the greedy token, the filtered float32 copy of the logits)."""
    out = filtered(filters, logits[None], [sampled])[0]
    return int(np.argmax(out)), out


class ApplyTimestampRules(LogitFilter):
    """openai-whisper's timestamp rules, per row, on the row's sampled tokens:

    - <|notimestamps|> is never sampled (timestamps were asked for);
    - timestamps come in pairs (end of one segment, start of the next), except a single one before EOT:
      after a lone timestamp only another timestamp or EOT; after a pair, no timestamp;
    - timestamps never decrease, and a segment's end is after its start (the pair rule's nonzero length);
    - the first token is a timestamp, at most `max_initial_timestamp` seconds;
    - where the timestamps together are more probable than the best text token, a timestamp is sampled.
    """

    def __init__(self, tokenizer: Tokenizer, max_initial_index: int | None) -> None:
        self.no_timestamps, self.eot = tokenizer.no_timestamps, tokenizer.eot
        self.begin = tokenizer.timestamp_begin
        self.max_initial_index = max_initial_index

    def apply(self, logits: np.ndarray, tokens: Sequence[Sequence[int]]) -> None:
        logits[:, self.no_timestamps] = -np.inf
        ts = self.begin
        for k, seq in enumerate(tokens):
            if not seq:  # the first sampled token: a timestamp, not too late
                logits[k, :ts] = -np.inf
                if self.max_initial_index is not None:
                    logits[k, ts + self.max_initial_index + 1 :] = -np.inf
            else:
                last = seq[-1] >= ts
                penultimate = len(seq) < 2 or seq[-2] >= ts
                if last:
                    if penultimate:  # a pair just closed: text (or EOT) next
                        logits[k, ts:] = -np.inf
                    else:  # a lone timestamp: its pair or EOT, no text
                        logits[k, : self.eot] = -np.inf
                stamps = [t for t in seq if t >= ts]
                if stamps:
                    # no decrease; after a pair's first, the same time may close it, otherwise strictly later
                    floor = stamps[-1] if last and not penultimate else stamps[-1] + 1
                    logits[k, ts:floor] = -np.inf
            # sample a timestamp where all timestamps together outweigh the best text token. Both sides
            # are log-probabilities under one normaliser, so comparing the logits is the same test.
            text_best = logits[k, :ts].max()
            stamps_row = logits[k, ts:].astype(np.float64)
            top = stamps_row.max()
            if np.isfinite(top) and top + np.log(np.exp(stamps_row - top).sum()) > text_best:
                logits[k, :ts] = -np.inf


TIME_PRECISION = 0.02  # seconds per timestamp token (30 s / n_audio_ctx for every Whisper)


def build_filters(tokenizer: Tokenizer, options: DecodingOptions, precision: float = TIME_PRECISION
                  ) -> list[LogitFilter]:
    """openai-whisper's filters, in its order: blank suppression, the suppressed set, the timestamp rules."""
    filters: list[LogitFilter] = []
    if options.suppress_blank:
        filters.append(SuppressBlank(tokenizer))
    ids = suppression_ids(tokenizer, options.suppress_tokens)
    if ids:
        filters.append(SuppressTokens(ids))
    if not options.without_timestamps:
        initial = (None if options.max_initial_timestamp is None
                   else round(options.max_initial_timestamp / precision))
        filters.append(ApplyTimestampRules(tokenizer, initial))
    return filters


def initial_tokens(tokenizer: Tokenizer, options: DecodingOptions, n_text_ctx: int, sample_len: int) -> list[int]:
    """openai-whisper's `_get_initial_tokens`: [<|startofprev|> prompt] start sequence [prefix]."""
    # (asked for timestamps only when wanted: a tokenizer-like of verify or the seed demo knows no timestamps)
    tokens = (tokenizer.sot_sequence(options.language, options.task) if options.without_timestamps
              else tokenizer.sot_sequence(options.language, options.task, timestamps=True))
    if options.prefix:
        prefix = (tokenizer.encode(" " + options.prefix.strip()) if isinstance(options.prefix, str)
                  else list(options.prefix))
        # openai's slice, Python semantics included: at the default sample_len it is [-0:], the whole prefix
        tokens = tokens + prefix[-(n_text_ctx // 2 - sample_len):]
    if options.prompt:
        prompt = (tokenizer.encode(" " + options.prompt.strip()) if isinstance(options.prompt, str)
                  else list(options.prompt))
        tokens = [tokenizer.sot_prev] + prompt[-(n_text_ctx // 2 - 1):] + tokens
    return tokens


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes (openai-whisper's): a looping transcript compresses well."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def log_softmax(x: np.ndarray) -> np.ndarray:  # [n] -> [n]
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def log_normalizers(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row m = max and z = log(sum(exp(logits - m))), so that log_softmax = logits - m - z.

    float32 exps of values <= 0, summed in float64: within ~1e-8 of a float64 log_softmax, at a tenth of
    its cost (this runs for every row of every step). # [rows, n_vocab] -> [rows], [rows] (float64)
    """
    m = logits.max(axis=1)
    e = np.subtract(logits, m[:, None])
    np.exp(e, out=e)  # in place: the same bits, one array fewer (6 rows: 0.83 against 0.94 ms a step)
    return m.astype(np.float64), np.log(e.sum(axis=1, dtype=np.float64))


def chosen_logprobs(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log_softmax(logits[i])[tokens[i]] per row. # [rows, n_vocab] float32, [rows] -> [rows] float64"""
    m, z = log_normalizers(logits)
    return logits[np.arange(len(tokens)), tokens].astype(np.float64) - m - z


# ----------------------------------------------------------------------------------------------
# Token choice: the strategies


@dataclass
class Row:
    """One live sequence of a group: the tokens sampled so far (no start sequence, no EOT)."""

    tokens: list[int]
    sum_logprob: float = 0.0


@dataclass(frozen=True)
class Choice:
    """How a row of the next batch continues: from row `source` of its group, with `token`."""

    source: int
    token: int
    logprob: float  # log-probability of `token` (after the filters, at temperature 1)
    score: float  # the new row's sum_logprob


@dataclass(frozen=True)
class Candidate:
    """A finished sequence of a group, ranked at the end."""

    tokens: tuple[int, ...]  # sampled ids: no start sequence, no EOT
    sum_logprob: float
    finished: str  # "eot" or "budget"


@dataclass
class Group:
    """The decoding of one window: its live rows are part of the batch; its finished candidates wait."""

    index: int
    features: Any
    rows: list[Row]
    candidates: list[Candidate] = field(default_factory=list)
    no_speech_prob: float = float("nan")
    done: bool = False


class TokenDecoder:
    """How a group's rows continue after a transition (openai-whisper's TokenDecoder seam).

    `update` gets the group's rows and their filtered logits (one row each, in row order), records the
    sequences that finish in `group.candidates`, and returns the continuing rows: at most `rows` of them.
    `finalize` adds the live rows when the budget is spent (or the strategy says enough have finished).
    """

    rows: int = 1  # rows per group
    row_wise: bool = False  # each row continues itself (no reordering between rows)

    def update(self, group: Group, logits: np.ndarray, eot: int) -> tuple[list[Choice], bool]:
        """logits [len(group.rows), n_vocab] filtered -> (the continuing rows, whether the group is done)."""
        raise NotImplementedError

    def finalize(self, group: Group, live: Sequence[Row]) -> None:
        for row in live:  # the budget ran out: these end without EOT
            group.candidates.append(Candidate(tuple(row.tokens), row.sum_logprob, "budget"))

    def rank(self, group: Group) -> Candidate:
        return group.candidates[0]


class _RowWise(TokenDecoder):
    """Each row picks its own next token (greedy, sampling, teacher forcing); a row ends at EOT."""

    row_wise = True

    def pick(self, group: Group, logits: np.ndarray) -> np.ndarray:  # [rows, n_vocab] -> [rows] tokens
        raise NotImplementedError

    def update(self, group: Group, logits: np.ndarray, eot: int) -> tuple[list[Choice], bool]:
        tokens = self.pick(group, logits)
        logprobs = chosen_logprobs(logits, tokens)
        choices = []
        for j, (row, token, logprob) in enumerate(zip(group.rows, tokens.tolist(), logprobs.tolist(), strict=True)):
            if token == eot:
                group.candidates.append(Candidate(tuple(row.tokens), row.sum_logprob + logprob, "eot"))
            else:
                choices.append(Choice(j, token, logprob, row.sum_logprob + logprob))
        return choices, not choices


class Greedy(_RowWise):
    """The most probable token (openai-whisper's GreedyDecoder at temperature 0). NaN never wins."""

    def pick(self, group: Group, logits: np.ndarray) -> np.ndarray:
        return np.argmax(logits, axis=1)


class Sampling(_RowWise):
    """`best_of` independent samples from softmax(logits / temperature), from one seeded generator.

    The log-probability kept for ranking is that of the unscaled logits, as openai-whisper keeps it.
    The best sample is the one MaximumLikelihoodRanker prefers."""

    def __init__(self, temperature: float, best_of: int, length_penalty: float | None, seed: int | None) -> None:
        self.temperature, self.rows, self.length_penalty = temperature, best_of, length_penalty
        self.rng = np.random.default_rng(seed)

    def pick(self, group: Group, logits: np.ndarray) -> np.ndarray:
        scaled = logits.astype(np.float64) / self.temperature
        weights = np.exp(scaled - scaled.max(axis=1, keepdims=True))  # the best token weighs 1; -inf weighs 0
        cdf = np.cumsum(weights, axis=1)
        # one uniform draw per row and step, inverted through the row's CDF: a token whose weight
        # underflows to 0 is never drawn, so as the temperature goes to 0 this is the argmax
        u = self.rng.random(len(logits)) * cdf[:, -1]
        picked = [np.searchsorted(c, x, side="right") for c, x in zip(cdf, u, strict=True)]
        return np.minimum(np.asarray(picked, dtype=np.int64), logits.shape[1] - 1)

    def rank(self, group: Group) -> Candidate:
        return rank(group.candidates, self.length_penalty)


class TeacherForcing(_RowWise):
    """The tokens of a given sequence, then EOT (verification: a candidate fed the reference's choices).

    `tokens` may grow while the machine runs (verify extends it with the reference's next choice)."""

    def __init__(self, tokens: list[int], eot: int) -> None:
        self.tokens, self.eot = tokens, eot

    def pick(self, group: Group, logits: np.ndarray) -> np.ndarray:
        return np.asarray([self.tokens[len(r.tokens)] if len(r.tokens) < len(self.tokens) else self.eot
                           for r in group.rows], dtype=np.int64)


class BeamSearch(TokenDecoder):
    """openai-whisper's BeamSearchDecoder, rule for rule.

    Each step, every beam proposes its beam_size + 1 best tokens; the proposals are ranked by summed
    log-probability; those ending in EOT join the finished set (until it holds round(beam_size *
    patience)), the best beam_size others are the new beams. The group is done once the finished set is
    full; at the end (or the budget) the live beams are added, best first, until there are beam_size.
    """

    def __init__(self, beam_size: int, patience: float | None, length_penalty: float | None) -> None:
        self.rows, self.length_penalty = beam_size, length_penalty
        self.max_candidates = round(beam_size * (patience or 1.0))
        if self.max_candidates < 1:
            raise DecodingOptionsError(f"beam_size {beam_size} x patience {patience} keeps no candidate")

    def update(self, group: Group, logits: np.ndarray, eot: int) -> tuple[list[Choice], bool]:
        scores: dict[tuple[int, ...], float] = {}
        sources: dict[tuple[int, ...], tuple[int, float]] = {}
        k = min(self.rows + 1, logits.shape[1])
        m, z = log_normalizers(logits)
        for j, row in enumerate(group.rows):
            # log_softmax is the logits shifted per row: its k best are the logits' k best, so only those
            # k log-probabilities are computed; in order, the lower id first on ties
            best = np.argpartition(-logits[j], k - 1)[:k]
            logprobs = logits[j, best].astype(np.float64) - m[j] - z[j]
            order = np.lexsort((best, -logprobs))
            for token, logprob in zip(best[order].tolist(), logprobs[order].tolist(), strict=True):
                sequence = (*row.tokens, token)
                # identical rows (the first step) propose identical sequences: one entry, the last source
                scores[sequence] = row.sum_logprob + logprob
                sources[sequence] = (j, logprob)
        choices: list[Choice] = []
        finished: dict[tuple[int, ...], float] = {}
        for sequence in sorted(scores, key=scores.__getitem__, reverse=True):  # stable: ties keep proposal order
            if sequence[-1] == eot:
                finished[sequence] = scores[sequence]
            else:
                source, logprob = sources[sequence]
                choices.append(Choice(source, sequence[-1], logprob, scores[sequence]))
                if len(choices) == self.rows:
                    break
        for sequence in sorted(finished, key=finished.__getitem__, reverse=True):
            if len(group.candidates) >= self.max_candidates:
                break  # the finished set is full
            group.candidates.append(Candidate(sequence[:-1], finished[sequence], "eot"))
        return choices, len(group.candidates) >= self.max_candidates

    def finalize(self, group: Group, live: Sequence[Row]) -> None:
        if len(group.candidates) >= self.rows:
            return
        for row in sorted(live, key=lambda r: r.sum_logprob, reverse=True):
            group.candidates.append(Candidate(tuple(row.tokens), row.sum_logprob, "budget"))
            if len(group.candidates) >= self.rows:
                break

    def rank(self, group: Group) -> Candidate:
        return rank(group.candidates, self.length_penalty)


def rank(candidates: Sequence[Candidate], length_penalty: float | None) -> Candidate:
    """openai-whisper's MaximumLikelihoodRanker: the highest sum_logprob / penalty, the first on ties.

    penalty = length (tokens without EOT) when length_penalty is None, else ((5 + length) / 6) ** alpha
    (Google NMT)."""

    def score(c: Candidate) -> float:
        n = len(c.tokens)
        # (an empty sequence, possible only without blank suppression, would divide by 0 in openai-whisper)
        penalty = max(n, 1) if length_penalty is None else ((5 + n) / 6) ** length_penalty
        return c.sum_logprob / penalty

    scores = [score(c) for c in candidates]
    return candidates[int(np.argmax(scores))]


def token_decoder(options: DecodingOptions) -> TokenDecoder:
    """The strategy the options ask for."""
    if options.beam_size is not None:
        return BeamSearch(options.beam_size, options.patience, options.length_penalty)
    if options.temperature > 0:
        return Sampling(options.temperature, options.best_of or 1, options.length_penalty, options.seed)
    return Greedy()


# ----------------------------------------------------------------------------------------------
# Results and trace events


@dataclass(frozen=True)
class RowEvent:
    """What one row of the batch did in a transition (trace and teaching: beams, scores, reorder)."""

    group: int  # the window
    source: int  # the row of the slots this row continues, read through `select` (the reorder)
    tokens: tuple[int, ...]  # the row's sampled tokens, the new one last
    token: int
    logprob: float
    score: float  # sum_logprob of the row


@dataclass(frozen=True)
class TraceEvent:
    state: State
    step: int  # 0 for prefill, then 1, 2, ... for each step
    input_tokens: tuple[int, ...]  # what the backend was given (first row; see `inputs` for all)
    slot_shapes: tuple[tuple[int, ...], ...]  # all 4*L slots after the transition
    token: int | None  # the token chosen for the first row (None at START / DONE)
    logprob: float | None  # its log-probability after filtering
    top: tuple[tuple[int, float], ...]  # (id, filtered logit) of the best few of the first row, best first
    margin: float | None  # filtered top-1 minus top-2 logit: how close this choice was to a tie
    inputs: tuple[tuple[int, ...], ...] = ()  # every row's input tokens
    rows: tuple[RowEvent, ...] = ()  # the rows after the choice, in batch order
    finished: tuple[tuple[int, Candidate], ...] = ()  # (group, candidate) of the sequences ended here


@dataclass
class DecodingResult:
    start_sequence: list[int]
    tokens: list[int]  # sampled ids: no start sequence, no EOT
    text: str
    avg_logprob: float
    no_speech_prob: float
    finished: str  # "eot" or "budget"
    sum_logprob: float = 0.0
    candidates: list[Candidate] = field(default_factory=list)  # every finished sequence, ranked from these
    temperature: float = 0.0
    compression_ratio: float = float("nan")  # of `text`, zlib: openai-whisper's repetition measure
    events: list[TraceEvent] = field(default_factory=list)


EventSink = Callable[[TraceEvent], None]


# ----------------------------------------------------------------------------------------------
# The machine


class Decoder:
    """Drives one backend through START -> PREFILL -> STEP* -> DONE for a batch of windows.

    The machine is explicit (`advance` does one transition) so that two of them can run in lockstep
    (verification) and so that traces are a by-product, not a separate code path.
    """

    def __init__(self, backend: Backend, tokenizer: Tokenizer, options: DecodingOptions | None = None,
                 trace: bool = False, strategy: Callable[[], TokenDecoder] | None = None) -> None:
        self.backend, self.tokenizer = backend, tokenizer
        self.options = options or DecodingOptions()
        self.trace = trace
        self.filters = build_filters(tokenizer, self.options)
        # a factory: each run gets a fresh strategy (a sampling run its own generator, seeded)
        self.strategy = strategy or (lambda: token_decoder(self.options))
        dims = backend.dims
        sample_len = self.options.sample_len or dims.n_text_ctx // 2
        self.start_sequence = initial_tokens(tokenizer, self.options, dims.n_text_ctx, sample_len)
        # openai-whisper's loop also stops once the sequence is longer than the context: the last token
        # sampled is never fed, so n_text_ctx + 1 tokens in all (a 223-token prompt still leaves 224)
        self.sample_len = min(sample_len, dims.n_text_ctx + 1 - len(self.start_sequence))
        if self.sample_len < 1:
            raise DecodingOptionsError(f"start sequence of {len(self.start_sequence)} tokens leaves no room in "
                                       f"n_text_ctx {dims.n_text_ctx}")

    @property
    def rows_per_window(self) -> int:
        return self.strategy().rows

    def run(self, audio_features: Any, on_event: EventSink | None = None) -> DecodingResult:
        """One window's features (as `encode` returns them) -> its result."""
        return self.run_batch([audio_features], on_event)[0]

    def run_batch(self, features: Sequence[Any], on_event: EventSink | None = None) -> list[DecodingResult]:
        """Several windows' features, decoded as rows of one batch -> one result per window, in order."""
        run = self.begin(features)
        while run.state is not State.DONE:
            event = run.advance()
            if on_event is not None and event is not None:
                on_event(event)
        return run.results()

    def begin(self, features: Sequence[Any]) -> BatchRun:
        return BatchRun(self, list(features))


class BatchRun:
    """The mutable state of one batch's decoding: groups (windows), their live rows, the slots."""

    def __init__(self, decoder: Decoder, features: list[Any]) -> None:
        if not features:
            raise ValueError("a batch needs at least one window")
        self.d = decoder
        self.strategy = decoder.strategy()
        check_batch(decoder.backend, len(features) * self.strategy.rows,
                    f"this decoding ({len(features)} window(s) x {self.strategy.rows} row(s))")
        self.groups = [Group(i, f, []) for i, f in enumerate(features)]
        self.state = State.START
        self.kv: list[Any] = []
        self.logits: np.ndarray | None = None  # raw logits [rows, n_vocab] of the last transition
        self.prefill_logits: np.ndarray | None = None  # [windows, start length, n_vocab]: every start position
        self.steps = 0
        self.events: list[TraceEvent] = []

    @property
    def rows(self) -> list[Row]:
        return [row for g in self.groups if not g.done for row in g.rows]

    # One transition per call; returns the trace event it emitted (when tracing).
    def advance(self) -> TraceEvent | None:
        b = self.d.backend
        if self.state is State.START:
            self.kv = b.zero_kv(len(self.groups))
            self.state = State.PREFILL
            return self._emit(State.START, (), None, ())
        if self.state is State.PREFILL:
            return self._prefill()
        if self.state is State.STEP:
            tokens = np.asarray([row.tokens[-1] for row in self.rows], dtype=np.int64)
            logits, present = b.step(tokens, self.kv)
            want = (len(tokens), b.dims.n_vocab)
            if tuple(logits.shape) != want:
                raise ValueError(f"backend {b.name}: step returned logits {tuple(logits.shape)}, expected {want}")
            self.kv = kvslots.remap_present(self.kv, present)
            self.steps += 1
            return self._choose(State.STEP, np.asarray(logits), tuple((int(t),) for t in tokens))
        raise RuntimeError("advance() after DONE")

    def _prefill(self) -> TraceEvent | None:
        d, b = self.d, self.d.backend
        start = d.start_sequence
        tokens = np.asarray([start] * len(self.groups), dtype=np.int64)
        logits, self.kv = b.prefill(tokens, [g.features for g in self.groups], self.kv)
        want = (len(self.groups), len(start), b.dims.n_vocab)
        if tuple(logits.shape) != want:
            raise ValueError(f"backend {b.name}: prefill returned logits {tuple(logits.shape)}, expected {want}")
        self.prefill_logits = np.asarray(logits)
        if d.tokenizer.no_speech is not None and d.tokenizer.sot in start:  # (a seed-style start may lack it)
            sot_index = start.index(d.tokenizer.sot)
            for g in self.groups:
                probs = np.exp(log_softmax(logits[g.index, sot_index].astype(np.float64)))
                g.no_speech_prob = float(probs[d.tokenizer.no_speech])
        # each window's prefilled row becomes the strategy's rows (beams, samples): identical copies
        n = self.strategy.rows
        for g in self.groups:
            g.rows = [Row([]) for _ in range(n)]
        # the strategy sees n copies of each window's logits; the slots are copied once, by the select
        # that follows the choice (row b of the copies is row b // n of the prefilled batch)
        last = np.repeat(self.prefill_logits[:, -1], n, axis=0)
        origin = [g.index for g in self.groups for _ in range(n)]
        return self._choose(State.PREFILL, last, tuple(tuple(start) for _ in self.groups), origin)

    def _choose(self, state: State, logits: np.ndarray, inputs: tuple[tuple[int, ...], ...],
                origin: list[int] | None = None) -> TraceEvent | None:
        """Filter each row's logits, let each group's strategy choose, reorder/drop rows of the slots.

        origin[i]: the row of the slots that row i of `logits` belongs to (default: row i)."""
        d = self.d
        self.logits = logits
        eot = d.tokenizer.eot
        origin = origin if origin is not None else list(range(len(logits)))
        sources: list[int] = []  # the new batch's rows, as rows of the current slots
        row_events: list[RowEvent] = []
        finished: list[tuple[int, Candidate]] = []
        first: tuple[np.ndarray, int, float] | None = None  # the first row's filtered logits and choice
        offset = 0
        for g in [g for g in self.groups if not g.done]:
            rows = g.rows
            scores = filtered(d.filters, logits[offset : offset + len(rows)], [r.tokens for r in rows])
            before = len(g.candidates)
            choices, done = self.strategy.update(g, scores, eot)
            if first is None:  # the trace's one-row column: row 0's choice, or EOT (beams: the best beam)
                c0 = next((c for c in choices if c.source == 0), None) if self.strategy.row_wise else \
                    (choices[0] if choices else None)
                first = ((scores[0], c0.token, c0.logprob) if c0 else
                         (scores[0], eot, float(chosen_logprobs(scores[:1], np.asarray([eot]))[0])))
            new_rows = [Row([*rows[c.source].tokens, c.token], c.score) for c in choices]
            if not done and new_rows and len(new_rows[0].tokens) >= d.sample_len:
                done = True  # the budget is spent: openai-whisper's loop runs sample_len times
            if done:
                self.strategy.finalize(g, new_rows)
                g.done, g.rows = True, []
            else:
                g.rows = new_rows
                sources += [origin[offset + c.source] for c in choices]
            finished += [(g.index, c) for c in g.candidates[before:]]
            if d.trace and not done:  # a finished group's rows leave the batch: only the live rows are shown
                row_events += [RowEvent(g.index, origin[offset + c.source], tuple(r.tokens), c.token, c.logprob,
                                        c.score) for c, r in zip(choices, new_rows, strict=True)]
            offset += len(rows)
        event = self._emit(state, inputs, first, tuple(row_events), tuple(finished))
        if not sources:
            self.state = State.DONE
            return event
        if sources != list(range(kvslots.batch_size(self.kv))):
            self.kv = d.backend.select(self.kv, sources)
        self.state = State.STEP
        return event

    def _emit(self, state: State, inputs: tuple[tuple[int, ...], ...], first: tuple[np.ndarray, int, float] | None,
              rows: tuple[RowEvent, ...], finished: tuple[tuple[int, Candidate], ...] = ()) -> TraceEvent | None:
        if not self.d.trace:
            return None
        top: tuple[tuple[int, float], ...] = ()
        margin = token = logprob = None
        if first is not None:
            logits, token, logprob = first
            k = self.d.options.top_k_trace
            best = np.argpartition(-logits, k)[:k]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple((int(i), float(logits[i])) for i in best)
            margin = top[0][1] - top[1][1]
        step = 0 if state in (State.START, State.PREFILL) else self.steps
        event = TraceEvent(state, step, inputs[0] if inputs else (), tuple(kvslots.shapes(self.kv)), token, logprob,
                           top, margin, inputs, rows, finished)
        self.events.append(event)
        return event

    def results(self) -> list[DecodingResult]:
        if self.state is not State.DONE:
            raise RuntimeError("results() before DONE")
        return [self.result_of(g.index) for g in self.groups]

    def result_of(self, index: int) -> DecodingResult:
        """The result of window `index`, as soon as its group is done (the batch may still be running)."""
        g = self.groups[index]
        if not g.done:
            raise RuntimeError(f"result_of({index}) before its window is done")
        best = self.strategy.rank(g)
        tokens = list(best.tokens)
        text = self.d.tokenizer.decode(tokens).strip()
        return DecodingResult(
            start_sequence=list(self.d.start_sequence), tokens=tokens, text=text,
            # openai-whisper divides by the sampled length + 1: the EOT (or, at the budget, the EOT that
            # its finalize() appends) counts as a token.
            avg_logprob=best.sum_logprob / (len(tokens) + 1), no_speech_prob=g.no_speech_prob,
            finished=best.finished, sum_logprob=best.sum_logprob, candidates=list(g.candidates), events=self.events,
            temperature=self.d.options.temperature, compression_ratio=compression_ratio(text),
        )

    def result(self) -> DecodingResult:
        """The result of a one-window batch."""
        if len(self.groups) != 1:
            raise RuntimeError("result() of a batch of several windows: use results()")
        return self.results()[0]
