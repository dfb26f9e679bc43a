"""The classic bugs of a hand-driven Whisper, each as a small variation of the numpy reference.

They serve twice: the test suite runs `verify` against each (it must be caught at the right step, with
the right diagnosis), and `verify` itself replays them as hypotheses: when a candidate diverges, the
mutant whose numbers the candidate reproduces names the likely bug. One definition of each bug.
"""

from __future__ import annotations

import numpy as np

from .. import kv as kvslots
from ..model import NumpyModel, decode
from ..tokenizer import Tokenizer
from ..weights import Checkpoint


class Mutant(NumpyModel):
    """A NumpyModel with one deliberate bug; `cause` and `explanation` are what verify reports."""

    cause = ""
    explanation = ""

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(checkpoint)
        self.tokenizer = tokenizer


class WrongStartSequence(Mutant):
    """Ignores the start sequence it is given and starts from <|endoftext|> alone (the seed's 50257)."""

    cause = "wrong start sequence"
    explanation = ("the decoder was started from <|endoftext|> alone: <|startoftranscript|> (and language/task/"
                   "<|notimestamps|>) must come from the tokenizer, looked up by name")

    def prefill(self, tokens, audio_features, kv):
        tokens = np.asarray(tokens)
        logits, kv = super().prefill(np.full((len(tokens), 1), self.tokenizer.eot), audio_features, kv)
        # report as many positions as asked, so the machine can go on: the last position is what matters
        return np.repeat(logits[:, -1:], tokens.shape[1], axis=1), kv


class ZeroCrossKV(Mutant):
    """Reads the zero-filled cross slots it was given instead of computing K/V from the audio."""

    cause = "cross K/V left zero"
    explanation = ("cross-attention K/V were the zero-filled placeholders, not projections of the encoder "
                   "output: the decoder never hears the audio")

    def prefill(self, tokens, audio_features, kv):
        logits, present = decode(tokens, list(kv), self.weights, self.dims, all_positions=True)
        return logits, kvslots.remap_present(kv, present)


class CrossFromWrongInput(Mutant):
    """Projects the audio with the self-attention's key/value weights instead of the cross-attention's."""

    cause = "cross K/V computed from the wrong input"
    explanation = "cross-attention K/V do not match the projections of the encoder output the backend was given"

    def prefill(self, tokens, audio_features, kv):
        w = dict(self.weights)
        for i in range(self.dims.n_text_layer):
            for part in ("key.weight", "value.weight", "value.bias"):
                w[f"decoder.blocks.{i}.cross_attn.{part}"] = w[f"decoder.blocks.{i}.attn.{part}"]
        return NumpyModel((self.dims, w)).prefill(tokens, audio_features, kv)


class SwappedPresentSlots(Mutant):
    """Returns each layer's present value before its key: the self slots are remapped to the wrong indices."""

    cause = "self slots remapped to the wrong indices"
    explanation = ("the present self K/V came back in another order than the slot layout expects "
                   "(layer-major: key, value), so the next step reads keys as values")

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return logits, [present[i ^ 1] for i in range(len(present))]


class PresentNotAppended(Mutant):
    """Returns only the new position as the present self K/V, dropping the past."""

    cause = "self slots not appended"
    explanation = "the present self K/V hold only the newest position: past positions are forgotten each step"

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return logits, [p[:, :, -1:] for p in present]


class PositionOffByOne(Mutant):
    """Adds the learned positional embedding of position p + 1 at position p."""

    cause = "positional offset off by one"
    explanation = "the decoder's positional embedding is read one row late (position p gets row p + 1)"

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(checkpoint, tokenizer)
        w = dict(self.weights)
        w["decoder.positional_embedding"] = np.roll(w["decoder.positional_embedding"], -1, axis=0)
        self.weights = w


class MissingFinalLayerNorm(Mutant):
    """Projects the last hidden state onto the vocabulary without the decoder's final layer norm."""

    cause = "missing final layer norm"
    explanation = "the decoder's final layer norm (decoder.ln) is not applied before the output projection"

    final_ln = False


class Fp16Overflow(Mutant):
    """Stores the self-attention values in float16 after a scale that exceeds its range (65504)."""

    cause = "fp16 overflow"
    explanation = "inf or NaN appeared in the KV slots or logits: a float16 value overflowed (|x| > 65504)"

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        with np.errstate(over="ignore"):  # the overflow is the point
            present = [p if i % 2 == 0 else (p * 1e5).astype(np.float16).astype(np.float32)
                       for i, p in enumerate(present)]
        return logits, present


class EotIgnored(Mutant):
    """Never lets <|endoftext|> win: decoding runs on to the budget."""

    cause = "EOT ignored"
    explanation = "<|endoftext|> was suppressed or ignored where the reference ends the transcript"

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        logits = logits.copy()
        logits[:, self.tokenizer.eot] = -np.inf
        return logits, present


MUTANTS: dict[str, type[Mutant]] = {
    "wrong_start": WrongStartSequence,
    "zero_cross": ZeroCrossKV,
    "cross_wrong_input": CrossFromWrongInput,
    "swapped_slots": SwappedPresentSlots,
    "not_appended": PresentNotAppended,
    "position_off_by_one": PositionOffByOne,
    "no_final_ln": MissingFinalLayerNorm,
    "fp16_overflow": Fp16Overflow,
    "eot_ignored": EotIgnored,
}


def make_mutant(name: str, checkpoint: Checkpoint, tokenizer: Tokenizer) -> Mutant:
    mutant = MUTANTS[name](checkpoint, tokenizer)
    mutant.name = f"mutant:{name}"
    return mutant
