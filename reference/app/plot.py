"""`whisperkv trace --plot`: the KV cache's growth and each step's cross-attention over the audio.

matplotlib is an optional extra (`pip install 'whisperkv[plot]'`); nothing else imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import kv as kvslots
from ..decoding import DecodingResult
from ..files import atomic_path
from ..model import NumpyModel
from ..tokenizer import Tokenizer

SECONDS_PER_AUDIO_POSITION = 0.02  # the encoder's 1500 positions span 30 s


def cross_attention_map(model: NumpyModel, result: DecodingResult, audio_features: np.ndarray) -> np.ndarray:
    """Cross-attention of each chosen token's step over the audio, averaged over layers and heads.

    -> [n_steps, n_audio_ctx]: row i is the attention of the position whose logits chose token i
    (the last start token for the first, then each fed-back token), recomputed by the numpy reference.
    """
    fed = result.start_sequence + result.tokens  # every position the decoder saw
    weights = model.cross_attention(fed, audio_features)  # [layers, heads, len(fed), n_audio_ctx]
    first = len(result.start_sequence) - 1
    n_choices = len(result.tokens) + (1 if result.finished == "eot" else 0)
    return weights.mean(axis=(0, 1))[first : first + n_choices]


def kv_growth(result: DecodingResult, n_layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (step index, self length, cross length) after each transition, read from the trace events."""
    self_i, cross_i = kvslots.self_slots(n_layer)[0], kvslots.cross_slots(n_layer)[0]
    steps = np.array([e.step for e in result.events])
    self_len = np.array([e.slot_shapes[self_i][2] for e in result.events])
    cross_len = np.array([e.slot_shapes[cross_i][2] for e in result.events])
    return steps, self_len, cross_len


def plot_trace(path: str | os.PathLike, result: DecodingResult, attention: np.ndarray, tokenizer: Tokenizer,
               n_layer: int, title: str = "") -> Path:
    """Write a two-panel PNG atomically: slot lengths per transition, and attention per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, self_len, cross_len = kv_growth(result, n_layer)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), gridspec_kw={"height_ratios": [1, 2]})
    labels = [e.state.name.lower() for e in result.events]
    x = np.arange(len(steps))
    top.step(x, self_len, where="post", label=f"self slots ({2 * n_layer}): grow by one per step")
    top.step(x, cross_len, where="post", label=f"cross slots ({2 * n_layer}): written once by prefill")
    top.set_xticks(x, [f"{lab}\n{s}" if lab == "step" else lab for lab, s in zip(labels, steps, strict=True)],
                   fontsize=6)
    top.set_ylabel("positions per slot")
    top.set_yscale("symlog", linthresh=1)
    top.set_ylim(bottom=0)
    top.legend(fontsize=8)
    top.set_title(title or "KV cache per transition")
    chosen = [tokenizer.token_text(t) for t in result.tokens] + (["<|endoftext|>"] if result.finished == "eot" else [])
    seconds = attention.shape[1] * SECONDS_PER_AUDIO_POSITION
    bottom.imshow(attention, aspect="auto", interpolation="nearest", extent=(0, seconds, len(chosen) - 0.5, -0.5))
    bottom.set_yticks(range(len(chosen)), chosen, fontsize=6)
    bottom.set_xlabel("audio (s)")
    bottom.set_ylabel("token chosen at this step")
    bottom.set_title("cross-attention of each step over the audio (mean over layers and heads)")
    fig.tight_layout()
    target = Path(path)
    try:
        with atomic_path(target, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return target
