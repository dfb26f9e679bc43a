"""The `whisperkv` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .audio import AudioError, load_audio
from .registry import BackendUnavailable
from .tokenizer import TokenizerError
from .weights import CheckpointError

EXIT_BAD_INPUT = 2
_INPUT_ERRORS = (AudioError, CheckpointError, TokenizerError, BackendUnavailable, FileNotFoundError)


def _transcribe(args: argparse.Namespace) -> int:
    from .transcribe import load_model

    # Read every file before printing anything: a bad file fails the run with no partial output.
    audio = [(path, load_audio(path)) for path in args.audio]
    model = load_model(args.model, backend=args.backend)
    for path, samples in audio:
        t = model.transcribe(samples, language=args.language, task=args.task)
        t.audio = path
        if args.format == "json":
            print(json.dumps(t.as_dict(), ensure_ascii=False), flush=True)
        else:
            print(t.text if len(audio) == 1 else f"{path}: {t.text}", flush=True)
    return 0


def _windows(samples, n_mels: int, n_frames: int) -> list:
    from .audio import mel_windows

    return [mel for _, mel in mel_windows(samples, n_mels, n_frames)]


def _trace(args: argparse.Namespace) -> int:
    from .trace import format_trace
    from .transcribe import load_model

    samples = load_audio(args.audio)  # fail on bad audio before loading a model
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("whisperkv: error: --plot needs matplotlib (pip install 'whisperkv[plot]')", file=sys.stderr)
            return EXIT_BAD_INPUT
    model = load_model(args.model, backend=args.backend)
    from .audio import HOP_LENGTH, SAMPLE_RATE, mel_windows

    for index, (seek, mel) in enumerate(mel_windows(samples, model.dims.n_mels, model.dims.n_mel_frames)):
        result = model.decode(mel, trace=True)
        print(f"# window {index} ({seek * HOP_LENGTH / SAMPLE_RATE:g} s), backend {model.backend.name}")
        for line in format_trace(result.events, model.tokenizer, model.dims.n_text_layer, result.finished):
            print(line)
        print(f"# text: {result.text}")
        if args.plot and index == 0:
            from .model import NumpyModel
            from .plot import cross_attention_map, plot_trace

            # attention weights are not part of the backend protocol: the reference recomputes them
            # for the tokens the traced backend chose
            reference = NumpyModel(model.checkpoint)
            attention = cross_attention_map(reference, result, reference.encode(mel[None]))
            plot_trace(args.plot, result, attention, model.tokenizer, model.dims.n_text_layer,
                       title=f"{args.audio}: KV cache per transition (backend {model.backend.name})")
            print(f"# plot: {args.plot} (first window)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .model import NumpyModel
    from .registry import resolve_candidate
    from .tokenizer import Tokenizer
    from .verify import Tolerance, verify
    from .weights import load_checkpoint

    samples = load_audio(args.audio)
    checkpoint = load_checkpoint(args.model)
    tokenizer = Tokenizer(checkpoint.tokenizer_path, multilingual=checkpoint.dims.is_multilingual)
    candidate = resolve_candidate(args.candidate, checkpoint, tokenizer)
    windows = _windows(samples, checkpoint.dims.n_mels, checkpoint.dims.n_mel_frames)
    report = verify(NumpyModel(checkpoint), candidate, tokenizer, checkpoint, windows, audio=args.audio,
                    tolerance=Tolerance(relative=args.tolerance))
    if args.format == "json":
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        print("\n".join(describe(report, tokenizer)))
    return 0 if report.agree else 1


def describe(report, tokenizer) -> list[str]:
    """The text form of a verification report."""
    lines = [f"verify {report.audio}: candidate {report.candidate} vs reference numpy, {report.windows} window(s)"]
    if report.agree:
        lines.append(f"AGREE: {report.steps} steps compared, {report.ties} tie(s)")
        return lines
    s, d = report.first_divergence, report.diagnosis
    lines.append(f"DIVERGE at window {s.window}, {s.stage} step {s.step}: {s.reason}")
    if s.stage != "encode":
        lines.append(f"  input      {' '.join(tokenizer.token_text(t) for t in s.input_tokens)}")
        lines.append(f"  reference  chose {tokenizer.token_text(s.ref_token)!r}; top-5 "
                     + ", ".join(f"{tokenizer.token_text(i)!r} {v:.3f}" for i, v in s.ref_top))
        lines.append(f"  candidate  chose {tokenizer.token_text(s.cand_token)!r}; top-5 "
                     + ", ".join(f"{tokenizer.token_text(i)!r} {v:.3f}" for i, v in s.cand_top))
        lines.append(f"  logits     max |Δ| {s.max_abs:.3g} (reference scale {s.scale:.3g})")
        for i, delta in enumerate(s.slot_max_abs):
            if delta is None and s.ref_slot_shapes[i] == s.cand_slot_shapes[i]:
                continue  # not compared at this stage
            shown = (f"max |Δ| {delta:.3g}" if delta is not None
                     else f"shape {s.cand_slot_shapes[i]} != reference {s.ref_slot_shapes[i]}")
            lines.append(f"  slot {i:>2}    {shown}")
    lines.append(f"DIAGNOSIS: {d.cause}: {d.explanation}")
    lines.append(f"  evidence: {d.evidence}")
    return lines


def _compile(args: argparse.Namespace) -> int:
    import importlib

    from .weights import load_checkpoint

    checkpoint = load_checkpoint(args.model)
    try:
        tvm_backend = importlib.import_module("backends.tvm")
    except ImportError as e:
        print(f"whisperkv: error: the tvm backend needs apache-tvm (pip install 'whisperkv[tvm]'): {e}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    path = tvm_backend.ensure_compiled(checkpoint, force=args.force)
    print(path)
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

    tr = sub.add_parser("trace", help="print the state machine's transitions and the KV slots, step by step")
    tr.add_argument("audio")
    tr.add_argument("--backend", default="numpy", choices=available_backends())
    tr.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    tr.add_argument("--plot", default=None, metavar="FILE.png",
                    help="draw the KV cache growth and each step's cross-attention (needs matplotlib)")
    tr.set_defaults(run=_trace)

    v = sub.add_parser("verify", help="run a candidate beside the reference and report the first divergence")
    v.add_argument("audio")
    v.add_argument("--candidate", required=True,
                   help="backend name, mutant:NAME, python:MODULE:FACTORY, or a folder (ONNX export, libraries)")
    v.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    v.add_argument("--format", default="text", choices=["text", "json"])
    v.add_argument("--tolerance", type=float, default=1e-3,
                   help="relative tolerance on features, logits and slots (default 1e-3: fp32 backends)")
    v.set_defaults(run=_verify)

    c = sub.add_parser("compile", help="compile the TVM library for a checkpoint's shape into the cache")
    c.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    c.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    c.set_defaults(run=_compile)

    try:  # backends/ only lazily: the onnx package is imported only when the command runs
        from backends.onnx.cli import add_cli as add_onnx_cli
    except ImportError:
        pass
    else:
        add_onnx_cli(sub)
    return parser


def _input_errors() -> tuple[type[BaseException], ...]:
    """The input errors above plus the backends' own (a damaged ONNX folder or TVM library), when loaded."""
    errors: tuple[type[BaseException], ...] = _INPUT_ERRORS
    for module, name in (("backends.onnx.folder", "OnnxFolderError"), ("backends.tvm.compile", "LibraryMismatchError")):
        loaded = sys.modules.get(module)  # only a module that ran can have raised: never import tvm for this
        if loaded is not None:
            errors += (getattr(loaded, name),)
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _input_errors() as e:
        print(f"whisperkv: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
