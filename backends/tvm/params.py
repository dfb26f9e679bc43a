"""The TVM backend's side of the contract with its compiled library that needs no TVM: the model config,
the weight parameters' layout (`param_specs`) and how the canonical checkpoint is packed into it
(`pack_params`), and the few constants the calling code shares with the kernels.

Nothing here imports tvm: the backend runs a cached library with the TVM runtime alone (runtime.py), and
packs or memory-maps weights (packed.py) without the compiler. model.py and kernels.py import these names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from whisperkv.reference.dims import ModelDims

F32 = "float32"
Arr = np.ndarray


def nb_for(n: int, widest: int = 32) -> int:
    """Output-column block of a packed weight: the widest power of two up to `widest` that divides n."""
    for nb in (64, 32, 16, 8, 4, 2):
        if nb <= widest and n % nb == 0:
            return nb
    return 1


# Rows of the decoder's row tiles: ROW_TILE x (nb / ROW_VEC) accumulators, 3 x 4 = 12 of AVX2's 16 vector
# registers for a 32-column block, plus one widened weight vector and three broadcast inputs. tiny.en's
# logits for 6 rows (Zen 3): 4.0 ms against 5.2 ms streaming one row at a time on one thread, 2.2 against
# 2.4 ms on two. Both are bound by arithmetic there, not by the weights (a streaming pass re-reads them
# from L2): 6 rows are 6 x 20 M multiply-adds, and each fp16 -> fp32 widening takes an FMA port's turn.
# The backend calls `decode_row` below ROW_TILE token rows (kernels.py schedules both).
ROW_TILE = 3


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none: not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def host_vectors() -> tuple[int, int]:
    """(float32 lanes of a vector, vector registers) of this CPU, from the features the kernel reports (not
    from LLVM: asking it would load the compiler). schedule_rules.cpu_info reads the same from a target."""
    info = cpuinfo()
    flags = set((info.get("flags", "") + " " + info.get("Features", "")).split())
    if "avx512f" in flags:
        return 16, 32
    if "avx" in flags:
        return 8, 16
    if "asimd" in flags or "neon" in flags:
        return 4, 32
    return 4, 16  # SSE or unknown: small vectors are always legal (LLVM splits them where needed)


@dataclass(frozen=True)
class ModelConfig:
    """Everything the compiled code depends on: the dims, the storage dtype of the decoder weights and the
    vector registers the kernels' tiles are sized for (this host's by default)."""

    dims: ModelDims
    # "float16": decoder linear weights and the tied embedding are stored in fp16 and widened to fp32
    # inside the kernels (exact for a checkpoint that was fp16 on disk; halves the step's memory reads).
    decoder_weight_dtype: str = F32
    vector_lanes: int = field(default_factory=lambda: host_vectors()[0])
    vector_registers: int = field(default_factory=lambda: host_vectors()[1])

    def __post_init__(self) -> None:
        if self.decoder_weight_dtype not in ("float32", "float16"):
            raise ValueError(f"decoder_weight_dtype must be float32 or float16, got {self.decoder_weight_dtype!r}")
        if self.vector_lanes not in (4, 8, 16) or self.vector_registers not in (16, 32):
            raise ValueError(f"vector_lanes must be 4, 8 or 16 and vector_registers 16 or 32, got "
                             f"{self.vector_lanes} and {self.vector_registers}")

    @property
    def encoder_tile(self) -> tuple[int, int]:
        """(rows, columns) of the register tile of the static gemms (encoder, cross K/V): 6 rows of
        accumulators as wide as leaves room for one row of weight vectors and a broadcast input: 6 x 64 with
        32 AVX-512 registers (24 + 4 + 1), 6 x 16 with AVX2's 16 (12 + 2 + 1). AVX2 with the AVX-512 tile
        spilled its accumulators: tiny.en's MLP gemms ran 3-6x slower (Zen 3; benchmarks/bench_kernels.py)."""
        vectors = 4 if self.vector_registers >= 32 else 2
        return 6, vectors * self.vector_lanes

    @property
    def key_block(self) -> int:
        """Keys per score tile of the encoder's attention (kernels.encoder_attention): two vectors, 6 x 2
        accumulators (32 keys on AVX-512, 16 on AVX2)."""
        return 2 * self.vector_lanes

    @property
    def vocab_block(self) -> int:
        return 32  # column block of the tied embedding (the padding rows are zero; their logits are sliced off)

    @property
    def vocab_padded(self) -> int:
        # a multiple of 4 blocks, so the logits gemv computes 4 blocks at a time (kernels.gemv_blocks)
        step = 4 * self.vocab_block
        return -(-self.dims.n_vocab // step) * step

    def key(self) -> str:
        return f"{self.dims.key()}-w{self.decoder_weight_dtype}"


# ----------------------------------------------------------------------------------------------
# Parameter contract (shapes and dtypes, in call order) and packing from the canonical checkpoint


# Column blocks: the encoder's gemms (many rows) use ModelConfig.encoder_tile's register tiles; the
# decoder's streaming gemvs (a few rows) keep blocks of NARROW.
NARROW = 32


def pack_linear(w: Arr, dtype: str = F32, widest: int = NARROW) -> Arr:
    """PyTorch (N, K) -> packed (N / nb, K, nb): each block of nb output columns is contiguous over K."""
    n, k = w.shape
    nb = nb_for(n, widest)
    return np.ascontiguousarray(w.reshape(n // nb, nb, k).transpose(0, 2, 1), dtype=dtype)


def _packed_shape(n: int, k: int, widest: int = NARROW) -> tuple[int, int, int]:
    nb = nb_for(n, widest)
    return (n // nb, k, nb)


def _conv_as_linear(w: Arr) -> Arr:
    # (C_out, C_in, 3) -> (C_out, 3 * C_in) with column tap * C_in + c: the flat, padded input read at
    # row t * stride is then exactly the im2col row of output position t (see `encode`).
    c_out, c_in, taps = w.shape
    return w.transpose(0, 2, 1).reshape(c_out, taps * c_in)


def param_specs(cfg: ModelConfig) -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    """function name -> [(parameter name, shape, dtype)] for the weight parameters of each function."""
    d = cfg.dims
    a, t = d.n_audio_state, d.n_text_state
    wd = cfg.decoder_weight_dtype
    wide = cfg.encoder_tile[1]  # the static gemms' column block
    enc = [
        ("conv1.w", _packed_shape(a, 3 * d.n_mels, wide), F32), ("conv1.b", (a,), F32),
        ("conv2.w", _packed_shape(a, 3 * a, wide), F32), ("conv2.b", (a,), F32),
        ("pos", (d.n_audio_ctx, a), F32),
    ]
    for i in range(d.n_audio_layer):
        p = f"blocks.{i}."
        enc += [
            (p + "attn_ln.g", (a,), F32), (p + "attn_ln.b", (a,), F32),
            (p + "qkv.w", _packed_shape(3 * a, a, wide), F32), (p + "qkv.b", (3 * a,), F32),
            (p + "out.w", _packed_shape(a, a, wide), F32), (p + "out.b", (a,), F32),
            (p + "mlp_ln.g", (a,), F32), (p + "mlp_ln.b", (a,), F32),
            (p + "fc1.w", _packed_shape(4 * a, a, wide), F32), (p + "fc1.b", (4 * a,), F32),
            (p + "fc2.w", _packed_shape(a, 4 * a, wide), F32), (p + "fc2.b", (a,), F32),
        ]
    enc += [("ln_post.g", (a,), F32), ("ln_post.b", (a,), F32)]
    cross = []
    for i in range(d.n_text_layer):
        cross += [(f"blocks.{i}.cross_kv.w", _packed_shape(2 * t, t, wide), F32),
                  (f"blocks.{i}.cross_kv.b", (2 * t,), F32)]
    dec = [
        ("embedding", (cfg.vocab_padded // cfg.vocab_block, t, cfg.vocab_block), wd),
        ("pos", (d.n_text_ctx, t), F32),
    ]
    for i in range(d.n_text_layer):
        p = f"blocks.{i}."
        dec += [
            (p + "attn_ln.g", (t,), F32), (p + "attn_ln.b", (t,), F32),
            (p + "qkv.w", _packed_shape(3 * t, t), wd), (p + "qkv.b", (3 * t,), F32),
            (p + "out.w", _packed_shape(t, t), wd), (p + "out.b", (t,), F32),
            (p + "cross_ln.g", (t,), F32), (p + "cross_ln.b", (t,), F32),
            (p + "cross_q.w", _packed_shape(t, t), wd), (p + "cross_q.b", (t,), F32),
            (p + "cross_out.w", _packed_shape(t, t), wd), (p + "cross_out.b", (t,), F32),
            (p + "mlp_ln.g", (t,), F32), (p + "mlp_ln.b", (t,), F32),
            (p + "fc1.w", _packed_shape(4 * t, t), wd), (p + "fc1.b", (4 * t,), F32),
            (p + "fc2.w", _packed_shape(t, 4 * t), wd), (p + "fc2.b", (t,), F32),
        ]
    dec += [("ln.g", (t,), F32), ("ln.b", (t,), F32)]
    return {"encode": enc, "cross_kv": cross, "decode": dec}


def pack_params(weights: dict[str, Arr], cfg: ModelConfig) -> dict[str, list[Arr]]:
    """Canonical float32 weights (openai-whisper names) -> the parameter lists of `param_specs`."""
    d = cfg.dims
    w = weights
    wd = cfg.decoder_weight_dtype
    wide = cfg.encoder_tile[1]

    def qkv(p: str) -> tuple[Arr, Arr]:
        n = w[p + ".query.weight"].shape[0]
        mat = np.concatenate([w[p + ".query.weight"], w[p + ".key.weight"], w[p + ".value.weight"]])
        bias = np.concatenate([w[p + ".query.bias"], np.zeros(n, np.float32), w[p + ".value.bias"]])
        return mat, bias

    enc: list[Arr] = [
        pack_linear(_conv_as_linear(w["encoder.conv1.weight"]), widest=wide), w["encoder.conv1.bias"],
        pack_linear(_conv_as_linear(w["encoder.conv2.weight"]), widest=wide), w["encoder.conv2.bias"],
        w["encoder.positional_embedding"],
    ]
    for i in range(d.n_audio_layer):
        p = f"encoder.blocks.{i}"
        m, b = qkv(p + ".attn")
        enc += [
            w[p + ".attn_ln.weight"], w[p + ".attn_ln.bias"], pack_linear(m, widest=wide), b,
            pack_linear(w[p + ".attn.out.weight"], widest=wide), w[p + ".attn.out.bias"],
            w[p + ".mlp_ln.weight"], w[p + ".mlp_ln.bias"],
            pack_linear(w[p + ".mlp.0.weight"], widest=wide), w[p + ".mlp.0.bias"],
            pack_linear(w[p + ".mlp.2.weight"], widest=wide), w[p + ".mlp.2.bias"],
        ]
    enc += [w["encoder.ln_post.weight"], w["encoder.ln_post.bias"]]
    cross: list[Arr] = []
    for i in range(d.n_text_layer):
        p = f"decoder.blocks.{i}.cross_attn"
        t = w[p + ".key.weight"].shape[0]
        cross += [
            pack_linear(np.concatenate([w[p + ".key.weight"], w[p + ".value.weight"]]), widest=wide),
            np.concatenate([np.zeros(t, np.float32), w[p + ".value.bias"]]),
        ]
    emb = w["decoder.token_embedding.weight"]
    emb = np.concatenate([emb, np.zeros((cfg.vocab_padded - d.n_vocab, emb.shape[1]), np.float32)])
    vb = cfg.vocab_block
    dec: list[Arr] = [
        np.ascontiguousarray(emb.reshape(-1, vb, emb.shape[1]).transpose(0, 2, 1), dtype=wd),
        w["decoder.positional_embedding"],
    ]
    for i in range(d.n_text_layer):
        p = f"decoder.blocks.{i}"
        m, b = qkv(p + ".attn")
        dec += [
            w[p + ".attn_ln.weight"], w[p + ".attn_ln.bias"], pack_linear(m, wd), b,
            pack_linear(w[p + ".attn.out.weight"], wd), w[p + ".attn.out.bias"],
            w[p + ".cross_attn_ln.weight"], w[p + ".cross_attn_ln.bias"],
            pack_linear(w[p + ".cross_attn.query.weight"], wd), w[p + ".cross_attn.query.bias"],
            pack_linear(w[p + ".cross_attn.out.weight"], wd), w[p + ".cross_attn.out.bias"],
            w[p + ".mlp_ln.weight"], w[p + ".mlp_ln.bias"],
            pack_linear(w[p + ".mlp.0.weight"], wd), w[p + ".mlp.0.bias"],
            pack_linear(w[p + ".mlp.2.weight"], wd), w[p + ".mlp.2.bias"],
        ]
    dec += [w["decoder.ln.weight"], w["decoder.ln.bias"]]
    out = {"encode": enc, "cross_kv": cross, "decode": dec}
    for fn, specs in param_specs(cfg).items():  # the contract, checked here rather than in a kernel
        assert len(specs) == len(out[fn]), fn
        for (name, shape, dtype), arr in zip(specs, out[fn], strict=True):
            if arr.shape != shape or arr.dtype != np.dtype(dtype):
                raise ValueError(f"{fn}.{name}: packed {arr.shape} {arr.dtype}, expected {shape} {dtype}")
    return {fn: [np.ascontiguousarray(a) for a in arrs] for fn, arrs in out.items()}


# Planning bound of the decoder's rows. StaticPlanBlockMemory sizes every intermediate of `decode` for the
# upper bounds of B, n and p (one allocation per call instead of ~60), so a call may hold at most
# MAX_PLANNED_BATCH * n_text_ctx token rows (B * n): 28672 for Whisper, far beyond beams x windows (past it
# TVM refuses the call: "storage allocation failure"). The bound costs address space, not memory: tiny.en's
# `decode` reserves 0.25 GB once, of which a step touches its B rows.
MAX_PLANNED_BATCH = 64


def max_token_rows(dims: ModelDims) -> int:
    """The most token rows (B * n) one `decode` call takes (see MAX_PLANNED_BATCH)."""
    return MAX_PLANNED_BATCH * dims.n_text_ctx
