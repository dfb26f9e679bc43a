"""The CPU kernels of the TVM backend: TE compute definitions, each with a hand-written TIR schedule.

TVM's unscheduled kernels run at ~1.7 GFLOP/s and meta_schedule crashes in this wheel, so every kernel
here is built as (TE definition -> `tvm.s_tir.Schedule` -> PrimFunc) and the Relax graph (model.py)
calls the finished PrimFuncs with `call_tir`. The default Relax pipeline's FuseOps/FuseTIR never see
them (compile.py runs a pipeline without fusion), so the schedules survive as written.

Conventions:
- Linear weights are *packed* once, at load time, as (N / nb, K, nb): for a block of nb output
  columns the K rows are contiguous, so the inner loop is one broadcast of A and nb / lanes vector loads
  of W per k. `pack_linear` (params.py) makes that layout from PyTorch's (N, K).
- A gemm computes an accumulator tile of mb x nb in registers and applies its epilogue (bias, GELU,
  residual, masking) while writing the tile back: no extra pass over memory. The encoder's tiles are
  sized from the vector registers the config names (ModelConfig.encoder_tile, key_block): a tile wider
  than the register file spills on every k.
- exp and erf are polynomial approximations (a few float32 ulp) written as TE expressions: LLVM
  vectorizes them, whereas `te.exp` / `te.erf` become one libm call per element (~20x slower here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from tvm import s_tir, te, tirx

from .params import ROW_TILE, nb_for  # noqa: F401  (defined where the tvm-free backend reads them)

F32 = "float32"
LN_EPS = 1e-5  # PyTorch's LayerNorm default, as in reference/model.py


# ----------------------------------------------------------------------------------------------
# Vectorizable math


def _f(v: float) -> tirx.Expr:
    return tirx.const(v, F32)


def fast_exp(x: tirx.Expr) -> tirx.Expr:
    """exp(x) for float32: Cephes' expf (range reduction by ln 2, degree-6 polynomial), ~1 ulp.

    Inputs below -87 return exactly 0, so masked (-inf) scores give zero probabilities.
    """
    lo = _f(-87.0)
    xc = tirx.max(tirx.min(x, _f(88.3762626647950)), lo)
    n = tirx.floor(xc * _f(1.44269504088896341) + _f(0.5))
    r = xc - n * _f(0.693359375) + n * _f(2.12194440e-4)  # ln 2 split in two for accuracy (Cephes C1, C2)
    p = _f(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + _f(c)
    y = p * r * r + r + _f(1.0)
    two_n = tirx.reinterpret(F32, tirx.shift_left(n.astype("int32") + 127, 23))
    return tirx.Select(x < lo, _f(0.0), y * two_n)


def fast_erf(x: tirx.Expr) -> tirx.Expr:
    """erf(x) for float32: Eigen's rational approximation on [-4, 4] (erf is +-1 to float32 beyond)."""
    xc = tirx.max(tirx.min(x, _f(4.0)), _f(-4.0))
    x2 = xc * xc
    p = _f(-2.72614225801306e-10)
    for c in (2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05, -7.34990630326855e-04,
              -2.95459980854025e-03, -1.60960333262415e-02):
        p = p * x2 + _f(c)
    q = _f(-1.45660718464996e-05)
    for c in (-2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02):
        q = q * x2 + _f(c)
    return xc * p / q


def gelu(x: tirx.Expr) -> tirx.Expr:
    # The exact-erf GELU Whisper was trained with (not the tanh approximation).
    return _f(0.5) * x * (_f(1.0) + fast_erf(x * _f(1.0 / math.sqrt(2.0))))


L2_W_BYTES = 600 * 1024  # the weight columns a static gemm keeps in L2 while it sweeps over all rows


def n_chunk(n: int, k: int, nb: int, itemsize: int = 4) -> int:
    """Columns per sweep of a static gemm: the widest multiple of nb dividing n whose k x columns
    slice of the packed weight fits L2_W_BYTES (at least nb)."""
    best = nb
    for c in range(nb, n + 1, nb):
        if n % c == 0 and c * k * itemsize <= L2_W_BYTES:
            best = c
    return best


def _ceil_to(x: int, m: int) -> int:
    return (x + m - 1) // m * m


# ----------------------------------------------------------------------------------------------
# Scheduling helpers


def _finish(sch: s_tir.Schedule, name: str) -> tirx.PrimFunc:
    return sch.mod["main"].with_attr("global_symbol", name)


def _vectorize_inner(sch: s_tir.Schedule, block: str, width: int | None = None) -> None:
    loops = sch.get_loops(sch.get_sblock(block))
    if width is not None:
        _, inner = sch.split(loops[-1], [None, width])
        sch.vectorize(inner)
    else:
        sch.vectorize(loops[-1])


# ROW_TILE (params.py): rows of the decoder's row tiles, ROW_TILE x (nb / ROW_VEC) accumulators.
ROW_VEC = 8  # float32 lanes of an AVX2 vector; on AVX-512 the same code uses half-width registers


def gemv_blocks(blocks: int) -> int:
    """Column blocks a decoder gemv computes together: 4, 2 or 1, keeping the number of parallel tasks
    even (two threads) or large."""
    for nblk in (4, 2):
        if blocks % nblk == 0 and ((blocks // nblk) % 2 == 0 or blocks // nblk >= 32):
            return nblk
    return 1


# ----------------------------------------------------------------------------------------------
# GEMM: out[b, m, n] = epilogue(b, m, n, sum_k A(b, m, k) * W(b, n, k))

AFn = Callable[..., tirx.Expr]


def gemm(
    name: str,
    inputs: Sequence[te.Tensor],
    batch: int,
    m: int | tirx.Var,
    n: int,
    k: int,
    a_fn: AFn,  # (b, m, k) -> A value
    w_fn: AFn,  # (b, n, k) -> W value (reads a packed weight; may widen fp16)
    epilogue: AFn,  # (b, m, n, acc) -> output value
    nb: int,
    mb: int = 6,
    batched_output: bool | None = None,
    row_tile: int | None = None,
) -> tirx.PrimFunc:
    """A register-blocked gemm with a fused epilogue.

    Static m (encoder, cross K/V): mb x nb tiles, serial over chunks of columns whose weights fit L2,
    parallel over m tiles within a chunk (see n_chunk); m is padded to a multiple of mb by clamping the
    A row (the extra rows are computed and dropped), because a predicated tail inside the k loop costs
    ~20x. Symbolic m (decoder: B rows of n tokens) has two schedules, both parallel over column blocks:
    - row_tile (several rows): tiles of row_tile rows x one nb block, rows innermost: each weight
      vector is loaded (and widened from fp16) once per tile and used by all of its rows, so B rows
      cost one pass over the weights, not B. The last tile's extra rows are clamped, as above.
    - no row_tile: a streaming gemv over groups of gemv_blocks(n / nb) blocks, one row at a time. For
      a single row it does a third of the work of a tile (whose clamped rows are computed anyway).
    The output is (batch, m, n), or (m, n) when batch == 1 unless batched_output (batch may be symbolic
    with static m: then pass batched_output).
    """
    if n % nb:
        raise ValueError(f"{name}: n={n} is not a multiple of the column block {nb}")
    rk = te.reduce_axis((0, k), name="k")
    static_m = isinstance(m, int)
    tile = mb if static_m else row_tile
    m_pad = _ceil_to(m, tile) if tile else m
    clamp = tile is not None and not (static_m and m_pad == m)

    def row(mi: tirx.Expr) -> tirx.Expr:
        return tirx.min(mi, m - 1) if clamp else mi

    acc = te.compute(
        (batch, m_pad, n),
        lambda b, mi, ni: te.sum(a_fn(b, row(mi), rk).astype(F32) * w_fn(b, ni, rk).astype(F32), axis=rk),
        name="acc",
    )
    if not (batched_output if batched_output is not None else batch > 1):
        out = te.compute((m, n), lambda mi, ni: epilogue(0, mi, ni, acc[0, mi, ni]), name="out")
    else:
        out = te.compute((batch, m, n), lambda b, mi, ni: epilogue(b, mi, ni, acc[b, mi, ni]), name="out")
    func = te.create_prim_func([*inputs, out])
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("acc")
    lb, lm, ln, lk = sch.get_loops(blk)
    if static_m:
        # Serial sweeps over chunks of nc columns (their packed weights stay in L2), each sweep
        # parallel over row tiles (each thread's rows of A stay in its L2 across sweeps); inside a row
        # tile, the nc / nb column blocks reuse the tile's A rows from L1. One mb x nb accumulator
        # tile in registers (ModelConfig.encoder_tile: 6 x 64 on AVX-512, 6 x 16 on AVX2).
        nc = n_chunk(n, k, nb)
        mo, mi = sch.split(lm, [None, mb])
        nco, no, ni = sch.split(ln, [None, nc // nb, nb])
        sch.reorder(lb, nco, mo, no, lk, mi, ni)
        sch.fuse(lb, nco)
        sch.parallel(mo)
        sch.unroll(mi)
        sch.vectorize(ni)
        sch.reverse_compute_at(sch.get_sblock("out"), no)
    elif row_tile:
        # One block per task (one sequential weight stream). Per k: nb / vec weight vectors, each widened
        # once and multiplied into the row_tile rows' accumulators (row_tile x nb / vec registers).
        vec = ROW_VEC if nb % ROW_VEC == 0 else nb
        no, nv, ni = sch.split(ln, [None, nb // vec, vec])
        mo, mi = sch.split(lm, [None, row_tile])
        sch.reorder(lb, no, mo, lk, nv, mi, ni)
        sch.parallel(sch.fuse(lb, no))
        sch.unroll(nv)
        sch.unroll(mi)
        sch.vectorize(ni)
        sch.reverse_compute_at(sch.get_sblock("out"), mo)
    else:
        # nblk column blocks side by side: 2 * nblk independent accumulators, so the k loop is not one
        # FMA-latency chain per block (a single 32-column block ran the logits gemv at 11 GB/s).
        nblk = gemv_blocks(n // nb)
        no, nbi, ni = sch.split(ln, [None, nblk, nb])
        sch.reorder(lb, no, lm, lk, nbi, ni)
        outer = sch.fuse(lb, no)
        sch.parallel(outer)
        sch.unroll(nbi)
        sch.vectorize(ni)
        sch.reverse_compute_at(sch.get_sblock("out"), lm)
    _vectorize_inner(sch, "out")
    sch.decompose_reduction(blk, lk)
    _vectorize_inner(sch, "acc_init")
    sch.set_scope(blk, 0, "local")  # the tile lives in registers
    return _finish(sch, name)


# ----------------------------------------------------------------------------------------------
# Row-wise kernels


LANES = 16  # float32 lanes of an AVX-512 vector


def _row_reduce(name: str, rows, length: int, value: AFn, combine: str) -> tuple[te.Tensor, te.Tensor]:
    """Reduce value(i, j) over j in two stages: LANES partial results (vectorizable: the partials are
    the lanes of one register), then the LANES partials. A plain reduction loop stays scalar (LLVM may
    not reorder float additions), which made the encoder softmax alone cost 55 ms a layer."""
    lanes = LANES if length % LANES == 0 else 1
    red = te.sum if combine == "sum" else te.max
    rc = te.reduce_axis((0, length // lanes), name=name + "_c")
    part = te.compute((rows, lanes), lambda i, la: red(value(i, rc * lanes + la), axis=rc), name=name + "_part")
    rl = te.reduce_axis((0, lanes), name=name + "_l")
    total = te.compute((rows,), lambda i: red(part[i, rl], axis=rl), name=name)
    return part, total


def _schedule_row_reduce(sch: s_tir.Schedule, name: str, row_loop) -> None:
    sch.compute_at(sch.get_sblock(name), row_loop)
    part = sch.get_sblock(name + "_part")
    sch.compute_at(part, row_loop)
    loops = sch.get_loops(part)
    if len(loops) >= 3:  # (row, lane, chunk): chunks outer, lanes inner and vectorized
        sch.reorder(loops[-1], loops[-2])
        sch.vectorize(sch.get_loops(part)[-1])


def layer_norm(name: str, m: int | tirx.Var, c: int) -> tirx.PrimFunc:
    """(m, c) -> (m, c); two passes (mean, then variance of the centred rows), like the reference."""
    x = te.placeholder((m, c), F32, name="x")
    g = te.placeholder((c,), F32, name="g")
    b = te.placeholder((c,), F32, name="b")
    inv_c = _f(1.0 / c)
    _, total = _row_reduce("mean", m, c, lambda i, j: x[i, j], "sum")

    def centred(i: tirx.Expr, j: tirx.Expr) -> tirx.Expr:
        return x[i, j] - total[i] * inv_c

    _, sq = _row_reduce("var", m, c, lambda i, j: centred(i, j) * centred(i, j), "sum")
    out = te.compute(
        (m, c), lambda i, j: centred(i, j) / te.sqrt(sq[i] * inv_c + _f(LN_EPS)) * g[j] + b[j], name="out")
    sch = s_tir.Schedule(te.create_prim_func([x, g, b, out]))
    i, j = sch.get_loops(sch.get_sblock("out"))
    if isinstance(m, int):  # the decoder's few rows take less time than waking the thread pool
        sch.parallel(i)
    if c % LANES == 0:  # vectors of LANES: a 384-wide "vector" is legal TIR but LLVM spills it
        sch.vectorize(sch.split(j, [None, LANES])[1])
    _schedule_row_reduce(sch, "var", i)
    _schedule_row_reduce(sch, "mean", i)
    return _finish(sch, name)


# ----------------------------------------------------------------------------------------------
# Decoder attention: a few queries against a K/V cache (self: causal over the past + new tokens;
# cross: all n_audio_ctx positions). Fused: scores, softmax and P @ V per (head, query) row.


def decoder_attention(
    name: str, n_head: int, head_dim: int, n_q: tirx.Var, kv_len: int | tirx.Var, q_width: int, q_offset: int,
    causal: bool,
) -> tirx.PrimFunc:
    """q (B, n_q, q_width) with head h at columns q_offset + h*head_dim; K, V (B, n_head, kv_len, head_dim)
    -> (B, n_q, n_head * head_dim): row b attends to its own K, V only. Causal: query i sits at position
    kv_len - n_q + i. (The decoder's self attention; cross attention: `cross_attention`.)"""
    # int64 extents throughout: the (head, row) loops are fused, and a Cast between int32 and int64 loop
    # variables would make the fused binding non-affine
    c = tirx.IntImm("int64", n_head * head_dim)
    batch = tirx.Var("b", "int64")
    n_head = tirx.IntImm("int64", n_head)
    scale = _f(1.0 / math.sqrt(head_dim))  # = (d^-1/4)^2, the reference's split scaling
    q = te.placeholder((batch, n_q, q_width), F32, name="q")
    kc = te.placeholder((batch, n_head, kv_len, head_dim), F32, name="k")
    vc = te.placeholder((batch, n_head, kv_len, head_dim), F32, name="v")
    lanes = 16 if head_dim % 16 == 0 else nb_for(head_dim)
    rdc = te.reduce_axis((0, head_dim // lanes), name="dc")
    # Partial dot products, `lanes` wide, so the reduction over head_dim vectorizes.
    part = te.compute(
        (batch, n_head, n_q, kv_len, lanes),
        lambda b, h, i, j, la: te.sum(
            q[b, i, q_offset + h * head_dim + rdc * lanes + la] * kc[b, h, j, rdc * lanes + la], axis=rdc),
        name="part",
    )
    rl = te.reduce_axis((0, lanes), name="la")
    past = kv_len - n_q

    sraw = te.compute((batch, n_head, n_q, kv_len), lambda b, h, i, j: te.sum(part[b, h, i, j, rl], axis=rl),
                      name="sraw")

    def masked(b, h, i, j):
        v = sraw[b, h, i, j] * scale
        return tirx.Select(j > past + i, _f(-math.inf), v) if causal else v

    s = te.compute((batch, n_head, n_q, kv_len), masked, name="s")
    rj = te.reduce_axis((0, kv_len), name="j")
    mx = te.compute((batch, n_head, n_q), lambda b, h, i: te.max(s[b, h, i, rj], axis=rj), name="mx")
    e = te.compute((batch, n_head, n_q, kv_len), lambda b, h, i, j: fast_exp(s[b, h, i, j] - mx[b, h, i]), name="e")
    rj2 = te.reduce_axis((0, kv_len), name="j2")
    tot = te.compute((batch, n_head, n_q), lambda b, h, i: te.sum(e[b, h, i, rj2], axis=rj2), name="tot")
    prob = te.compute((batch, n_head, n_q, kv_len), lambda b, h, i, j: e[b, h, i, j] / tot[b, h, i], name="prob")
    rj3 = te.reduce_axis((0, kv_len), name="j3")
    out = te.compute(
        (batch, n_q, c),
        lambda b, i, ch: te.sum(prob[b, ch // head_dim, i, rj3] * vc[b, ch // head_dim, rj3, ch % head_dim], axis=rj3),
        name="out",
    )
    sch = s_tir.Schedule(te.create_prim_func([q, kc, vc, out]))
    ob = sch.get_sblock("out")
    lb, li, lc, lj = sch.get_loops(ob)
    lh, ld = sch.split(lc, [n_head, head_dim])
    sch.reorder(lh, lb, li, lj, ld)
    # Parallel over (head, row) pairs. (Fusing in the symbolic query count would make the loop non-affine.)
    sch.parallel(sch.fuse(lh, lb))
    row = li
    if head_dim % 16 == 0:
        sch.vectorize(sch.split(ld, [None, 16])[1])
    for blk in ("prob", "tot", "e", "mx", "s", "sraw", "part"):
        sch.compute_at(sch.get_sblock(blk), row)
    if head_dim // lanes > 1:  # (a unit loop over chunks is dropped by compute_at)
        l_lane, l_dc = sch.get_loops(sch.get_sblock("part"))[-2:]
        sch.reorder(l_dc, l_lane)  # lanes innermost: one vector FMA per chunk of head_dim
    if lanes >= 4:
        sch.vectorize(sch.get_loops(sch.get_sblock("part"))[-1])
    sch.decompose_reduction(ob, lj)
    return _finish(sch, name)


KEY_BLOCK = 16  # keys (and values) of a cross-attention block: 16 x 64 floats = 4 KB, in L1 for every row


def cross_attention(name: str, n_head: int, head_dim: int, n_audio: int) -> tirx.PrimFunc:
    """q (B, n, n_head * head_dim), head h at columns h*head_dim; K, V (G, n_head, n_audio, head_dim), the
    cross K/V of G windows; rows (B,) int32, the window of each row -> (B, n, n_head * head_dim).

    One task per head, every row of the call inside it: keys, then values, in blocks of KEY_BLOCK, each
    block read once and used by the queries of all rows before the next. Rows that decode the same window
    (beams, samples) read its K, V from L1, not once each from L3 as (head, row) tasks did: tiny.en, 6 rows
    of one window, one thread: 0.4 ms a layer, against 0.7 ms (one row: 0.1 ms). The keys are padded to a
    multiple of LANES, so the softmax runs in vectors: a padded key reads the last one and is masked to -inf
    (0 after the exp)."""
    # int64 extents throughout (see decoder_attention)
    c = tirx.IntImm("int64", n_head * head_dim)
    batch, n_q, windows = tirx.Var("b", "int64"), tirx.Var("n", "int64"), tirx.Var("g", "int64")
    n_head = tirx.IntImm("int64", n_head)
    scale = _f(1.0 / math.sqrt(head_dim))
    q = te.placeholder((batch, n_q, c), F32, name="q")
    kc = te.placeholder((windows, n_head, n_audio, head_dim), F32, name="k")
    vc = te.placeholder((windows, n_head, n_audio, head_dim), F32, name="v")
    rows = te.placeholder((batch,), "int32", name="rows")
    tp = _ceil_to(n_audio, LANES)

    def kv(t: te.Tensor, b: tirx.Expr, h: tirx.Expr, j: tirx.Expr, d: tirx.Expr) -> tirx.Expr:
        return t[rows[b].astype("int64"), h, tirx.min(j, n_audio - 1), d]

    # partial dot products over ROW_VEC lanes (one AVX2 vector): each key's score is then a sum of 8 lanes
    lanes = ROW_VEC if head_dim % ROW_VEC == 0 else nb_for(head_dim, ROW_VEC)
    rdc = te.reduce_axis((0, head_dim // lanes), name="dc")
    part = te.compute(  # partial dot products, `lanes` wide, so the reduction over head_dim vectorizes
        (batch, n_head, n_q, tp, lanes),
        lambda b, h, i, j, la: te.sum(q[b, i, h * head_dim + rdc * lanes + la] * kv(kc, b, h, j, rdc * lanes + la),
                                      axis=rdc),
        name="part",
    )
    rl = te.reduce_axis((0, lanes), name="la")
    sraw = te.compute((batch, n_head, n_q, tp), lambda b, h, i, j: te.sum(part[b, h, i, j, rl], axis=rl),
                      name="sraw")
    s = te.compute((batch, n_head, n_q, tp),
                   lambda b, h, i, j: tirx.Select(j >= n_audio, _f(-math.inf), sraw[b, h, i, j] * scale), name="s")

    def reduce_keys(nm: str, value: AFn, combine) -> te.Tensor:
        # over the keys of each (row, head, query): LANES partials first (vectorizable), then the partials
        rc = te.reduce_axis((0, tp // LANES), name=nm + "_c")
        partial = te.compute((batch, n_head, n_q, LANES),
                             lambda b, h, i, la: combine(value(b, h, i, rc * LANES + la), axis=rc), name=nm + "_part")
        rla = te.reduce_axis((0, LANES), name=nm + "_l")
        return te.compute((batch, n_head, n_q), lambda b, h, i: combine(partial[b, h, i, rla], axis=rla), name=nm)

    mx = reduce_keys("mx", lambda b, h, i, j: s[b, h, i, j], te.max)
    e = te.compute((batch, n_head, n_q, tp), lambda b, h, i, j: fast_exp(s[b, h, i, j] - mx[b, h, i]), name="e")
    tot = reduce_keys("tot", lambda b, h, i, j: e[b, h, i, j], te.sum)
    prob = te.compute((batch, n_head, n_q, tp), lambda b, h, i, j: e[b, h, i, j] / tot[b, h, i], name="prob")
    rj = te.reduce_axis((0, tp), name="j")  # padded keys have probability 0
    out = te.compute(
        (batch, n_q, c),
        lambda b, i, ch: te.sum(prob[b, ch // head_dim, i, rj] * kv(vc, b, ch // head_dim, rj, ch % head_dim),
                                axis=rj),
        name="out",
    )
    sch = s_tir.Schedule(te.create_prim_func([q, kc, vc, rows, out]))
    # P @ V: (head | value block | row, query | value, head_dim)
    ob = sch.get_sblock("out")
    lb, li, lc, lj = sch.get_loops(ob)
    lh, ld = sch.split(lc, [n_head, head_dim])
    ljo, lji = sch.split(lj, [None, KEY_BLOCK])
    sch.reorder(lh, ljo, lb, li, lji, ld)
    sch.parallel(lh)
    if head_dim % LANES == 0:
        sch.vectorize(sch.split(ld, [None, LANES])[1])
    for blk in ("prob", "tot", "tot_part", "e", "mx", "mx_part", "s", "sraw"):
        sch.compute_at(sch.get_sblock(blk), lh)
    # scores: (key block | row, query | key), each key's partial dot products computed where it is reduced
    sb = sch.get_sblock("sraw")
    l_b, l_i, l_j, l_la = sch.get_loops(sb)[-4:]
    l_jo, l_ji = sch.split(l_j, [None, KEY_BLOCK])
    sch.reorder(l_jo, l_b, l_i, l_ji, l_la)
    sch.compute_at(sch.get_sblock("part"), l_ji)
    if head_dim // lanes > 1:
        l_lane, l_dc = sch.get_loops(sch.get_sblock("part"))[-2:]
        sch.reorder(l_dc, l_lane)  # lanes innermost: one vector FMA per chunk of head_dim
    if lanes >= 4:
        sch.vectorize(sch.get_loops(sch.get_sblock("part"))[-1])
    for blk in ("s", "e", "prob"):
        _vectorize_inner(sch, blk, LANES)
    for blk in ("mx_part", "tot_part"):  # (lane, chunk) -> chunks outer, lanes inner and vectorized
        if tp // LANES > 1:  # (a unit loop over chunks is dropped by compute_at)
            la, ch = sch.get_loops(sch.get_sblock(blk))[-2:]
            sch.reorder(ch, la)
        sch.vectorize(sch.get_loops(sch.get_sblock(blk))[-1])
    sch.decompose_reduction(ob, ljo)
    return _finish(sch, name)


# ----------------------------------------------------------------------------------------------
# Encoder attention: every query row against all n_audio_ctx keys, without the full score matrix.


def encoder_attention(name: str, T: int, C: int, H: int, D: int, nbt: int, nbd: int, mb: int = 6) -> tirx.PrimFunc:
    """qkv [T, 3C] (head h of q at columns h*D), keys packed [H, Tp / nbt, D, nbt], values packed
    [H, D / nbd, Tp, nbd] (Tp: T padded to nbt; padded keys and values are zero) -> [H, T, D].

    Fused per (head, block of mb query rows), in parallel over those blocks: the mb x Tp scores as a
    register-blocked gemm (scaled; padded keys -inf), the row max, exp, the row sum, then P @ V as a
    second register-blocked gemm, divided by the row sum on write-back. The score block (mb x Tp) and
    its exponentials stay in cache: the (H, T, Tp) score matrix is never written to memory.
    """
    Tp, Mp = _ceil_to(T, nbt), _ceil_to(T, mb)
    scale = _f(1.0 / math.sqrt(D))
    q = te.placeholder((T, 3 * C), F32, name="qkv")
    kp = te.placeholder((H, Tp // nbt, D, nbt), F32, name="kp")
    vp = te.placeholder((H, D // nbd, Tp, nbd), F32, name="vp")

    def row(i: tirx.Expr) -> tirx.Expr:
        return tirx.min(i, T - 1) if Mp != T else i

    rd = te.reduce_axis((0, D), name="d")
    acc = te.compute((H, Mp, Tp), lambda h, i, j: te.sum(q[row(i), h * D + rd] * kp[h, j // nbt, rd, j % nbt], axis=rd),
                     name="acc")
    s = te.compute((H, Mp, Tp), lambda h, i, j: tirx.Select(j < T, acc[h, i, j] * scale, _f(-math.inf)), name="s")

    lanes = LANES if Tp % LANES == 0 else nbt  # partials of the row reductions (Tp is a multiple of nbt)

    def reduce3(nm: str, value: AFn, combine) -> te.Tensor:
        # over j, `lanes` partials first (vectorizable), then the partials
        rc = te.reduce_axis((0, Tp // lanes), name=nm + "_c")
        part = te.compute((H, Mp, lanes), lambda h, i, la: combine(value(h, i, rc * lanes + la), axis=rc),
                          name=nm + "_part")
        rl = te.reduce_axis((0, lanes), name=nm + "_l")
        return te.compute((H, Mp), lambda h, i: combine(part[h, i, rl], axis=rl), name=nm)

    mx = reduce3("mx", lambda h, i, j: s[h, i, j], te.max)
    e = te.compute((H, Mp, Tp), lambda h, i, j: fast_exp(s[h, i, j] - mx[h, i]), name="e")
    tot = reduce3("tot", lambda h, i, j: e[h, i, j], te.sum)
    rj = te.reduce_axis((0, Tp), name="j")
    o = te.compute((H, Mp, D), lambda h, i, dd: te.sum(e[h, i, rj] * vp[h, dd // nbd, rj, dd % nbd], axis=rj),
                   name="o")
    out = te.compute((H, T, D), lambda h, i, dd: o[h, i, dd] / tot[h, i], name="out")

    sch = s_tir.Schedule(te.create_prim_func([q, kp, vp, out]))
    lh, li, ld = sch.get_loops(sch.get_sblock("out"))
    io, _ = sch.split(li, [None, mb])
    outer = sch.fuse(lh, io)
    sch.parallel(outer)
    if D % LANES == 0:
        _vectorize_inner(sch, "out", LANES)
    for blk in ("o", "tot", "tot_part", "e", "mx", "mx_part", "s"):
        sch.compute_at(sch.get_sblock(blk), outer)
    # scores: s over (jo, ii, ji) with the mb x nbt accumulator tile computed under jo
    sb = sch.get_sblock("s")
    ii, j = sch.get_loops(sb)[-2:]
    jo, ji = sch.split(j, [None, nbt])
    sch.reorder(jo, ii, ji)
    sch.vectorize(ji)
    ab = sch.get_sblock("acc")
    sch.compute_at(ab, jo)
    a_ii, a_ji, a_d = sch.get_loops(ab)[-3:]
    sch.reorder(a_d, a_ii, a_ji)
    sch.unroll(a_ii)
    sch.vectorize(a_ji)
    sch.decompose_reduction(ab, a_d)
    _vectorize_inner(sch, "acc_init")
    sch.set_scope(ab, 0, "local")
    # row reductions and exp: LANES-wide vectors
    for nm in ("mx", "tot"):
        part = sch.get_sblock(nm + "_part")
        la, c = sch.get_loops(part)[-2:]
        sch.reorder(c, la)
        sch.vectorize(sch.get_loops(part)[-1])
    _vectorize_inner(sch, "e", LANES)
    # P @ V: (ddo, j, ii, ddi) with an mb x nbd accumulator tile
    ob = sch.get_sblock("o")
    o_ii, o_dd, o_j = sch.get_loops(ob)[-3:]
    ddo, ddi = sch.split(o_dd, [None, nbd])
    sch.reorder(ddo, o_j, o_ii, ddi)
    sch.unroll(o_ii)
    sch.vectorize(ddi)
    sch.decompose_reduction(ob, o_j)
    _vectorize_inner(sch, "o_init")
    return _finish(sch, name)
