"""Corpus throughput: one process vs `--jobs N` local workers vs a local Dask cluster of N workers.

    python benchmarks/bench_corpus.py [--backend numpy|tvm] [--copies 2] [--workers 2] [--repeat 1]

The corpus is the bundled clips (fixtures/audio), each copied --copies times into a temporary folder
(distinct files). Each configuration is one whole `whisperkv transcribe FOLDER --manifest M` process
(a fresh manifest each time), as a user runs it: start-up, model loads and worker start included.
Configurations alternate when --repeat > 1; medians. Printed: wall seconds, files per hour, hours of
audio per hour, and the per-worker rate that docs/corpus.md uses for its estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench import cpu_name  # noqa: E402

CLI = [sys.executable, "-m", "whisperkv"]


def make_corpus(folder: Path, copies: int) -> tuple[int, float]:
    clips = sorted((ROOT / "fixtures" / "audio").glob("*.wav"))
    seconds = 0.0
    for c in range(copies):
        for clip in clips:
            shutil.copy(clip, folder / f"{clip.stem}.{c}.wav")
            seconds += sf.info(str(clip)).duration
    return copies * len(clips), seconds


def run(cmd: list[str], manifest: Path) -> float:
    if manifest.exists():
        manifest.unlink()
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp")
    seconds = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    if not all(r["status"] == "ok" for r in records):
        raise RuntimeError(f"not every file was transcribed: {[r['status'] for r in records]}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="whisperkv-corpus-") as tmp:
        folder = Path(tmp) / "corpus"
        folder.mkdir()
        n_files, audio_s = make_corpus(folder, args.copies)
        manifest = Path(tmp) / "run.jsonl"
        base = [*CLI, "transcribe", str(folder), "--backend", args.backend, "--manifest", str(manifest), "--quiet"]

        import dask
        from distributed import LocalCluster

        with dask.config.set({"distributed.scheduler.allowed-failures": 2}):
            threads = str(max(1, cores // args.workers))
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, silence_logs=50,
                                   env={v: threads for v in ("TVM_NUM_THREADS", "OMP_NUM_THREADS",
                                                             "OPENBLAS_NUM_THREADS")})
        configs = {
            "1 process": base,
            f"--jobs {args.workers}": [*base, "--jobs", str(args.workers)],
            f"cluster of {args.workers}": [*base, "--cluster", cluster.scheduler_address],
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        try:
            for _ in range(args.repeat):
                for name, cmd in configs.items():
                    times[name].append(run(cmd, manifest))
        finally:
            cluster.close()
    print(f"# CPU: {cpu_name()}, {cores} usable cores; backend {args.backend}; corpus: {n_files} files, "
          f"{audio_s / 60:.1f} min of audio; whole processes, medians of {args.repeat}")
    print("# the cluster was started before the runs (a standing cluster: its workers load the model in the "
          "first run and keep it)")
    print(f"{'configuration':<16}{'seconds':>9}{'files/h':>10}{'audio h/h':>11}{'per worker audio h/h':>22}")
    for name, ts in times.items():
        s = statistics.median(ts)
        workers = 1 if name == "1 process" else args.workers
        print(f"{name:<16}{s:>9.1f}{n_files / s * 3600:>10.0f}{audio_s / s:>11.1f}{audio_s / s / workers:>22.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
