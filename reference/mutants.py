"""The classic bugs of a hand-driven Whisper, each as a small variation of the numpy reference.

They serve twice: the test suite runs `verify` against each (it must be caught at the right step, with
the right diagnosis), and `verify` itself replays them as hypotheses: when a candidate diverges, the
mutant whose numbers the candidate reproduces names the likely bug. One definition of each bug.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import kv as kvslots
from .model import NumpyModel, decode
from .tokenizer import Tokenizer
from .weights import Checkpoint


class WrongStartSequence(NumpyModel):
    """Ignores the start sequence it is given and starts from <|endoftext|> alone (the seed's 50257)."""

    cause = "wrong start sequence"
    explanation = ("the decoder was started from <|endoftext|> alone: <|startoftranscript|> (and language/task/"
                   "<|notimestamps|>) must come from the tokenizer, looked up by name")

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer) -> None:
        super().__init__(checkpoint)
        self.start = [tokenizer.eot]

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(self.start, audio_features, kv)
        # report as many rows as asked, so the machine can go on: the last row is what matters
        return np.repeat(logits[-1:], len(tokens), axis=0), kv


class ZeroCrossKV(NumpyModel):
    """Reads the zero-filled cross slots it was given instead of computing K/V from the audio."""

    cause = "cross K/V left zero"
    explanation = ("cross-attention K/V were the zero-filled placeholders, not projections of the encoder "
                   "output: the decoder never hears the audio")

    def prefill(self, tokens, audio_features, kv):
        logits, present = decode(tokens, list(kv), self.weights, self.dims, all_positions=True)
        return logits, kvslots.remap_present(kv, present)


class CrossFromWrongInput(NumpyModel):
    """Projects the audio with the self-attention's key/value weights instead of the cross-attention's."""

    cause = "cross K/V computed from the wrong input"
    explanation = "cross-attention K/V do not match the projections of the encoder output the backend was given"

    def prefill(self, tokens, audio_features, kv):
        w = dict(self.weights)
        for i in range(self.dims.n_text_layer):
            for part in ("key.weight", "value.weight", "value.bias"):
                w[f"decoder.blocks.{i}.cross_attn.{part}"] = w[f"decoder.blocks.{i}.attn.{part}"]
        return NumpyModel((self.dims, w)).prefill(tokens, audio_features, kv)


class SwappedPresentSlots(NumpyModel):
    """Returns each layer's present value before its key: the self slots are remapped to the wrong indices."""

    cause = "self slots remapped to the wrong indices"
    explanation = ("the present self K/V came back in another order than the slot layout expects "
                   "(layer-major: key, value), so the next step reads keys as values")

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return logits, [present[i ^ 1] for i in range(len(present))]


class PresentNotAppended(NumpyModel):
    """Returns only the new position as the present self K/V, dropping the past."""

    cause = "self slots not appended"
    explanation = "the present self K/V hold only the newest position: past positions are forgotten each step"

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return logits, [p[:, :, -1:] for p in present]


class PositionOffByOne(NumpyModel):
    """Adds the learned positional embedding of position p + 1 at position p."""

    cause = "positional offset off by one"
    explanation = "the decoder's positional embedding is read one row late (position p gets row p + 1)"

    def __init__(self, checkpoint: Checkpoint) -> None:
        super().__init__(checkpoint)
        w = dict(self.weights)
        w["decoder.positional_embedding"] = np.roll(w["decoder.positional_embedding"], -1, axis=0)
        self.weights = w


class MissingFinalLayerNorm(NumpyModel):
    """Projects the last hidden state onto the vocabulary without the decoder's final layer norm."""

    cause = "missing final layer norm"
    explanation = "the decoder's final layer norm (decoder.ln) is not applied before the output projection"

    final_ln = False


class Fp16Overflow(NumpyModel):
    """Stores the self-attention values in float16 after a scale that exceeds its range (65504)."""

    cause = "fp16 overflow"
    explanation = "inf or NaN appeared in the KV slots or logits: a float16 value overflowed (|x| > 65504)"

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        with np.errstate(over="ignore"):  # the overflow is the point
            present = [p if i % 2 == 0 else (p * 1e5).astype(np.float16).astype(np.float32)
                       for i, p in enumerate(present)]
        return logits, present


class EotIgnored(NumpyModel):
    """Never lets <|endoftext|> win: decoding runs on to the budget."""

    cause = "EOT ignored"
    explanation = "<|endoftext|> was suppressed or ignored where the reference ends the transcript"

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer) -> None:
        super().__init__(checkpoint)
        self.eot = tokenizer.eot

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        logits = logits.copy()
        logits[self.eot] = -np.inf
        return logits, present


MutantFactory = Callable[[Checkpoint, Tokenizer], NumpyModel]


def _plain(cls: type[NumpyModel]) -> MutantFactory:
    return lambda checkpoint, tokenizer: cls(checkpoint)


def _with_tokenizer(cls) -> MutantFactory:
    return lambda checkpoint, tokenizer: cls(checkpoint, tokenizer)


MUTANTS: dict[str, tuple[type[NumpyModel], MutantFactory]] = {
    "wrong_start": (WrongStartSequence, _with_tokenizer(WrongStartSequence)),
    "zero_cross": (ZeroCrossKV, _plain(ZeroCrossKV)),
    "cross_wrong_input": (CrossFromWrongInput, _plain(CrossFromWrongInput)),
    "swapped_slots": (SwappedPresentSlots, _plain(SwappedPresentSlots)),
    "not_appended": (PresentNotAppended, _plain(PresentNotAppended)),
    "position_off_by_one": (PositionOffByOne, _plain(PositionOffByOne)),
    "no_final_ln": (MissingFinalLayerNorm, _plain(MissingFinalLayerNorm)),
    "fp16_overflow": (Fp16Overflow, _plain(Fp16Overflow)),
    "eot_ignored": (EotIgnored, _with_tokenizer(EotIgnored)),
}


def make_mutant(name: str, checkpoint: Checkpoint, tokenizer: Tokenizer) -> NumpyModel:
    cls, factory = MUTANTS[name]
    mutant = factory(checkpoint, tokenizer)
    mutant.name = f"mutant:{name}"
    return mutant


def causes() -> Sequence[str]:
    return [cls.cause for cls, _ in MUTANTS.values()]
