"""Human-readable traces of the state machine: what went in, how the KV slots grew, what came out."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import kv as kvslots
from ..decoding import DecodingResult, State, TraceEvent
from ..tokenizer import Tokenizer


def _shapes(shapes: Sequence[Sequence[int]], indices: Sequence[int]) -> str:
    """'8 x [1, 6, 3, 64]' when all alike, else each slot's shape."""
    chosen = [tuple(shapes[i]) for i in indices]
    if len(set(chosen)) == 1:
        return f"{len(chosen)} x {list(chosen[0])}"
    return ", ".join(f"{i}:{list(s)}" for i, s in zip(indices, chosen, strict=True))


def _growth(before: Sequence[Sequence[int]] | None, after: Sequence[Sequence[int]], indices: Sequence[int]) -> str:
    if before is None:
        return "new"
    grown = [after[i][2] - before[i][2] for i in indices]
    if all(g == 0 for g in grown):
        return "stayed"
    if len(set(grown)) == 1:
        return f"grew +{grown[0]}"
    return "changed " + ",".join(f"{g:+d}" for g in grown)


def format_trace(events: Sequence[TraceEvent], tokenizer: Tokenizer, n_layer: int, finished: str) -> list[str]:
    """One line per transition: state, step, input tokens, self/cross slot shapes and growth, choice."""
    selfs, crosses = kvslots.self_slots(n_layer), kvslots.cross_slots(n_layer)
    lines = [f"{'state':<8}{'step':>5}  {'input':<44}{'self slots':<28}{'cross slots':<30}chosen (p)"]
    before = None
    for e in events:
        inputs = " ".join(tokenizer.token_text(t) for t in e.input_tokens) or "-"
        self_col = f"{_shapes(e.slot_shapes, selfs)} {_growth(before, e.slot_shapes, selfs)}"
        cross_col = f"{_shapes(e.slot_shapes, crosses)} {_growth(before, e.slot_shapes, crosses)}"
        chosen = ""
        if e.token is not None:
            chosen = f"{tokenizer.token_text(e.token)!r} ({math.exp(e.logprob):.3f})"
        lines.append(f"{e.state.name:<8}{e.step:>5}  {inputs[:43]:<44}{self_col:<28}{cross_col:<30}{chosen}")
        before = e.slot_shapes
    why = "<|endoftext|> chosen" if finished == "eot" else "the budget of sampled tokens is spent"
    lines.append(f"{State.DONE.name:<8}{'':>5}  {why}")
    return lines


def _tail(tokenizer: Tokenizer, tokens: Sequence[int], n: int = 6) -> str:
    """The last n tokens as text: enough to tell beams apart."""
    text = "".join(tokenizer.token_text(t) for t in tokens[-n:])
    return ("..." if len(tokens) > n else "") + text


def format_beams(result: DecodingResult, tokenizer: Tokenizer) -> list[str]:
    """The rows of each transition: which cache row each beam (or sample) now reads, its score, its tokens.

    `<- row s` is the reorder: after this choice, row i of the batch continues row s of the batch that
    produced these logits, and the backend's `select` copies the slots' rows in that order."""
    lines = ["# rows after each choice: new row <- the cache row it continues, score = sum of log-probabilities"]
    for e in result.events:
        if e.state not in (State.PREFILL, State.STEP):
            continue
        moved = [r.source for r in e.rows]
        kept = ("kept in place" if moved == list(range(len(e.inputs) if e.state is State.STEP else 1))
                else f"select({moved})" if moved else "dropped: every sequence is finished")
        lines.append(f"{e.state.name} {e.step}: {len(e.inputs)} row(s) in, {len(e.rows)} out, slots {kept}")
        for i, r in enumerate(e.rows):
            lines.append(f"  row {i} <- row {r.source}  {r.score:9.4f}  {_tail(tokenizer, r.tokens)!r}")
        for _, c in e.finished:
            lines.append(f"  finished       {c.sum_logprob:9.4f}  {_tail(tokenizer, c.tokens)!r} + <|endoftext|>"
                         if c.finished == "eot" else
                         f"  budget spent   {c.sum_logprob:9.4f}  {_tail(tokenizer, c.tokens)!r}")
    lines.append("# candidates: sum of log-probabilities, length; * the one kept (best score / length penalty)")
    for c in result.candidates:
        mark = "*" if list(c.tokens) == result.tokens else " "
        lines.append(f"  {mark} {c.sum_logprob:9.4f} {len(c.tokens):>4}  {tokenizer.decode(list(c.tokens)).strip()!r}")
    return lines
