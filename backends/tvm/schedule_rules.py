"""CPU schedules for the PrimFuncs of any legalized and fused Relax module (an ONNX import, your own model).

TVM 0.27 gives an imported graph no CPU schedule: `s_tir.dlight` has CPU rules for GEMV and reductions
only, meta_schedule crashes in this wheel, and the default lowering runs a matmul as one scalar loop nest
(~1.7 GFLOP/s). This module recognises the PrimFuncs that matter after `LegalizeOps` + `FuseOps` +
`FuseTIR` and schedules them the way the native backend's hand-written kernels are (kernels.py):

    mod = schedule_rules.prepare(mod)                    # (fp16 computed in fp32, attentions grouped,) legalize, fuse
    mod = schedule_rules.schedule_for_cpu(mod, target)   # or on your own relax.get_pipeline("zero")(mod)
    ex = tvm.compile(mod, target)                        # the default Relax pipeline does not fuse again

Rules, tried in order on every PrimFunc not already marked `tirx.is_scheduled` (docs/schedules.md):

- `attention`: scores = Q K^T, row-wise softmax stages, P V in one function (`fuse_attention` groups them):
  per tile of query rows, the scores never leave the cache; the decode step reads K in place.
- `gemm`: one multiply-accumulate reduction C[.., i, j] += A[.., i, k] * B[.., k, j] in any index order
  (matmul, dense, batched matmuls, conv1d with its padding kept apart and its stride and taps as index
  arithmetic), with spatial producers (casts) inlined and the elementwise epilogue (bias, GELU, residual
  add) computed while the accumulators are stored. The output's innermost axis is the vector axis, the
  other output axis the register-blocked row axis. Three schedules: tile (mb x nb accumulators in
  registers, parallel over row tiles), stream (few or symbolic rows: the decode step), wide (the logits:
  chunks of columns per task, B read once per call whatever the number of rows).
- `rows`: stages over the same rows, reducing or mapping their innermost axis (softmax, layer norm, sums):
  parallel over rows, every stage per row, reductions in vector-wide partial results (`rfactor`).
- `spatial`: anything injective (transposes, reshapes, broadcasts, gathers, concatenations): parallel outer
  loops when the work pays for waking the thread pool, the innermost loop vectorised.

Before any rule, float32 `exp` and `erf` calls become the polynomials of kernels.py (a few ulp, vectorisable):
LLVM turns the intrinsics into one libm call per element, ~6x (exp) and ~30x (erf) slower.

Sizes come from the target, never from one CPU: float32 lanes from its LLVM features (AVX-512: 16, AVX/AVX2:
8, SSE/NEON: 4), vector registers (32 with AVX-512, else 16), cores from `num-cores`. Anything a rule does not
recognise, or fails to schedule part way, keeps TVM's default lowering: correctness first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV

from .kernels import fast_erf, fast_exp

F32 = "float32"
SCHEDULED = "tirx.is_scheduled"  # the attribute dlight and tvm's own kernels use: "leave this one alone"


# ----------------------------------------------------------------------------------------------
# The target


@dataclass(frozen=True)
class CpuInfo:
    """What the schedules are sized from: float32 lanes per vector, vector registers, cores."""

    lanes: int = 8
    registers: int = 16
    cores: int = 1

    @property
    def tile_vectors(self) -> int:
        """Vectors per accumulator row of a gemm tile: mb x vectors accumulators plus `vectors` loads of B and
        one broadcast of A fit the register file (6 x 2 + 3 = 15 of AVX2's 16, 6 x 4 + 5 = 29 of AVX-512's 32)."""
        return 4 if self.registers >= 32 else 2

    @property
    def tile_rows(self) -> int:
        return 6

    @property
    def stream_vectors(self) -> int:
        """Vectors of a streaming (one row) gemv block: enough independent accumulators to cover the FMA
        latency (4 cycles x 2 ports) of one core."""
        return 8


def cpu_info(target: tvm.target.Target) -> CpuInfo:
    """Lanes and registers from the target's LLVM features (its mcpu / mattr), cores from num-cores."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        raise ValueError(f"schedule_for_cpu: an llvm target is needed, got {target.kind.name!r}")

    def has(feature: str) -> bool:
        try:
            return bool(codegen.target_has_features(feature, target))
        except Exception:  # noqa: BLE001 - a feature name this LLVM does not know
            return False

    if has("avx512f"):
        lanes, registers = 16, 32
    elif has("avx"):
        lanes, registers = 8, 16
    elif has("neon") or has("sse2") or has("sve"):
        lanes, registers = 4, 32 if (has("neon") or has("sve")) else 16
    else:
        lanes, registers = 4, 16  # unknown ISA: small vectors are always legal; LLVM splits them if needed
    cores = int(target.attrs.get("num-cores", 0) or 0) or 1
    return CpuInfo(lanes=lanes, registers=registers, cores=cores)


# ----------------------------------------------------------------------------------------------
# Fast math: exp / erf as polynomials


# the native kernels' polynomials (kernels.py), shared: one definition of the project's exp and erf
FAST = {"tirx.exp": fast_exp, "tirx.erf": fast_erf}


def _fast_call(call: tvm.ir.expr.Call) -> tirx.Expr:
    op = call.op
    fn = FAST.get(op.name) if isinstance(op, tvm.ir.Op) else None
    return fn(call.args[0]) if fn is not None and str(call.ty) == F32 else call


def with_fast_math(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every float32 exp / erf call replaced by its polynomial (the same object if it has none)."""
    import tvm_ffi

    return tvm_ffi.structural_map(func, (tvm.ir.expr.Call, _fast_call))


# ----------------------------------------------------------------------------------------------
# Schedule helpers


def _same(a: tirx.Expr, b: tirx.Expr) -> bool:
    import tvm_ffi

    return bool(tvm_ffi.structural_equal(a, b))


def _extent(sch: s_tir.Schedule, loop: LoopRV) -> int | tirx.Expr:
    e = sch.get(loop).extent
    return int(e) if isinstance(e, tirx.IntImm) else e


def _static(e: int | tirx.Expr) -> bool:
    return isinstance(e, int)


def _static_product(extents: Sequence[int | tirx.Expr]) -> int:
    """The product of the static extents (symbolic ones count 1: the part of the work known at build time)."""
    n = 1
    for e in extents:
        n *= e if _static(e) else 1
    return n


def _vars(expr: tirx.Expr) -> set:
    from tvm.tirx.analysis import undefined_vars

    return set(undefined_vars(expr))


def _blocks(sch: s_tir.Schedule) -> list[SBlockRV]:
    """The blocks directly under the root, in program order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _iter_kinds(sch: s_tir.Schedule, block: SBlockRV) -> str:
    return "".join({tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(iv.iter_type, "O")
                   for iv in sch.get(block).iter_vars)


def _is_spatial(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    return set(_iter_kinds(sch, block)) == {"S"}


def _is_param(sch: s_tir.Schedule, buffer: tirx.Buffer) -> bool:
    """Whether `buffer` is one of the function's inputs or outputs (not a buffer allocated inside it)."""
    return not any(buffer.same_as(b) for b in sch.get(sch.get_sblock("root")).alloc_buffers)


def _lane_split(extent: int | tirx.Expr, lanes: int) -> int:
    """The widest power-of-two vector (`lanes` down to 4) that divides a static extent; 0 if none does."""
    if not _static(extent):
        return 0
    width = lanes
    while width >= 4:
        if extent % width == 0:
            return width
        width //= 2
    return 0


def _vectorize_loop(sch: s_tir.Schedule, loop: LoopRV, lanes: int) -> None:
    """Vectorise `loop` in vectors of `lanes`. A static extent that is no multiple of `lanes` is partitioned
    into the full vectors and a tail loop (a predicated vector loop runs ~3x slower than either); a symbolic
    one gets a predicated tail."""
    n = _extent(sch, loop)
    if _static(n):
        if n <= 1:
            return
        if n <= lanes:
            sch.vectorize(loop)
            return
        tail = n % lanes
        if tail:
            body, rest = sch.loop_partition(loop, [n - tail, None])
            sch.vectorize(sch.split(body, [None, lanes])[1])
            sch.vectorize(rest)
            return
    sch.vectorize(sch.split(loop, [None, lanes])[1])


def _vectorize_inner(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    """Vectorise the block's innermost loop (last: loop_partition replaces the block by two)."""
    loops = sch.get_loops(block)
    if loops:
        _vectorize_loop(sch, loops[-1], lanes)


def vector_block(extent: int | tirx.Expr, lanes: int, vectors: int) -> int:
    """Columns of a register block: `vectors` vectors of `lanes` when that divides a static extent, else the
    widest (width x count, full vectors first, then half and quarter vectors) that does; `vectors` x `lanes`
    (with a predicated tail) when nothing does or the extent is symbolic."""
    if not _static(extent):
        return lanes * vectors
    width = lanes
    while width >= 4:
        for count in range(vectors, 0, -1):
            if extent % (width * count) == 0:
                return width * count
        width //= 2
    return min(lanes * vectors, int(extent))


def row_block(extent: int | tirx.Expr, rows: int) -> int:
    """Rows of a register tile: `rows`, or fewer (down to 3) when that divides a static extent."""
    if _static(extent):
        for mb in range(rows, 2, -1):
            if extent % mb == 0:
                return mb
    return rows


# ----------------------------------------------------------------------------------------------
# Rule: gemm (matmul, batched matmul, conv1d) with a fused epilogue


@dataclass
class GemmPlan:
    """The roles of the product's loops (outermost first) and how its operands are read."""

    outer: list[LoopRV]  # batch, heads, unit loops, and I / J loops that are not tiled
    row: LoopRV | None  # the register-blocked axis: its operand is broadcast, one scalar per row (None: one row)
    col: LoopRV  # the vectorised axis: its operand is loaded as vectors
    red: list[LoopRV]  # the reduction loops, in their order
    col_dim: int  # the output dimension indexed by col
    copy: tuple[int, int] | None  # (read index, dimension): a copy of that operand with that dim innermost


def _linear(expr: tirx.Expr, var: tirx.Var) -> int | None:
    """The coefficient of `var` in `expr` if linear with a constant coefficient, else None."""
    coef = tvm.get_global_func("sym.DetectLinearEquation")(expr, [var])
    return int(coef[0]) if len(coef) and isinstance(coef[0], tirx.IntImm) else None


def _unit_stride(region, var: tirx.Var) -> bool:
    """Whether consecutive values of `var` read consecutive elements (var only in the last index, coef 1)."""
    if any(var in _vars(r.min) for r in region[:-1]):
        return False
    return _linear(region[-1].min, var) == 1


def _plain_dim(region, var: tirx.Var) -> int | None:
    """The dimension indexed by `var` alone, if `var` indexes no other."""
    dims = [d for d, r in enumerate(region) if var in _vars(r.min)]
    if len(dims) == 1 and region[dims[0]].min.same_as(var):
        return dims[0]
    return None


def _gemm_kinds(stmt: s_tir.SBlock) -> dict | None:
    """C[...] += A[...] * B[...]: I axes index A and C, J axes B and C, K axes A and B (reduced), S axes all
    three, T axes have extent 1. None if the block is no such product."""
    if len(stmt.reads) != 2 or len(stmt.writes) != 1 or not _is_multiply_accumulate(stmt):
        return None
    a_vars = set().union(*(_vars(r.min) for r in stmt.reads[0].region))
    b_vars = set().union(*(_vars(r.min) for r in stmt.reads[1].region))
    c_vars = set().union(*(_vars(r.min) for r in stmt.writes[0].region))
    kinds: dict = {}
    for iv in stmt.iter_vars:
        v = iv.var
        if isinstance(iv.dom.extent, tirx.IntImm) and int(iv.dom.extent) == 1:
            kinds[v] = "T"
        elif iv.iter_type == tirx.IterVar.CommReduce:
            if not (v in a_vars and v in b_vars and v not in c_vars):
                return None
            kinds[v] = "K"
        elif v in a_vars and v in b_vars and v in c_vars:
            kinds[v] = "S"
        elif v in a_vars and v in c_vars:
            kinds[v] = "I"
        elif v in b_vars and v in c_vars:
            kinds[v] = "J"
        else:
            return None
    found = set(kinds.values())  # a product with one output row (I or J of extent 1) is a gemv: still ours
    return kinds if "K" in found and ("I" in found or "J" in found) else None


def _is_multiply_accumulate(block: s_tir.SBlock) -> bool:
    """body: C[...] = C[...] + x * y (x, y possibly widened by casts)."""
    body = block.body
    return (isinstance(body, tirx.BufferStore) and isinstance(body.value, tirx.Add)
            and isinstance(body.value.b, tirx.Mul))


def _gemm_plan(sch: s_tir.Schedule, main: SBlockRV, lanes: int) -> GemmPlan | None:
    """Choose the vector axis: the output's innermost I / J axis when its operand is read with unit stride
    and its extent takes whole vectors; otherwise the innermost axis of the other kind if that one does
    (a conv1d whose output time is strided, or not a multiple of the vector), its operand copied with that
    axis innermost when it is not already (the conv's weights: a small copy per call)."""
    stmt = sch.get(main)
    kinds = _gemm_kinds(stmt)
    loops = sch.get_loops(main)
    if kinds is None or len(loops) != len(stmt.iter_vars):
        return None
    c_region = stmt.writes[0].region
    c_order = [v for r in c_region for v in _vars(r.min) if kinds.get(v) in ("I", "J")]
    if not c_order:
        return None
    reads = [r.region for r in stmt.reads]

    def operand(var) -> int:
        return 0 if kinds[var] == "I" else 1

    def width(var) -> int:  # the widest vector a static extent takes whole (0: symbolic, may be 1 row)
        e = next(iv.dom.extent for iv in stmt.iter_vars if iv.var.same_as(var))
        return _lane_split(int(e), lanes) if isinstance(e, tirx.IntImm) else 0

    first = c_order[-1]
    others = [v for v in c_order if kinds[v] != kinds[first]]
    col, copy = first, None
    unit = _unit_stride(reads[operand(first)], first)
    if others and (not unit or width(first) < lanes):
        alt = others[-1]
        movable = _unit_stride(reads[operand(alt)], alt) or _plain_dim(reads[operand(alt)], alt) is not None
        if movable and width(alt) == lanes:
            col = alt
    if not _unit_stride(reads[operand(col)], col):
        dim = _plain_dim(reads[operand(col)], col)
        if dim is not None:
            copy = (operand(col), dim)
    rows = [v for v in c_order if kinds[v] != kinds[col]]
    row = rows[-1] if rows else None
    by_var = {iv.var: lp for iv, lp in zip(stmt.iter_vars, loops, strict=True)}
    reduce = {iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}  # extent 1 too
    red = [by_var[iv.var] for iv in stmt.iter_vars if iv.var in reduce]
    outer = [by_var[iv.var] for iv in stmt.iter_vars if iv.var not in reduce
             and not (row is not None and iv.var.same_as(row)) and not iv.var.same_as(col)]
    col_dim = next(d for d, r in enumerate(c_region) if col in _vars(r.min))
    return GemmPlan(outer, by_var[row] if row is not None else None, by_var[col], red, col_dim, copy)


def _inline_producers(sch: s_tir.Schedule, main: SBlockRV) -> None:
    """Inline elementwise producers of the operands (casts, scalings) into the product. Producers with
    padding (if_then_else) or index arithmetic stay separate stages: inlined, they would put a condition or
    a gather in the innermost loop."""
    for producer in sch.get_producers(main):
        stmt = sch.get(producer)
        if "if_then_else" in str(stmt.body) or len(stmt.reads) != 1:
            continue
        own = {iv.var for iv in stmt.iter_vars}
        if not all(len(_vars(r.min)) <= 1 and _vars(r.min) <= own for r in stmt.reads[0].region):
            continue
        try:
            sch.compute_inline(producer)
        except Exception:  # noqa: BLE001 - not inlinable here: it stays a stage of its own
            pass


def _inline_epilogue(sch: s_tir.Schedule, main: SBlockRV) -> SBlockRV | None:
    """Fold the elementwise chain after the product into its last stage and return that stage (None if the
    product writes the output itself). Raises if the chain does not reduce to one stage."""
    while True:
        consumers = sch.get_consumers(main)
        if not consumers:
            return None
        if len(consumers) == 1 and not sch.get_consumers(consumers[0]):
            return consumers[0]
        blocks = _blocks(sch)
        start = next(i for i, b in enumerate(blocks) if sch.get(b).same_as(sch.get(main)))
        for block in blocks[start + 1:]:  # the first intermediate stage that inlines (outputs have no consumers)
            if _is_spatial(sch, block) and sch.get_consumers(block):
                try:
                    sch.compute_inline(block)
                    break
                except Exception:  # noqa: BLE001 - try the next stage
                    continue
        else:
            raise ValueError("the epilogue does not reduce to one elementwise stage")


def rule_gemm(func: tirx.PrimFunc, cpu: CpuInfo) -> s_tir.Schedule | None:
    """One multiply-accumulate (see GemmPlan), its elementwise producers and epilogue: tile, stream or wide."""
    sch = s_tir.Schedule(func)
    reductions = [b for b in _blocks(sch) if "R" in _iter_kinds(sch, b)]
    if len(reductions) != 1 or _gemm_kinds(sch.get(reductions[0])) is None:
        return None
    main = reductions[0]
    _inline_producers(sch, main)
    epilogue = _inline_epilogue(sch, main)
    plan = _gemm_plan(sch, main, cpu.lanes)
    if plan is None:
        return None
    stages = [p for p in sch.get_producers(main) if _is_spatial(sch, p)]  # kept apart: padding
    if plan.copy is not None:
        index, dim = plan.copy
        copy = sch.cache_read(main, index, "global")
        sch.transform_layout(copy, ("write", 0), lambda *i: (*i[:dim], *i[dim + 1:], i[dim]))
        stages.append(copy)
    rows = _extent(sch, plan.row) if plan.row is not None else 1
    tiled = _static(rows) and rows >= 4 * cpu.tile_rows
    wide = not tiled and _wide(sch, plan, cpu)
    # the accumulators: a tile in registers ("local"), or a wide gemv's rows x chunk in memory (per task)
    scope = "global" if wide else "local"
    if epilogue is None:
        if not _is_param(sch, sch.get(main).writes[0].source):
            return None
        epilogue = sch.cache_write(main, 0, scope)  # accumulated apart, then stored (with the epilogue)
    else:
        sch.set_scope(main, 0, scope)
    if tiled:
        anchor = _schedule_tile(sch, main, plan, cpu)
    elif wide:
        anchor = _schedule_wide(sch, plan, cpu)
    else:
        anchor = _schedule_stream(sch, plan, cpu)
    sch.reverse_compute_at(epilogue, anchor, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, plan.red[0])
    _vectorize_tile_store(sch, epilogue, plan, cpu)
    _vectorize_inner(sch, init, cpu.lanes)
    for stage in stages:
        _schedule_spatial_block(sch, stage, cpu)
    return sch


def _vectorize_tile_store(sch: s_tir.Schedule, epilogue: SBlockRV, plan: GemmPlan, cpu: CpuInfo) -> None:
    """Vectorise the epilogue over the tile's vector axis (moved innermost if the output's layout differs)."""
    n_dims = len(sch.get(epilogue).iter_vars)
    loops = sch.get_loops(epilogue)[-n_dims:]
    if plan.col_dim != n_dims - 1:
        sch.reorder(loops[-1], loops[plan.col_dim])
        loops = sch.get_loops(epilogue)[-n_dims:]
    _vectorize_loop(sch, loops[-1], cpu.lanes)


L2_PANEL_BYTES = 256 * 1024  # the B panel a sweep over all row tiles keeps in L2 (half of Zen's, a quarter of
#                              Skylake-SP's per-core L2; a Haswell core has 256 KB)


def _schedule_tile(sch: s_tir.Schedule, main: SBlockRV, plan: GemmPlan, cpu: CpuInfo) -> LoopRV:
    """mb x nb register tiles, parallel over (outer loops, row tiles); returns the loop of one tile.

    When the whole B operand (k x columns) is larger than L2, the columns are swept in chunks whose panel
    fits (serial over chunks, parallel over row tiles within one): every row tile then reads the panel from
    L2 instead of all of B from L3 (tiny.en's 1500 x 384 x 1536 MLP with GELU, Zen 3, 2 threads: 38 ms
    against 45; about even on its 1536 -> 384 and on conv2)."""
    n = _extent(sch, plan.col)
    nb = vector_block(n, cpu.lanes, cpu.tile_vectors)
    mb = row_block(_extent(sch, plan.row), cpu.tile_rows)
    k = _static_product([_extent(sch, lp) for lp in plan.red])
    panels = _weight_panels(sch, main, plan, nb)
    ro, ri = sch.split(plan.row, [None, mb])
    chunk = _column_chunk(n, k, nb) if _static(n) else None
    cc = None
    if chunk:
        cc, co, ci = sch.split(plan.col, [None, chunk // nb, nb])
        sch.reorder(cc, *plan.outer, ro, co, *plan.red, ri, ci)
    else:
        co, ci = sch.split(plan.col, [None, nb])
        sch.reorder(*plan.outer, ro, co, *plan.red, ri, ci)
    sch.parallel(sch.fuse(*plan.outer, ro) if plan.outer else ro)
    sch.unroll(ri)
    sch.vectorize(ci)
    if panels is not None:  # a chunk's panels are packed just before its tiles run (in L2 for them)
        if cc is not None:
            sch.compute_at(panels, cc, preserve_unit_loops=True)
        rows, cols = sch.get_loops(panels)[-2:]
        if cpu.cores > 1:
            sch.parallel(rows)
        _vectorize_loop(sch, cols, cpu.lanes)
    return co


def _weight_panels(sch: s_tir.Schedule, main: SBlockRV, plan: GemmPlan, nb: int) -> SBlockRV | None:
    """When the product reads a 2-D parameter W [k, n] on its vector axis (a weight, read whole), a copy of
    it as panels [n / nb, k, nb] for the tiles to read instead -> the copy's block (None otherwise).

    A tile reads nb columns of W for every k: in W's own layout its rows are n elements apart (1.5-6 KB for
    Whisper's layers), a new page every row or two, where a panel is contiguous. BLAS packs its B panels
    the same way; the copy reads W once per call, the tiles read it once per tile of rows (250 times for
    a 1500-row encoder product)."""
    stmt = sch.get(main)
    loops = sch.get_loops(main)
    col = next(iv.var for iv, lp in zip(stmt.iter_vars, loops, strict=True) if sch.get(lp).same_as(sch.get(plan.col)))
    reduced = {iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
    n = _extent(sch, plan.col)
    if plan.copy is not None or not _static(n) or n % nb:
        return None
    for index, read in enumerate(stmt.reads):
        region = read.region
        if (len(region) == 2 and _is_param(sch, read.source) and region[1].min.same_as(col)
                and any(region[0].min.same_as(v) for v in reduced)
                and all(isinstance(d, tirx.IntImm) for d in read.source.shape)
                and [int(d) for d in read.source.shape][1] == n):
            panels = sch.cache_read(main, index, "global")
            sch.transform_layout(panels, ("write", 0), lambda kk, j: (j // nb, kk, j % nb))
            return panels
    return None


def _column_chunk(n: int, k: int, nb: int, itemsize: int = 4) -> int | None:
    """The widest multiple of nb dividing n whose k x chunk panel fits L2_PANEL_BYTES; None when all of B
    fits (no chunking) or n is no multiple of nb."""
    if n % nb or k * n * itemsize <= L2_PANEL_BYTES:
        return None
    best = nb
    for c in range(nb, n, nb):
        if n % c == 0 and c * k * itemsize <= L2_PANEL_BYTES:
            best = c
    return best


# Below this many multiply-adds known at build time (the decode step's 384 x 384 projections, one head's
# attention) a gemv stays on one thread: waking the pool costs about as much, and on a loaded machine a
# parallel region waits for a descheduled thread.
PARALLEL_MIN_MACS = 1 << 20
STREAM_CHUNK = 4096  # columns one task of a wide gemv accumulates (16 KB of float32 per row of A)


def _wide(sch: s_tir.Schedule, plan: GemmPlan, cpu: CpuInfo) -> bool:
    """A gemv whose output is wider than STREAM_CHUNK columns (the logits) and worth several threads."""
    n = _extent(sch, plan.col)
    rows = [plan.row] if plan.row is not None else []
    work = _static_product([_extent(sch, lp) for lp in (*plan.outer, *rows, plan.col, *plan.red)])
    return _static(n) and n > STREAM_CHUNK and cpu.cores > 1 and work >= PARALLEL_MIN_MACS


def _schedule_wide(sch: s_tir.Schedule, plan: GemmPlan, cpu: CpuInfo) -> LoopRV:
    """Parallel over chunks of STREAM_CHUNK columns; per chunk, the rows of B are read once, front to back,
    each multiplied into every row of A (batch x tokens: beams, batched windows) before the next: B is read
    once per step whatever the number of rows. Reading nb-wide column strips instead would jump a whole row
    of B (51864 floats for the logits) per element of the reduction: no prefetch, 2-3x slower; and one row
    of A at a time would read all of B once per row (tiny.en's logits, 80 MB, 6 rows on Zen 3 with 2
    threads: 14.6 ms against 28.8; one row: 5.8 against 5.5)."""
    nb = vector_block(_extent(sch, plan.col), cpu.lanes, cpu.stream_vectors)
    rows = [plan.row] if plan.row is not None else []
    co, ci = sch.split(plan.col, [None, nb])
    task, co = sch.split(co, [None, max(STREAM_CHUNK // nb, 1)])
    sch.reorder(task, *plan.red, *plan.outer, *rows, co, ci)
    sch.parallel(task)
    sch.vectorize(ci)
    return task


def _schedule_stream(sch: s_tir.Schedule, plan: GemmPlan, cpu: CpuInfo) -> LoopRV:
    """One row at a time against nb columns (several vectors: independent accumulators), parallel over the
    outer loops when they are enough problems for every core (batch x heads of attention), else over column
    blocks; one thread below PARALLEL_MIN_MACS."""
    n = _extent(sch, plan.col)
    nb = vector_block(n, cpu.lanes, cpu.stream_vectors)
    rows = [plan.row] if plan.row is not None else []
    work = _static_product([_extent(sch, lp) for lp in (*plan.outer, *rows, plan.col, *plan.red)])
    co, ci = sch.split(plan.col, [None, nb])
    parallel = None
    if cpu.cores == 1 or work < PARALLEL_MIN_MACS:  # a few microseconds: one thread
        order = [co, *plan.outer, *rows, *plan.red, ci]
    elif plan.outer and _static_product([_extent(sch, lp) for lp in plan.outer]) >= cpu.cores:
        order = [*plan.outer, *rows, co, *plan.red, ci]
        parallel = plan.outer
    else:
        order = [co, *plan.outer, *rows, *plan.red, ci]
        parallel = [co]
    sch.reorder(*order)
    anchor = order[order.index(plan.red[0]) - 1]  # the loop whose body is one row's block of columns
    if parallel:
        fused = sch.fuse(*parallel) if len(parallel) > 1 else parallel[0]
        sch.parallel(fused)
        if anchor in parallel:
            anchor = fused
    sch.vectorize(ci)
    return anchor


# ----------------------------------------------------------------------------------------------
# Rule: rows (softmax, layer norm: reductions over the innermost axis with elementwise stages)


def _vectorize_reduction(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> SBlockRV | None:
    """Split the block's innermost (reduction) loop into vector-wide partial results (rfactor), so that the
    partials are the lanes of one register: a plain float reduction stays scalar (LLVM may not reorder
    float additions). Returns the partial-results block; None if it stays scalar."""
    loops = sch.get_loops(block)
    kinds = _iter_kinds(sch, block)
    if kinds[-1] != "R" or kinds.count("R") != 1:
        return None
    n = _extent(sch, loops[-1])
    width = _lane_split(n, lanes)
    if not width or n == width:
        return None
    _, inner = sch.split(loops[-1], [None, width])
    return sch.rfactor(inner, len(kinds) - 1)


def rule_rows(func: tirx.PrimFunc, cpu: CpuInfo) -> s_tir.Schedule | None:
    """Stages that share their leading (row) axes and each have at most one more, innermost axis, at least
    one of them a reduction over it: softmax, layer norm (decomposed: sum, mean, variance, normalise), a
    sum or max over the last axis. Parallel over rows, every stage computed per row."""
    sch = s_tir.Schedule(func)
    blocks = _blocks(sch)
    if not blocks or all(_is_spatial(sch, b) for b in blocks):
        return None
    out = blocks[-1]
    n_rows = len(sch.get_loops(out)) - 1
    if n_rows < 1 or "R" in _iter_kinds(sch, out)[:n_rows]:
        return None
    row_extents = [sch.get(lp).extent for lp in sch.get_loops(out)[:n_rows]]
    for block in blocks:  # every stage: the same rows first, then at most one inner axis
        kinds = _iter_kinds(sch, block)
        extents = [sch.get(lp).extent for lp in sch.get_loops(block)]
        if len(kinds) not in (n_rows, n_rows + 1) or "R" in kinds[:n_rows]:
            return None
        if not all(_same(a, b) for a, b in zip(extents[:n_rows], row_extents, strict=True)):
            return None
    total = _static_product([_extent(sch, lp) for lp in sch.get_loops(out)])
    partials = [rf for rf in (_vectorize_reduction(sch, b, cpu.lanes) for b in blocks
                              if "R" in _iter_kinds(sch, b)) if rf is not None]
    out = _blocks(sch)[-1]  # (an rfactor'ed output is now the sum of its partials)
    loops = sch.get_loops(out)
    if all(isinstance(e, tirx.IntImm) for e in row_extents):
        row = sch.fuse(*loops[:n_rows]) if n_rows > 1 else loops[0]
        if cpu.cores > 1 and total >= PARALLEL_MIN:
            sch.parallel(row)
    else:  # symbolic rows (the decoder's): fused, their bindings would not be affine; few rows, one thread
        row = loops[n_rows - 1]
    for block in reversed(_blocks(sch)):
        if not sch.get(block).same_as(sch.get(out)):
            sch.compute_at(block, row, preserve_unit_loops=True)
    for rf in partials:
        _vectorize_lanes(sch, rf)
    for block in [b for b in _blocks(sch) if _is_spatial(sch, b) and len(sch.get_loops(b)) > 1]:
        _vectorize_inner(sch, block, cpu.lanes)  # (exp, normalise, the output; loop_partition comes last)
    return sch


# ----------------------------------------------------------------------------------------------
# Rule: attention (scores = Q K^T, row-wise softmax stages, P V) in one function (fuse_attention)


def rule_attention(func: tirx.PrimFunc, cpu: CpuInfo) -> s_tir.Schedule | None:
    """Two products with row-wise stages between them: scores, (mask,) softmax, P V, as `fuse_attention`
    groups them. Every stage runs per (batch, head, tile of query rows): the (heads, queries, keys) score
    tensor is never written to memory (tiny.en's encoder: 6 x 1500 x 1500 floats, written and read three
    times per layer when unfused), and the softmax works on scores in cache.

    - Many static queries (an encoder): parallel over (batch x heads x tiles of mb queries); the mb x keys
      scores are a register-tiled product against K^T (transposed once for all heads, keys padded to whole
      register blocks), P V a second one.
    - Few or symbolic queries (the decode step): one query row at a time; the scores are dot products over
      head_dim read straight from K (vector partial sums): no transposed copy of the 1500 cached keys
      per step, which alone cost more than the rest of the attention."""
    sch = s_tir.Schedule(func)
    found = _attention_blocks(sch)
    if found is None:
        return None
    scores, context, n_rows = found
    epilogue = _inline_epilogue(sch, context)
    if epilogue is None:
        epilogue = sch.cache_write(context, 0, "local")
    else:
        sch.set_scope(context, 0, "local")
    queries = _extent(sch, sch.get_loops(context)[n_rows - 1])
    partials = [rf for rf in (_vectorize_reduction(sch, b, cpu.lanes) for b in _between(sch, scores, context)
                              if "R" in _iter_kinds(sch, b)) if rf is not None]
    if _static(queries) and queries >= 4 * cpu.tile_rows:
        _attention_tiled(sch, scores, context, epilogue, n_rows, partials, cpu)
    else:
        _attention_streamed(sch, scores, context, epilogue, n_rows, partials, cpu)
    for rf in partials:
        _vectorize_lanes(sch, rf)
    return sch


def _attention_tiled(sch: s_tir.Schedule, scores: SBlockRV, context: SBlockRV, epilogue: SBlockRV, n_rows: int,
                     partials: list[SBlockRV], cpu: CpuInfo) -> None:
    """(batch x heads x tiles of mb queries) in parallel, anchored on the scores: their keys padded to whole
    register blocks stay padded (computed where the softmax would only ask for the keys it reads), and
    every later stage is computed per tile after them (reverse_compute_at)."""
    _pad_keys(sch, scores, cpu)
    kb = vector_block(_extent(sch, sch.get_loops(scores)[-2]), cpu.lanes, cpu.tile_vectors)
    pre = [b for b in sch.get_producers(scores) if _is_spatial(sch, b)]  # K^T, padded: once for all heads
    for block in pre:
        _key_panels(sch, scores, block, kb)
    writeback = sch.cache_write(scores, 0, "local")  # the tile accumulates in registers, then is stored
    later = [*_between(sch, writeback, context), context]  # the softmax stages (with partials), then P V
    loops = sch.get_loops(scores)
    lead, query, keys, depth = loops[:n_rows - 1], loops[n_rows - 1], loops[-2], loops[-1]
    qo, qi = sch.split(query, [None, row_block(_extent(sch, query), cpu.tile_rows)])
    tile = sch.fuse(*lead, qo) if lead else qo
    if cpu.cores > 1:
        sch.parallel(tile)
    kb = vector_block(_extent(sch, keys), cpu.lanes, cpu.tile_vectors)
    jo, ji = sch.split(keys, [None, kb])
    sch.reorder(jo, depth, qi, ji)
    sch.unroll(qi)
    sch.vectorize(ji)
    sch.reverse_compute_at(writeback, jo, preserve_unit_loops=True)
    for block in later:
        sch.reverse_compute_at(block, tile, preserve_unit_loops=True)
    # P V in the tile: (head_dim blocks | keys | query rows unrolled, head_dim vectorised)
    q_loop, d_loop, k_loop = sch.get_loops(context)[-3:]
    nb = vector_block(_extent(sch, d_loop), cpu.lanes, cpu.tile_vectors)
    do, di = sch.split(d_loop, [None, nb])
    sch.reorder(do, k_loop, q_loop, di)
    sch.unroll(q_loop)
    sch.vectorize(di)
    sch.reverse_compute_at(epilogue, do, preserve_unit_loops=True)
    _vectorize_inner(sch, epilogue, cpu.lanes)
    _vectorize_inner(sch, writeback, cpu.lanes)
    _vectorize_inner(sch, sch.decompose_reduction(scores, depth), cpu.lanes)
    _vectorize_inner(sch, sch.decompose_reduction(context, k_loop), cpu.lanes)
    for block in later[:-1]:
        if _is_spatial(sch, block) and not any(sch.get(block).same_as(sch.get(b)) for b in partials):
            _vectorize_inner(sch, block, cpu.lanes)
    for stage in pre:
        _schedule_spatial_block(sch, stage, cpu)


def _key_panels(sch: s_tir.Schedule, scores: SBlockRV, copy: SBlockRV, kb: int) -> None:
    """The copy of K^T [..., head_dim, keys] the scores read, laid out as panels [..., keys / kb, head_dim, kb]
    (kb: the score tile's keys): a tile of kb keys then reads head_dim x kb contiguous floats, where in K^T
    its head_dim rows are a whole row of keys apart (6 KB for 1500 keys: a page every row or less). Left as
    it is unless the copy writes one buffer whose last dimension is a static multiple of kb."""
    stmt = sch.get(copy)
    if len(stmt.writes) != 1:
        return
    shape = stmt.writes[0].source.shape
    if len(shape) < 2 or not isinstance(shape[-1], tirx.IntImm) or int(shape[-1]) % kb:
        return
    if not any(r.source.same_as(stmt.writes[0].source) for r in sch.get(scores).reads):
        return
    sch.transform_layout(copy, ("write", 0), lambda *i: (*i[:-2], i[-1] // kb, i[-2], i[-1] % kb))


def _attention_streamed(sch: s_tir.Schedule, scores: SBlockRV, context: SBlockRV, epilogue: SBlockRV,
                        n_rows: int, partials: list[SBlockRV], cpu: CpuInfo) -> None:
    """One query row at a time (the decode step): scores as dot products over head_dim, read from K where it
    is (vector partial sums), every stage computed per row under the context's row loop."""
    for producer in sch.get_producers(scores):  # read K in place: no transposed copy per call
        if _is_spatial(sch, producer):
            try:
                sch.compute_inline(producer)
            except Exception:  # noqa: BLE001 - kept as a stage: correct, one copy per call
                pass
    # both products' multiply-adds known at build time (a symbolic batch counts 1): one head's 1500 cached
    # keys and values are ~1.2 M, worth both cores (scores alone were under the bar: tiny.en's cross
    # attentions ran on one thread, 1.5 ms of a 6 ms step against 0.9 for the native kernel)
    work = sum(_static_product([_extent(sch, lp) for lp in sch.get_loops(b)]) for b in (scores, context))
    rf = _vectorize_reduction(sch, scores, cpu.lanes)
    pre = [b for b in sch.get_producers(scores) if _is_spatial(sch, b)]
    loops = sch.get_loops(context)
    lead, row = loops[:n_rows - 1], loops[n_rows - 1]
    if lead and cpu.cores > 1 and work >= PARALLEL_MIN_MACS:  # (batch, heads): plain symbols, fusable
        sch.parallel(sch.fuse(*lead) if len(lead) > 1 else lead[0])
    d_loop, k_loop = sch.get_loops(context)[-2:]
    nb = vector_block(_extent(sch, d_loop), cpu.lanes, cpu.tile_vectors)
    do, di = sch.split(d_loop, [None, nb])
    sch.reorder(do, k_loop, di)
    sch.vectorize(di)
    sch.reverse_compute_at(epilogue, do, preserve_unit_loops=True)
    stages = _between(sch, scores, context, inclusive=True)
    for block in reversed(stages):
        sch.compute_at(block, row, preserve_unit_loops=True)
    if rf is not None:  # the scores' vector partial sums too, per row (else all rows' first, in memory)
        sch.compute_at(rf, row, preserve_unit_loops=True)
        # compute_at orders its loops as the block's axes: (head_dim chunks, rows, keys, lanes); keys first,
        # so that each key's head_dim is read front to back into one register, stored once
        chunks, *_, keys, _lanes = sch.get_loops(rf)[-(n_rows + 3):]
        sch.reorder(keys, chunks)
        partials.append(rf)
    _vectorize_inner(sch, sch.decompose_reduction(context, k_loop), cpu.lanes)
    _vectorize_inner(sch, epilogue, cpu.lanes)
    for block in stages:
        if _is_spatial(sch, block) and not any(sch.get(block).same_as(sch.get(b)) for b in partials):
            _vectorize_inner(sch, block, cpu.lanes)
    for stage in pre:
        _schedule_spatial_block(sch, stage, cpu)


def _attention_blocks(sch: s_tir.Schedule) -> tuple[SBlockRV, SBlockRV, int] | None:
    """(scores, context, number of row axes) if the function is scores -> row-wise stages -> P V."""
    blocks = _blocks(sch)
    products = [i for i, b in enumerate(blocks) if "R" in _iter_kinds(sch, b) and _gemm_kinds(sch.get(b))]
    if len(products) != 2:
        return None
    first, second = products
    pre, mid, post = blocks[:first], blocks[first + 1:second], blocks[second + 1:]
    if not mid or any(not _is_spatial(sch, b) for b in (*pre, *post)):
        return None
    scores, context = blocks[first], blocks[second]
    n_rows = len(sch.get(context).writes[0].region) - 1  # (batch, heads, queries): all but head_dim
    if _iter_kinds(sch, context)[:n_rows] != "S" * n_rows:
        return None
    row_extents = [sch.get(lp).extent for lp in sch.get_loops(context)[:n_rows]]
    for block in (scores, *mid):  # the rows first, then keys (and head_dim for the scores)
        extents = [sch.get(lp).extent for lp in sch.get_loops(block)]
        if _iter_kinds(sch, block)[:n_rows] != "S" * n_rows or not all(
                _same(a, b) for a, b in zip(extents[:n_rows], row_extents, strict=True)):
            return None
    return scores, context, n_rows


def _between(sch: s_tir.Schedule, first: SBlockRV, last: SBlockRV, inclusive: bool = False) -> list[SBlockRV]:
    """The root blocks after `first` and before `last` in program order (with `first` if inclusive)."""
    now = _blocks(sch)
    i = next(k for k, b in enumerate(now) if sch.get(b).same_as(sch.get(first)))
    j = next(k for k, b in enumerate(now) if sch.get(b).same_as(sch.get(last)))
    return now[i if inclusive else i + 1:j]


def _vectorize_lanes(sch: s_tir.Schedule, rf: SBlockRV) -> None:
    """A partial-results block (rfactor) after compute_at: its lane loop moved inside its chunk (reduction)
    loop and vectorised: one vector update per chunk."""
    stmt = sch.get(rf)
    iters = stmt.iter_vars
    lane_var = _vars(stmt.writes[0].region[-1].min)  # _vectorize_reduction puts the lanes last
    lane = next(i for i, iv in enumerate(iters) if iv.var in lane_var)
    chunk = next(i for i, iv in enumerate(iters) if iv.iter_type == tirx.IterVar.CommReduce)
    lane_loop, chunk_loop = _loop_of(sch, rf, lane), _loop_of(sch, rf, chunk)
    sch.reorder(chunk_loop, lane_loop)
    sch.vectorize(lane_loop)


def _loop_of(sch: s_tir.Schedule, block: SBlockRV, index: int) -> LoopRV:
    """The innermost loop the block's iter var number `index` is bound to."""
    realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, block)
    used = _vars(realize.iter_values[index])
    return [lp for lp in sch.get_loops(block) if sch.get(lp).loop_var in used][-1]


def _pad_keys(sch: s_tir.Schedule, scores: SBlockRV, cpu: CpuInfo) -> None:
    """Pad the keys of the score product to whole register blocks (1500 -> 1504) when they are static and
    no multiple of one: the scores then tile in full vectors (not 4-wide ones) and only the copy of K^T
    into its padded buffer and the scores' reads see the padding (pad_einsum; the softmax reads keys
    < 1500 only)."""
    stmt = sch.get(scores)
    keys = stmt.iter_vars[-2].dom.extent  # (rows..., keys, head_dim)
    block = cpu.lanes * cpu.tile_vectors
    if not isinstance(keys, tirx.IntImm) or int(keys) % block == 0 or int(keys) < block:
        return
    producers = sch.get_producers(scores)
    padding = [1] * len(stmt.iter_vars)
    padding[-2] = block
    sch.pad_einsum(scores, padding)
    for consumer in sch.get_consumers(scores):  # the copy out of the padded scores: read them in place
        try:
            sch.compute_inline(consumer)
        except Exception:  # noqa: BLE001 - a copy that stays is correct, one pass over cached scores
            pass
    for producer in producers:  # K^T into the padding's copy of it
        try:
            sch.compute_inline(producer)
        except Exception:  # noqa: BLE001
            pass


def fuse_attention(mod: tvm.IRModule) -> tvm.IRModule:
    """Group each attention of a Relax module (before legalization) into one function for rule_attention:
    matmul(q, permute_dims(k)) [+ mask] -> softmax -> matmul(., v), as ONNX exports of transformers have it."""
    from tvm.relax.dpl import is_op, wildcard

    q, k, v, mask = wildcard(), wildcard(), wildcard(), wildcard()
    scores = is_op("relax.matmul")(q, is_op("relax.permute_dims")(k) | wildcard())
    probs = is_op("relax.nn.softmax")(scores | is_op("relax.add")(scores, mask))
    pattern = is_op("relax.matmul")(probs, v)
    return relax.transform.FuseOpsByPattern([("attention", pattern)], bind_constants=False,
                                           annotate_codegen=False)(mod)


# ----------------------------------------------------------------------------------------------
# Rule: spatial (injective) functions


PARALLEL_MIN = 1 << 14  # elements below which waking the thread pool costs more than it saves


def _schedule_spatial_block(sch: s_tir.Schedule, block: SBlockRV, cpu: CpuInfo) -> None:
    """Parallel over the outer loops when the work is large enough, the innermost loop vectorised."""
    loops = sch.get_loops(block)
    if not loops:
        return
    if cpu.cores > 1 and len(loops) >= 2 and _static_product([_extent(sch, lp) for lp in loops]) >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
    _vectorize_inner(sch, block, cpu.lanes)


def rule_spatial(func: tirx.PrimFunc, cpu: CpuInfo) -> s_tir.Schedule | None:
    """Every block injective: each one parallel (when large) and vectorised."""
    sch = s_tir.Schedule(func)
    blocks = _blocks(sch)
    if not blocks or not all(_is_spatial(sch, b) for b in blocks):
        return None
    for block in blocks:
        _schedule_spatial_block(sch, block, cpu)
    return sch


# ----------------------------------------------------------------------------------------------
# The pass


Rule = Callable[[tirx.PrimFunc, CpuInfo], "s_tir.Schedule | None"]
RULES: dict[str, Rule] = {"attention": rule_attention, "gemm": rule_gemm, "rows": rule_rows,
                          "spatial": rule_spatial}
RULE_ATTR = "whisperkv.schedule_rule"  # which rule scheduled a function (for tests and reports)


def schedule_func(func: tirx.PrimFunc, cpu: CpuInfo, rules: Sequence[str] | None = None) -> tirx.PrimFunc:
    """`func` with fast math, scheduled by the first rule that applies (its name in RULE_ATTR, and marked
    `tirx.is_scheduled`); with fast math only when none does."""
    func = with_fast_math(func)
    for name in rules or RULES:
        try:
            sch = RULES[name](func, cpu)
        except Exception:  # noqa: BLE001 - a rule that fails part way leaves the function to the next one
            sch = None
        if sch is not None:
            return sch.mod["main"].with_attrs({SCHEDULED: True, RULE_ATTR: name})
    return func


def schedule_for_cpu(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule every PrimFunc of a legalized, fused Relax module for the CPU `target` (an llvm target).

    Functions already marked `tirx.is_scheduled` are left as they are; those no rule recognises keep TVM's
    default lowering (with fast exp / erf). Build the result with `tvm.compile(mod, target)`: its default
    Relax pipeline legalizes what is left but does not fuse again, so the schedules survive."""
    cpu = cpu_info(target)
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not bool(func.attrs.get(SCHEDULED, False)):
            out[gv] = schedule_func(func, cpu)
    return out


def rule_of(func: tirx.PrimFunc) -> str:
    """The rule that scheduled `func` ("" if none did)."""
    return str(func.attrs.get(RULE_ATTR, "")) if func.attrs is not None else ""


F16 = "float16"

# Ops that move or select elements without computing with them: a float16 tensor (a weight: the token
# embedding gathered by `take`, transposed for the tied logits, sliced for the positions) goes through them
# as float16 and is widened where it meets arithmetic, so a weight is never stored widened. Every other op
# computes and gets float32 operands.
MOVES = frozenset(f"relax.{name}" for name in (
    "reshape", "permute_dims", "take", "strided_slice", "dynamic_strided_slice", "concat", "split",
    "broadcast_to", "expand_dims", "squeeze", "flatten", "tile", "repeat", "flip", "gather_elements",
    "gather_nd", "where", "triu", "tril", "shape_of", "layout_transform"))
# Products whose float16 operands are widened inside the kernel (`out_dtype`: TVM's legalization casts each
# operand as it is read, exact): a float16 weight stays float16 in memory, read at half the bytes.
PRODUCTS = frozenset({"relax.matmul", "relax.nn.conv1d"})


def _dtype(expr: relax.Expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


def _widened(expr: relax.Expr) -> relax.Expr:
    """A float16 operand as float32: a constant converted here (exact), anything else through a cast, which
    FoldConstant (weights embedded) or LiftTransformParams (weights as parameters) runs once, not per call,
    when it reads weights only."""
    if isinstance(expr, tvm.ir.expr.Constant):
        return relax.const(expr.value.numpy().astype("float32"), F32)
    return relax.op.astype(expr, F32)


def compute_in_float32(mod: tvm.IRModule) -> tvm.IRModule:
    """Every float16 computation of a Relax module (before legalization) done in float32: fp16 is a storage
    format only. The project's rule (float32 compute, float16 weights widened as they are read) for graphs
    that compute in float16, such as an fp16 ONNX export (MatMul, Add, GELU in float16 between float32
    islands of LayerNormalization and Softmax):

    - `astype(x, "float16")` of a float32 value is dropped (the value stays float32), `astype(x, "float32")`
      of one that is float32 now too;
    - matmul and conv1d get `out_dtype="float32"`; their float16 operands (the weights) are widened inside
      the kernel, so a weight is read as float16 and never stored widened;
    - ops that only move elements (MOVES: reshape, transpose, take, slices, concat) keep the dtype they are
      given (the embedding's gather reads float16 rows), widening float16 inputs only when mixed with
      float32 ones;
    - every other op (add, multiply, erf, softmax, layer norm, ...) gets float32 operands: float16 constants
      are converted (exactly), other float16 values cast; a result still float16 (an op whose dtype is an
      attribute) is cast too;
    - each function returns the dtypes it returned before (a float16 output is rounded once, at the end).

    Why: TVM computes a float16 graph in float16: sums rounded at every product (tiny.en's fp16 encoder
    0.4-1.2 of its output's scale from the float32 model), GELU's erf and the residual adds in float16
    (0.108 of the scale on the speechbrain clip with float32 sums alone). In float32 the fp16 export of
    tiny.en (whose weights are float16 anyway) computes what the float32 model does. x86 has no float16
    arithmetic (every float16 op is convert, op, convert back), so it is faster too."""
    from tvm.relax import PyExprMutator, expr_functor

    def wide(args: list[relax.Expr], only_if_mixed: bool) -> list[relax.Expr]:
        dtypes = {_dtype(a) for a in args}
        if only_if_mixed and not (F16 in dtypes and F32 in dtypes):
            return args
        return [_widened(a) if _dtype(a) == F16 else a for a in args]

    def as_before(new: relax.Expr, old_ty: relax.Type) -> relax.Expr:
        """`new` with the float dtypes of `old_ty` (a tensor or a tuple expression of them)."""
        if isinstance(new, relax.Tuple) and isinstance(old_ty, relax.TupleType):
            return relax.Tuple([as_before(f, t) for f, t in zip(new.fields, old_ty.fields, strict=True)])
        want = str(getattr(old_ty, "dtype", ""))
        return relax.op.astype(new, want) if want in (F16, F32) and _dtype(new) not in ("", want) else new

    @expr_functor.mutator
    class Widen(PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            # the operands first, then the call rebuilt here: the default would rebuild it with operands
            # that may now differ in dtype (float32 activations, float16 weights), which Relax refuses
            args = [self.visit_expr(a) for a in call.args]
            if not isinstance(call.op, tvm.ir.Op) or call.op.name.startswith("relax.call_"):
                # a call of a function or kernel (call_tir, packed): its parameters keep their dtypes, so
                # its operands get back the dtypes they had; its result keeps its own
                args = [as_before(a, old.ty) for a, old in zip(args, call.args, strict=True)]
                return self.builder_.normalize(relax.Call(self.visit_expr(call.op), args, call.attrs, call.ty_args))
            op = call.op.name
            if op == "relax.astype":
                x, to = args[0], str(call.attrs.dtype)
                if to in (F16, F32) and _dtype(x) == F32:
                    return x  # a narrowing (or now redundant) cast of a float32 value
                return self.builder_.normalize(relax.op.astype(x, to))
            if op in PRODUCTS:
                if F16 not in {_dtype(a) for a in args} and _dtype(call) != F16:
                    return self.builder_.normalize(relax.Call(call.op, args, call.attrs, call.ty_args))
                if op == "relax.matmul":
                    return relax.op.matmul(args[0], args[1], out_dtype=F32)
                a = call.attrs
                return relax.op.nn.conv1d(args[0], args[1], strides=a.strides, padding=a.padding,
                                          dilation=a.dilation, groups=a.groups, data_layout=a.data_layout,
                                          kernel_layout=a.kernel_layout, out_layout=a.out_layout, out_dtype=F32)
            if op in MOVES:
                if len(args) == 1 and isinstance(args[0], relax.Tuple):  # concat / split take a tuple
                    fields = wide(list(args[0].fields), only_if_mixed=True)
                    new = [relax.Tuple(fields)]
                else:
                    new = wide(args, only_if_mixed=True)
            else:
                new = wide(args, only_if_mixed=False)
            call = self.builder_.normalize(relax.Call(call.op, new, call.attrs, call.ty_args))
            if op not in MOVES and _dtype(call) == F16:
                return relax.op.astype(call, F32)
            return call

    widen = Widen(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            widen.builder_.update_func(gv, _returning(widen.visit_expr(func), func.ret_ty, widen.builder_))
    # a dropped cast leaves `lv = x`: FuseOpsByPattern then sees a cycle through the alias (fuse_attention
    # fails on an fp16 graph with embedded weights), so aliases are replaced by what they name
    return relax.transform.CanonicalizeBindings()(widen.builder_.get())


def _returning(func: relax.Function, ty: relax.Type, bb: relax.BlockBuilder) -> relax.Function:
    """`func` returning the dtypes of `ty` (its return type before compute_in_float32): each tensor output
    whose dtype changed is cast back in one more binding block, so callers see the interface they had."""
    body: relax.SeqExpr = func.body
    bindings: list[relax.Binding] = []

    def bind(value: relax.Expr) -> relax.Var:
        value = bb.normalize(value)
        var = relax.Var(f"out{len(bindings)}", value.ty)
        bindings.append(relax.VarBinding(var, value))
        return var

    def differs(got: relax.Type, want: relax.Type) -> bool:
        if isinstance(want, relax.TupleType):
            return any(differs(g, w) for g, w in zip(got.fields, want.fields, strict=True))
        return str(getattr(got, "dtype", "")) != str(getattr(want, "dtype", ""))

    def cast(expr: relax.Expr, want: relax.Type) -> relax.Expr:
        if not differs(expr.ty, want):
            return expr
        if isinstance(want, relax.TupleType):
            return relax.Tuple([cast(bind(relax.TupleGetItem(expr, i)), t) for i, t in enumerate(want.fields)])
        return bind(relax.op.astype(expr, str(want.dtype)))

    out = cast(body.body, ty)
    if not bindings:
        return func
    return relax.Function(func.params, relax.SeqExpr([*body.blocks, relax.BindingBlock(bindings)], bb.normalize(out)),
                          ty, func.is_pure, func.attrs)


def _weight_vars(func: relax.Function) -> list[relax.Var]:
    """The variables of `func` computed from its weights alone: the parameters after its `num_input` graph
    inputs (none without the attribute), and every binding whose free variables are all such."""
    n_input = func.attrs.get("num_input") if func.attrs is not None else None
    weights = list(func.params[int(n_input):]) if n_input is not None else []
    for block in func.body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                free = relax.analysis.free_vars(binding.value)
                if all(any(v.same_as(w) for w in weights) for v in free):
                    weights.append(binding.var)
    return weights


def pack_wide_matmuls(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Every matmul x [..., k] @ W [k, n] whose W comes from the weights alone and is wider than STREAM_CHUNK
    columns (the logits: the tied embedding, transposed) reads W as column panels instead: Wp [n / nb, k, nb]
    (W zero-padded to a multiple of nb = 4 vectors), out = (x @ Wp) [n / nb, rows, nb] -> [rows, n].

    A panel is contiguous, so every gemv task streams its panels front to back, where the rows of W [k, n]
    are 2 n bytes apart (104 KB for tiny.en's float16 logits: a hardware prefetcher follows no such stride),
    and a panel's 4 vectors are 4 independent accumulators. Measured (tiny.en's logits, float16 weights, 2
    threads, Zen 3): one row 4.1 -> 1.7-2.1 ms, six rows 9.3 -> 3.6 ms, plus 0.1-0.5 ms to put the panels'
    columns back in order. Run it before LiftTransformParams (tvm_onnx.import_graph does): the packing reads
    the weights alone, so it is lifted into `main_transform_params` and runs once, at load; with the weights
    as constants FoldConstant does it at build time. Exact: the same products, summed in the same order."""
    from tvm.relax import PyExprMutator, expr_functor

    nb = 4 * cpu_info(target).lanes

    def wide_weight(w: relax.Expr, weights: list[relax.Var]) -> tuple[int, int] | None:
        shape = getattr(w.ty, "shape", None)
        if shape is None or len(shape) != 2 or not all(isinstance(d, tirx.IntImm) for d in shape):
            return None
        k, n = (int(d) for d in shape)
        is_weight = isinstance(w, tvm.ir.expr.Constant) or any(w.same_as(v) for v in weights)
        return (k, n) if is_weight and n > STREAM_CHUNK else None

    @expr_functor.mutator
    class Pack(PyExprMutator):
        weights: list[relax.Var] = []

        def visit_call_(self, call: relax.Call) -> relax.Expr:
            kn = wide_weight(call.args[1], self.weights) if (
                isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.matmul") else None
            x_shape = getattr(call.args[0].ty, "shape", None)
            if kn is None or x_shape is None or len(x_shape) < 1:
                return super().visit_call_(call)
            (k, n), bb = kn, self.builder_
            x, w = self.visit_expr(call.args[0]), self.visit_expr(call.args[1])
            padded = -(-n // nb) * nb
            if padded != n:
                w = bb.emit(relax.op.nn.pad(w, [0, 0, 0, padded - n]))
            panels = bb.emit(relax.op.permute_dims(relax.op.reshape(w, (k, padded // nb, nb)), [1, 0, 2]))
            lead = list(x_shape)[:-1]
            rows = functools.reduce(lambda a, b: a * b, lead, tirx.IntImm("int64", 1))
            x2 = bb.emit(relax.op.reshape(x, (rows, k)))
            out_dtype = str(call.attrs.out_dtype)  # "void" (or None) when the operands' dtype is the result's
            out = bb.emit(relax.op.matmul(x2, panels) if out_dtype in ("", "void", "None") else
                          relax.op.matmul(x2, panels, out_dtype=out_dtype))
            # out: [n / nb, rows, nb]
            out = bb.emit(relax.op.reshape(relax.op.permute_dims(out, [1, 0, 2]), (rows, padded)))
            if padded != n:
                out = bb.emit(relax.op.strided_slice(out, [1], [0], [n]))
            return relax.op.reshape(out, (*lead, n))

    pack = Pack(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            pack.weights = _weight_vars(func)
            pack.builder_.update_func(gv, pack.visit_expr(func))
    return pack.builder_.get()


def channels_last_convs(mod: tvm.IRModule) -> tvm.IRModule:
    """Every conv1d of a Relax module (before legalization) computed in NWC data layout with WIO weights:
    ConvertLayout puts permute_dims before and after each (and cancels those that meet).

    In ONNX's NCW layout the gemm rule's reduction over (input channel, tap) reads the input a whole row of
    time apart per channel (12 KB for tiny.en's conv2: a page a step), and a strided conv copies its OIW
    weights filter-innermost on every call. NWC reads a tap's channels contiguously and WIO weights are
    filter-innermost already. tiny.en's front end, Zen 3, 2 threads: conv2 24.6 -> 11.1 ms, conv1 11.3 ->
    5.0 ms, for ~1 ms of transposes (the input's, the output's; the weights' are lifted with the others when
    this runs before LiftTransformParams, as tvm_onnx.import_graph does). The same products; the sums run
    over the taps in another order (float32 rounding: 1.4e-5 on the encoder's output)."""
    return relax.transform.ConvertLayout({"relax.nn.conv1d": ["NWC", "WIO"]})(mod)


def prepare(mod: tvm.IRModule, attention: bool = True, fp32_compute: bool = True) -> tvm.IRModule:
    """Legalize and fuse a Relax module: the "zero" pipeline's passes, without its tuning database, after
    float16 computation is made float32 with float16 weights widened in the kernels (`compute_in_float32`;
    fp32_compute=False keeps the graph's float16 arithmetic), convolutions are made channels-last
    (`channels_last_convs`) and each attention is grouped into one function (`fuse_attention`;
    attention=False leaves them apart)."""
    if fp32_compute:
        mod = compute_in_float32(mod)
    mod = channels_last_convs(mod)
    if attention:
        mod = fuse_attention(mod)
    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])(mod)
