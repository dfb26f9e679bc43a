"""Bugs of hand-driven and hand-compiled Whisper ports, each as a small variation of the numpy reference.

They serve twice: the test suite runs `verify` against each (it must be caught at the right stage and named
by the right cause), and `verify` replays the ones compatible with the evidence as hypotheses: when a
candidate diverges where no signature rule names the cause, the mutant whose numbers the candidate
reproduces names it. One definition of each bug; its `because` is the cause (checks/causes.py) it must be
diagnosed as, and `shows_in` the parts of the model (checks/localise.py) where it first shows.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .. import kv as kvslots
from ..model import NumpyModel, decode
from ..tokenizer import Tokenizer
from ..weights import Checkpoint
from . import causes
from . import localise as loc
from .hooked import SELF, Hooked, conv1d_padded, gelu_tanh


def features_key(features: np.ndarray) -> str:
    """A digest of audio features: replays of one window share its cross K/V through it."""
    f = np.ascontiguousarray(features)
    return f"{f.shape}:{hashlib.blake2b(f.tobytes(), digest_size=16).hexdigest()}"


class Mutant(NumpyModel):
    """A NumpyModel with one deliberate bug; `cause` and `explanation` are what verify reports."""

    because: causes.Cause = causes.UNKNOWN
    cause = ""
    explanation = ""
    shows_in: frozenset[str] = frozenset()
    replayable = True  # False: the bug needs an earlier window's state (signature rules name those)
    shares_cross_kv = True  # its cross K/V are the reference's (a replay may reuse them)
    small_drift = False  # an encoder bug that moves the features by a few 1e-3 only (a precision choice)
    in_decoder = False  # an encoder bug in an operation the decoder shares (it shows in both)
    # an encoder bug's mean |Δ features| over the padding after the audio / over the audio (measured on the
    # shared clips): orders the encoder replays, one encoder pass each, the likeliest first; never names a cause
    padding_ratio: float | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.cause, cls.explanation = cls.because.label, cls.because.explanation

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(checkpoint)
        self.tokenizer = tokenizer
        self.cross_memo: dict[str, list[np.ndarray]] | None = None  # set by verify's replay

    def with_cross_kv(self, kv: list[np.ndarray], audio_features: np.ndarray) -> list[np.ndarray]:
        if self.cross_memo is None or not self.shares_cross_kv:
            return super().with_cross_kv(kv, audio_features)
        key, cross = features_key(audio_features), kvslots.cross_slots(self.dims.n_text_layer)
        if key not in self.cross_memo:
            full = super().with_cross_kv(kv, audio_features)
            self.cross_memo[key] = [full[i] for i in cross]
        kv = list(kv)
        for i, slot in zip(cross, self.cross_memo[key], strict=True):
            kv[i] = slot
        return kv


class HookedMutant(Hooked, Mutant):
    """A mutant that replaces one operation inside a layer (checks/hooked.py)."""

    def convolutions(self, mel, strides: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]],
                     activation=None) -> np.ndarray:
        """The front end with other strides, paddings or activation, its intermediates recorded as the reference's."""
        w, act = self.weights, activation or self.gelu
        x = self.record("encoder.conv1", conv1d_padded(mel, w["encoder.conv1.weight"], w["encoder.conv1.bias"],
                                                       strides[0], *pads[0]))
        x = self.record("encoder.conv1.gelu", act(x))
        x = self.record("encoder.conv2", conv1d_padded(x.T, w["encoder.conv2.weight"], w["encoder.conv2.bias"],
                                                       strides[1], *pads[1]))
        return self.record("encoder.conv2.gelu", act(x))


# ----------------------------------------------------------------------------------------------
# The nine classics


class WrongStartSequence(Mutant):
    """Ignores the start sequence it is given and starts from <|endoftext|> alone (the seed's 50257)."""

    because = causes.WRONG_START
    shows_in = frozenset({loc.SHAPES, loc.INPUT})

    def prefill(self, tokens, audio_features, kv):
        tokens = np.asarray(tokens)
        logits, kv = super().prefill(np.full((len(tokens), 1), self.tokenizer.eot), audio_features, kv)
        # report as many positions as asked, so the machine can go on: the last position is what matters
        return np.repeat(logits[:, -1:], tokens.shape[1], axis=1), kv


class ZeroCrossKV(Mutant):
    """Reads the zero-filled cross slots it was given instead of computing K/V from the audio."""

    because = causes.ZERO_CROSS
    shows_in = frozenset({loc.CROSS})

    def prefill(self, tokens, audio_features, kv):
        logits, present = decode(tokens, list(kv), self.weights, self.dims, all_positions=True)
        return logits, kvslots.remap_present(kv, present)


class CrossFromWrongInput(Mutant):
    """Projects the audio with the self-attention's key/value weights instead of the cross-attention's."""

    because = causes.CROSS_WRONG_WEIGHTS
    shows_in = frozenset({loc.CROSS})
    shares_cross_kv = False

    def prefill(self, tokens, audio_features, kv):
        w = dict(self.weights)
        for i in range(self.dims.n_text_layer):
            for part in ("key.weight", "value.weight", "value.bias"):
                w[f"decoder.blocks.{i}.cross_attn.{part}"] = w[f"decoder.blocks.{i}.attn.{part}"]
        return NumpyModel((self.dims, w)).prefill(tokens, audio_features, kv)


class SwappedPresentSlots(Mutant):
    """Returns each layer's present value before its key: the self slots are remapped to the wrong indices."""

    because = causes.SELF_SLOTS_SWAPPED
    shows_in = frozenset({loc.PAST, loc.INPUT})

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return logits, [present[i ^ 1] for i in range(len(present))]


class PresentNotAppended(Mutant):
    """Returns only the new position as the present self K/V, dropping the past."""

    because = causes.NOT_APPENDED
    shows_in = frozenset({loc.SHAPES})

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return logits, [p[:, :, -1:] for p in present]


class PositionOffByOne(Mutant):
    """Adds the learned positional embedding of position p + 1 at position p."""

    because = causes.POSITION_OFFSET
    shows_in = frozenset({loc.INPUT})

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(checkpoint, tokenizer)
        w = dict(self.weights)
        w["decoder.positional_embedding"] = np.roll(w["decoder.positional_embedding"], -1, axis=0)
        self.weights = w


class MissingFinalLayerNorm(Mutant):
    """Projects the last hidden state onto the vocabulary without the decoder's final layer norm."""

    because = causes.NO_FINAL_LN
    shows_in = frozenset({loc.OUTPUT})
    final_ln = False


class Fp16Overflow(Mutant):
    """Stores the self-attention values in float16 after a scale that exceeds its range (65504)."""

    because = causes.FP16_OVERFLOW
    shows_in = frozenset({loc.PAST})

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        with np.errstate(over="ignore"):  # the overflow is the point
            present = [p if i % 2 == 0 else (p * 1e5).astype(np.float16).astype(np.float32)
                       for i, p in enumerate(present)]
        return logits, present


class EotIgnored(Mutant):
    """Never lets <|endoftext|> win: decoding runs on to the budget."""

    because = causes.EOT_IGNORED
    shows_in = frozenset({loc.OUTPUT, loc.LOGITS})

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        logits = logits.copy()
        logits[:, self.tokenizer.eot] = -np.inf
        return logits, present


# ----------------------------------------------------------------------------------------------
# Inside the decoder layers


class NoCausalMask(HookedMutant):
    """Lets every start position attend to the later ones at prefill (the mask of the self-attention is lost)."""

    because = causes.CAUSAL_MASK
    shows_in = frozenset({loc.LAYER})

    def mask(self, scores, q_offset):
        return scores


class AttentionScale(HookedMutant):
    """Divides the decoder's self-attention scores by head_dim instead of its square root."""

    because = causes.ATTENTION_SCALE
    shows_in = frozenset({loc.LAYER})

    def attention(self, q, k, v, where, q_offset=None):
        if where != SELF:
            return super().attention(q, k, v, where, q_offset)
        scores = (q * np.float32(1.0 / q.shape[-1])) @ k.transpose(0, 1, 3, 2)
        if q_offset is not None and scores.shape[-2] > 1:
            scores = self.mask(scores, q_offset)
        return self.weigh(scores, v, where)


class SoftmaxWrongAxis(HookedMutant):
    """Normalises the decoder's self-attention weights over the queries instead of the keys."""

    because = causes.SOFTMAX_AXIS
    shows_in = frozenset({loc.LAYER})

    def normalise(self, scores, where):
        if where != SELF:
            return super().normalise(scores, where)
        finite = np.where(np.isfinite(scores), scores, -np.inf)
        e = np.exp(finite - finite.max(axis=-2, keepdims=True))
        return e / e.sum(axis=-2, keepdims=True)


class BiasesDropped(Mutant):
    """Adds none of the decoder's linear biases (an exporter that lost them)."""

    because = causes.BIASES_DROPPED
    shows_in = frozenset({loc.PROJECTION, loc.CROSS})
    shares_cross_kv = False

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(checkpoint, tokenizer)
        self.weights = {name: (np.zeros_like(w) if name.startswith("decoder.blocks.") and name.endswith(".bias")
                               and "_ln" not in name else w) for name, w in self.weights.items()}


class KeysPrescaled(Mutant):
    """Caches the self-attention keys multiplied by head_dim^-1/4 (and divides them back before use)."""

    because = causes.KEYS_PRESCALED
    shows_in = frozenset({loc.PROJECTION, loc.INPUT})

    @property
    def factor(self) -> np.float32:
        return np.float32(self.dims.text_head_dim ** -0.25)

    def _scaled(self, kv, factor):
        keys = set(kvslots.self_slots(self.dims.n_text_layer)[::2])
        return [s * factor if i in keys else s for i, s in enumerate(kv)]

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        return logits, self._scaled(kv, self.factor)

    def step(self, token, kv):
        logits, present = super().step(token, self._scaled(kv, 1 / self.factor))
        return logits, [p * self.factor if i % 2 == 0 else p for i, p in enumerate(present)]


# ----------------------------------------------------------------------------------------------
# Slot layouts


def _transposed(slot: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(slot.transpose(0, 1, 3, 2))


class _Relayout(Mutant):
    """Computes with the protocol's layout but keeps some slots in another: `out` on the way out, `back` in."""

    def slots(self) -> set[int]:
        raise NotImplementedError

    def out(self, slot: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def back(self, slot: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        return logits, [self.out(s) if i in self.slots() else s for i, s in enumerate(kv)]

    def step(self, token, kv):
        logits, present = super().step(token, [self.back(s) if i in self.slots() else s for i, s in enumerate(kv)])
        selfs = kvslots.self_slots(self.dims.n_text_layer)
        return logits, [self.out(p) if selfs[j] in self.slots() else p for j, p in enumerate(present)]


class SelfKeysTransposed(_Relayout):
    """Keeps the self-attention keys as (batch, heads, head_dim, length), a layout that makes q @ k one matmul."""

    because = causes.LAYOUT_TRANSPOSED
    shows_in = frozenset({loc.SHAPES})

    def slots(self) -> set[int]:
        return set(kvslots.self_slots(self.dims.n_text_layer)[::2])

    def out(self, slot):
        return _transposed(slot)

    back = out


class CrossKeysTransposed(SelfKeysTransposed):
    """Keeps the cross-attention keys as (batch, heads, head_dim, n_audio_ctx)."""

    def slots(self) -> set[int]:
        return set(kvslots.cross_slots(self.dims.n_text_layer)[::2])


class HeadsMixed(_Relayout):
    """Returns the self values' (batch, length, heads, head_dim) memory reshaped, not transposed, to the layout."""

    because = causes.HEADS_MIXED
    shows_in = frozenset({loc.PROJECTION})

    def slots(self) -> set[int]:
        return set(kvslots.self_slots(self.dims.n_text_layer)[1::2])

    def out(self, slot):
        return np.ascontiguousarray(slot.transpose(0, 2, 1, 3)).reshape(slot.shape)

    def back(self, slot):
        b, h, n, d = slot.shape
        return np.ascontiguousarray(slot.reshape(b, n, h, d).transpose(0, 2, 1, 3))


class CrossKVExchanged(Mutant):
    """Writes each layer's cross value into the key slot and the key into the value slot (outputs misordered)."""

    because = causes.CROSS_KV_EXCHANGED
    shows_in = frozenset({loc.CROSS})

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        cross = set(kvslots.cross_slots(self.dims.n_text_layer))
        return logits, [kv[i ^ 1] if i in cross else s for i, s in enumerate(kv)]


class CrossFromZeroFeatures(Mutant):
    """Projects all-zero features into the cross K/V: the encoder output never reaches the decoder."""

    because = causes.CROSS_FROM_ZEROS
    shows_in = frozenset({loc.CROSS})

    def prefill(self, tokens, audio_features, kv):
        return super().prefill(tokens, [np.zeros_like(f) for f in audio_features], kv)


# ----------------------------------------------------------------------------------------------
# Caches that outlive their window or stop growing; counters; the fed token


class StaleCrossKV(Mutant):
    """Computes the cross K/V at the first prefill only and keeps them for every later window."""

    because = causes.CROSS_STALE
    shows_in = frozenset({loc.CROSS})
    replayable = False
    shares_cross_kv = False

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(checkpoint, tokenizer)
        self.kept: list[np.ndarray] | None = None

    def prefill(self, tokens, audio_features, kv):
        cross = kvslots.cross_slots(self.dims.n_text_layer)
        if self.kept is None or self.kept[0].shape[0] != len(audio_features):
            full = super().with_cross_kv(kv, np.concatenate(list(audio_features), axis=0))
            self.kept = [full[i] for i in cross]
        kv = list(kv)
        for i, slot in zip(cross, self.kept, strict=True):
            kv[i] = slot
        logits, present = decode(tokens, kv, self.weights, self.dims, all_positions=True)
        return logits, kvslots.remap_present(kv, present)


class SelfStateLeaks(Mutant):
    """Keeps its own self K/V from the previous window and prefills on top of it (the cache is never reset)."""

    because = causes.SELF_STATE_LEAKED
    shows_in = frozenset({loc.SHAPES})
    replayable = False

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(checkpoint, tokenizer)
        self.last: list[np.ndarray] | None = None

    def prefill(self, tokens, audio_features, kv):
        if self.last is not None and self.last[0].shape[0] == len(tokens):
            kv = kvslots.remap_present(kv, self.last)
        logits, kv = super().prefill(tokens, audio_features, kv)
        self.last = [kv[i] for i in kvslots.self_slots(self.dims.n_text_layer)]
        return logits, kv

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        self.last = present
        return logits, present


class PositionNotReset(HookedMutant):
    """Keeps counting decoder positions across windows: window 2 starts where window 1 ended."""

    because = causes.POSITION_NOT_RESET
    shows_in = frozenset({loc.INPUT})
    replayable = False

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(checkpoint, tokenizer)
        self.base = self.used = 0

    def embed(self, tokens, past):
        if past == 0:  # a new window: the counter should restart here, and does not
            self.base = self.used
        self.used = self.base + past + tokens.shape[1]
        return super().embed(tokens, self.base + past)


class _CappedCache(Mutant):
    """A self cache allocated for `cap` positions."""

    cap = 4

    def keep(self, slot: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return logits, [self.keep(p) if p.shape[2] > self.cap else p for p in present]


class CacheCut(_CappedCache):
    """Stops appending once its self cache holds 4 positions (the newest are dropped)."""

    because = causes.CACHE_CUT
    shows_in = frozenset({loc.SHAPES})

    def keep(self, slot):
        return slot[:, :, : self.cap]


class CacheSliding(_CappedCache):
    """Keeps only the last 4 positions of its self cache (the start sequence is dropped first)."""

    because = causes.CACHE_SLIDING
    shows_in = frozenset({loc.SHAPES})

    def keep(self, slot):
        return slot[:, :, -self.cap:]


class PreviousTokenFed(Mutant):
    """Feeds each step the token given to the step before (an off-by-one in its token buffer)."""

    because = causes.WRONG_TOKEN_FED
    shows_in = frozenset({loc.INPUT})
    replayable = False  # its state is the token before: the signature rule replays the alternative token

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(checkpoint, tokenizer)
        self.previous: np.ndarray | None = None

    def prefill(self, tokens, audio_features, kv):
        self.previous = np.asarray(tokens)[:, -1]
        return super().prefill(tokens, audio_features, kv)

    def step(self, token, kv):
        fed, self.previous = self.previous, np.asarray(token)
        return super().step(fed, kv)


# ----------------------------------------------------------------------------------------------
# The logits


class VocabOneShort(Mutant):
    """Projects onto n_vocab - 1 rows: the last token of the vocabulary is missing."""

    because = causes.VOCAB_SHORT
    shows_in = frozenset({loc.SHAPES})

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        return logits[..., :-1], kv

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return logits[..., :-1], present


class NanLogits(Mutant):
    """Returns NaN logits from the steps (a 0/0 in a fused output kernel) while its slots stay finite."""

    because = causes.NAN_LOGITS
    shows_in = frozenset({loc.OUTPUT})

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return np.full_like(logits, np.nan), present


class LogitsScaled(Mutant):
    """Returns the logits divided by 2 (a sampling temperature applied inside the backend)."""

    because = causes.LOGITS_SCALED
    shows_in = frozenset({loc.OUTPUT})

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        return logits * np.float32(0.5), kv

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return logits * np.float32(0.5), present


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return (x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))).astype(np.float32)


class LogProbs(Mutant):
    """Returns log_softmax(logits) (an exported graph that ends in its LogSoftmax) instead of the logits."""

    because = causes.LOG_PROBS
    shows_in = frozenset({loc.OUTPUT})

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        return _log_softmax(logits), kv

    def step(self, token, kv):
        logits, present = super().step(token, kv)
        return _log_softmax(logits), present


class StartRowsCopied(Mutant):
    """Returns the last start position's logits for every start position (no_speech_prob is read at the first)."""

    because = causes.START_ROWS_COPIED
    shows_in = frozenset({loc.START_ROWS})

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        return np.repeat(logits[:, -1:], logits.shape[1], axis=1), kv


# ----------------------------------------------------------------------------------------------
# The encoder


class ConvStridesExchanged(HookedMutant):
    """Downsamples in the first convolution (stride 2) instead of the second."""

    because = causes.CONV_STRIDE
    shows_in = frozenset({loc.ENCODER})
    padding_ratio = 0.3  # the padding's constant frames convolve alike whatever the stride: only mixing reaches them

    def front_end(self, mel):
        return self.convolutions(mel, strides=(2, 1), pads=((1, 1), (1, 1)))


class ConvPaddedOneSide(HookedMutant):
    """Pads both convolutions by two frames on the right instead of one on each side."""

    because = causes.CONV_PADDING
    shows_in = frozenset({loc.ENCODER})
    padding_ratio = 0.12  # a one-frame shift moves the audio; constant padding frames shift onto themselves

    def front_end(self, mel):
        return self.convolutions(mel, strides=(1, 2), pads=((0, 2), (0, 2)))


class NoConvGelu(HookedMutant):
    """Leaves out the GELU after each front-end convolution."""

    because = causes.NO_CONV_GELU
    shows_in = frozenset({loc.ENCODER})
    padding_ratio = 0.94  # every frame's front-end output changes, padding included

    def front_end(self, mel):
        return self.convolutions(mel, strides=(1, 2), pads=((1, 1), (1, 1)), activation=lambda x: x)


class NoEncoderPositions(HookedMutant):
    """Adds no positional embedding after the convolutions."""

    because = causes.ENCODER_POSITION
    shows_in = frozenset({loc.ENCODER})

    def encoder_positions(self, x):
        return x


class NoLnPost(HookedMutant):
    """Returns the encoder's last residual stream without its final layer norm (ln_post)."""

    because = causes.NO_LN_POST
    shows_in = frozenset({loc.ENCODER})
    ln_post = False


class GeluTanh(HookedMutant):
    """Computes every GELU with the tanh approximation (a benign precision choice: tokens unchanged)."""

    because = causes.GELU_TANH
    shows_in = frozenset({loc.ENCODER})
    small_drift = True
    in_decoder = True

    def gelu(self, x):
        return gelu_tanh(x)


MUTANTS: dict[str, type[Mutant]] = {
    # the nine classics
    "wrong_start": WrongStartSequence,
    "zero_cross": ZeroCrossKV,
    "cross_wrong_input": CrossFromWrongInput,
    "swapped_slots": SwappedPresentSlots,
    "not_appended": PresentNotAppended,
    "position_off_by_one": PositionOffByOne,
    "no_final_ln": MissingFinalLayerNorm,
    "fp16_overflow": Fp16Overflow,
    "eot_ignored": EotIgnored,
    # inside the decoder layers
    "no_causal_mask": NoCausalMask,
    "attention_scale": AttentionScale,
    "softmax_wrong_axis": SoftmaxWrongAxis,
    "biases_dropped": BiasesDropped,
    "keys_prescaled": KeysPrescaled,
    # layouts and cross K/V
    "self_keys_transposed": SelfKeysTransposed,
    "cross_keys_transposed": CrossKeysTransposed,
    "heads_mixed": HeadsMixed,
    "cross_kv_exchanged": CrossKVExchanged,
    "cross_from_zero_features": CrossFromZeroFeatures,
    # state across windows and steps
    "stale_cross": StaleCrossKV,
    "self_state_leaks": SelfStateLeaks,
    "position_not_reset": PositionNotReset,
    "cache_cut": CacheCut,
    "cache_sliding": CacheSliding,
    "previous_token_fed": PreviousTokenFed,
    # the logits
    "vocab_one_short": VocabOneShort,
    "nan_logits": NanLogits,
    "logits_scaled": LogitsScaled,
    "log_probs": LogProbs,
    "start_rows_copied": StartRowsCopied,
    # the encoder
    # (replayed in this order: each encoder hypothesis costs one encoder pass, the likelier first)
    "no_conv_gelu": NoConvGelu,
    "conv_strides": ConvStridesExchanged,
    "conv_padding": ConvPaddedOneSide,
    "no_encoder_positions": NoEncoderPositions,
    "no_ln_post": NoLnPost,
    "gelu_tanh": GeluTanh,
}


def make_mutant(name: str, checkpoint: Checkpoint, tokenizer: Tokenizer) -> Mutant:
    mutant = MUTANTS[name](checkpoint, tokenizer)
    mutant.name = f"mutant:{name}"
    return mutant
