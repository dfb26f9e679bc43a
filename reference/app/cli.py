"""The `whisperkv` command.

Errors: an `InputError` (bad input or bad state, reference/errors.py) is one line on stderr and exit 2;
so is a failed write to stdout (a closed pipe, a full disk). Ctrl-C is one line and exit 130. Nothing is
printed for a file until it is finished; the windows of several files are decoded in batches that may span
two files, and each file is printed as soon as its last window is decoded, in the order given.
Backends contribute commands (`compile`, `export-onnx`) through the `whisperkv.commands` entry points.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from ..errors import InputError

EXIT_DIVERGE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
COMMAND_GROUP = "whisperkv.commands"


class OutputError(InputError):
    """Standard output cannot be written (the reader closed the pipe, the disk is full)."""


def emit(line: str) -> None:
    """One line to stdout, flushed now: a finished file is visible at once, and a failed write is ours to
    report (as an OutputError), not the interpreter's at exit."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError as e:
        _discard_stdout()
        reason = "broken pipe (the reader closed it)" if isinstance(e, BrokenPipeError) else (e.strerror or str(e))
        raise OutputError(f"stdout: {reason}") from None


def _discard_stdout() -> None:
    # Whatever is still buffered would fail again at exit ("Exception ignored ... BrokenPipeError"):
    # point the file descriptor at /dev/null so that the interpreter's last flush succeeds silently.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# ----------------------------------------------------------------------------------------------
# Progress on stderr


@contextmanager
def progress_bar(total_seconds: float, desc: str, enabled: bool) -> Iterator[Callable[[float], None]]:
    """A tqdm bar over seconds of audio on stderr; -> a callback taking the seconds done so far."""
    if not enabled:
        yield lambda done: None
        return
    from tqdm import tqdm

    with tqdm(total=round(total_seconds, 2), desc=desc, unit="s", file=sys.stderr, leave=False,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]",
              dynamic_ncols=True) as bar:
        def update(done: float) -> None:
            bar.update(round(min(done, total_seconds), 2) - bar.n)

        yield update


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and (args.progress or sys.stderr.isatty())


# ----------------------------------------------------------------------------------------------
# Commands


def _decoding_options(args: argparse.Namespace) -> dict:
    """The token-choice options of trace (one temperature), as DecodingOptions keywords."""
    return {"beam_size": args.beam_size, "patience": args.patience, "length_penalty": args.length_penalty,
            "temperature": args.temperature, "seed": args.seed,
            # openai-whisper's CLI: best_of applies to sampling only (temperature > 0)
            "best_of": args.best_of if args.temperature > 0 else None}


def _temperatures(args: argparse.Namespace) -> tuple[float, ...]:
    """openai-whisper's CLI: --temperature, then + increment up to 1.0 while a window fails the thresholds."""
    step = args.temperature_increment_on_fallback
    if step is None:
        return (args.temperature,)
    if not step > 0:
        raise InputError(f"--temperature_increment_on_fallback must be > 0 (or None), got {step}")
    count = int((1.0 + 1e-6 - args.temperature) // step) + 1 if args.temperature <= 1.0 else 1
    return tuple(round(args.temperature + i * step, 10) for i in range(count))


def _transcribe_options(args: argparse.Namespace) -> dict:
    """transcribe()'s keywords from openai-whisper's CLI flags."""
    return {
        "temperature": _temperatures(args), "best_of": args.best_of, "beam_size": args.beam_size,
        "patience": args.patience, "length_penalty": args.length_penalty, "seed": args.seed,
        "suppress_tokens": args.suppress_tokens, "initial_prompt": args.initial_prompt,
        "carry_initial_prompt": args.carry_initial_prompt,
        "condition_on_previous_text": args.condition_on_previous_text,
        "compression_ratio_threshold": args.compression_ratio_threshold,
        "logprob_threshold": args.logprob_threshold, "no_speech_threshold": args.no_speech_threshold,
        "word_timestamps": args.word_timestamps, "prepend_punctuations": args.prepend_punctuations,
        "append_punctuations": args.append_punctuations, "clip_timestamps": args.clip_timestamps,
        "hallucination_silence_threshold": args.hallucination_silence_threshold,
        "without_timestamps": args.without_timestamps, "language": args.language, "task": args.task,
    }


def _corpus_mode(args: argparse.Namespace) -> bool:
    return bool(args.manifest or args.jobs > 1 or args.cluster or args.files_from
                or any(os.path.isdir(a) for a in args.audio))


def _transcribe_corpus(args: argparse.Namespace, writer: object) -> int:
    """Folders, lists, several workers, a manifest (reference/app/corpus.py): finishing order, resumable."""
    from . import corpus
    from .writers import write_result

    inputs = corpus.collect_inputs(args.audio, args.files_from)
    options = {**_transcribe_options(args), "batch_size": args.batch_size}

    def show(record: dict) -> None:
        if record["status"] == "ok" and (args.output_dir is not None or args.output_format is not None):
            write_result(record["result"], record["path"], args.output_dir or ".", args.output_format or "all", writer)
        if args.format == "json":
            emit(json.dumps(record, ensure_ascii=False))
        elif record["status"] == "ok":
            emit(f"{record['path']}: {record['result']['text'].strip()}")
        else:
            print(f"whisperkv: {record['status']}: {record['error']}", file=sys.stderr)

    summary = corpus.run(inputs, model=args.model, backend=args.backend, options=options,
                         manifest_path=args.manifest, jobs=args.jobs, cluster=args.cluster, retries=args.retries,
                         on_record=show, progress=not args.quiet)
    print(f"whisperkv: {summary.line()}", file=sys.stderr)
    return 0 if summary.errors == summary.failed == 0 else EXIT_DIVERGE


def _transcribe(args: argparse.Namespace) -> int:
    from ..audio import open_audio
    from ..transcribe import load_model
    from .writers import WriterOptions, check_options, format_timestamp, write_result

    if args.threads:  # read by the TVM runtime when it starts (the backends import it lazily)
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    writing = args.output_dir is not None or args.output_format is not None
    writer = WriterOptions(max_line_width=args.max_line_width, max_line_count=args.max_line_count,
                           max_words_per_line=args.max_words_per_line, highlight_words=args.highlight_words)
    for warning in check_options(writer, args.word_timestamps):  # (the impossible combinations raise)
        print(f"whisperkv: warning: {warning}", file=sys.stderr)
    output_dir, output_format = args.output_dir or ".", args.output_format or "all"
    if writing:
        os.makedirs(output_dir, exist_ok=True)
    if _corpus_mode(args):
        return _transcribe_corpus(args, writer)
    if not args.audio:
        raise InputError("no audio files given")
    model = load_model(args.model, backend=args.backend)
    options = _transcribe_options(args)
    # Every file is read once before anything is printed: a bad file fails the run with no partial output.
    sources = [open_audio(path, model.dims.n_mels) for path in args.audio]
    total = sum(source.duration for source in sources)
    desc = os.path.basename(sources[0].name) if len(sources) == 1 else f"{len(sources)} files"

    def show(segment: dict) -> None:  # --verbose: openai-whisper's line per segment, on stderr (stdout: results)
        print(f"[{format_timestamp(segment['start'])} --> {format_timestamp(segment['end'])}] {segment['text']}",
              file=sys.stderr, flush=True)

    with progress_bar(total, desc, _show_progress(args) and not args.verbose) as progress:
        for t, path in zip(model.transcribe_many(sources, progress=progress, batch_size=args.batch_size,
                                                 on_segment=show if args.verbose else None, **options),
                           args.audio, strict=True):
            if writing:
                write_result(t.as_dict(), path, output_dir, output_format, writer)
            if args.format == "json":
                emit(json.dumps(t.as_dict(), ensure_ascii=False))
            else:
                emit(t.text.strip() if len(sources) == 1 else f"{t.audio}: {t.text.strip()}")
    return 0


def _trace(args: argparse.Namespace) -> int:
    from ..audio import HOP_LENGTH, SAMPLE_RATE, open_audio
    from ..decoding import DecodingOptions
    from ..transcribe import load_model
    from .trace import format_beams, format_trace

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib (pip install 'whisperkv[plot]')") from None
    model = load_model(args.model, backend=args.backend)
    options = DecodingOptions(**_decoding_options(args))
    source = open_audio(args.audio, model.dims.n_mels)
    for index, (seek, mel) in enumerate(source.mel_windows(model.dims.n_mel_frames)):
        result = model.decode(mel, options, trace=True)
        emit(f"# window {index} ({seek * HOP_LENGTH / SAMPLE_RATE:g} s), backend {model.backend.name}")
        for line in format_trace(result.events, model.tokenizer, model.dims.n_text_layer, result.finished):
            emit(line)
        if options.beam_size is not None or (options.best_of or 1) > 1:
            for line in format_beams(result, model.tokenizer):
                emit(line)
        emit(f"# text: {result.text}")
        if args.plot and index == 0:
            from ..model import NumpyModel
            from .plot import cross_attention_map, plot_trace

            # attention weights are not part of the backend protocol: the reference recomputes them
            # for the tokens the traced backend chose
            reference = NumpyModel(model.checkpoint)
            attention = cross_attention_map(reference, result, reference.encode(mel[None]))
            plot_trace(args.plot, result, attention, model.tokenizer, model.dims.n_text_layer,
                       title=f"{args.audio}: KV cache per transition (backend {model.backend.name})")
            emit(f"# plot: {args.plot} (first window)")
    return 0


def _verify_corpus(args: argparse.Namespace) -> int:
    """verify over a corpus: one record per file in the manifest (the report, agree, cause), resumable."""
    from . import corpus

    inputs = corpus.collect_inputs(args.audio, args.files_from)

    def show(record: dict) -> None:
        if args.format == "json":
            emit(json.dumps(record, ensure_ascii=False))
        elif record["status"] == "ok":
            emit(f"{record['path']}: " + ("agree" if record["agree"] else f"DIVERGE: {record['cause']}"))
        else:
            print(f"whisperkv: {record['status']}: {record['error']}", file=sys.stderr)

    summary = corpus.run(inputs, model=args.model, backend="numpy", options={}, manifest_path=args.manifest,
                         jobs=args.jobs, cluster=args.cluster, retries=args.retries, on_record=show,
                         progress=sys.stderr.isatty(), candidate=args.candidate, tolerance=args.tolerance)
    print(f"whisperkv: {summary.line()}", file=sys.stderr)
    return 0 if summary.errors == summary.failed == 0 and summary.agree == summary.ok else EXIT_DIVERGE


def _verify(args: argparse.Namespace) -> int:
    from ..audio import open_audio
    from ..checks.candidates import resolve_candidate
    from ..checks.verify import Tolerance, describe, summary_table, time_line, verify
    from ..model import NumpyModel
    from ..tokenizer import Tokenizer
    from ..weights import load_checkpoint
    from .corpus import collect_inputs

    if args.agreement:
        return _verify_agreement(args)
    if args.manifest or args.jobs > 1 or args.cluster or args.files_from:
        return _verify_corpus(args)
    if not args.audio:
        raise InputError("no audio files given")
    checkpoint = load_checkpoint(args.model)
    # every file is opened (and refused if bad) before any work
    sources = [open_audio(path, checkpoint.dims.n_mels) for path in collect_inputs(args.audio)]
    tokenizer = Tokenizer(checkpoint.tokenizer_path, multilingual=checkpoint.dims.is_multilingual)
    candidate = resolve_candidate(args.candidate, checkpoint, tokenizer)
    reports = []
    for source in sources:
        windows = [mel for _, mel in source.mel_windows(checkpoint.dims.n_mel_frames)]
        report = verify(NumpyModel(checkpoint), candidate, tokenizer, checkpoint, windows, audio=str(source.name),
                        tolerance=Tolerance(relative=args.tolerance))
        reports.append(report)
        print(f"whisperkv: {source.name}: {time_line(report)}", file=sys.stderr)  # differs run to run: not stdout
        if args.format == "text":
            emit("\n".join(describe(report, tokenizer)))
    if args.format == "json":
        body = reports[0].as_dict() if len(reports) == 1 else {"agree": all(r.agree for r in reports),
                                                                "files": [r.as_dict() for r in reports]}
        emit(json.dumps(body, ensure_ascii=False))
    elif len(reports) > 1:
        emit("\n".join(summary_table(reports)))
    return 0 if all(r.agree for r in reports) else EXIT_DIVERGE


def _verify_agreement(args: argparse.Namespace) -> int:
    """verify --agreement: each file decoded free-running by both, the candidate judged by its decisions
    (checks/agreement.py); exit 1 when it is not acceptable."""
    from ..audio import open_audio
    from ..checks import agreement
    from ..checks.candidates import resolve_candidate
    from ..model import NumpyModel
    from ..tokenizer import Tokenizer
    from ..weights import load_checkpoint
    from .corpus import collect_inputs

    if args.manifest or args.jobs > 1 or args.cluster:
        raise InputError("--agreement runs in this process: it takes no --manifest, --jobs or --cluster")
    if not args.audio and not args.files_from:
        raise InputError("no audio files given")
    paths = collect_inputs(args.audio, args.files_from)
    checkpoint = load_checkpoint(args.model)
    # every file is opened (and refused if bad) before any work
    sources = [open_audio(path, checkpoint.dims.n_mels) for path in paths]
    tokenizer = Tokenizer(checkpoint.tokenizer_path, multilingual=checkpoint.dims.is_multilingual)
    candidate = resolve_candidate(args.candidate, checkpoint, tokenizer)
    reference = NumpyModel(checkpoint)
    transcripts = agreement.human_transcripts(paths)
    files = []
    for path, source in zip(paths, sources, strict=True):
        windows = [mel for _, mel in source.mel_windows(checkpoint.dims.n_mel_frames)]
        f = agreement.agreement(reference, candidate, tokenizer, windows, audio=str(source.name),
                                transcript=transcripts.get(path))
        print(f"whisperkv: {source.name}: {agreement.time_line(f)}", file=sys.stderr)  # differs run to run
        files.append(f)
    result = agreement.judge(files)
    emit(json.dumps(result.as_dict(), ensure_ascii=False) if args.format == "json"
         else "\n".join(agreement.describe(result, tokenizer)))
    return 0 if result.acceptable else EXIT_DIVERGE


def _conformance(args: argparse.Namespace) -> int:
    try:
        import pytest
    except ImportError:
        raise InputError("the conformance suite needs pytest (pip install 'whisperkv[conformance]')") from None
    from ..checks.conformance import pytest_args

    extra = [a for a in args.pytest_args if a != "--"]
    for path in args.audio or []:
        extra += ["--conformance-audio", path]
    if args.model:
        extra += ["--conformance-model", args.model]
    extra += ["--conformance-tolerance", repr(args.tolerance)]
    code = int(pytest.main(pytest_args(args.candidate, *extra)))
    return EXIT_BAD_INPUT if code == pytest.ExitCode.USAGE_ERROR else code


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _bool(text: str) -> bool:
    """openai-whisper's str2bool: True or False (any case)."""
    value = {"true": True, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected True or False")
    return value


def _optional_float(text: str) -> float | None:
    if text == "None":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or None)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be finite")
    return value


def _optional_int(text: str) -> int | None:
    return None if text == "None" else _positive_int(text)


def _add_corpus_arguments(p: argparse.ArgumentParser) -> None:
    """Corpus scale (reference/app/corpus.py, docs/corpus.md): lists, a resumable manifest, workers."""
    p.add_argument("--files_from", "--files-from", default=None, metavar="LIST",
                   help="also take the files named in LIST, one path per line")
    p.add_argument("--manifest", default=None, metavar="FILE.jsonl",
                   help="append one JSON record per finished file; a rerun skips the files already recorded")
    p.add_argument("--jobs", "-j", type=_positive_int, default=1,
                   help="local worker processes, each loading the model once (Dask; default 1: this process)")
    p.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://host:8786) whose workers take the files")
    p.add_argument("--retries", type=int, default=2,
                   help="with --jobs/--cluster: times a file whose worker died is tried again (default 2)")


def _add_decoding_arguments(p: argparse.ArgumentParser, fallback: bool = False) -> None:
    """Token choice, under openai-whisper's CLI names (the dashed spellings are accepted too)."""
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 (default): the most probable tokens; > 0: sample from softmax(logits / temperature)"
                        + ("; the first of the fallback temperatures" if fallback else ""))
    p.add_argument("--best_of", "--best-of", type=_positive_int, default=5,
                   help="samples per window when temperature > 0, the most likely kept (default 5)")
    p.add_argument("--beam_size", "--beam-size", type=_positive_int, default=None,
                   help="beam search with this many beams, temperature 0 (default: greedy, as openai-whisper's "
                        "transcribe(); its CLI uses 5)")
    p.add_argument("--patience", type=float, default=None,
                   help="beam search: stop after round(beam_size * patience) finished beams (default 1.0)")
    p.add_argument("--length_penalty", "--length-penalty", type=float, default=None,
                   help="ranking: alpha of ((5 + length) / 6) ** alpha (default: divide by the length)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling generator (reproducible samples)")


def build_parser() -> argparse.ArgumentParser:
    from whisperkv import __version__

    from ..checks.compare import DEFAULT_TOLERANCE, positive_tolerance  # (verify itself: imported to verify)
    from ..registry import available_backends, group_entry_points
    from ..transcribe import APPEND_PUNCTUATIONS, DEFAULT_BATCH_SIZE, PREPEND_PUNCTUATIONS
    from .writers import OUTPUT_FORMATS

    backends = available_backends()
    parser = argparse.ArgumentParser(prog="whisperkv", description="Whisper through a decoding loop you can check.")
    parser.add_argument("--version", action="version", version=f"whisperkv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transcribe", help="transcribe audio files: openai-whisper's transcribe(), its flags and files")
    t.add_argument("audio", nargs="*", help="audio files (wav, flac, ogg, mp3, ...; m4a, mp4, aac through PyAV) or "
                   "folders (searched recursively)")
    t.add_argument("--backend", default="numpy", choices=backends)
    t.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    t.add_argument("--format", default="txt", choices=["txt", "json"],
                   help="stdout: the text, or one JSON object per file (openai's result keys + audio, backend, "
                        "tokens)")
    t.add_argument("--output_dir", "--output-dir", "-o", default=None,
                   help="write result files named after each audio file here (default: none; '.' when only "
                        "--output_format is given)")
    t.add_argument("--output_format", "--output-format", "-f", default=None, choices=OUTPUT_FORMATS,
                   help="files to write (default with --output_dir: all)")
    t.add_argument("--language", default=None, help="language code (multilingual checkpoints; English otherwise)")
    t.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    t.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    t.add_argument("--progress", action="store_true",
                   help="a progress bar on stderr even when it is not a terminal (default: only on a terminal)")
    t.add_argument("--verbose", type=_bool, default=False,
                   help="print each segment as it is decoded, on stderr (default False; openai-whisper's True "
                        "prints on stdout, which whisperkv keeps for results)")
    t.add_argument("--batch_size", "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"fixed-window mode: windows decoded as rows of one batch (default {DEFAULT_BATCH_SIZE}); "
                        "the tokens do not depend on it")
    t.add_argument("--threads", type=int, default=0, help="threads of the tvm backend (default 0: TVM's choice)")
    _add_corpus_arguments(t)
    _add_decoding_arguments(t, fallback=True)
    t.add_argument("--temperature_increment_on_fallback", type=_optional_float, default=0.2,
                   help="temperature added when a window fails the thresholds below, up to 1.0 (default 0.2; "
                        "None: no fallback)")
    t.add_argument("--compression_ratio_threshold", type=_optional_float, default=2.4,
                   help="fall back when the text's zlib compression ratio is above this (default 2.4)")
    t.add_argument("--logprob_threshold", type=_optional_float, default=-1.0,
                   help="fall back when the average log-probability is below this (default -1.0)")
    t.add_argument("--no_speech_threshold", type=_optional_float, default=0.6,
                   help="a window is silence when <|nospeech|> is this probable and the text improbable (0.6)")
    t.add_argument("--suppress_tokens", default="-1",
                   help="comma-separated token ids never sampled; -1: the non-speech symbols (default)")
    t.add_argument("--initial_prompt", default=None, help="text given as the previous text of the first window")
    t.add_argument("--carry_initial_prompt", type=_bool, default=False,
                   help="give the initial prompt to every window, before the previous text (default False)")
    t.add_argument("--condition_on_previous_text", type=_bool, default=None,
                   help="give each window the previous window's text (default True; False with "
                        "--without_timestamps)")
    t.add_argument("--without_timestamps", type=_bool, nargs="?", const=True, default=False,
                   help="whisperkv's fixed-window mode: consecutive 30 s windows without timestamps, decoded "
                        "in batches (default False)")
    t.add_argument("--word_timestamps", type=_bool, default=False,
                   help="time every word (openai's cross-attention alignment; default False)")
    t.add_argument("--prepend_punctuations", default=PREPEND_PUNCTUATIONS,
                   help="with word timestamps: these join the next word")
    t.add_argument("--append_punctuations", default=APPEND_PUNCTUATIONS,
                   help="with word timestamps: these join the previous word")
    t.add_argument("--clip_timestamps", default="0",
                   help="start,end,start,end,... seconds of the audio to transcribe (default 0: all)")
    t.add_argument("--hallucination_silence_threshold", type=_optional_float, default=None,
                   help="with word timestamps: skip silences longer than this many seconds around a probable "
                        "hallucination")
    t.add_argument("--max_line_width", type=_optional_int, default=None,
                   help="subtitles: characters per line before a break (needs --word_timestamps)")
    t.add_argument("--max_line_count", type=_optional_int, default=None,
                   help="subtitles: lines per cue (needs --max_line_width)")
    t.add_argument("--max_words_per_line", type=_optional_int, default=None,
                   help="subtitles: words per cue (needs --word_timestamps; ignored with --max_line_width)")
    t.add_argument("--highlight_words", type=_bool, default=False,
                   help="subtitles: underline each word as it is spoken (needs --word_timestamps)")
    t.set_defaults(run=_transcribe)

    tr = sub.add_parser("trace", help="print the state machine's transitions and the KV slots, step by step")
    tr.add_argument("audio")
    tr.add_argument("--backend", default="numpy", choices=backends)
    tr.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    tr.add_argument("--plot", default=None, metavar="FILE.png",
                    help="draw the KV cache growth and each step's cross-attention (needs matplotlib)")
    _add_decoding_arguments(tr)
    tr.set_defaults(run=_trace)

    v = sub.add_parser("verify", help="run a candidate beside the reference: the first divergence, its place, cause "
                       "and impact")
    v.add_argument("audio", nargs="*", help="audio files, or folders of them (a summary table follows several)")
    v.add_argument("--candidate", required=True,
                   help="backend name, mutant:NAME, python:MODULE:FACTORY, or a folder (ONNX export, libraries)")
    v.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    v.add_argument("--format", default="text", choices=["text", "json"])
    v.add_argument("--tolerance", type=positive_tolerance, default=DEFAULT_TOLERANCE,
                   help="relative tolerance on features, logits and slots, a finite number > 0 "
                        f"(default {DEFAULT_TOLERANCE:g}: fp32 backends)")
    v.add_argument("--agreement", action="store_true",
                   help="judge a quantized or fp16 candidate by its decisions over the files: both decode "
                        "free-running; token agreement, the reference's margin at each disagreement, WER against "
                        "the reference's transcripts; exit 1 when not acceptable (docs/verify.md, section 8)")
    _add_corpus_arguments(v)
    v.set_defaults(run=_verify)

    cs = sub.add_parser("conformance", help="the pytest conformance suite: one test per property a backend must have")
    cs.add_argument("--candidate", required=True, help="as verify's --candidate")
    cs.add_argument("--audio", action="append", metavar="FILE",
                    help="audio to check on (repeatable; default: two clips shipped with whisperkv)")
    cs.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    cs.add_argument("--tolerance", type=positive_tolerance, default=DEFAULT_TOLERANCE,
                    help=f"as verify's --tolerance (default {DEFAULT_TOLERANCE:g})")
    cs.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest options (-x, -k EXPR, ...)")
    cs.set_defaults(run=_conformance)

    for ep in group_entry_points(COMMAND_GROUP).values():  # the backends' commands; tvm is imported only when one runs
        try:
            add_cli = ep.load()
        except ImportError:  # the backend's optional package is missing: its command is simply absent
            continue
        add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except InputError as e:
        print(f"whisperkv: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("whisperkv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> NoReturn:
    """The `whisperkv` command: main(), then an exit that skips the interpreter's teardown.

    Everything the command writes is finished when main() returns (outputs and caches are renamed into
    place, files closed), so what Python's shutdown would still do is free memory the kernel reclaims
    anyway: collect garbage, tear down ~400 modules, run the native libraries' destructors. Measured: 65 ms
    of a 1.4 s transcription of a 30 s clip (exit 80 -> 15 ms). Standard output is flushed first; a flush
    that fails (a closed pipe, a full disk) exits 120, as Python's own shutdown does. The console script and
    `python -m whisperkv` call this; callers in process (tests, embedders) call main(), which just returns.
    It also starts the heap warm-up (heap.py) before main() imports numpy and the backend.
    """
    from .heap import warm_heap

    warm_heap()
    code = main()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        code = code or 120
    try:
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
