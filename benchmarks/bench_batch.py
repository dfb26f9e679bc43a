"""Windows decoded as rows of one batch vs one window at a time: the decoding phase, side by side.

    python benchmarks/bench_batch.py [AUDIO] [--backend tvm] [--repeat 5] [--beam-size N]

The windows of AUDIO (default: the shared 172 s clip, 6 windows) are encoded once; then the decoding
phase is timed both ways, alternating, `--repeat` times each, and the medians are compared: the steps
(every STEP transition of the machine, the token choice and the row selects included), and apart from
them the prefill (the cross K/V projections, compute-bound: batching does not change their cost).
The tokens must be equal both ways, or the script exits 1. Prints the machine (CPU model, LLVM's name for it, threads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench.py beside this file: one cpu_name()
from bench import cpu_name  # noqa: E402

DEFAULT_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio" / "whitehouse_weekly_address_trade.wav"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("audio", nargs="?", default=str(DEFAULT_AUDIO))
    ap.add_argument("--backend", default="tvm")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--beam-size", type=int, default=None)
    args = ap.parse_args(argv)

    from whisperkv import load_model
    from whisperkv.reference.audio import open_audio
    from whisperkv.reference.decoding import Decoder, DecodingOptions, State

    model = load_model(backend=args.backend)
    options = DecodingOptions(beam_size=args.beam_size)
    source = open_audio(args.audio, model.dims.n_mels)
    t0 = time.perf_counter()
    features = [model.backend.encode(mel[None]) for _, mel in source.mel_windows(model.dims.n_mel_frames)]
    encode_s = time.perf_counter() - t0
    decoder = Decoder(model.backend, model.tokenizer, options)

    def decode(batches: list[list]) -> tuple[list[list[int]], float, float]:
        """-> (tokens per window, seconds in prefill, seconds in the steps: every STEP transition, the
        token choice and the row selects included)."""
        tokens, prefill_s, steps_s = [], 0.0, 0.0
        for batch in batches:
            run = decoder.begin(batch)
            run.advance()  # START
            t = time.perf_counter()
            run.advance()  # PREFILL: the cross K/V of every window (compute-bound: no gain from batching)
            t1 = time.perf_counter()
            while run.state is not State.DONE:
                run.advance()
            t2 = time.perf_counter()
            prefill_s, steps_s = prefill_s + t1 - t, steps_s + t2 - t1
            tokens += [r.tokens for r in run.results()]
        return tokens, prefill_s, steps_s

    ways = {"batched": [features], "one by one": [[f] for f in features]}
    times: dict[str, list[float]] = {k: [] for k in ways}
    prefills: dict[str, list[float]] = {k: [] for k in ways}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.repeat):  # alternating: a noisy neighbour slows both alike
        for name, batches in ways.items():
            tokens[name], p, s = decode(batches)
            prefills[name].append(p)
            times[name].append(s)
    n_tokens = sum(len(t) for t in tokens["batched"])
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = cpu_name()
    try:
        from whisperkv.backends.tvm.compile import host_target

        llvm = str(host_target().attrs.get("mcpu", ""))
    except Exception:  # no tvm: the numpy backend is still measured
        llvm = "-"
    print(f"machine: {cpu}, LLVM {llvm}, {len(os.sched_getaffinity(0))} CPU(s); backend {model.backend.name}; "
          f"{Path(args.audio).name}: {len(features)} windows, {n_tokens} tokens, "
          f"{'beam ' + str(args.beam_size) if args.beam_size else 'greedy'}; encode (all windows) {encode_s:.2f} s")
    for name in times:
        print(f"  steps, {name:<10}: median {med[name]:.3f} s over {args.repeat} "
              f"({', '.join(f'{t:.3f}' for t in times[name])}); "
              f"prefill median {statistics.median(prefills[name]):.3f} s")
    print(f"  the steps batched are {med['one by one'] / med['batched']:.2f}x faster; tokens equal: "
          f"{tokens['batched'] == tokens['one by one']}")
    return 0 if tokens["batched"] == tokens["one by one"] else 1


if __name__ == "__main__":
    sys.exit(main())
