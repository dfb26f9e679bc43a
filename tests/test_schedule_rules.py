"""backends/tvm/schedule_rules.py: every rule on random shapes, Whisper's and shapes no Whisper has (odd sizes,
tails that are no multiple of a tile or a vector, symbolic rows), against numpy.

Each case builds a small Relax module with the ops an ONNX import produces, runs it through `prepare` (legalize,
fuse) and `schedule_for_cpu`, compiles it with plain `tvm.compile` and runs it in the Relax VM. Every test also
asserts that the rule it is about scheduled the function (its name in the function's attributes, and a parallel
or vectorised loop in the code), so a rule that silently stops matching fails here rather than only slowing
down tvm-onnx.

Tolerances: the schedules change the float32 summation order (register tiles, vector partial sums), and exp /
erf are polynomials of a few ulp. The reference is float64 numpy; `close` allows 2e-5 of the output's scale
(summation-order error of K <= 128 products of N(0, 1) values is ~sqrt(K) x 6e-8 x |terms|, well below) and
nothing else: a wrong tile, tail or epilogue is O(1) off.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tvm = pytest.importorskip("tvm")

# isort: off
from whisperkv.backends.tvm import threads as _threads  # noqa: E402,F401  (TVM_NUM_THREADS before tvm runs)
from whisperkv.backends.tvm import schedule_rules as sr  # noqa: E402
from tvm import relax  # noqa: E402
# isort: on

F32 = "float32"
TARGET = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2})
SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# Helpers


def _tensor(shape, name: str, dtype: str = F32) -> relax.Var:
    return relax.Var(name, relax.TensorType(list(shape), dtype))


def build(params: list[relax.Var], body) -> tuple[tvm.IRModule, relax.VirtualMachine]:
    """main(*params) = body(bb, *params) -> (the scheduled module, a VM of its build)."""
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    mod = sr.schedule_for_cpu(sr.prepare(bb.get()), TARGET)
    return mod, relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())


def run(vm: relax.VirtualMachine, *arrays: np.ndarray) -> np.ndarray:
    return vm["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays)).numpy()


def scheduled(mod: tvm.IRModule, rule: str) -> list[str]:
    """The TVMScript of every PrimFunc the named rule scheduled."""
    return [f.script() for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and sr.rule_of(f) == rule]


def assert_rule(mod: tvm.IRModule, rule: str, parallel: bool | None = None) -> str:
    """The rule scheduled a function, with a vectorised loop (and a parallel one if asked); returns its code."""
    codes = scheduled(mod, rule)
    assert codes, f"no PrimFunc scheduled by {rule!r}: {[sr.rule_of(f) for _, f in mod.functions_items()]}"
    code = codes[0]
    assert "T.vectorized(" in code
    if parallel is not None:
        assert ("T.parallel(" in code) == parallel
    return code


def is_product(k: int, outputs: int) -> bool:
    """Whether the shapes make a multiply-accumulate the gemm rule takes: a reduction longer than 1 and more
    than one output (k = 1 is an elementwise product; one output of extent-1 axes is a dot product)."""
    return k > 1 and outputs > 1


def close(got: np.ndarray, want: np.ndarray) -> None:
    scale = max(float(np.max(np.abs(want))), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)  # see the module docstring


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def rng_arrays(seed: int, *shapes) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(F32) for s in shapes]


# ----------------------------------------------------------------------------------------------
# The target


@pytest.mark.parametrize(("mcpu", "lanes", "registers"), [("skylake-avx512", 16, 32), ("icelake-server", 16, 32),
                                                           ("znver3", 8, 16), ("haswell", 8, 16)])
def test_vector_width_comes_from_the_target(mcpu: str, lanes: int, registers: int) -> None:
    cpu = sr.cpu_info(tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 4}))
    assert (cpu.lanes, cpu.registers, cpu.cores) == (lanes, registers, 4)
    # mb x vectors accumulators, the vectors of B and a broadcast of A fit the register file
    assert cpu.tile_rows * cpu.tile_vectors + cpu.tile_vectors + 1 <= registers


def test_an_avx512_target_gets_16_lane_tiles() -> None:
    # Compiled, not run (this machine may lack AVX-512): the tile's vector loop is a multiple of 16 lanes.
    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 4})
    x, w = _tensor((48, 64), "x"), _tensor((64, 128), "w")
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, w))
        bb.emit_func_output(out)
    mod = sr.schedule_for_cpu(sr.prepare(bb.get()), avx512)
    code = scheduled(mod, "gemm")[0]
    widths = [int(n) for n in re.findall(r"T\.vectorized\(T\.int64\((\d+)\)\)", code)]
    assert widths and all(w % 16 == 0 for w in widths), widths
    tvm.compile(mod, avx512)


def test_vector_and_row_blocks() -> None:
    assert sr.vector_block(384, 8, 2) == 16 and sr.vector_block(384, 16, 4) == 64
    assert sr.vector_block(51864, 8, 8) == 24  # 8 x 3 x 2161: three whole vectors, no tail
    assert sr.vector_block(1500, 8, 2) == 4  # 4 x 375: half vectors rather than a predicated tail
    assert sr.row_block(1500, 6) == 6 and sr.row_block(35, 6) == 5 and sr.row_block(49, 6) == 6  # 49: a tail


# ----------------------------------------------------------------------------------------------
# Fast math


def _elementwise(fn, a):
    return lambda i: fn(a[i])


def test_fast_exp_and_erf_are_within_a_few_ulp() -> None:
    from tvm import te

    x = np.concatenate([np.linspace(-90, 88, 20001), np.linspace(-4.5, 4.5, 2001)]).astype(F32)
    for fast, exact in ((sr.fast_exp, np.exp), (sr.fast_erf, np.vectorize(math.erf))):
        a = te.placeholder((x.size,), F32, name="a")
        b = te.compute((x.size,), _elementwise(fast, a), name="b")
        f = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b]).with_attr("global_symbol", "main")}),
                        TARGET)
        out = tvm.runtime.tensor(np.zeros_like(x))
        f(tvm.runtime.tensor(x), out)
        want = exact(x.astype(np.float64))
        # exp: Cephes' polynomial, a few ulp of float32 (relative 3e-7); below -87 it returns 0 (exp < 2e-38).
        # erf: Eigen's rational approximation, a few ulp near its largest values (absolute 5e-7).
        tol = 3e-7 * np.abs(want) + (2e-38 if fast is sr.fast_exp else 5e-7)
        assert np.all(np.abs(out.numpy() - want) <= tol)


# ----------------------------------------------------------------------------------------------
# gemm: matmul with fused epilogues


def _linear_case(draw, gelu_epilogue: bool, residual: bool):
    m = draw(st.integers(1, 60), label="rows")  # below 24 rows: the streaming schedule; above: register tiles
    k = draw(st.integers(1, 70), label="k")
    n = draw(st.integers(1, 80), label="n")
    batch = draw(st.integers(1, 2), label="batch")
    x, w, b, r = _tensor((batch, m, k), "x"), _tensor((k, n), "w"), _tensor((n,), "b"), _tensor((batch, m, n), "r")

    def body(bb, x, w, b, r):
        y = relax.op.add(relax.op.matmul(x, w), b)
        if gelu_epilogue:  # as ONNX exports GELU: x * 0.5 * (1 + erf(x / sqrt 2))
            y = relax.op.multiply(relax.op.multiply(y, relax.const(0.5, F32)), relax.op.add(
                relax.const(1.0, F32), relax.op.erf(relax.op.multiply(y, relax.const(1 / math.sqrt(2), F32)))))
        return relax.op.add(y, r) if residual else y

    return (batch, m, k, n), [x, w, b, r], body


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), gelu_epilogue=st.booleans(), residual=st.booleans())
def test_gemm_with_bias_gelu_residual(data, seed: int, gelu_epilogue: bool, residual: bool) -> None:
    (batch, m, k, n), params, body = _linear_case(data.draw, gelu_epilogue, residual)
    mod, vm = build(params, body)
    if is_product(k, batch * m * n):
        code = assert_rule(mod, "gemm")
        assert "T.erf" not in code  # the polynomial, vectorised with the tile's store
    x, w, b, r = rng_arrays(seed, (batch, m, k), (k, n), (n,), (batch, m, n))
    want = x.astype(np.float64) @ w + b
    want = gelu(want) if gelu_epilogue else want
    close(run(vm, x, w, b, r), want + r if residual else want)


@pytest.mark.slow  # 20 compiles
@SLOW_SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_gemm_many_shapes(data, seed: int) -> None:
    (batch, m, k, n), params, body = _linear_case(data.draw, True, True)
    mod, vm = build(params, body)
    if is_product(k, batch * m * n):
        assert_rule(mod, "gemm")
    x, w, b, r = rng_arrays(seed, (batch, m, k), (k, n), (n,), (batch, m, n))
    close(run(vm, x, w, b, r), gelu(x.astype(np.float64) @ w + b) + r)


def test_gemm_tiles_whisper_encoder_shape_in_parallel() -> None:
    # tiny.en's encoder MLP: 1500 rows (6-row tiles), 384 -> 1536 (two-vector blocks), GELU in the epilogue
    m, k, n = 1500, 384, 1536
    x, w, b = _tensor((1, m, k), "x"), _tensor((k, n), "w"), _tensor((n,), "b")
    mod, vm = build([x, w, b], lambda bb, x, w, b: relax.op.add(relax.op.matmul(x, w), b))
    code = assert_rule(mod, "gemm", parallel=True)
    assert "T.unroll(T.int64(6))" in code  # the register tile's rows
    # the weight read as contiguous panels [n / nb, k, nb], packed per column chunk, nb = the tile's columns
    nb = sr.vector_block(n, sr.cpu_info(TARGET).lanes, sr.cpu_info(TARGET).tile_vectors)
    assert f"w_global = T.sblock_alloc_buffer((T.int64({n // nb}), T.int64({k}), T.int64({nb})))" in code
    xs, ws, bs = rng_arrays(1, (1, m, k), (k, n), (n,))
    close(run(vm, xs, ws, bs), xs.astype(np.float64) @ ws + bs)


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_gemm_batched_attention_shapes(data, seed: int) -> None:
    b, h = data.draw(st.integers(1, 2), label="batch"), data.draw(st.integers(1, 3), label="heads")
    m, k, n = (data.draw(st.integers(1, 40), label=s) for s in ("m", "k", "n"))
    q, kt = _tensor((b, h, m, k), "q"), _tensor((b, h, k, n), "kt")
    mod, vm = build([q, kt], lambda bb, q, kt: relax.op.matmul(q, kt))
    if is_product(k, b * h * m * n):
        assert_rule(mod, "gemm")
    qs, ks = rng_arrays(seed, (b, h, m, k), (b, h, k, n))
    close(run(vm, qs, ks), qs.astype(np.float64) @ ks)


@SETTINGS
@given(k=st.integers(1, 50), n=st.integers(1, 300), rows=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       seed=st.integers(0, 2**31 - 1))
def test_gemv_with_symbolic_rows(k: int, n: int, rows: list[int], seed: int) -> None:
    # the decode step: a symbolic number of rows (batch x tokens) against a weight, one library for any count
    batch = tvm.tirx.Var("batch", "int64")
    x, w, b = _tensor((batch, 1, k), "x"), _tensor((k, n), "w"), _tensor((n,), "b")
    mod, vm = build([x, w, b], lambda bb, x, w, b: relax.op.add(relax.op.matmul(x, w), b))
    if k > 1:  # (symbolic rows: a product even with one column)
        assert_rule(mod, "gemm")
    for i, r in enumerate(rows):
        xs, ws, bs = rng_arrays(seed + i, (r, 1, k), (k, n), (n,))
        close(run(vm, xs, ws, bs), xs.astype(np.float64) @ ws + bs)


def test_wide_gemv_is_parallel_over_column_chunks() -> None:
    # the logits: any number of rows (beams, batched windows) against 51864 columns; chunks of columns per
    # task, every row of B read once, front to back, into all the rows' accumulators
    k, n, rows = 64, 51864, tvm.tirx.Var("rows", "int64")
    x, w = _tensor((rows, 1, k), "x"), _tensor((k, n), "w")
    mod, vm = build([x, w], lambda bb, x, w: relax.op.matmul(x, w))
    assert_rule(mod, "gemm", parallel=True)
    for r in (1, 3):
        xs, ws = rng_arrays(r, (r, 1, k), (k, n))
        close(run(vm, xs, ws), xs.astype(np.float64) @ ws)


def packed_logits_module(k: int, n: int, dtype: str, lead) -> tvm.IRModule:
    """main(x [*lead, k], embedding [n, k]) = x @ embedding^T, the embedding a weight (num_input = 1), as
    tvm_onnx.import_graph leaves it: packed (pack_wide_matmuls), then the weights' transforms lifted."""
    x, emb = _tensor((*lead, k), "x"), _tensor((n, k), "embedding", dtype)
    bb = relax.BlockBuilder()
    with bb.function("main", [x, emb], attrs={"num_input": 1}):
        with bb.dataflow():
            logits = relax.op.permute_dims(emb, [1, 0])
            out = bb.emit_output(relax.op.matmul(x, logits, out_dtype=F32) if dtype != F32 else  # (as imported:
                                 relax.op.matmul(x, logits))  # a float32 graph's matmul has no out_dtype)
        bb.emit_func_output(out)
    return relax.transform.LiftTransformParams()(sr.pack_wide_matmuls(bb.get(), TARGET))


@SETTINGS
@given(k=st.integers(2, 40), extra=st.integers(1, 70), rows=st.lists(st.integers(1, 7), min_size=1, max_size=2),
       fp16=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_wide_weights_are_read_as_column_panels_packed_once(k: int, extra: int, rows: list[int], fp16: bool,
                                                           seed: int) -> None:
    # the logits: wider than STREAM_CHUNK, and (extra) no multiple of the panel width: padded, then sliced off
    n, dtype, batch = sr.STREAM_CHUNK + extra, "float16" if fp16 else F32, tvm.tirx.Var("batch", "int64")
    lifted = packed_logits_module(k, n, dtype, (batch, 1))
    nb = 4 * sr.cpu_info(TARGET).lanes
    packed = lifted["main_transform_params"].ret_ty.fields[0]
    assert [int(d) for d in packed.shape] == [-(-n // nb), k, nb]  # the panels, computed at load
    main = lifted["main"].script()
    assert "pad(" not in main and "permute_dims(embedding" not in main  # nothing of it left per call
    mod = sr.schedule_for_cpu(sr.prepare(lifted), TARGET)
    assert_rule(mod, "gemm")
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())
    emb = rng_arrays(seed, (n, k))[0].astype(dtype)
    panels = vm["main_transform_params"]([tvm.runtime.tensor(emb)])
    for i, r in enumerate(rows):
        xs = rng_arrays(seed + 1 + i, (r, 1, k))[0]
        got = vm["main"](tvm.runtime.tensor(xs), *panels).numpy()
        assert got.shape == (r, 1, n)
        close(got, xs.astype(np.float64) @ emb.astype(np.float64).T)


def test_narrow_or_activation_products_are_not_packed() -> None:
    k, n = 8, sr.STREAM_CHUNK + 5
    x, w, a = _tensor((3, k), "x"), _tensor((k, 64), "w"), _tensor((k, n), "a")
    bb = relax.BlockBuilder()
    with bb.function("main", [x, a, w], attrs={"num_input": 2}):  # a: an input, however wide; w: narrow
        with bb.dataflow():
            out = bb.emit_output(relax.Tuple([relax.op.matmul(x, a), relax.op.matmul(x, w)]))
        bb.emit_func_output(out)
    before = bb.get()
    tvm.ir.assert_structural_equal(sr.pack_wide_matmuls(before, TARGET), before)


def test_float16_products_are_summed_in_float32() -> None:
    # a float16 matmul returned as float16: float32 sums, one rounding to float16 at the end (compute_in_float32
    # keeps the function's output dtype)
    k = 1536  # tiny.en's MLP: float16 sums over 1536 products drift by many float16 ulps
    x, w = _tensor((1, 30, k), "x", "float16"), _tensor((k, 40), "w", "float16")
    mod, vm = build([x, w], lambda bb, x, w: relax.op.matmul(x, w))
    assert_rule(mod, "gemm")
    xs, ws = (a.astype("float16") for a in rng_arrays(4, (1, 30, k), (k, 40)))
    want = xs.astype(np.float64) @ ws.astype(np.float64)
    got = run(vm, xs, ws).astype(np.float64)
    # one float16 rounding of the exact sum: half an ulp, 2^-11 relative (the float32 sum's own error is
    # ~sqrt(k) x 6e-8 relative, negligible)
    assert np.all(np.abs(got - want) <= 2.0**-11 * np.abs(want) + 1e-3)


def fp16_mlp_block(bb, x, w1, b1, w2, b2):
    """An fp16 export's MLP with its residual, as from_onnx imports it: float32 in, Cast to float16, MatMul +
    Add, GELU (Mul by float16 constants, Erf), MatMul + Add, the residual Add, Cast back to float32."""
    f16 = "float16"
    h = relax.op.astype(x, f16)
    y = relax.op.add(relax.op.matmul(h, w1), b1)
    e = relax.op.erf(relax.op.multiply(y, relax.const(1 / math.sqrt(2), f16)))
    g = relax.op.multiply(relax.op.multiply(y, relax.const(0.5, f16)), relax.op.add(e, relax.const(1.0, f16)))
    return relax.op.astype(relax.op.add(h, relax.op.add(relax.op.matmul(g, w2), b2)), F32)


@SETTINGS
@given(rows=st.integers(1, 40), d=st.integers(2, 40), hidden=st.integers(2, 96), seed=st.integers(0, 2**31 - 1))
def test_float16_graph_computes_in_float32_with_float16_weights(rows: int, d: int, hidden: int, seed: int) -> None:
    # compute_in_float32 (prepare's first pass): every op of an fp16 graph runs in float32, the weights are
    # read as float16 inside the gemm kernels (no widened copy of them), the output keeps its dtype.
    x = _tensor((rows, d), "x")
    w1, b1 = _tensor((d, hidden), "w1", "float16"), _tensor((hidden,), "b1", "float16")
    w2, b2 = _tensor((hidden, d), "w2", "float16"), _tensor((d,), "b2", "float16")
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w1, b1, w2, b2]):
        with bb.dataflow():
            out = bb.emit_output(fp16_mlp_block(bb, x, w1, b1, w2, b2))
        bb.emit_func_output(out)
    wide = sr.compute_in_float32(bb.get())
    computed = []

    @relax.expr_functor.visitor
    class Calls(relax.PyExprVisitor):
        def visit_call_(self, call) -> None:
            super().visit_call_(call)
            computed.append((call.op.name, str(call.ty.dtype), [str(a.ty.dtype) for a in call.args]))

    Calls().visit_expr(wide["main"])
    # float16 only where a weight is read: the matmuls' second operands and the biases' casts
    assert all(dtype == F32 for _, dtype, _ in computed), computed
    assert sorted(set(o for o, _, a in computed if "float16" in a)) == ["relax.astype", "relax.matmul"]
    assert wide["main"].ret_ty.dtype == F32
    mod = sr.schedule_for_cpu(sr.prepare(wide), TARGET)
    gemms = scheduled(mod, "gemm")
    assert len(gemms) == 2 and all('"float16"' in code for code in gemms)  # each reads its float16 weight
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())
    xs, w1s, b1s, w2s, b2s = rng_arrays(seed, (rows, d), (d, hidden), (hidden,), (hidden, d), (d,))
    w1s, b1s, w2s, b2s = (a.astype("float16") for a in (w1s, b1s, w2s, b2s))
    got = run(vm, xs, w1s, b1s, w2s, b2s)
    # the float32 computation of the same graph: x itself (its Cast to float16 is dropped), the weights and
    # constants as stored (1/sqrt 2 in float16, widened exactly); float16 arithmetic would be ~1e-3 of the
    # scale off (an 11-bit significand), far past close()'s 2e-5
    h = xs.astype(np.float64)
    y = h @ w1s + b1s
    g = 0.5 * y * (1.0 + np.vectorize(math.erf)(y * float(np.float16(1 / math.sqrt(2)))))
    close(got, h + g @ w2s + b2s)


# ----------------------------------------------------------------------------------------------
# gemm: conv1d (the front end), strided or not


def conv1d_numpy(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    c_out, c_in, taps = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad)))
    t_out = (xp.shape[2] - taps) // stride + 1
    cols = np.stack([xp[:, :, j * stride: j * stride + taps] for j in range(t_out)], axis=2)  # (1, C, T, taps)
    return np.einsum("bctk,fck->bft", cols, w)


@SETTINGS
@given(c_in=st.integers(1, 20), c_out=st.integers(1, 40), t=st.integers(3, 70), stride=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31 - 1))
def test_conv1d_with_bias_and_gelu(c_in: int, c_out: int, t: int, stride: int, seed: int) -> None:
    x, w, b = _tensor((1, c_in, t), "x"), _tensor((c_out, c_in, 3), "w"), _tensor((c_out,), "b")

    def body(bb, x, w, b):
        y = relax.op.add(relax.op.nn.conv1d(x, w, strides=stride, padding=1), relax.op.reshape(b, (1, c_out, 1)))
        return relax.op.multiply(relax.op.multiply(y, relax.const(0.5, F32)), relax.op.add(
            relax.const(1.0, F32), relax.op.erf(relax.op.multiply(y, relax.const(1 / math.sqrt(2), F32)))))

    mod, vm = build([x, w, b], body)
    assert_rule(mod, "gemm")
    xs, ws, bs = rng_arrays(seed, (1, c_in, t), (c_out, c_in, 3), (c_out,))
    close(run(vm, xs, ws, bs), gelu(conv1d_numpy(xs, ws, stride, 1) + bs[None, :, None]))


def test_conv1d_runs_channels_last_with_its_weights_transposed_once() -> None:
    # prepare() makes a conv1d NWC with WIO weights: its product reads a tap's input channels contiguously
    # (in NCW a step of the reduction jumps a row of time) and, strided or not, needs no per-call copy of
    # its weights filter-innermost; with the weights lifted (as tvm_onnx imports do) their transpose runs at
    # load, in main_transform_params, not in main
    x = _tensor((1, 24, 40), "x")
    w = relax.Var("w", relax.TensorType([32, 24, 3], F32))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w], attrs={"num_input": 1}):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv1d(x, w, strides=2, padding=1))
        bb.emit_func_output(out)
    lifted = relax.transform.LiftTransformParams()(sr.channels_last_convs(bb.get()))
    mod = sr.schedule_for_cpu(sr.prepare(lifted), TARGET)
    code = assert_rule(mod, "gemm")
    assert "conv1d_nwc" in code, "the conv is not computed channels-last"
    assert "_global" not in code, "the conv copies an operand on every call"
    # main takes the weights as WIO [taps, in, out]: main_transform_params transposed them, once
    assert 'w: R.Tensor((32, 24, 3)' in mod["main_transform_params"].script()
    assert 'R.Tensor((3, 24, 32), dtype="float32")) -> R.Tensor((1, 32, 20)' in mod["main"].script()
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())
    xs, ws = rng_arrays(9, (1, 24, 40), (32, 24, 3))
    params = vm["main_transform_params"]([tvm.runtime.tensor(ws)])
    got = vm["main"](tvm.runtime.tensor(xs), *params).numpy()
    close(got, conv1d_numpy(xs, ws, 2, 1))
    assert got.shape == (1, 32, 20)  # NCW out, as the graph asked


@pytest.mark.slow  # Whisper's front end at full size: 3000 frames, both convolutions
def test_conv1d_whisper_front_end() -> None:
    for c_in, stride, t in ((80, 1, 3000), (384, 2, 3000)):
        x, w = _tensor((1, c_in, t), "x"), _tensor((384, c_in, 3), "w")
        mod, vm = build([x, w], lambda bb, x, w, s=stride: relax.op.nn.conv1d(x, w, strides=s, padding=1))
        assert_rule(mod, "gemm", parallel=True)
        xs, ws = rng_arrays(stride, (1, c_in, t), (384, c_in, 3))
        close(run(vm, xs, ws), conv1d_numpy(xs, ws, stride, 1))


# ----------------------------------------------------------------------------------------------
# attention: matmul(q, permute_dims(k)) [+ mask] -> softmax -> matmul(., v), fused by `prepare`


def attention_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    s = q.astype(np.float64) @ np.swapaxes(k, -1, -2)
    if mask is not None:
        s = s + mask
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


def _attention_body(masked: bool):
    def body(bb, q, k, v, *mask):
        s = relax.op.matmul(q, relax.op.permute_dims(k, [0, 1, 3, 2]))
        return relax.op.matmul(relax.op.nn.softmax(relax.op.add(s, mask[0]) if masked else s, axis=-1), v)
    return body


@SETTINGS
@given(heads=st.integers(1, 3), queries=st.integers(1, 50), keys=st.integers(1, 70), depth=st.integers(1, 40),
       masked=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_attention(heads: int, queries: int, keys: int, depth: int, masked: bool, seed: int) -> None:
    # >= 24 queries: tiles of query rows (keys padded to whole vectors); fewer: one row at a time
    q, k, v = (_tensor((1, heads, n, depth), name) for name, n in (("q", queries), ("k", keys), ("v", keys)))
    params = [q, k, v] + ([_tensor((queries, keys), "mask")] if masked else [])
    mod, vm = build(params, _attention_body(masked))
    if depth > 1 and keys > 1:  # (else a product of extent-1 axes: no gemm in it)
        assert_rule(mod, "attention")
    qs, ks, vs, ms = rng_arrays(seed, (1, heads, queries, depth), (1, heads, keys, depth), (1, heads, keys, depth),
                                (queries, keys))
    ms = np.where(ms > 0, 0.0, -1e9).astype(F32)  # a causal-like mask: -1e9 where hidden (exp gives 0)
    ms[:, 0] = 0.0  # (every row sees one key at least)
    close(run(vm, qs, ks, vs, *([ms] if masked else [])), attention_numpy(qs, ks, vs, ms if masked else None))


def test_attention_decode_step_with_symbolic_batch() -> None:
    # the decode step's cross attention: rows x 6 heads, one query against 1500 cached keys, read in place
    n = tvm.tirx.Var("n", "int64")
    q, k, v = _tensor((n, 6, 1, 64), "q"), _tensor((n, 6, 1500, 64), "k"), _tensor((n, 6, 1500, 64), "v")
    mod, vm = build([q, k, v], _attention_body(False))
    code = assert_rule(mod, "attention", parallel=True)  # 2 x 6 x 1500 x 64 multiply-adds a row: both cores
    assert "T_transpose" not in code  # the keys are not copied transposed on every call
    # the scores' partial sums are computed per row, inside the parallel loop, not for every row beforehand
    assert code.index("T.parallel(") < code.index('T.sblock("matmul_rf")')
    for rows in (1, 2):
        qs, ks, vs = rng_arrays(rows, (rows, 6, 1, 64), (rows, 6, 1500, 64), (rows, 6, 1500, 64))
        close(run(vm, qs, ks, vs), attention_numpy(qs, ks, vs))


def test_encoder_attention_reads_its_keys_as_panels() -> None:
    # the tiled attention copies K^T once for all heads; a tile of kb keys reads head_dim x kb floats of it,
    # contiguous when the copy is laid out [batch, heads, keys / kb, head_dim, kb] (in K^T's own layout its
    # head_dim rows are a row of keys apart: a page or more each at Whisper's 1500 keys)
    q, k, v = (_tensor((1, 2, n, 24), name) for name, n in (("q", 48), ("k", 100), ("v", 100)))
    mod, vm = build([q, k, v], _attention_body(False))
    code = assert_rule(mod, "attention")
    panels = re.search(r"T_transpose\w* = T.sblock_alloc_buffer\(\(T.int64\(1\), T.int64\(2\), T.int64\((\d+)\), "
                       r"T.int64\(24\), T.int64\((\d+)\)\)", code)
    assert panels, "K^T is not copied as panels"
    blocks, kb = int(panels[1]), int(panels[2])
    assert blocks * kb >= 100 and blocks * kb - 100 < kb  # the keys padded to whole panels, no more
    qs, ks, vs = rng_arrays(5, (1, 2, 48, 24), (1, 2, 100, 24), (1, 2, 100, 24))
    close(run(vm, qs, ks, vs), attention_numpy(qs, ks, vs))


@SETTINGS
@given(queries=st.integers(2, 40), d=st.integers(2, 24), seed=st.integers(0, 2**31 - 1))  # (1 key: no product)
def test_float16_attention_with_embedded_weights(queries: int, d: int, seed: int) -> None:
    # an fp16 export's self-attention with its weights as constants (the seed's libraries): Cast to float16,
    # projections, scores Cast to float32 for the Softmax and back. compute_in_float32 drops the casts of
    # activations; the alias that leaves (`lv = x`) made fuse_attention's pattern fusion fail with a cyclic
    # dependency until the pass canonicalised its bindings. The attention is then grouped and scheduled.
    f16 = "float16"
    wq, wk, wv = (a.astype(f16) for a in rng_arrays(seed, (d, d), (d, d), (d, d)))
    x = _tensor((1, queries, d), "x")

    def body(bb, x):
        h = relax.op.astype(x, f16)
        q, k, v = (relax.op.reshape(relax.op.matmul(h, relax.const(w)), (1, 1, queries, d)) for w in (wq, wk, wv))
        s = relax.op.astype(relax.op.matmul(q, relax.op.permute_dims(k, [0, 1, 3, 2])), F32)
        p = relax.op.astype(relax.op.nn.softmax(s, axis=-1), f16)
        return relax.op.astype(relax.op.matmul(p, v), F32)

    mod, vm = build([x], body)
    assert_rule(mod, "attention")
    (xs,) = rng_arrays(seed + 1, (1, queries, d))
    xs *= 0.3  # scores of O(1): a softmax neither flat nor one-hot
    q, k, v = (xs.astype(np.float64) @ w for w in (wq, wk, wv))
    # float32 throughout with the float16 weights widened exactly: close()'s float32 bound holds
    close(run(vm, xs)[:, 0], attention_numpy(q[:, None], k[:, None], v[:, None])[:, 0])


@pytest.mark.slow  # tiny.en's encoder attention at full size
def test_attention_whisper_encoder() -> None:
    q, k, v = (_tensor((1, 6, 1500, 64), name) for name in "qkv")
    mod, vm = build([q, k, v], _attention_body(False))
    code = assert_rule(mod, "attention", parallel=True)
    assert "T.int64(1504)" in code  # keys padded to whole register blocks
    qs, ks, vs = rng_arrays(3, *[(1, 6, 1500, 64)] * 3)
    close(run(vm, qs * 0.125, ks, vs), attention_numpy(qs * 0.125, ks, vs))


# ----------------------------------------------------------------------------------------------
# rows: softmax, layer norm


@SETTINGS
@given(rows=st.integers(1, 40), width=st.integers(1, 1600), seed=st.integers(0, 2**31 - 1))
def test_softmax(rows: int, width: int, seed: int) -> None:
    x = _tensor((2, rows, width), "x")
    mod, vm = build([x], lambda bb, x: relax.op.nn.softmax(x, axis=-1))
    if width > 1:
        assert_rule(mod, "rows")
    (xs,) = rng_arrays(seed, (2, rows, width))
    xs *= 4  # scores of a few units, as attention's
    e = np.exp(xs.astype(np.float64) - xs.max(-1, keepdims=True))
    close(run(vm, xs), e / e.sum(-1, keepdims=True))


@SETTINGS
@given(rows=st.integers(1, 40), width=st.integers(2, 500), seed=st.integers(0, 2**31 - 1))
def test_layer_norm(rows: int, width: int, seed: int) -> None:
    x, g, b = _tensor((1, rows, width), "x"), _tensor((width,), "g"), _tensor((width,), "b")
    mod, vm = build([x, g, b], lambda bb, x, g, b: relax.op.nn.layer_norm(x, g, b, axes=[-1], epsilon=1e-5))
    mod = relax.transform.DecomposeOpsForInference()(mod)  # (as tvm-onnx imports it; a no-op once legalized)
    assert_rule(mod, "rows")
    xs, gs, bs = rng_arrays(seed, (1, rows, width), (width,), (width,))
    x64 = xs.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * gs + bs
    close(run(vm, xs, gs, bs), want)


def test_softmax_with_symbolic_rows_and_whisper_width() -> None:
    # the decoder's cross-attention softmax: batch x heads x tokens rows (symbolic), 1500 keys (4 x 375)
    n = tvm.tirx.Var("n", "int64")
    x = _tensor((n, 6, 1, 1500), "x")
    mod, vm = build([x], lambda bb, x: relax.op.nn.softmax(x, axis=-1))
    assert_rule(mod, "rows")
    for rows in (1, 3):
        (xs,) = rng_arrays(rows, (rows, 6, 1, 1500))
        e = np.exp(xs.astype(np.float64) - xs.max(-1, keepdims=True))
        close(run(vm, xs), e / e.sum(-1, keepdims=True))


@SETTINGS
@given(rows=st.integers(1, 30), width=st.integers(2, 700), seed=st.integers(0, 2**31 - 1))
def test_sum_and_max_over_the_last_axis(rows: int, width: int, seed: int) -> None:
    x = _tensor((rows, width), "x")
    mod, vm = build([x], lambda bb, x: relax.op.add(relax.op.sum(x, axis=-1), relax.op.max(x, axis=-1)))
    (xs,) = rng_arrays(seed, (rows, width))
    close(run(vm, xs), xs.astype(np.float64).sum(-1) + xs.max(-1))
    if rows * width >= 4 * 8:  # (a row of whole vectors at least)
        assert scheduled(mod, "rows")


# ----------------------------------------------------------------------------------------------
# spatial; and what no rule knows


@SETTINGS
@given(shape=st.lists(st.integers(1, 40), min_size=2, max_size=4), seed=st.integers(0, 2**31 - 1))
def test_transpose_and_add(shape: list[int], seed: int) -> None:
    x = _tensor(tuple(shape), "x")
    axes = list(range(len(shape)))[::-1]
    mod, vm = build([x], lambda bb, x: relax.op.add(relax.op.permute_dims(x, axes), relax.const(1.0, F32)))
    if np.prod(shape) > 1 and shape[0] > 1:
        assert scheduled(mod, "spatial")
    (xs,) = rng_arrays(seed, tuple(shape))
    close(run(vm, xs), np.transpose(xs, axes) + 1.0)


def test_unrecognised_functions_keep_the_default_lowering() -> None:
    # a padded max pool is no gemm, no row reduction (its stages have other extents) and not injective:
    # left to TVM's default lowering, and still correct
    x = _tensor((1, 3, 17), "x")
    mod, vm = build([x], lambda bb, x: relax.op.nn.max_pool1d(x, pool_size=3, strides=2, padding=1))
    funcs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and all(sr.rule_of(f) == "" for f in funcs)
    (xs,) = rng_arrays(0, (1, 3, 17))
    padded = np.pad(xs, ((0, 0), (0, 0), (1, 1)), constant_values=-np.inf)
    close(run(vm, xs), np.stack([padded[:, :, 2 * j: 2 * j + 3].max(-1) for j in range(9)], axis=-1))


def test_already_scheduled_functions_are_left_alone() -> None:
    x, w = _tensor((30, 16), "x"), _tensor((16, 16), "w")
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, w))
        bb.emit_func_output(out)
    mod = sr.prepare(bb.get())
    marked = tvm.IRModule({gv: (f.with_attr(sr.SCHEDULED, True) if isinstance(f, tvm.tirx.PrimFunc) else f)
                           for gv, f in mod.functions_items()})
    again = sr.schedule_for_cpu(marked, TARGET)
    assert not any(sr.rule_of(f) for _, f in again.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


# ----------------------------------------------------------------------------------------------
# The seed's route: `whisperkv compile-onnx` writes the three libraries, scheduled


def test_compile_onnx_refuses_to_write_into_the_onnx_folder(tmp_path) -> None:
    from whisperkv.reference.app.cli import main

    # a folder with *.onnx is opened as an ONNX export: the libraries beside them would never run
    assert main(["compile-onnx", str(tmp_path), str(tmp_path)]) == 2


@pytest.mark.slow  # exports a small model and compiles its three graphs
def test_compile_onnx_writes_the_seeds_three_libraries_scheduled(tmp_path, capsys) -> None:
    from whisperkv.backends.onnx import layout
    from whisperkv.backends.onnx.tvm_libs import TVMLibraryFolderBackend
    from whisperkv.reference.app.cli import main
    from whisperkv.reference.model import NumpyModel
    from whisperkv.reference.weights import save_huggingface

    from .helpers import SMALL, SMALL_ATOL, compare_with_reference, small_checkpoint

    checkpoint = small_checkpoint(SMALL, seed=5)
    save_huggingface(checkpoint, tmp_path / "model")
    assert main(["export-onnx", str(tmp_path / "onnx"), "--model", str(tmp_path / "model")]) == 0
    assert main(["compile-onnx", str(tmp_path / "onnx"), str(tmp_path / "libs"), "--model",
                 str(tmp_path / "model")]) == 0
    assert sorted(p.name for p in (tmp_path / "libs").iterdir()) == sorted(f"{p}.so" for p in layout.PARTS)
    assert capsys.readouterr().out.count(".so") == 3
    backend = TVMLibraryFolderBackend(checkpoint, tmp_path / "libs")
    assert backend.max_batch == 1  # batch 1, as the seed compiled them
    compare_with_reference(backend, NumpyModel(checkpoint), 5, n_start=3, n_steps=4, atol=SMALL_ATOL)
