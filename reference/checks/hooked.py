"""The reference's forward pass with seams: the mutants that break an operation inside a layer override one,
and every intermediate can be recorded under its name.

`Hooked` computes exactly what reference/model.py computes (tests/test_signatures.py checks it bit for bit),
from model.py's own building blocks, but routes each operation a port gets wrong through a method: the
convolution front end, GELU, the attention (per place: encoder, decoder self, decoder cross), the positions.
A mutant is then one small override, and model.py stays free of hooks.

`intermediates(call, *args)` runs one protocol call (`encode`, `prefill` or `step`) and returns every
intermediate in computation order, named as openai-whisper's modules are (`decoder.blocks.0.attn.scores`,
`encoder.conv1`, ...): the optional hook through which `verify` finds the first operation that differs
(docs/verify.md). A python candidate that implements the same method with the same names gets that too; an
ONNX candidate exported by whisperkv gets it through its node names, which are these (checks/onnx_probe.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kv as kvslots
from ..model import NumpyModel, conv1d, gelu, layer_norm, linear, merge_heads, softmax, split_heads

ENCODER, SELF, CROSS = "encoder", "self", "cross"  # where an attention runs
_MODULE = {ENCODER: "attn", SELF: "attn", CROSS: "cross_attn"}  # its module name in a block


class Hooked(NumpyModel):
    """NumpyModel, written with one method per operation a mutant may replace."""

    ln_post = True
    attention_scale_power = -0.5  # scores = q k^T * head_dim ** power
    _trace: list[tuple[str, np.ndarray]] | None = None  # set while intermediates() runs
    _block = ""  # the block being computed: the prefix of its intermediates' names

    def record(self, name: str, x: np.ndarray) -> np.ndarray:
        """Keep `x` as the intermediate `name` (under the current block for a name starting with '.')."""
        if self._trace is not None:
            self._trace.append((self._block + name if name.startswith(".") else name, np.array(x)))
        return x

    def intermediates(self, call: str, *args: Any) -> list[tuple[str, np.ndarray]]:
        """Run encode, prefill or step on `args`; -> every intermediate (name, value), in computation order."""
        self._trace = []
        try:
            getattr(self, call)(*args)
            return self._trace
        finally:
            self._trace = None

    # ---- encoder
    def encode(self, mel: np.ndarray) -> np.ndarray:
        want = (1, self.dims.n_mels, self.dims.n_mel_frames)
        if mel.shape != want:
            raise ValueError(f"encode expects a mel of shape {want}, got {mel.shape}")
        w = self.weights
        x = self.front_end(mel[0].astype(np.float32))  # [ctx, d]
        x = self.record("encoder.positional_embedding", self.encoder_positions(x))[None]
        for i in range(self.dims.n_audio_layer):
            x = self.encoder_block(x, f"encoder.blocks.{i}")
        x = x[0]
        if self.ln_post:
            x = self.record("encoder.ln_post", layer_norm(x, w["encoder.ln_post.weight"], w["encoder.ln_post.bias"]))
        return x[None]

    def front_end(self, mel: np.ndarray) -> np.ndarray:  # [n_mels, 2 ctx] -> [ctx, d]
        w = self.weights
        x = self.record("encoder.conv1", conv1d(mel, w["encoder.conv1.weight"], w["encoder.conv1.bias"], stride=1))
        x = self.record("encoder.conv1.gelu", self.gelu(x))
        x = self.record("encoder.conv2", conv1d(x.T, w["encoder.conv2.weight"], w["encoder.conv2.bias"], stride=2))
        return self.record("encoder.conv2.gelu", self.gelu(x))

    def encoder_positions(self, x: np.ndarray) -> np.ndarray:
        return x + self.weights["encoder.positional_embedding"]

    def encoder_block(self, x: np.ndarray, p: str) -> np.ndarray:
        w, n_head = self.weights, self.dims.n_audio_head
        self._block = p
        h = self.record(".attn_ln", layer_norm(x, w[f"{p}.attn_ln.weight"], w[f"{p}.attn_ln.bias"]))
        q = split_heads(self.record(".attn.query", linear(h, w[f"{p}.attn.query.weight"], w[f"{p}.attn.query.bias"])),
                        n_head)
        k = split_heads(self.record(".attn.key", linear(h, w[f"{p}.attn.key.weight"])), n_head)
        v = split_heads(self.record(".attn.value", linear(h, w[f"{p}.attn.value.weight"], w[f"{p}.attn.value.bias"])),
                        n_head)
        a = self.attention(q, k, v, ENCODER)
        x = self.record(".attn.residual", x + self.record(".attn.out", linear(
            merge_heads(a), w[f"{p}.attn.out.weight"], w[f"{p}.attn.out.bias"])))
        return self.record(".mlp.residual", x + self.mlp(x, p))

    def mlp(self, x: np.ndarray, p: str) -> np.ndarray:
        w = self.weights
        h = self.record(".mlp_ln", layer_norm(x, w[f"{p}.mlp_ln.weight"], w[f"{p}.mlp_ln.bias"]))
        h = self.record(".mlp.gelu", self.gelu(self.record(".mlp.0", linear(h, w[f"{p}.mlp.0.weight"],
                                                                            w[f"{p}.mlp.0.bias"]))))
        return self.record(".mlp.2", linear(h, w[f"{p}.mlp.2.weight"], w[f"{p}.mlp.2.bias"]))

    def gelu(self, x: np.ndarray) -> np.ndarray:
        return gelu(x)

    # ---- attention
    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, where: str, q_offset: int | None = None
                  ) -> np.ndarray:
        scores = (q * np.float32(q.shape[-1] ** self.attention_scale_power)) @ k.transpose(0, 1, 3, 2)
        if q_offset is not None and scores.shape[-2] > 1:
            scores = self.mask(scores, q_offset)
        return self.weigh(scores, v, where)

    def weigh(self, scores: np.ndarray, v: np.ndarray, where: str) -> np.ndarray:
        """Scores (masked) -> the attention's weighted values; both recorded."""
        module = _MODULE[where]
        self.record(f".{module}.scores", scores)
        return self.record(f".{module}.weights", self.normalise(scores, where)) @ v

    def mask(self, scores: np.ndarray, q_offset: int) -> np.ndarray:
        n_q, n_kv = scores.shape[-2:]
        future = np.arange(n_kv)[None, :] > (q_offset + np.arange(n_q))[:, None]
        return np.where(future, np.float32(-np.inf), scores)

    def normalise(self, scores: np.ndarray, where: str) -> np.ndarray:
        return softmax(scores)

    # ---- decoder
    def prefill(self, tokens, audio_features, kv):
        kv = self.with_cross_kv(kv, np.concatenate(list(audio_features), axis=0))
        logits, present = self.decode(np.asarray(tokens), kv, all_positions=True)
        return logits, kvslots.remap_present(kv, present)

    def step(self, tokens, kv):
        return self.decode(np.asarray(tokens).reshape(-1, 1), kv)

    def decode(self, tokens: np.ndarray, kv: list[np.ndarray], all_positions: bool = False
               ) -> tuple[np.ndarray, list[np.ndarray]]:
        w, dims = self.weights, self.dims
        past = kvslots.self_length(kv)
        tokens = np.asarray(tokens, dtype=np.int64)
        x = self.record("decoder.embedding", self.embed(tokens, past))
        present = []
        for i in range(dims.n_text_layer):
            slot = [kv[kvslots.slot_index(i, kind)] for kind in kvslots.SlotKind]
            x, k, v = self.decoder_block(x, i, *slot)
            present += [k, v]
        x = x if all_positions else x[:, -1]
        if self.final_ln:
            x = self.record("decoder.ln", layer_norm(x, w["decoder.ln.weight"], w["decoder.ln.bias"]))
        return self.record("decoder.logits", x @ w["decoder.token_embedding.weight"].T), present

    def embed(self, tokens: np.ndarray, past: int) -> np.ndarray:  # [b, n] -> [b, n, d]
        w = self.weights
        return w["decoder.token_embedding.weight"][tokens] + w["decoder.positional_embedding"][past: past +
                                                                                                tokens.shape[1]]

    def decoder_block(self, x, layer, past_k, past_v, cross_k, cross_v):
        w, n_head = self.weights, self.dims.n_text_head
        p = self._block = f"decoder.blocks.{layer}"
        h = self.record(".attn_ln", layer_norm(x, w[f"{p}.attn_ln.weight"], w[f"{p}.attn_ln.bias"]))
        q = split_heads(self.record(".attn.query", linear(h, w[f"{p}.attn.query.weight"], w[f"{p}.attn.query.bias"])),
                        n_head)
        k = np.concatenate([past_k, split_heads(self.record(".attn.key", linear(h, w[f"{p}.attn.key.weight"])),
                                                n_head)], axis=2)
        v = np.concatenate([past_v, split_heads(self.record(".attn.value", linear(
            h, w[f"{p}.attn.value.weight"], w[f"{p}.attn.value.bias"])), n_head)], axis=2)
        a = self.attention(q, k, v, SELF, q_offset=past_k.shape[2])
        x = self.record(".attn.residual", x + self.record(".attn.out", linear(
            merge_heads(a), w[f"{p}.attn.out.weight"], w[f"{p}.attn.out.bias"])))
        h = self.record(".cross_attn_ln", layer_norm(x, w[f"{p}.cross_attn_ln.weight"], w[f"{p}.cross_attn_ln.bias"]))
        q = split_heads(self.record(".cross_attn.query", linear(h, w[f"{p}.cross_attn.query.weight"],
                                                                w[f"{p}.cross_attn.query.bias"])), n_head)
        a = self.attention(q, cross_k, cross_v, CROSS)
        x = self.record(".cross_attn.residual", x + self.record(".cross_attn.out", linear(
            merge_heads(a), w[f"{p}.cross_attn.out.weight"], w[f"{p}.cross_attn.out.bias"])))
        return self.record(".mlp.residual", x + self.mlp(x, p)), k, v


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """The tanh approximation of GELU (PyTorch's approximate="tanh", used by many ports)."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    return 0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def conv1d_padded(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, left: int, right: int) -> np.ndarray:
    """model.conv1d with explicit padding: [c_in, t] -> [t_out, c_out]."""
    c_out, c_in, k = w.shape
    padded = np.pad(x, ((0, 0), (left, right)))
    t_out = (padded.shape[1] - k) // stride + 1
    cols = np.stack([padded[:, j: j + stride * t_out: stride] for j in range(k)], axis=-1)
    cols = cols.transpose(1, 0, 2).reshape(t_out, c_in * k)
    return cols @ w.reshape(c_out, c_in * k).T + b


def operation_name(name: str) -> str:
    """'decoder.blocks.0.attn.scores' -> 'decoder layer 0, self-attention scores' (for reports)."""
    parts = name.split(".")
    words = {"attn": "self-attention" if parts[0] == "decoder" else "attention", "cross_attn": "cross-attention",
             "attn_ln": "attention layer norm", "cross_attn_ln": "cross-attention layer norm",
             "mlp_ln": "MLP layer norm", "mlp": "MLP", "0": "first linear", "2": "second linear",
             "query": "query projection", "key": "key projection", "value": "value projection",
             "out": "output projection", "positional_embedding": "positional embedding", "ln_post": "final layer norm",
             "ln": "final layer norm"}
    if len(parts) > 2 and parts[1] == "blocks":
        rest = " ".join(words.get(p, p) for p in parts[3:])
        return f"{parts[0]} layer {parts[2]}, {rest}"
    return f"{parts[0]} " + " ".join(words.get(p, p) for p in parts[1:])
