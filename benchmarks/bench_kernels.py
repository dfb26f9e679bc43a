"""Where the tvm backend's time goes, kernel by kernel, against this machine's ceilings measured in the same run.

    python benchmarks/bench_kernels.py [--repeat 5] [--rows 1]

- Ceilings: float32 matmul (numpy's BLAS, 2048^2, all its threads, measured before the backend sets BLAS to
  one thread) in GFLOP/s, and memory reads (BLAS dot products over 256 MB, one slice per thread, as many
  threads as the backend) in GB/s.
- Encoder (one 30 s window): each kernel's median time, its FLOP count from its shape (the kernels' names
  carry their shapes: model.py) and GFLOP/s, and the window's total.
- Decode step (`--rows` rows, past length 100, the bundled tiny.en's real weights): each kernel's median time
  and the bytes it must read (weights in their storage dtype, the cross K/V of its rows), in GB/s.

Per-kernel times come from the Relax VM's instrument hook (called before and after every kernel; its own
cost is a few microseconds a call, visible in the decode step's small kernels): the sum of the rows is a
little above the call's plain time, printed beside it. Imports the compiler (to reach the instrument hook):
this is a developer's tool, not the CLI's path.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench.py beside this file: one cpu_name()
from bench import cpu_name  # noqa: E402


def matmul_ceiling(repeat: int = 5) -> float:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        a @ a
        ts.append(time.perf_counter() - t)
    return 2 * 2048**3 / statistics.median(ts) / 1e9


def read_ceiling(threads: int, repeat: int = 5) -> float:
    import numpy as np

    x = np.ones(64 * 2**20, np.float32)  # 256 MB: far beyond every cache
    parts = np.array_split(x, threads)

    def run() -> float:
        # BLAS sdot streams at the memory's pace (numpy's own sum is bound by its pairwise adds); numpy
        # releases the GIL
        ws = [threading.Thread(target=np.dot, args=(p, p)) for p in parts]
        t = time.perf_counter()
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        return time.perf_counter() - t

    run()
    return x.nbytes / statistics.median(run() for _ in range(repeat)) / 1e9


def flops(name: str, rows: int) -> float:
    """Multiply-adds x 2 of one call of kernel `name` (0 for the memory-bound odds and ends)."""
    m = re.match(r"linear_\w+?_(\d+|t\d+|n)x(\d+)x(\d+)", name)
    if m:
        r = int(m[1]) if m[1].isdigit() else rows
        return 2.0 * r * int(m[2]) * int(m[3])
    m = re.match(r"encoder_attention_(\d+)x(\d+)", name)
    if m:  # Q K^T and P V over all heads: 2 x (2 T^2 C)
        return 4.0 * int(m[1]) ** 2 * int(m[2])
    return 0.0


def weight_bytes(name: str) -> float:
    """Bytes of weights one call of a decoder linear reads (k x n in its storage dtype)."""
    m = re.match(r"linear_\w+?_(?:t\d+|n)x(\d+)x(\d+).*_(float16|float32)$", name)
    return float(int(m[1]) * int(m[2]) * (2 if m[3] == "float16" else 4)) if m else 0.0


def profile(vm, fn: str, args: list, repeat: int) -> tuple[float, dict[str, tuple[float, int]]]:
    """-> (median plain seconds of the call, kernel -> (median seconds per call summed over its uses, uses))."""
    f = vm[fn]
    f(*args)
    plain = []
    for _ in range(repeat):
        t = time.perf_counter()
        f(*args)
        plain.append(time.perf_counter() - t)
    per_run: list[dict[str, float]] = []
    uses: dict[str, int] = {}
    start: dict[str, float] = {}
    current: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)

    def instrument(func, name, before, ret, *a):  # the VM's hook: before and after every call
        if before:
            start[name] = time.perf_counter()
        else:
            current[name] += time.perf_counter() - start[name]
            count[name] += 1

    vm.set_instrument(instrument)
    for _ in range(repeat):
        current.clear()
        count.clear()
        f(*args)
        per_run.append(dict(current))
        uses = dict(count)
    vm.set_instrument(None)
    kernels = {k: (statistics.median(r.get(k, 0.0) for r in per_run), uses[k]) for k in uses}
    return statistics.median(plain), kernels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1, help="rows of the decode step (windows decoded side by side)")
    args = ap.parse_args(argv)

    import numpy as np

    from whisperkv.backends.tvm import TVMBackend, threads
    from whisperkv.reference.weights import load_checkpoint

    n_threads = threads.n_threads()
    ceilings = (f"ceilings: matmul {matmul_ceiling():.0f} GFLOP/s (numpy BLAS), "
                f"memory reads {read_ceiling(n_threads):.1f} GB/s")
    backend = TVMBackend(load_checkpoint())  # (sets BLAS to one thread: measured before)
    import tvm
    from tvm import relax

    print(f"machine: {cpu_name()}, {n_threads} threads; library {backend.library_path.name}")
    print(ceilings)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(backend.library_path)), tvm.cpu())
    d = backend.dims
    mel = tvm.runtime.tensor(np.random.default_rng(0).standard_normal((1, d.n_mels, d.n_mel_frames)).astype(np.float32))
    total, kernels = profile(vm, "encode", [mel, *backend._params["encode"]], args.repeat)
    print(f"\nencoder, one window: {total * 1e3:.1f} ms, "
          f"{sum(flops(k, 1) * n for k, (_, n) in kernels.items()) / total / 1e9:.0f} GFLOP/s overall")
    print(f"{'kernel':<52}{'uses':>5}{'ms':>9}{'GFLOP/s':>9}")
    for k, (t, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:12]:
        rate = f"{flops(k, 1) * n / t / 1e9:9.0f}" if flops(k, 1) else f"{'':>9}"
        print(f"{k:<52}{n:>5}{t * 1e3:>9.2f}{rate}")

    # A decode step of `rows` rows at past length 100 over one window's cross K/V.
    B, past = args.rows, 100
    audio = backend.encode(np.random.default_rng(1).standard_normal((1, d.n_mels, d.n_mel_frames)).astype(np.float32))
    cross = list(vm["cross_kv"](tvm.runtime.tensor(np.stack([audio.numpy()[0]] * 1)), *backend._params["cross_kv"]))
    H, D = d.n_text_head, d.text_head_dim
    selfs = [tvm.runtime.tensor(np.zeros((B, H, past, D), np.float32)) for _ in range(2 * d.n_text_layer)]
    tokens = tvm.runtime.tensor(np.full((B, 1), 50257, np.int32))
    rows = tvm.runtime.tensor(np.zeros(B, np.int32))
    fn = "decode" if B >= 3 else "decode_row"  # as the backend chooses (params.ROW_TILE)
    total, kernels = profile(vm, fn, [tokens, *selfs, *cross, rows, *backend._params["decode"]], args.repeat)
    cross_bytes = 2 * d.n_audio_ctx * d.n_text_state * 4 * B  # K and V of each row's window, per layer
    moved = {k: weight_bytes(k) * n + (cross_bytes * n if k.startswith("cross_attention") else 0)
             for k, (_, n) in kernels.items()}
    print(f"\ndecode step, {B} row(s), past {past}: {total * 1e3:.2f} ms, reads >= {sum(moved.values()) / 1e6:.0f} MB "
          f"({sum(moved.values()) / total / 1e9:.1f} GB/s overall)")
    print(f"{'kernel':<52}{'uses':>5}{'ms':>9}{'GB/s':>9}")
    for k, (t, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:12]:
        rate = f"{moved[k] / t / 1e9:9.1f}" if moved[k] else f"{'':>9}"
        print(f"{k:<52}{n:>5}{t * 1e3:>9.3f}{rate}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    sys.exit(main())
