"""The `whisperkv` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .audio import AudioError, load_audio
from .tokenizer import TokenizerError
from .weights import CheckpointError

EXIT_BAD_INPUT = 2
_INPUT_ERRORS = (AudioError, CheckpointError, TokenizerError, FileNotFoundError)


def _transcribe(args: argparse.Namespace) -> int:
    from .transcribe import load_model

    # Read every file before printing anything: a bad file fails the run with no partial output.
    audio = [(path, load_audio(path)) for path in args.audio]
    model = load_model(args.model, backend=args.backend)
    lines = []
    for path, samples in audio:
        t = model.transcribe(samples, language=args.language, task=args.task)
        t.audio = path
        if args.format == "json":
            lines.append(json.dumps({
                "audio": path, "backend": t.backend, "text": t.text, "tokens": t.tokens,
                "windows": [{"start": w.start, "tokens": w.tokens, "no_speech_prob": w.no_speech_prob,
                             "avg_logprob": w.avg_logprob, "finished": w.finished} for w in t.windows],
                "no_speech_prob": t.no_speech_prob, "avg_logprob": t.avg_logprob,
            }, ensure_ascii=False))
        else:
            lines.append(t.text if len(audio) == 1 else f"{path}: {t.text}")
        print(lines[-1], flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .registry import available_backends

    parser = argparse.ArgumentParser(prog="whisperkv", description="Whisper through a decoding loop you can check.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transcribe", help="transcribe audio files (greedy, no timestamps)")
    t.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, ...; any rate and channel count)")
    t.add_argument("--backend", default="numpy", choices=available_backends())
    t.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    t.add_argument("--format", default="txt", choices=["txt", "json"])
    t.add_argument("--language", default=None, help="language code (multilingual checkpoints)")
    t.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    t.set_defaults(run=_transcribe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _INPUT_ERRORS as e:
        print(f"whisperkv: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
