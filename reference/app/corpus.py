"""Corpus scale: thousands of files, several processes or machines, resumable (docs/corpus.md).

    whisperkv transcribe FOLDER [FILE ...] [--files_from LIST] --manifest run.jsonl [--jobs N | --cluster ADDR]
    whisperkv verify FOLDER --candidate SPEC --manifest run.jsonl [--jobs N | --cluster ADDR]

The files (folders are searched recursively for audio) are transcribed by workers that each load the
model once and keep it: in this process (the default), in N local worker processes (`--jobs N`), or on
an existing Dask cluster (`--cluster tcp://host:8786`). Each finished file is one JSON line appended to
the manifest (path, content hash, settings, backend, result or error), written whole or not at all; a
rerun with the same manifest skips every file whose content and settings are already recorded. A bad
file is a record with its error and the run goes on; a file whose worker dies is given to another
worker, at most `--retries` times, then recorded as failed (a rerun tries it again). Progress (files,
hours of audio, speed, ETA) goes to stderr; results to stdout as they finish, in finishing order.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

# What a folder contributes: the extensions libsndfile or PyAV decode (others are not audio, or need a name)
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".aac", ".webm",
                            ".mkv", ".mov", ".aif", ".aiff", ".au", ".caf", ".w64", ".wma"})
DEFAULT_RETRIES = 2  # a file whose worker dies is tried this many more times, then recorded as failed
MANIFEST_VERSION = 1


class CorpusError(InputError):
    """The corpus run itself cannot start: no files, an unreadable list, a manifest in use or damaged."""


# ----------------------------------------------------------------------------------------------
# Inputs


def collect_inputs(paths: Sequence[str], files_from: str | None = None) -> list[str]:
    """Files as given, folders searched recursively for audio (sorted), then the list's lines; no duplicates."""
    found: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if Path(f).suffix.lower() in AUDIO_SUFFIXES]
        else:
            found.append(p)  # (a missing file becomes that file's error record, as any bad file)
    if files_from is not None:
        try:
            with open(files_from, encoding="utf-8") as f:
                found += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except (OSError, UnicodeDecodeError) as e:
            raise CorpusError(f"{files_from}: cannot read the file list ({getattr(e, 'strerror', None) or e})") \
                from None
    seen: set[str] = set()
    unique = [f for f in found if not (f in seen or seen.add(f))]
    if not unique:
        raise CorpusError(f"no audio files in {', '.join(paths) or files_from}")
    return unique


def content_hash(path: str) -> str | None:
    """sha256 of the file's bytes, or None when it cannot be read (its record will say why)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def settings_key(settings: dict[str, Any]) -> str:
    """A short digest of everything that changes a result: model, backend, options."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# The manifest: one JSON line per finished file, appended whole


class Manifest:
    """A JSONL file of records, one writer at a time (an exclusive lock), each record one write().

    A line cut short by a crash (the only way a record can be partial) is dropped when the manifest
    is opened: that file is simply done again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as e:
            raise CorpusError(f"{path}: cannot open the manifest ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise CorpusError(f"{path}: the manifest is in use by another run") from None
        try:
            self._load()
        except BaseException:
            os.close(self.fd)
            raise

    def _load(self) -> None:
        with open(self.fd, "rb", closefd=False) as f:
            f.seek(0)
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]  # a partial last line (a crash mid-write) is not a record
        if len(whole) != len(data):
            os.ftruncate(self.fd, len(whole))
        for number, line in enumerate(whole.splitlines(), start=1):
            try:
                record = json.loads(line)
            except ValueError:
                raise CorpusError(f"{self.path}:{number}: not a manifest record (a JSON object per line)") from None
            if not isinstance(record, dict) or "path" not in record or "status" not in record:
                raise CorpusError(f"{self.path}:{number}: not a manifest record (no path or status)")
            self.records.append(record)

    def done(self) -> set[tuple[str, str]]:
        """(content hash, settings) of the files already transcribed (a result or a bad-input error)."""
        return {(r.get("sha256"), r.get("settings")) for r in self.records if r["status"] in ("ok", "error")}

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        written = os.write(self.fd, line)  # O_APPEND: one write, at the end
        if written != len(line):
            raise CorpusError(f"{self.path}: short write ({written} of {len(line)} bytes; disk full?)")
        os.fsync(self.fd)
        self.records.append(record)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # (the lock goes with it)
            self.fd = -1

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# The work of one file, on a worker


_MODELS: dict[tuple[str | None, str], Any] = {}  # per worker process: loaded once, kept


def _model(model: str | None, backend: str) -> Any:
    if (model, backend) not in _MODELS:
        from ..transcribe import load_model

        _MODELS[(model, backend)] = load_model(model, backend=backend)
    return _MODELS[(model, backend)]


def verify_file(path: str, model: str | None, candidate: str, tolerance: float) -> dict[str, Any]:
    """One file verified -> {"status": "ok", "agree", "cause", "report", ...} or a bad-input error."""
    from ..audio import open_audio
    from ..checks.candidates import resolve_candidate
    from ..checks.verify import Tolerance, verify
    from ..model import NumpyModel

    t = time.perf_counter()
    try:
        whisper = _model(model, "numpy")  # the reference, with its checkpoint and tokenizer
        key = (model, f"candidate:{candidate}")
        if key not in _MODELS:
            _MODELS[key] = resolve_candidate(candidate, whisper.checkpoint, whisper.tokenizer)
        source = open_audio(path, whisper.dims.n_mels)
        windows = [mel for _, mel in source.mel_windows(whisper.dims.n_mel_frames)]
        report = verify(NumpyModel(whisper.checkpoint), _MODELS[key], whisper.tokenizer, whisper.checkpoint, windows,
                        audio=path, tolerance=Tolerance(relative=tolerance))
    except InputError as e:
        return {"status": "error", "error": str(e), "seconds": time.perf_counter() - t}
    cause = None if report.agree or report.diagnosis is None else report.diagnosis.cause
    return {"status": "ok", "agree": report.agree, "cause": cause, "report": report.as_dict(),
            "audio_seconds": source.duration, "seconds": time.perf_counter() - t, "worker_pid": os.getpid()}


TASKS: dict[str, Callable[..., dict[str, Any]]] = {}  # filled below: "transcribe", "verify"


def run_task(kind: str, path: str, args: dict[str, Any]) -> dict[str, Any]:
    """What a worker runs for one file (module-level, so that Dask sends it by name)."""
    return TASKS[kind](path, **args)


def transcribe_file(path: str, model: str | None, backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """One file -> {"status": "ok", "result", "audio_seconds", "seconds"} or {"status": "error", "error"}."""
    from ..audio import open_audio

    t = time.perf_counter()
    try:
        whisper = _model(model, backend)
        source = open_audio(path, whisper.dims.n_mels)
        result = whisper.transcribe(source, **options)
    except InputError as e:
        return {"status": "error", "error": str(e), "seconds": time.perf_counter() - t}
    return {"status": "ok", "result": result.as_dict(), "audio_seconds": source.duration,
            "seconds": time.perf_counter() - t, "worker_pid": os.getpid()}


TASKS.update(transcribe=lambda path, **a: transcribe_file(path, **a), verify=lambda path, **a: verify_file(path, **a))


# ----------------------------------------------------------------------------------------------
# Runners: where the files are processed


@dataclass
class Job:
    index: int
    path: str
    sha256: str | None


Finished = tuple[Job, dict[str, Any]]


def run_here(jobs: Sequence[Job], kind: str, args: dict[str, Any]) -> Iterator[Finished]:
    for job in jobs:
        yield job, run_task(kind, job.path, args)


def run_dask(jobs: Sequence[Job], kind: str, args: dict[str, Any], *,
             n_workers: int | None = None, address: str | None = None, retries: int = DEFAULT_RETRIES,
             threads_per_worker: int | None = None) -> Iterator[Finished]:
    """On a local cluster of n_workers processes (loopback only), or on the scheduler at `address`."""
    try:
        import dask
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise CorpusError("--jobs and --cluster need Dask distributed (pip install 'whisperkv[corpus]')") from None
    # a task whose worker died is rescheduled until it has killed `retries` + 1 workers, then it fails
    with dask.config.set({"distributed.scheduler.allowed-failures": retries}):
        if address is None:
            threads = threads_per_worker or max(1, len(os.sched_getaffinity(0)) // max(1, n_workers or 1))
            env = {v: str(threads) for v in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                              "MKL_NUM_THREADS")}
            cluster: Any = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address=None, env=env,
                                        silence_logs=50)  # (logging.CRITICAL: the workers' chatter)
            client = Client(cluster)
        else:
            cluster = None
            try:
                client = Client(address, timeout=30)
            except OSError as e:
                raise CorpusError(f"--cluster {address}: cannot reach the scheduler ({e})") from None
        try:
            futures = {client.submit(run_task, kind, job.path, args, pure=False): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    yield job, future.result()
                except Exception as e:  # noqa: BLE001  (KilledWorker, a crash in the task: that file fails)
                    yield job, {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    ok: int = 0
    errors: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    verb: str = "transcribed"
    agree: int = 0  # verify: files that agree, and the causes of those that diverge
    causes: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.audio_seconds / self.seconds if self.seconds > 0 else 0.0
        text = (f"{self.total} file(s): {self.ok} {self.verb}, {self.errors} bad input, {self.failed} failed, "
                f"{self.skipped} already in the manifest; {self.audio_seconds / 3600:.3f} h of audio in "
                f"{self.seconds:.1f} s ({rate:.1f}x real time)")
        if self.verb == "verified":
            diverge = ", ".join(f"{n} {cause}" for cause, n in sorted(self.causes.items(), key=lambda c: -c[1]))
            text += f"; {self.agree} agree, {self.ok - self.agree} diverge" + (f" ({diverge})" if diverge else "")
        return text


class Progress:
    """Files and hours done, speed and ETA, on one stderr line (rewritten on a terminal)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.start = total, enabled, time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, audio_seconds: float) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        line = (f"{done}/{self.total} files, {audio_seconds / 3600:.3f} h audio, "
                f"{audio_seconds / elapsed if elapsed > 0 else 0:.1f}x real time, ETA {eta_text}")
        print(("\r" + line + "\033[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def run(inputs: Sequence[str], *, model: str | None, backend: str, options: dict[str, Any],
        manifest_path: str | None, jobs: int = 1, cluster: str | None = None, retries: int = DEFAULT_RETRIES,
        on_record: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
        candidate: str | None = None, tolerance: float | None = None) -> Summary:
    """Transcribe `inputs` (or, with `candidate`, verify it on them), appending a record per finished file to
    the manifest; -> the summary."""
    kind = "transcribe" if candidate is None else "verify"
    model = os.path.abspath(model) if model else None
    args: dict[str, Any] = ({"model": model, "backend": backend, "options": options} if kind == "transcribe" else
                            {"model": model, "candidate": candidate, "tolerance": tolerance})
    key = settings_key({"version": MANIFEST_VERSION, "task": kind, **args})
    manifest = Manifest(manifest_path) if manifest_path else None
    summary = Summary(total=len(inputs), verb="transcribed" if kind == "transcribe" else "verified")
    started = time.monotonic()
    try:
        done = manifest.done() if manifest else set()
        todo: list[Job] = []
        for i, path in enumerate(inputs):
            digest = content_hash(path)
            if digest is not None and (digest, key) in done:
                summary.skipped += 1
            else:
                todo.append(Job(i, path, digest))
        bar = Progress(len(todo), progress)
        if not todo:
            finished: Iterator[Finished] = iter(())
        elif jobs > 1 or cluster is not None:
            finished = run_dask(todo, kind, args, n_workers=jobs if cluster is None else None, address=cluster,
                                retries=retries)
        else:
            finished = run_here(todo, kind, args)
        count = 0
        for job, outcome in finished:
            record = {"path": job.path, "sha256": job.sha256, "settings": key,
                      **({"backend": backend} if kind == "transcribe" else {"candidate": candidate}), **outcome}
            if manifest is not None:
                manifest.append(record)
            status = record["status"]
            summary.ok += status == "ok"
            summary.errors += status == "error"
            summary.failed += status == "failed"
            summary.audio_seconds += record.get("audio_seconds", 0.0)
            if kind == "verify" and status == "ok":
                summary.agree += bool(record["agree"])
                if record["cause"] is not None:
                    summary.causes[record["cause"]] = summary.causes.get(record["cause"], 0) + 1
            count += 1
            bar.update(count, summary.audio_seconds)
            if on_record is not None:
                on_record(record)
        bar.close()
    finally:
        summary.seconds = time.monotonic() - started
        if manifest is not None:
            manifest.close()
    return summary
