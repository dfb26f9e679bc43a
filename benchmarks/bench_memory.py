"""Peak memory of a long transcription against a 30 s one: is memory bounded by the window, not the file?

    python benchmarks/bench_memory.py                     # 2 hours of silence vs 30 s of speech, numpy and tvm
    python benchmarks/bench_memory.py --hours 0.1 --backends numpy

Each run is `whisperkv transcribe FILE --quiet --backend B` in a child process of its own, measured from
the child's rusage (os.wait4): peak RSS (ru_maxrss) and wall time. The long file is silence, 16 kHz
16-bit mono, written a minute at a time into a temporary folder (deleted afterwards); the short one is
the first 30 s of the LJSpeech fixture (22.05 kHz, so it is resampled as well). Before the measured
runs, one warm-up run per backend on a 1 s file fills the compile cache (tvm), so that no measured run
compiles. The issue's target: the long file's peak within ~150 MB of the 30 s clip's.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "fixtures" / "audio" / "ljspeech_LJ001-0001_to_0008_concat.wav"
CLI = "from whisperkv.reference.app.cli import run; run()"  # the `whisperkv` command


def write_silence(path: Path, seconds: float, sr: int = 16000) -> None:
    # A minute at a time: the benchmark itself must not hold the file it writes.
    n, minute = int(seconds * sr), np.zeros(60 * sr, np.int16)
    with sf.SoundFile(str(path), "w", sr, 1, subtype="PCM_16") as f:
        for start in range(0, n, len(minute)):
            f.write(minute[: min(len(minute), n - start)])


def write_head(source: Path, path: Path, seconds: float) -> None:
    info = sf.info(str(source))
    data, sr = sf.read(str(source), frames=int(seconds * info.samplerate), dtype="int16", always_2d=True)
    sf.write(str(path), data, sr, subtype="PCM_16")


def run(backend: str, audio: Path, out: Path) -> dict:
    """One `whisperkv transcribe` in a child process -> its peak RSS (MiB), wall time (s) and text."""
    start = time.perf_counter()
    with open(out, "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", CLI, "transcribe", str(audio), "--quiet", "--backend", backend],
                                 stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{backend} on {audio.name} failed ({child.returncode}): "
                         f"{out.with_suffix('.err').read_text().strip()[-2000:]}")
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    rss = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"rss_mib": rss, "wall_s": wall, "text": out.read_text().strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0, help="length of the long (silent) file")
    parser.add_argument("--backends", default="numpy,tvm", help="comma-separated backend names")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]

    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        folder = Path(tmp)
        long, short, warm = folder / "long.wav", folder / "30s.wav", folder / "warmup.wav"
        t = time.perf_counter()
        write_silence(long, args.hours * 3600)
        write_head(CLIP, short, 30.0)
        write_silence(warm, 1.0)
        print(f"# wrote {args.hours:g} h of silence ({long.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t:.1f} s")
        rows = []
        for backend in backends:
            run(backend, warm, folder / "warm.txt")
            r_short = run(backend, short, folder / "short.txt")
            r_long = run(backend, long, folder / "long.txt")
            rows.append((backend, r_short, r_long))
            print(f"# {backend}: 30 s -> {r_short['text'][:60]!r}...; {args.hours:g} h -> {r_long['text'][:60]!r}",
                  flush=True)

    label = f"{args.hours:g} h"
    print(f"\n| backend | 30 s: peak RSS | 30 s: wall | {label}: peak RSS | {label}: wall | RSS {label} - 30 s |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, s, lg in rows:
        print(f"| {backend} | {s['rss_mib']:.0f} MiB | {s['wall_s']:.1f} s | {lg['rss_mib']:.0f} MiB | "
              f"{lg['wall_s']:.1f} s | {lg['rss_mib'] - s['rss_mib']:+.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
