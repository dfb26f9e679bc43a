"""Human-readable traces of the state machine: what went in, how the KV slots grew, what came out."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import kv as kvslots
from ..decoding import State, TraceEvent
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
