"""Whisper in numpy: the reference every other backend is checked against.

Written to be read next to the paper: one small function per idea, a shape comment on each, float32
throughout. `NumpyModel` implements the backend protocol (reference/backend.py) on top of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import kv as kvslots
from .dims import ModelDims
from .weights import Checkpoint, Weights

LN_EPS = 1e-5  # PyTorch's LayerNorm default, which Whisper was trained with


# ----------------------------------------------------------------------------------------------
# Building blocks


def gelu(x: np.ndarray) -> np.ndarray:  # [...] -> [...]
    # The exact erf form (torch.nn.GELU's default), not the tanh approximation.
    return 0.5 * x * (1.0 + erf(x * np.float32(1.0 / math.sqrt(2.0))))


def erf(x: np.ndarray) -> np.ndarray:  # [...] float32 -> [...] float32
    # numpy has no erf. Numerical Recipes' Chebyshev fit of erfc: relative error < 1.2e-7 in exact
    # arithmetic, about one float32 ulp; evaluated in float32 (in place, for speed) it stays within
    # a few ulp of math.erf, far below what any backend comparison can see.
    z = np.abs(x, dtype=np.float32)
    t = 1.0 / (1.0 + 0.5 * z)
    coefficients = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
                    0.37409196, 1.00002368)
    poly = np.full_like(t, coefficients[0])
    for c in coefficients[1:]:  # Horner
        poly *= t
        poly += np.float32(c)
    poly *= t
    poly -= np.float32(1.26551223)
    poly -= z * z
    erfc = np.exp(poly, out=poly)
    erfc *= t
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:  # [n, d] -> [n, d]
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(LN_EPS)) * g + b


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:  # [..., in] -> [..., out]
    # One 2-D matmul over all rows: a stacked [b, n, in] @ [in, out] would read the weights once per row.
    y = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0])
    return y if b is None else y + b


def conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    # [c_in, t] -> [t_out, c_out], kernel 3, padding 1: gather the 3 taps (im2col), then one matmul.
    c_out, c_in, k = w.shape
    padded = np.pad(x, ((0, 0), (1, 1)))  # [c_in, t + 2]
    t_out = (padded.shape[1] - k) // stride + 1
    cols = np.stack([padded[:, j : j + stride * t_out : stride] for j in range(k)], axis=-1)  # [c_in, t_out, k]
    cols = cols.transpose(1, 0, 2).reshape(t_out, c_in * k)  # [t_out, c_in * k]
    return cols @ w.reshape(c_out, c_in * k).T + b  # [t_out, c_out]


def softmax(x: np.ndarray) -> np.ndarray:  # [..., n] -> [..., n], overwriting x (scores are temporaries)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:  # [b, n, d] -> [b, n_head, n, d / n_head]
    b, n, d = x.shape
    return x.reshape(b, n, n_head, d // n_head).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:  # [b, n_head, n, head_dim] -> [b, n, n_head * head_dim]
    b, h, n, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * hd)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_offset: int | None = None,
              record: list | None = None, record_scores: list | None = None) -> np.ndarray:
    # q [b, h, n_q, hd], k/v [b, h, n_kv, hd] -> [b, h, n_q, hd]: each row attends to its own keys.
    # With q_offset (causal self-attention), query i sits at absolute position q_offset + i and may
    # only look at keys 0 .. q_offset + i. `record` collects the attention weights (for plots),
    # `record_scores` the scores before the softmax (word timestamps re-normalise them over the audio).
    # q k^T / sqrt(d). openai-whisper scales q and k by d^-1/4 each; scaling q alone is the same math
    # and does not rescale the whole cached K at every step.
    scores = (q * np.float32(q.shape[-1] ** -0.5)) @ k.transpose(0, 1, 3, 2)  # [b, h, n_q, n_kv]
    if q_offset is not None and scores.shape[-2] > 1:  # one query at the end sees every key: nothing to mask
        n_q, n_kv = scores.shape[-2:]
        future = np.arange(n_kv)[None, :] > (q_offset + np.arange(n_q))[:, None]  # [n_q, n_kv]
        scores = np.where(future, np.float32(-np.inf), scores)
    if record_scores is not None:
        record_scores.append(scores.copy())  # softmax below overwrites scores in place
    probs = softmax(scores)  # [b, h, n_q, n_kv]
    if record is not None:
        record.append(probs)
    return probs @ v


# ----------------------------------------------------------------------------------------------
# Encoder


def encoder_block(x: np.ndarray, w: Weights, p: str, n_head: int) -> np.ndarray:  # [1, n, d] -> [1, n, d]
    h = layer_norm(x, w[f"{p}.attn_ln.weight"], w[f"{p}.attn_ln.bias"])
    q = split_heads(linear(h, w[f"{p}.attn.query.weight"], w[f"{p}.attn.query.bias"]), n_head)
    k = split_heads(linear(h, w[f"{p}.attn.key.weight"]), n_head)
    v = split_heads(linear(h, w[f"{p}.attn.value.weight"], w[f"{p}.attn.value.bias"]), n_head)
    x = x + linear(merge_heads(attention(q, k, v)), w[f"{p}.attn.out.weight"], w[f"{p}.attn.out.bias"])
    return x + mlp(x, w, p)


def mlp(x: np.ndarray, w: Weights, p: str) -> np.ndarray:  # [..., d] -> [..., d]
    h = layer_norm(x, w[f"{p}.mlp_ln.weight"], w[f"{p}.mlp_ln.bias"])
    h = gelu(linear(h, w[f"{p}.mlp.0.weight"], w[f"{p}.mlp.0.bias"]))  # [..., 4d]
    return linear(h, w[f"{p}.mlp.2.weight"], w[f"{p}.mlp.2.bias"])


def encode(mel: np.ndarray, w: Weights, dims: ModelDims) -> np.ndarray:
    # [n_mels, 2 * n_audio_ctx] -> [n_audio_ctx, n_audio_state]
    x = gelu(conv1d(mel, w["encoder.conv1.weight"], w["encoder.conv1.bias"], stride=1))  # [2 ctx, d]
    x = gelu(conv1d(x.T, w["encoder.conv2.weight"], w["encoder.conv2.bias"], stride=2))  # [ctx, d]
    x = (x + w["encoder.positional_embedding"])[None]  # [1, ctx, d]: the attention takes a batch axis
    for i in range(dims.n_audio_layer):
        x = encoder_block(x, w, f"encoder.blocks.{i}", dims.n_audio_head)
    return layer_norm(x[0], w["encoder.ln_post.weight"], w["encoder.ln_post.bias"])


# ----------------------------------------------------------------------------------------------
# Decoder


def cross_kv(audio: np.ndarray, w: Weights, layer: int, n_head: int) -> tuple[np.ndarray, np.ndarray]:
    # [b, n_audio_ctx, d] -> key, value [b, n_head, n_audio_ctx, head_dim]: computed once per window.
    p = f"decoder.blocks.{layer}.cross_attn"
    k = split_heads(linear(audio, w[f"{p}.key.weight"]), n_head)
    v = split_heads(linear(audio, w[f"{p}.value.weight"], w[f"{p}.value.bias"]), n_head)
    return k, v


def decoder_block(
    x: np.ndarray, w: Weights, layer: int, n_head: int, past_k: np.ndarray, past_v: np.ndarray,
    cross_k: np.ndarray, cross_v: np.ndarray, record: list | None = None, record_scores: list | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # x [b, n, d], past self K/V [b, h, past, hd], cross K/V [b, h, n_audio_ctx, hd]
    #   -> x [b, n, d], present self K/V [b, h, past + n, hd]
    p = f"decoder.blocks.{layer}"
    h = layer_norm(x, w[f"{p}.attn_ln.weight"], w[f"{p}.attn_ln.bias"])
    q = split_heads(linear(h, w[f"{p}.attn.query.weight"], w[f"{p}.attn.query.bias"]), n_head)
    k = np.concatenate([past_k, split_heads(linear(h, w[f"{p}.attn.key.weight"]), n_head)], axis=2)
    v = np.concatenate([past_v, split_heads(linear(h, w[f"{p}.attn.value.weight"], w[f"{p}.attn.value.bias"]),
                                            n_head)], axis=2)
    a = attention(q, k, v, q_offset=past_k.shape[2])
    x = x + linear(merge_heads(a), w[f"{p}.attn.out.weight"], w[f"{p}.attn.out.bias"])

    h = layer_norm(x, w[f"{p}.cross_attn_ln.weight"], w[f"{p}.cross_attn_ln.bias"])
    q = split_heads(linear(h, w[f"{p}.cross_attn.query.weight"], w[f"{p}.cross_attn.query.bias"]), n_head)
    a = attention(q, cross_k, cross_v, record=record, record_scores=record_scores)
    x = x + linear(merge_heads(a), w[f"{p}.cross_attn.out.weight"], w[f"{p}.cross_attn.out.bias"])
    return x + mlp(x, w, p), k, v


def decode(
    tokens: Sequence[int], kv: list[np.ndarray], w: Weights, dims: ModelDims, all_positions: bool = False,
    final_ln: bool = True, cross_record: list | None = None, cross_scores: list | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    # tokens [b, n], kv: 4 * n_text_layer slots of b rows with self length `past`
    #   -> logits [b, n_vocab] (last position) or [b, n, n_vocab], present self slots (2 per layer, layer-major)
    # cross_record, when given, receives each layer's cross-attention weights [b, h, n, n_audio_ctx];
    # cross_scores the same layers' scores before the softmax, q k^T / sqrt(head_dim).
    past = kvslots.self_length(kv)
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.shape[1]
    if past + n > dims.n_text_ctx:
        raise ValueError(f"decoder context overflow: {past} + {n} positions > n_text_ctx {dims.n_text_ctx}")
    if tokens.shape[0] != kvslots.batch_size(kv):
        raise ValueError(f"{tokens.shape[0]} rows of tokens for slots of {kvslots.batch_size(kv)} rows")
    x = w["decoder.token_embedding.weight"][tokens] + w["decoder.positional_embedding"][past : past + n]
    present = []
    for i in range(dims.n_text_layer):
        slot = {kind: kv[kvslots.slot_index(i, kind)] for kind in kvslots.SlotKind}
        x, k, v = decoder_block(x, w, i, dims.n_text_head, slot[kvslots.SlotKind.SELF_KEY],
                                slot[kvslots.SlotKind.SELF_VALUE], slot[kvslots.SlotKind.CROSS_KEY],
                                slot[kvslots.SlotKind.CROSS_VALUE], record=cross_record,
                                record_scores=cross_scores)
        present += [k, v]
    x = x if all_positions else x[:, -1]
    if final_ln:  # always, but for the mutant that shows what forgetting it looks like
        x = layer_norm(x, w["decoder.ln.weight"], w["decoder.ln.bias"])
    return x @ w["decoder.token_embedding.weight"].T, present  # tied output projection


def cross_attention_scores(
    tokens: Sequence[int], cross: Sequence[tuple[np.ndarray, np.ndarray]], w: Weights, dims: ModelDims
) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass over `tokens` given each layer's cross K/V: what word timestamps need.

    cross[i] = (key, value) [1, n_text_head, n_audio_ctx, head_dim] of decoder layer i, e.g. a backend's
    cross slots as numpy. Returns the logits of every position [n, n_vocab] and every layer's
    cross-attention scores before the softmax [n_text_layer, n_text_head, n, n_audio_ctx].
    """
    if len(cross) != dims.n_text_layer:
        raise ValueError(f"{len(cross)} cross K/V pairs for {dims.n_text_layer} decoder layers")
    kv = []
    for k, v in cross:  # the slot order of reference/kv.py: self key, self value, cross key, cross value
        empty = np.zeros((1, dims.n_text_head, 0, dims.text_head_dim), np.float32)
        kv += [empty, empty, np.asarray(k, np.float32), np.asarray(v, np.float32)]
    scores: list[np.ndarray] = []
    logits, _ = decode([list(tokens)], kv, w, dims, all_positions=True, cross_scores=scores)
    return logits[0], np.concatenate(scores, axis=0)


# ----------------------------------------------------------------------------------------------
# The backend


class NumpyModel:
    """The pure-numpy backend. Slow on purpose only where speed would hide the math."""

    name = "numpy"
    final_ln = True
    max_batch = None  # any number of rows

    def __init__(self, checkpoint: Checkpoint | tuple[ModelDims, Weights]) -> None:
        if isinstance(checkpoint, Checkpoint):
            self.dims, self.weights = checkpoint.dims, checkpoint.weights
        else:
            self.dims, self.weights = checkpoint

    def encode(self, mel: np.ndarray) -> np.ndarray:
        # [1, n_mels, 2 * n_audio_ctx] -> [1, n_audio_ctx, n_audio_state]
        want = (1, self.dims.n_mels, self.dims.n_mel_frames)
        if mel.shape != want:
            raise ValueError(f"encode expects a mel of shape {want}, got {mel.shape}")
        return encode(mel[0].astype(np.float32), self.weights, self.dims)[None]

    def zero_kv(self, batch: int = 1) -> list[np.ndarray]:
        n = kvslots.n_slots(self.dims.n_text_layer)
        return [np.zeros(kvslots.slot_shape(self.dims, i, 0, batch), np.float32) for i in range(n)]

    def prefill(
        self, tokens: np.ndarray, audio_features: Sequence[np.ndarray], kv: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        # tokens [b, n], b features [1, n_audio_ctx, d] -> logits [b, n, n_vocab], all slots of b rows.
        # The cross slots of `kv` are placeholders: cross K/V are computed here from the audio.
        kv = self.with_cross_kv(kv, np.concatenate(list(audio_features), axis=0))
        logits, present = decode(tokens, kv, self.weights, self.dims, all_positions=True, final_ln=self.final_ln)
        return logits, kvslots.remap_present(kv, present)

    def with_cross_kv(self, kv: list[np.ndarray], audio_features: np.ndarray) -> list[np.ndarray]:
        """A copy of `kv` whose cross slots hold the K/V projections of the audio features [b, ctx, d]."""
        kv = list(kv)
        for i in range(self.dims.n_text_layer):
            k, v = cross_kv(audio_features, self.weights, i, self.dims.n_text_head)
            kv[kvslots.slot_index(i, kvslots.SlotKind.CROSS_KEY)] = k
            kv[kvslots.slot_index(i, kvslots.SlotKind.CROSS_VALUE)] = v
        return kv

    def step(self, tokens: np.ndarray, kv: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        # tokens [b] -> logits [b, n_vocab], present self slots [b, h, past + 1, hd]
        return decode(np.asarray(tokens).reshape(-1, 1), kv, self.weights, self.dims, final_ln=self.final_ln)

    def select(self, kv: list[np.ndarray], rows: Sequence[int]) -> list[np.ndarray]:
        index = kvslots.check_rows(rows, kvslots.batch_size(kv))
        return [slot[index] for slot in kv]  # fancy indexing: a copy, in the order asked

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def cross_attention(self, tokens: Sequence[int], audio_features: np.ndarray) -> np.ndarray:
        """Cross-attention weights of every position over the audio: [n_layer, n_head, n, n_audio_ctx]."""
        kv = self.with_cross_kv(self.zero_kv(), audio_features)
        record: list[np.ndarray] = []
        decode([list(tokens)], kv, self.weights, self.dims, all_positions=True, cross_record=record)
        return np.concatenate(record, axis=0)
