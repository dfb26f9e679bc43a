"""A candidate judged by its decisions over many files: `whisperkv verify FILES --candidate X --agreement`
(docs/verify.md, section 8).

A quantized or float16 candidate never meets verify's fp32 tolerance, and need not: what matters is
whether it decides as the reference does, and where it does not, whether the reference itself was close
to deciding the same. Per window of each file (fixed-window mode, greedy: verify's decoding):

1. the reference and the candidate each decode free-running, independently: their tokens and transcripts;
2. where the tokens differ, the reference is teacher-forced with the candidate's tokens (the machine's
   TeacherForcing strategy): at every step it says which token it would have chosen given the candidate's
   tokens so far, and its *decision margin*, log p(its choice) - log p(the candidate's), in nats (the gap
   of its filtered logits: one softmax normaliser). The first such step is where the two free runs part,
   on a common prefix; later ones judge each of the candidate's own decisions in its own context.

Reported: token agreement (the reference's decisions, its tokens and its end, that the candidate
reproduces in order, their longest common subsequence, over the longer run's decisions: 1 only for identical
runs, and a candidate that runs on loses too), the first step where the runs part, every disagreement
with its margin, the word error rate of the candidate's transcript against the reference's, and where a
human transcript is known (a MANIFEST.tsv beside the audio, columns `file` and `transcript`) both WERs
against it and their difference. The verdict: acceptable when no disagreement's margin exceeds
MARGIN_LIMIT and the pooled WER against the reference's transcripts is within WER_LIMIT.
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import Backend
from ..decoding import Candidate, Decoder, DecodingOptions, Greedy, Group, State, TeacherForcing, TokenDecoder
from ..tokenizer import Tokenizer
from .causes import error_text
from .impact import text_of, word_errors
from .verify import json_safe

__all__ = ["MARGIN_LIMIT", "WER_LIMIT", "Agreement", "Disagreement", "FileAgreement", "WindowAgreement", "agreement",
           "describe", "first_difference", "human_transcripts", "judge", "matched", "rate", "summary_lines", "table",
           "time_line", "words"]

# A disagreement whose reference margin is at most this many nats is a near-tie: the reference gave the
# candidate's token at least e^-3 (5%) of its own choice's probability. onnxruntime's dynamic int8 moves
# tiny.en's logits by a median 1.2-1.4 per step (the largest difference over the vocabulary, teacher-forced),
# and its flips on the shared clips have margins up to 1.1; every catalogue bug that changes a token on the
# short clip has one above 5.3 there but cache_sliding (1.8 there, 7.9 on an 11 s clip). docs/verify.md, 8.
MARGIN_LIMIT = 3.0
# The pooled word error rate of the candidate's transcripts against the reference's. A near-tie flip changes
# a word ("economics" for "economic"): int8 scores 1.2% on the shared clips. By the triangle inequality of edit
# distance this also bounds how much the WER against any human transcript can change.
WER_LIMIT = 0.05


@dataclass
class Disagreement:
    """A decision of the candidate the reference would not make in the same context."""

    window: int
    step: int  # the candidate's token index in the window (0: its first sampled token, chosen at prefill)
    ref_token: int  # what the reference prefers there, given the candidate's tokens so far
    cand_token: int  # the candidate's choice (the end of text where it stopped)
    margin: float  # log p_ref(ref_token) - log p_ref(cand_token), nats; inf where the reference forbids it


@dataclass
class WindowAgreement:
    window: int
    ref_tokens: list[int]  # free-running greedy; no start sequence
    cand_tokens: list[int]
    ref_ended: bool  # the run chose the end of text (False: it spent the token budget)
    cand_ended: bool
    matched: int  # reference decisions (tokens and its end) the candidate reproduces, in order
    decisions: int  # the longer run's decisions (tokens, and the end of text): extra tokens count against it
    first_difference: int | None  # the first index where the two runs' decisions differ; None: identical
    disagreements: list[Disagreement] = field(default_factory=list)
    error: str = ""  # the candidate failed in this window


@dataclass
class FileAgreement:
    audio: str
    windows: list[WindowAgreement]
    ref_text: str
    cand_text: str
    words: int  # normalised words of the reference's transcript
    word_errors: int  # the candidate's transcript against the reference's
    transcript: str | None = None  # the human one, where known
    human_words: int = 0
    ref_human_errors: int = 0
    cand_human_errors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def decisions(self) -> int:
        return sum(w.decisions for w in self.windows)

    @property
    def matched(self) -> int:
        return sum(w.matched for w in self.windows)

    @property
    def agreement(self) -> float:
        return self.matched / self.decisions if self.decisions else 1.0

    @property
    def identical(self) -> bool:
        return all(w.first_difference is None and not w.error for w in self.windows)

    @property
    def disagreements(self) -> list[Disagreement]:
        return [d for w in self.windows for d in w.disagreements]

    @property
    def errors(self) -> list[str]:
        return [f"window {w.window}: {w.error}" for w in self.windows if w.error]

    @property
    def wer(self) -> float:
        """The candidate's transcript scored against the reference's."""
        return rate(self.word_errors, self.words)

    @property
    def human_delta(self) -> float | None:
        """WER against the human transcript, the candidate's minus the reference's (> 0: the candidate is worse)."""
        if self.transcript is None:
            return None
        return rate(self.cand_human_errors, self.human_words) - rate(self.ref_human_errors, self.human_words)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(agreement=self.agreement, identical=self.identical, wer=self.wer, human_delta=self.human_delta)
        return d


@dataclass
class Agreement:
    """The summary over every file, and the verdict."""

    files: list[FileAgreement]
    margin_limit: float = MARGIN_LIMIT
    wer_limit: float = WER_LIMIT

    @property
    def mean_agreement(self) -> float:
        return float(np.mean([f.agreement for f in self.files])) if self.files else 1.0

    @property
    def pooled_agreement(self) -> float:
        decisions = sum(f.decisions for f in self.files)
        return sum(f.matched for f in self.files) / decisions if decisions else 1.0

    @property
    def identical_files(self) -> int:
        return sum(f.identical for f in self.files)

    @property
    def margins(self) -> list[float]:
        return [d.margin for f in self.files for d in f.disagreements]

    @property
    def median_margin(self) -> float | None:
        return float(np.median(self.margins)) if self.margins else None

    @property
    def max_margin(self) -> float | None:
        return max(self.margins) if self.margins else None

    @property
    def wer(self) -> float:
        """Pooled: all the candidate's word errors against the reference's transcripts, over all their words."""
        return rate(sum(f.word_errors for f in self.files), sum(f.words for f in self.files))

    @property
    def human_delta(self) -> float | None:
        """Pooled over the files with a human transcript: the candidate's WER minus the reference's."""
        known = [f for f in self.files if f.transcript is not None]
        if not known:
            return None
        n = sum(f.human_words for f in known)
        return rate(sum(f.cand_human_errors for f in known), n) - rate(sum(f.ref_human_errors for f in known), n)

    @property
    def reasons(self) -> list[str]:
        """Why the candidate is not acceptable; empty: it is."""
        out = [f"{f.audio}: the candidate failed ({e})" for f in self.files for e in f.errors]
        over = [d for d in self.margins if d > self.margin_limit]
        if over:
            out.append(f"{len(over)} disagreement(s) with a reference margin above {self.margin_limit:g} nats "
                       f"(max {max(over):.3g}): the reference was sure, the candidate decided otherwise")
        if self.wer > self.wer_limit:
            out.append(f"WER against the reference's transcripts {self.wer:.1%} > {self.wer_limit:.0%}")
        return out

    @property
    def acceptable(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and infinities as strings, as verify's reports."""
        summary = {"files": len(self.files), "identical_files": self.identical_files,
                   "mean_agreement": self.mean_agreement, "pooled_agreement": self.pooled_agreement,
                   "disagreements": len(self.margins), "median_margin": self.median_margin,
                   "max_margin": self.max_margin, "wer": self.wer, "human_delta": self.human_delta,
                   "margin_limit": self.margin_limit, "wer_limit": self.wer_limit}
        return json_safe({"acceptable": self.acceptable, "reasons": self.reasons, "summary": summary,
                           "files": [f.as_dict() for f in self.files]})


def rate(errors: int, words: int) -> float:
    """A word error rate; no reference words: 0 if the hypothesis has none either, else 1 (all inserted)."""
    return errors / words if words else float(errors > 0)


# ----------------------------------------------------------------------------------------------
# Words and tokens


def words(text: str) -> list[str]:
    """Normalised words: lower case, punctuation (hyphens included) a separator, quotes stripped from the ends
    of a word ("it’s" and "it's" are one word). Numbers are not spelled out: "10" and "ten" differ."""
    text = text.lower().replace("\u2019", "'")
    return [w for w in (w.strip("'") for w in re.sub(r"[^\w']+", " ", text).split()) if w]


def matched(reference: Sequence[int], hypothesis: Sequence[int]) -> int:
    """How many of `reference` `hypothesis` reproduces in order: their longest common subsequence's length."""
    previous = [0] * (len(hypothesis) + 1)
    for r in reference:
        current = [0]
        for j, h in enumerate(hypothesis, start=1):
            current.append(previous[j - 1] + 1 if r == h else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def first_difference(reference: Sequence[int], hypothesis: Sequence[int]) -> int | None:
    """The first index where the sequences differ (one ending counts); None when they are equal."""
    for i, (r, h) in enumerate(zip(reference, hypothesis, strict=False)):
        if r != h:
            return i
    return None if len(reference) == len(hypothesis) else min(len(reference), len(hypothesis))


# ----------------------------------------------------------------------------------------------
# One window


class Judging(TeacherForcing):
    """Teacher forcing that also notes, at each choice, the reference's own preference and its margin over
    the forced token (the filtered logits the machine hands every strategy: one row, one group)."""

    def __init__(self, tokens: list[int], eot: int) -> None:
        super().__init__(tokens, eot)
        self.preferences: list[tuple[int, float]] = []  # (the reference's token, its margin over the forced one)

    def pick(self, group: Group, logits: np.ndarray) -> np.ndarray:
        forced = super().pick(group, logits)
        row = logits[0]
        best = int(np.argmax(row))
        gap = float(row[best]) - float(row[forced[0]])  # inf where the filters forbid the forced token
        self.preferences.append((best, gap if not math.isnan(gap) else math.inf))
        return forced


def decode(backend: Any, tokenizer: Tokenizer, options: DecodingOptions, features: Any,
           strategy: Callable[[], TokenDecoder]) -> Candidate:
    """One window through the machine -> its sequence (no text: a tokenizer-like of a toy model has no decode)."""
    run = Decoder(backend, tokenizer, options, strategy=strategy).begin([features])
    while run.state is not State.DONE:
        run.advance()
    return run.strategy.rank(run.groups[0])


def free_run(backend: Any, tokenizer: Tokenizer, options: DecodingOptions, features: Any) -> tuple[list[int], bool]:
    """Greedy, alone: (the tokens, whether it chose the end of text)."""
    best = decode(backend, tokenizer, options, features, Greedy)
    return list(best.tokens), best.finished == "eot"


def margins(reference: Backend, tokenizer: Tokenizer, options: DecodingOptions, features: Any, tokens: list[int],
            ended: bool, window: int) -> list[Disagreement]:
    """The reference teacher-forced with `tokens` (and the end of text, if `ended`): the decisions it would not
    make, each with its margin."""
    strategy = Judging(tokens, tokenizer.eot)
    decode(reference, tokenizer, options, features, lambda: strategy)
    forced = [*tokens, tokenizer.eot] if ended else tokens
    return [Disagreement(window, step, best, token, gap)
            for step, ((best, gap), token) in enumerate(zip(strategy.preferences, forced, strict=False))
            if best != token]


def window_agreement(reference: Backend, candidate: Backend, tokenizer: Tokenizer, options: DecodingOptions,
                     mel: np.ndarray, window: int, seconds: dict[str, float]) -> WindowAgreement:
    """One window: both free runs, and where they part the reference's judgement of the candidate's choices
    (time added to `seconds`)."""
    t = time.perf_counter()
    features = reference.encode(mel[None])
    ref_tokens, ref_ended = free_run(reference, tokenizer, options, features)
    t = _lap(seconds, "reference", t)
    try:
        cand_tokens, cand_ended = free_run(candidate, tokenizer, options, candidate.encode(mel[None]))
    except Exception as e:  # a candidate that fails is a finding of this window, not a crash of the whole run
        _lap(seconds, "candidate", t)
        return WindowAgreement(window, ref_tokens, [], ref_ended, False, 0, len(ref_tokens) + ref_ended, 0,
                               error=error_text(e))
    t = _lap(seconds, "candidate", t)
    eot = [tokenizer.eot]
    ref_decisions = ref_tokens + eot * ref_ended
    cand_decisions = cand_tokens + eot * cand_ended
    w = WindowAgreement(window, ref_tokens, cand_tokens, ref_ended, cand_ended,
                        matched(ref_decisions, cand_decisions), max(len(ref_decisions), len(cand_decisions)),
                        first_difference(ref_decisions, cand_decisions))
    if w.first_difference is not None:
        w.disagreements = margins(reference, tokenizer, options, features, cand_tokens, cand_ended, window)
        _lap(seconds, "margins", t)
    return w


def _lap(seconds: dict[str, float], part: str, since: float) -> float:
    now = time.perf_counter()
    seconds[part] = seconds.get(part, 0.0) + now - since
    return now


# ----------------------------------------------------------------------------------------------
# Files


def agreement(reference: Backend, candidate: Backend, tokenizer: Tokenizer, windows: Sequence[np.ndarray],
              audio: str = "", transcript: str | None = None, options: DecodingOptions | None = None
              ) -> FileAgreement:
    """One file's windows decoded by both, compared decision by decision; `transcript`: the human one, if known."""
    options = options or DecodingOptions()
    seconds: dict[str, float] = {"reference": 0.0, "candidate": 0.0, "margins": 0.0}
    # a broken candidate's NaN and overflows are findings (its decisions show them), not warnings on stderr
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        runs = [window_agreement(reference, candidate, tokenizer, options, mel, i, seconds)
                for i, mel in enumerate(windows)]
    ref_text = " ".join(text_of(tokenizer, w.ref_tokens) for w in runs).strip()
    cand_text = " ".join(text_of(tokenizer, w.cand_tokens) for w in runs).strip()
    ref_words, cand_words = words(ref_text), words(cand_text)
    f = FileAgreement(audio, runs, ref_text, cand_text, len(ref_words), word_errors(ref_words, cand_words),
                      seconds={k: round(v, 3) for k, v in seconds.items()})
    if transcript is not None:
        human = words(transcript)
        f.transcript, f.human_words = transcript, len(human)
        f.ref_human_errors, f.cand_human_errors = word_errors(human, ref_words), word_errors(human, cand_words)
    return f


def judge(files: Sequence[FileAgreement], margin_limit: float = MARGIN_LIMIT, wer_limit: float = WER_LIMIT
          ) -> Agreement:
    return Agreement(list(files), margin_limit, wer_limit)


def human_transcripts(paths: Sequence[str]) -> dict[str, str]:
    """path -> the human transcript of the files listed in a MANIFEST.tsv beside them (columns file, transcript)."""
    out: dict[str, str] = {}
    manifests: dict[Path, dict[str, str]] = {}
    for path in paths:
        folder = Path(path).parent
        if folder not in manifests:
            manifests[folder] = _manifest(folder / "MANIFEST.tsv")
        if Path(path).name in manifests[folder]:
            out[path] = manifests[folder][Path(path).name]
    return out


def _manifest(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error):  # no manifest (or not ours): no human transcripts here
        return {}
    return {r["file"]: r["transcript"] for r in rows if r.get("file") and r.get("transcript") is not None}


# ----------------------------------------------------------------------------------------------
# Text


def _percent(x: float | None) -> str:
    return "" if x is None else f"{x:+.1%}"  # signed: + the candidate is worse


def _nats(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def describe(result: Agreement, tokenizer: Tokenizer, worst: int = 5) -> list[str]:
    """The table per file, the summary, the largest margins, the verdict."""
    return ["AGREEMENT (free-running greedy, decisions judged by the reference's margins)", *table(result),
            *summary_lines(result, tokenizer, worst)]


def table(result: Agreement) -> list[str]:
    """One row per file: agreement, where the runs part, the disagreements, the largest margin, the WERs."""
    rows = [("file", "agreement", "first difference", "disagreements", "max margin", "WER vs ref",
             "WER ref/cand vs human")]
    for f in result.files:
        first = next((w for w in f.windows if w.first_difference is not None), None)
        top = max((d.margin for d in f.disagreements), default=None)
        human = "" if f.transcript is None else (f"{rate(f.ref_human_errors, f.human_words):.1%} / "
                                                 f"{rate(f.cand_human_errors, f.human_words):.1%}")
        rows.append((Path(f.audio).name, f"{f.agreement:.1%}" + (" (failed)" if f.errors else ""),
                     "" if first is None else f"window {first.window} step {first.first_difference}",
                     str(len(f.disagreements)), _nats(top), f"{f.wer:.1%}", human))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def summary_lines(result: Agreement, tokenizer: Tokenizer, worst: int = 5) -> list[str]:
    """Over all files: agreement, margins, WERs, the `worst` largest margins, the verdict."""
    lines = [f"{len(result.files)} file(s), {result.identical_files} with identical tokens; agreement mean "
             f"{result.mean_agreement:.1%} (pooled {result.pooled_agreement:.1%})"]
    if result.margins:
        lines.append(f"{len(result.margins)} disagreement(s): reference margin median "
                     f"{_nats(result.median_margin)}, max {_nats(result.max_margin)} nats "
                     f"(limit {result.margin_limit:g})")
    delta = result.human_delta
    lines.append(f"WER against the reference's transcripts {result.wer:.1%} (limit {result.wer_limit:.0%})"
                 + ("" if delta is None else f"; against the human transcripts, candidate minus reference "
                    f"{_percent(delta)}"))
    ranked = sorted(((d, f.audio) for f in result.files for d in f.disagreements), key=lambda x: -x[0].margin)
    for d, audio in ranked[:worst]:
        lines.append(f"  {Path(audio).name} window {d.window} step {d.step}: reference "
                     f"{tokenizer.token_text(d.ref_token)!r}, candidate {tokenizer.token_text(d.cand_token)!r}, "
                     f"margin {_nats(d.margin)}")
    lines.append("ACCEPTABLE: no disagreement above the margin limit, the transcripts within the WER limit"
                 if result.acceptable else "NOT ACCEPTABLE: " + "; ".join(result.reasons))
    return lines


def time_line(f: FileAgreement) -> str:
    """Where the time went (stderr: it differs from run to run)."""
    t = f.seconds
    return (f"time: reference {t.get('reference', 0):.1f} s, candidate {t.get('candidate', 0):.1f} s, "
            f"margins {t.get('margins', 0):.1f} s")
