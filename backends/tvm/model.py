"""Whisper as a Relax module: `encode`, `cross_kv`, `decode` and `gather_rows`, built from the kernels in
kernels.py.

All functions take their weights as parameters (so one compiled library serves every checkpoint of the
same dims, and the `.so` stays small):

    encode(mel [1, n_mels, 2T], *encoder params)            -> audio features [1, T, C]
    cross_kv(audio [G, T, C], *cross params)                 -> 2L cross slots [G, H, T, D] (K, V per layer)
    decode(tokens [B, n], 2L self slots [B, H, p, D], 2L cross slots [G, H, T, D], cross_rows [B] int32,
           *decoder params) -> (logits [B * n, V_pad], 2L present self slots [B, H, p + n, D])
    decode_row(...): `decode` with one-row-at-a-time linears (same signature, for B * n < ROW_TILE)
    gather_rows(rows [R] int32, 2L slots [B, H, S, D])      -> 2L slots [R, H, S, D], row i = rows[i]

with T = n_audio_ctx, C = n_*_state, H heads of D = C / H, L = n_text_layer, and symbolic B (rows decoded
side by side), n (tokens this call), p (past self length, shared by all rows), G (distinct windows), R and
S: prefill is `cross_kv` + `decode` with p = 0, a step is `decode` with n = 1. Row b of every output
depends on row b of the inputs only. The linears see the B * n token rows as one matrix, so a step reads
the weights once for all rows (kernels.gemm, row_tile); attention, the KV append and the embedding keep
the row axis. Cross K/V are stored once per window: row b reads window cross_rows[b], so the rows that
decode the same audio (beams, samples) share them, and the backend's `select` only re-indexes them.
Self/cross slots follow reference/kv.py: K stored unscaled, the d^-1/2 scale is applied inside the
attention (the reference splits it as d^-1/4 on q and on k: equal up to float rounding).

Weights are not in PyTorch layout: `pack_params` turns the canonical checkpoint (reference/weights.py) into
the parameter lists below; `param_specs` is the matching contract the library is compiled for. Both live in
params.py with ModelConfig, which the backend imports without tvm.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, s_tir, te, tirx

from . import kernels as K
from .kernels import _vectorize_inner
from .params import (  # noqa: F401  (model.X users)
    F32,
    MAX_PLANNED_BATCH,
    NARROW,
    ModelConfig,
    max_token_rows,
    pack_linear,
    pack_params,
    param_specs,
)

# ----------------------------------------------------------------------------------------------
# The graph


def _tensor(shape: list, dtype: str = F32) -> relax.TensorType:
    return relax.TensorType(shape, dtype)


class _Graph:
    """A BlockBuilder plus a cache of kernels, so each distinct kernel is compiled once and shared by
    every layer that needs it (compile time grows with distinct kernels, not with layers)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg, self.bb = cfg, relax.BlockBuilder()
        self._kernels: dict[str, relax.GlobalVar] = {}

    def kernel(self, name: str, make) -> relax.GlobalVar:  # make: () -> PrimFunc
        if name not in self._kernels:
            self._kernels[name] = self.bb.add_func(make(), name)
        return self._kernels[name]

    def call(self, name: str, make, args: list, out: relax.TensorType | list[relax.TensorType]) -> relax.Expr:
        return self.bb.emit(relax.call_tir(self.kernel(name, make), args, out))

    def reshape(self, x: relax.Expr, shape: list) -> relax.Expr:
        return self.bb.emit(relax.op.reshape(x, shape))

    # -- layers (M: rows, static int for the encoder, symbolic for the decoder) -------------------

    def layer_norm(self, x: relax.Expr, g: relax.Expr, b: relax.Expr, m, c: int) -> relax.Expr:
        # [M, c] -> [M, c]
        static = isinstance(m, int)
        name = f"layer_norm_{m if static else 'n'}x{c}"
        return self.call(name, lambda: K.layer_norm(name, m if static else tirx.Var("m", "int64"), c),
                         [x, g, b], _tensor([m, c]))

    def linear(self, x: relax.Expr, w: relax.Expr, b: relax.Expr | None, m, k: int, n: int, act: str = "",
               residual: relax.Expr | None = None, a_view: tuple | None = None, w_dtype: str = F32,
               batch: tirx.Var | None = None, row_tile: int | None = None) -> relax.Expr:
        """[M, k] @ packed [n, k]^T (+ b) (-> gelu) (+ residual) -> [M, n], all in one kernel.

        a_view=("flat", stride, size): x is a flat buffer of `size` and row m is x[m * stride : m * stride + k]
        (how the convolutions read their padded input without an im2col copy).
        a_view=("heads", head_dim): x is [H, M, head_dim] and row m is its heads concatenated.
        batch (a symbolic count, with a static M): x is [batch, M, k] and the result [batch, M, n].
        row_tile (symbolic M): kernels.gemm's tiles of that many rows; None: one row at a time.
        """
        static = isinstance(m, int)
        mb, wide = self.cfg.encoder_tile
        nb = K.nb_for(n, wide if static else NARROW)
        kind = f"{a_view[0]}{a_view[1]}" if a_view else ("batched" if batch is not None else "dense")
        rows = str(m) if static else (f"t{row_tile}" if row_tile else "n")
        name = (f"linear_{kind}_{rows}x{k}x{n}{'_b' if b is not None else ''}{'_' + act if act else ''}"
                f"{'_res' if residual is not None else ''}_{w_dtype}")

        def make() -> tirx.PrimFunc:
            mm = m if static else tirx.Var("m", "int64")
            nbatch = tirx.Var("g", "int64") if batch is not None else 1
            if a_view and a_view[0] == "flat":
                stride, size = a_view[1], a_view[2]
                xa = te.placeholder((size,), F32, name="x")
                a_fn = lambda _b, i, j: xa[i * stride + j]  # noqa: E731
            elif a_view and a_view[0] == "heads":
                hd = a_view[1]
                xa = te.placeholder((k // hd, mm, hd), F32, name="x")
                a_fn = lambda _b, i, j: xa[j // hd, i, j % hd]  # noqa: E731
            elif batch is not None:
                xa = te.placeholder((nbatch, mm, k), F32, name="x")
                a_fn = lambda bi, i, j: xa[bi, i, j]  # noqa: E731
            else:
                xa = te.placeholder((mm, k), F32, name="x")
                a_fn = lambda _b, i, j: xa[i, j]  # noqa: E731
            wp = te.placeholder((n // nb, k, nb), w_dtype, name="w")
            ins = [xa, wp]
            bias = res = None
            if b is not None:
                bias = te.placeholder((n,), F32, name="bias")
                ins.append(bias)
            if residual is not None:
                res = te.placeholder((mm, n), F32, name="res")
                ins.append(res)

            def epilogue(_b, i, j, acc):
                y = acc + bias[j] if bias is not None else acc
                y = K.gelu(y) if act == "gelu" else y
                return res[i, j] + y if res is not None else y

            return K.gemm(name, ins, nbatch, mm, n, k, a_fn, lambda _b, j, kk: wp[j // nb, kk, j % nb], epilogue, nb,
                          mb=mb, batched_output=batch is not None, row_tile=row_tile)

        args = [x, w] + ([b] if b is not None else []) + ([residual] if residual is not None else [])
        return self.call(name, make, args, _tensor([batch, m, n] if batch is not None else [m, n]))

    # -- encoder -----------------------------------------------------------------------------

    def build_encode(self) -> None:
        d = self.cfg.dims
        T, C, H = d.n_audio_ctx, d.n_audio_state, d.n_audio_head
        D = C // H
        nm = d.n_mels
        bb = self.bb
        mel = relax.Var("mel", _tensor([1, nm, 2 * T]))
        params = [relax.Var(n.replace(".", "_"), _tensor(list(s), dt)) for n, s, dt in param_specs(self.cfg)["encode"]]
        it = iter(params)
        with bb.function("encode", [mel, *params]):
            with bb.dataflow():
                # [1, n_mels, 2T] -> [2T + 2, n_mels]: time-major with one zero row each side (conv padding)
                xp = self.call("mel_pad", lambda: _pad_transpose_mel(nm, 2 * T), [mel], _tensor([2 * T + 2, nm]))
                xf = self.reshape(xp, [(2 * T + 2) * nm])
                w1, b1, w2, b2, pos = (next(it) for _ in range(5))
                # conv1 (k3, pad 1) as a gemm over overlapping rows of the flat input: [2T, C]
                h = self.linear(xf, w1, b1, 2 * T, 3 * nm, C, act="gelu", a_view=("flat", nm, (2 * T + 2) * nm))
                hp = self.call(f"pad_rows_{2 * T}x{C}", lambda: _pad_rows(2 * T, C), [h], _tensor([2 * T + 2, C]))
                hf = self.reshape(hp, [(2 * T + 2) * C])
                # conv2 (k3, stride 2, pad 1): row t starts at padded row 2t; + positional embedding: [T, C]
                x = self.linear(hf, w2, b2, T, 3 * C, C, act="gelu", residual=pos,
                                a_view=("flat", 2 * C, (2 * T + 2) * C))
                for _ in range(d.n_audio_layer):
                    x = self.encoder_block(x, [next(it) for _ in range(12)], T, C, H, D)
                g, b = next(it), next(it)
                x = self.layer_norm(x, g, b, T, C)
                out = bb.emit_output(self.reshape(x, [1, T, C]))
            bb.emit_func_output(out)

    def encoder_block(self, x, w: list, T: int, C: int, H: int, D: int) -> relax.Expr:
        # [T, C] -> [T, C]
        ln1g, ln1b, wqkv, bqkv, wo, bo, ln2g, ln2b, w1, b1, w2, b2 = w
        h = self.layer_norm(x, ln1g, ln1b, T, C)
        qkv = self.linear(h, wqkv, bqkv, T, C, 3 * C)  # [T, 3C]
        o = self.self_attention_full(qkv, T, C, H, D)  # [H, T, D]
        x = self.linear(o, wo, bo, T, C, C, residual=x, a_view=("heads", D))
        h = self.layer_norm(x, ln2g, ln2b, T, C)
        h = self.linear(h, w1, b1, T, C, 4 * C, act="gelu")
        return self.linear(h, w2, b2, T, 4 * C, C, residual=x)

    def self_attention_full(self, qkv, T: int, C: int, H: int, D: int) -> relax.Expr:
        """Encoder attention: [T, 3C] -> [H, T, D], one fused kernel (kernels.encoder_attention).

        Keys are padded to Tp (a multiple of the key block) so the score tile has no tail; the padded
        columns are -inf before the softmax and so exactly 0 after it. The (H, T, Tp) score matrix is
        never materialized: each block of query rows keeps its scores in cache. Tiles from the config's
        vector registers (ModelConfig.key_block, encoder_tile).
        """
        mb, wide = self.cfg.encoder_tile
        nbt = self.cfg.key_block
        Tp = -(-T // nbt) * nbt
        nbd = K.nb_for(D, wide)
        # K as the packed right operand of the score tile: [H, Tp / nbt, D, nbt]; V for P @ V: [H, D / nbd, Tp, nbd]
        kp = self.call(f"pack_keys_{T}x{C}", lambda: _pack_heads(T, Tp, C, H, D, nbt, C, transpose=True),
                       [qkv], _tensor([H, Tp // nbt, D, nbt]))
        vp = self.call(f"pack_values_{T}x{C}", lambda: _pack_heads(T, Tp, C, H, D, nbd, 2 * C, transpose=False),
                       [qkv], _tensor([H, D // nbd, Tp, nbd]))
        name = f"encoder_attention_{T}x{C}"
        return self.call(name, lambda: K.encoder_attention(name, T, C, H, D, nbt, nbd, mb), [qkv, kp, vp],
                         _tensor([H, T, D]))

    # -- cross K/V ---------------------------------------------------------------------------

    def build_cross_kv(self) -> None:
        d = self.cfg.dims
        T, C, H = d.n_audio_ctx, d.n_text_state, d.n_text_head
        D = C // H
        bb = self.bb
        g = tirx.Var("G", "int64")  # windows of audio
        audio = relax.Var("audio", _tensor([g, T, d.n_audio_state]))
        specs = param_specs(self.cfg)["cross_kv"]
        params = [relax.Var(n.replace(".", "_"), _tensor(list(s), dt)) for n, s, dt in specs]
        with bb.function("cross_kv", [audio, *params]):
            with bb.dataflow():
                slots = []
                for i in range(d.n_text_layer):
                    # the encoder's static row tiles over each window's T rows: [G, T, 2C]
                    kv = self.linear(audio, params[2 * i], params[2 * i + 1], T, C, 2 * C, batch=g)
                    for off in (0, C):  # key, then value: [G, H, T, D] each
                        name = f"split_heads_{T}x{C}_{off}"
                        slots.append(self.call(name, lambda off=off: _split_heads(T, C, H, D, off), [kv],
                                               _tensor([g, H, T, D])))
                out = bb.emit_output(relax.Tuple(slots))
            bb.emit_func_output(out)

    # -- rows --------------------------------------------------------------------------------

    def build_gather_rows(self) -> None:
        """gather_rows(rows [R], 2L slots [B, H, S, D]) -> 2L slots [R, H, S, D]: the backend's `select` of
        the self slots (cross slots are shared per window and only re-indexed)."""
        d = self.cfg.dims
        H, D, L = d.n_text_head, d.text_head_dim, d.n_text_layer
        bb = self.bb
        r, b, length = tirx.Var("R", "int64"), tirx.Var("B", "int64"), tirx.Var("S", "int64")
        rows = relax.Var("rows", _tensor([r], "int32"))
        slots = [relax.Var(f"slot_{i}", _tensor([b, H, length, D])) for i in range(2 * L)]
        with bb.function("gather_rows", [rows, *slots]):
            with bb.dataflow():
                out = [self.call(f"gather_rows_{H}x{D}", lambda: _gather_rows(H, D), [s, rows],
                                 _tensor([r, H, length, D])) for s in slots]
                result = bb.emit_output(relax.Tuple(out))
            bb.emit_func_output(result)

    # -- decoder -----------------------------------------------------------------------------

    def build_decode(self, name: str, row_tile: int | None) -> None:
        """`decode` (row_tile: kernels.ROW_TILE) or `decode_row` (None); see the module docstring."""
        cfg, d = self.cfg, self.cfg.dims
        T, C, H, L = d.n_audio_ctx, d.n_text_state, d.n_text_head, d.n_text_layer
        D = C // H
        wd = cfg.decoder_weight_dtype
        bb = self.bb
        B = tirx.Var("B", "int64")  # rows
        n = tirx.Var("n", "int64")  # tokens per row in this call
        p = tirx.Var("p", "int64")  # past self length (the same for every row)
        m = B * n  # token rows of the linears: row b * n + i is token i of row b
        g = tirx.Var("G", "int64")  # distinct windows of cross K/V
        tokens = relax.Var("tokens", _tensor([B, n], "int32"))
        self_kv = [relax.Var(f"self_{i}", _tensor([B, H, p, D])) for i in range(2 * L)]
        cross = [relax.Var(f"cross_{i}", _tensor([g, H, T, D])) for i in range(2 * L)]
        cross_rows = relax.Var("cross_rows", _tensor([B], "int32"))  # row b reads cross window cross_rows[b]
        params = [relax.Var(nm.replace(".", "_"), _tensor(list(s), dt)) for nm, s, dt in param_specs(cfg)["decode"]]
        it = iter(params)
        with bb.function(name, [tokens, *self_kv, *cross, cross_rows, *params]):
            with bb.dataflow():
                emb, pos = next(it), next(it)
                # x[b * n + i] = embedding[tokens[b, i]] + pos[p + i]: [B * n, C]
                x = self.call(f"embed_{wd}", lambda: _embed(C, d.n_text_ctx, H, D, cfg.vocab_block, wd),
                              [tokens, emb, pos, self_kv[0]], _tensor([B, n, C]))
                x = self.reshape(x, [m, C])
                present = []
                for i in range(L):
                    w = [next(it) for _ in range(18)]
                    x, k, v = self.decoder_block(x, w, self_kv[2 * i], self_kv[2 * i + 1], cross[2 * i],
                                                 cross[2 * i + 1], cross_rows, (B, n, p), row_tile)
                    present += [k, v]
                g, b = next(it), next(it)
                h = self.layer_norm(x, g, b, m, C)
                # tied output projection: [B * n, V_pad]
                logits = self.linear(h, emb, None, m, C, cfg.vocab_padded, w_dtype=wd, row_tile=row_tile)
                out = bb.emit_output(relax.Tuple([logits, *present]))
            bb.emit_func_output(out)

    def decoder_block(self, x: relax.Expr, w: list, past_k: relax.Expr, past_v: relax.Expr, cross_k: relax.Expr,
                      cross_v: relax.Expr, cross_rows: relax.Expr, shape: tuple, row_tile: int | None
                      ) -> tuple[relax.Expr, relax.Expr, relax.Expr]:
        # x [B * n, C], past [B, H, p, D], cross [G, H, T, D] (row b: window cross_rows[b])
        #   -> x [B * n, C], present [B, H, p + n, D]
        d, wd = self.cfg.dims, self.cfg.decoder_weight_dtype
        T, C, H, D = d.n_audio_ctx, d.n_text_state, d.n_text_head, d.text_head_dim
        B, n, p = shape
        m = B * n
        (ln1g, ln1b, wqkv, bqkv, wo, bo, ln2g, ln2b, wq, bq, wco, bco, ln3g, ln3b, w1, b1, w2, b2) = w

        def linear(x: relax.Expr, w: relax.Expr, b: relax.Expr, k: int, width: int, **kw: Any) -> relax.Expr:
            return self.linear(x, w, b, m, k, width, w_dtype=wd, row_tile=row_tile, **kw)

        h = self.layer_norm(x, ln1g, ln1b, m, C)
        qkv = linear(h, wqkv, bqkv, C, 3 * C)  # [B * n, 3C]
        qkv3 = self.reshape(qkv, [B, n, 3 * C])  # the same memory, by row
        k = self.call(f"append_kv_{C}_k", lambda: _append_kv(C, H, D, C), [past_k, qkv3], _tensor([B, H, p + n, D]))
        v = self.call(f"append_kv_{C}_v", lambda: _append_kv(C, H, D, 2 * C), [past_v, qkv3],
                      _tensor([B, H, p + n, D]))
        a = self.call(f"self_attention_{C}", lambda: K.decoder_attention(
            f"self_attention_{C}", H, D, tirx.Var("n", "int64"), tirx.Var("L", "int64"), 3 * C, 0, causal=True),
            [qkv3, k, v], _tensor([B, n, C]))
        x = linear(self.reshape(a, [m, C]), wo, bo, C, C, residual=x)
        h = self.layer_norm(x, ln2g, ln2b, m, C)
        q = linear(h, wq, bq, C, C)
        a = self.call(f"cross_attention_{T}x{C}", lambda: K.cross_attention(f"cross_attention_{T}x{C}", H, D, T),
                      [self.reshape(q, [B, n, C]), cross_k, cross_v, cross_rows], _tensor([B, n, C]))
        x = linear(self.reshape(a, [m, C]), wco, bco, C, C, residual=x)
        h = self.layer_norm(x, ln3g, ln3b, m, C)
        h = linear(h, w1, b1, C, 4 * C, act="gelu")
        x = linear(h, w2, b2, 4 * C, C, residual=x)
        return x, k, v


def build_module(cfg: ModelConfig) -> tvm.IRModule:
    """The Relax functions and their kernels, before the Relax pipeline."""
    g = _Graph(cfg)
    g.build_encode()
    g.build_cross_kv()
    g.build_gather_rows()
    g.build_decode("decode", K.ROW_TILE)
    g.build_decode("decode_row", None)
    mod = g.bb.get()
    ctx = cfg.dims.n_text_ctx
    for name in ("decode", "decode_row"):
        mod[name] = mod[name].with_attr("tir_var_upper_bound", {"B": MAX_PLANNED_BATCH, "n": ctx, "p": ctx})
    return mod


# ----------------------------------------------------------------------------------------------
# Small data-movement kernels (memory-bound, simple schedules)


def _parallel_outer(func: tirx.PrimFunc, name: str) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    sch.parallel(sch.get_loops(sch.get_sblock("out"))[0])
    return sch.mod["main"].with_attr("global_symbol", name)


def _pad_transpose_mel(nm: int, frames: int) -> tirx.PrimFunc:
    mel = te.placeholder((1, nm, frames), F32, name="mel")
    out = te.compute((frames + 2, nm), lambda r, c: te.if_then_else(
        tirx.all(r >= 1, r <= frames), mel[0, c, tirx.max(tirx.min(r - 1, frames - 1), 0)], K._f(0.0)), name="out")
    return _parallel_outer(te.create_prim_func([mel, out]), "mel_pad")


def _pad_rows(m: int, c: int) -> tirx.PrimFunc:
    x = te.placeholder((m, c), F32, name="x")
    out = te.compute((m + 2, c), lambda r, j: te.if_then_else(
        tirx.all(r >= 1, r <= m), x[tirx.max(tirx.min(r - 1, m - 1), 0), j], K._f(0.0)), name="out")
    return _parallel_outer(te.create_prim_func([x, out]), f"pad_rows_{m}x{c}")


def _pack_heads(T: int, Tp: int, C: int, H: int, D: int, nb: int, off: int, transpose: bool) -> tirx.PrimFunc:
    qkv = te.placeholder((T, 3 * C), F32, name="qkv")

    def at(t, h, dd):
        return te.if_then_else(t < T, qkv[tirx.min(t, T - 1), off + h * D + dd], K._f(0.0))

    if transpose:  # keys: [H, Tp / nb, D, nb]
        out = te.compute((H, Tp // nb, D, nb), lambda h, tb, dd, ti: at(tb * nb + ti, h, dd), name="out")
    else:  # values: [H, D / nb, Tp, nb]
        out = te.compute((H, D // nb, Tp, nb), lambda h, db, t, di: at(t, h, db * nb + di), name="out")
    return _parallel_outer(te.create_prim_func([qkv, out]), f"pack_{'keys' if transpose else 'values'}_{T}x{C}")


def _split_heads(T: int, C: int, H: int, D: int, off: int) -> tirx.PrimFunc:
    # kv [G, T, 2C] -> [G, H, T, D], the heads at column off
    g = tirx.Var("g", "int64")
    kv = te.placeholder((g, T, 2 * C), F32, name="kv")
    out = te.compute((g, H, T, D), lambda w, h, t, dd: kv[w, t, off + h * D + dd], name="out")
    # parallel over (window, head, row), vectors along the head: a leading unit axis alone left it serial
    # and scalar
    sch = s_tir.Schedule(te.create_prim_func([kv, out]))
    w, h, t, dd = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(sch.fuse(w, h, t))
    if D % K.LANES == 0:
        sch.vectorize(sch.split(dd, [None, K.LANES])[1])
    return K._finish(sch, f"split_heads_{T}x{C}_{off}")


def _append_kv(C: int, H: int, D: int, off: int) -> tirx.PrimFunc:
    # present [B, H, p + n, D] = concat(past [B, H, p, D], new heads from qkv [B, n, 3C] at column off), by row
    b, n, p = tirx.Var("b", "int64"), tirx.Var("n", "int64"), tirx.Var("p", "int64")
    heads = tirx.IntImm("int64", H)  # int64 like b: the two loops are fused
    past = te.placeholder((b, heads, p, D), F32, name="past")
    qkv = te.placeholder((b, n, 3 * C), F32, name="qkv")
    out = te.compute((b, heads, p + n, D), lambda r, h, j, dd: te.if_then_else(
        j < p, past[r, h, tirx.min(j, p - 1), dd], qkv[r, tirx.max(j - p, 0), off + h * D + dd]), name="out")
    sch = s_tir.Schedule(te.create_prim_func([past, qkv, out]))
    if D % K.LANES == 0:  # a copy of the whole past each step: one vector per LANES floats, not a scalar loop
        _vectorize_inner(sch, "out", K.LANES)
    # every row copies its past: parallel over (row, head) once there are several rows (6 rows at p = 200:
    # 8 copies of 1.8 MB a step)
    r, h = sch.get_loops(sch.get_sblock("out"))[:2]
    sch.parallel(sch.fuse(r, h))
    return K._finish(sch, f"append_kv_{C}_{'k' if off == C else 'v'}")


def _embed(C: int, n_ctx: int, H: int, D: int, vb: int, wd: str) -> tirx.PrimFunc:
    # tokens [B, n] -> embedding[tokens] + pos[p : p + n]: [B, n, C]; p is read from the shape of a past slot.
    b, n, p, nv = tirx.Var("b", "int64"), tirx.Var("n", "int64"), tirx.Var("p", "int64"), tirx.Var("nv", "int64")
    tok = te.placeholder((b, n), "int32", name="tokens")
    emb = te.placeholder((nv, C, vb), wd, name="emb")
    pos = te.placeholder((n_ctx, C), F32, name="pos")
    past = te.placeholder((b, H, p, D), F32, name="past")
    out = te.compute((b, n, C), lambda r, i, c: emb[tok[r, i] // vb, c, tok[r, i] % vb].astype(F32) + pos[p + i, c],
                     name="out")
    return te.create_prim_func([tok, emb, pos, past, out]).with_attr("global_symbol", f"embed_{wd}")


def _gather_rows(H: int, D: int) -> tirx.PrimFunc:
    # src [B, H, S, D], rows [R] -> [R, H, S, D] with row i = src[rows[i]] (the rows are checked by the caller:
    # an index out of range would read outside src)
    b, r, length = tirx.Var("b", "int64"), tirx.Var("r", "int64"), tirx.Var("s", "int64")
    src = te.placeholder((b, H, length, D), F32, name="src")
    rows = te.placeholder((r,), "int32", name="rows")
    out = te.compute((r, H, length, D), lambda i, h, j, dd: src[rows[i].astype("int64"), h, j, dd], name="out")
    sch = s_tir.Schedule(te.create_prim_func([src, rows, out]))
    i, h, _, dd = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(sch.fuse(i, h))
    if D % K.LANES == 0:
        sch.vectorize(sch.split(dd, [None, K.LANES])[1])
    return K._finish(sch, f"gather_rows_{H}x{D}")
