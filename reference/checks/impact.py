"""What a divergence does to what the user sees: the choices the candidate would make differently, its own
transcript, the no_speech decisions, and a severity.

verify keeps comparing after the first divergence, teacher-forced to the end of every window, so each stage
records the candidate's greedy choice given the reference's tokens so far. A window where every such choice
agrees decodes to the same tokens free-running; a window where one differs is decoded once more, by the
candidate alone (greedy, at most a few tokens past the reference's end), for the transcript it would print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..decoding import Decoder, Greedy, State
from ..transcribe import NO_SPEECH_THRESHOLD
from .causes import error_text
from .compare import SMALL_DRIFT

if TYPE_CHECKING:  # (verify.py imports this module: these are only types here)
    from .verify import Lockstep, WindowRun

# severities, from harmless to unusable
NUMERIC_DRIFT = "numeric drift, no decision changed"
# shapes, layouts or values off by more than drift: whatever else reads them (word timestamps read the cross
# slots, transcribe() reads the probabilities) is wrong, and other audio may change decisions
VALUES_WRONG = "no decision changed, but values are wrong"
DECISIONS = "decisions changed"
CATASTROPHIC = "catastrophic"

CATASTROPHIC_WER = 0.5  # half the reference's words wrong: the transcript is not a noisy copy of it any more
RUNAWAY_MARGIN = 8  # a free-running candidate is stopped this many tokens past the reference's end


@dataclass
class WindowImpact:
    window: int
    ref_tokens: list[int]
    cand_tokens: list[int]  # free-running greedy (the reference's where no teacher-forced choice differed)
    ref_text: str
    cand_text: str
    changed: list[tuple[int, int, int]] = field(default_factory=list)  # (step, reference's, candidate's choice)
    ref_no_speech_prob: float | None = None
    cand_no_speech_prob: float | None = None
    runaway: bool = False  # the free-running candidate was still going past the reference's end (capped)
    error: str = ""  # the candidate failed in this window
    word_errors: int = 0
    words: int = 0

    @property
    def no_speech_flipped(self) -> bool:
        """Opposite sides of openai-whisper's silence threshold (its transcribe() skips a window above it)."""
        r, c = self.ref_no_speech_prob, self.cand_no_speech_prob
        return r is not None and c is not None and (r > NO_SPEECH_THRESHOLD) != (c > NO_SPEECH_THRESHOLD)


@dataclass
class Impact:
    severity: str
    summary: str
    choices: int  # teacher-forced choices compared
    changed_choices: int
    no_speech_flips: int
    word_error_rate: float  # of the candidate's free-running transcript against the reference's, all windows
    windows: list[WindowImpact]


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance (substitutions + insertions + deletions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, start=1):
        current = [i]
        for j, h in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def text_of(tokenizer, tokens: Sequence[int]) -> str:
    """The transcript of `tokens`, token by token (what any tokenizer verify takes can show)."""
    return "".join(tokenizer.token_text(t) for t in tokens).strip()


def finish(window: WindowImpact) -> WindowImpact:
    ref_words, cand_words = window.ref_text.split(), window.cand_text.split()
    window.words, window.word_errors = len(ref_words), word_errors(ref_words, cand_words)
    return window


def assess(windows: list[WindowImpact], values_wrong: bool, nonfinite_logits: bool) -> Impact:
    """The severity of the clip: catastrophic (a failure, NaN logits, a runaway, half the words wrong), decisions
    changed, or no decision changed (numeric drift, or values_wrong: shapes, layouts or values beyond drift)."""
    changed = sum(len(w.changed) for w in windows)
    choices = sum(len(w.ref_tokens) + 1 for w in windows)  # every sampled token and the final EOT
    flips = sum(w.no_speech_flipped for w in windows)
    words = sum(w.words for w in windows)
    errors = sum(w.word_errors for w in windows)
    wer = errors / words if words else float(errors > 0)
    failed = [w for w in windows if w.error]
    runaway = [w for w in windows if w.runaway]
    if failed or runaway or nonfinite_logits or wer >= CATASTROPHIC_WER:
        severity = CATASTROPHIC
    elif changed or flips or errors:
        severity = DECISIONS
    else:
        severity = VALUES_WRONG if values_wrong else NUMERIC_DRIFT
    parts = [f"{changed} of {choices} teacher-forced choice(s) differ", f"word error rate {wer:.0%} against the "
             f"reference's transcript", f"{flips} no_speech decision(s) flipped (threshold {NO_SPEECH_THRESHOLD})"]
    if failed:
        parts.append(f"the candidate failed in window(s) {', '.join(str(w.window) for w in failed)}")
    if runaway:
        parts.append(f"ran on past the reference's end in window(s) {', '.join(str(w.window) for w in runaway)}")
    if nonfinite_logits:
        parts.append("non-finite logits")
    return Impact(severity, "; ".join(parts), choices, changed, flips, wer, windows)


# ----------------------------------------------------------------------------------------------
# From verify's runs


def free_run(lockstep: Lockstep, features: Any, cap: int) -> tuple[list[int], bool, str]:
    """The candidate decoding alone, greedy, at most `cap` tokens: (tokens, capped, error)."""
    options = replace(lockstep.options, sample_len=cap)
    run = Decoder(lockstep.cand, lockstep.tok, options, strategy=Greedy).begin([features])
    try:
        while run.state is not State.DONE:
            run.advance()
    except Exception as e:
        return [], False, error_text(e)
    best = run.strategy.rank(run.groups[0])
    return list(best.tokens), best.finished == "budget", ""


def window_impact(lockstep: Lockstep, run: WindowRun) -> WindowImpact:
    tok = lockstep.tok
    changed = [(s.step, s.ref_token, s.cand_token) for s in run.stages
               if s.stage != "encode" and s.verdict != "tie" and not s.error and s.ref_token != s.cand_token]
    w = WindowImpact(run.index, run.ref_tokens, list(run.ref_tokens), text_of(tok, run.ref_tokens), "",
                            changed, run.ref_no_speech, run.cand_no_speech, error=run.error)
    if (changed or run.error) and run.cand_native is not None:
        budget = Decoder(lockstep.ref, tok, lockstep.options).sample_len
        cap = min(budget, len(run.ref_tokens) + RUNAWAY_MARGIN)
        tokens, capped, error = free_run(lockstep, run.cand_native, cap)
        w.cand_tokens, w.error = tokens, w.error or error
        w.runaway = capped and cap < budget
    elif run.cand_native is None:
        w.cand_tokens = []
    w.cand_text = text_of(tok, w.cand_tokens)
    return finish(w)


def of_runs(lockstep: Lockstep, runs: list[WindowRun]) -> Impact:
    stages = [s for r in runs for s in r.stages]
    compared = [c for s in stages for c in [s.features, s.logits, *s.start_rows, *s.slots] if c is not None]
    # beyond a few 1e-3 of the scale (or another shape) a difference is not rounding: the values are wrong
    wrong = any(c.relative is None or c.relative > SMALL_DRIFT for c in compared)
    nonfinite_logits = any(s.logits is not None and s.logits.nonfinite for s in stages)
    return assess([window_impact(lockstep, r) for r in runs], wrong, nonfinite_logits)
