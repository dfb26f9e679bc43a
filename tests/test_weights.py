"""Tests for reference/weights.py: checkpoint loading into the canonical form.

Three independent witnesses are used, so that a test cannot pass just because the loader agrees with itself:
- the bytes of the bundled tiny.en model.bin, read directly (row blocks, zero key biases, the alias);
- CTranslate2's own Python model-spec writer (ctranslate2.specs + the converter's fuse_linear), which
  fuses canonical weights exactly as the official converter does and writes model.bin files;
- CTranslate2's engine, whose encoder output and decoder logits must equal those of a short float64
  numpy Whisper run on the canonical weights the loader produced.

ctranslate2 is a test-only oracle here; the loader itself never imports it.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisperkv.reference.dims import ModelDims
from whisperkv.reference.weights import (
    Checkpoint,
    CheckpointError,
    check_weights,
    default_model_dir,
    expected_shapes,
    load_checkpoint,
    load_huggingface,
    read_ct2_model_bin,
    save_huggingface,
)

ctranslate2 = pytest.importorskip("ctranslate2")

TINY_EN = ModelDims(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                    n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)
SMALL = ModelDims(n_mels=5, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=2,
                  n_vocab=64, n_text_ctx=8, n_text_state=8, n_text_head=2, n_text_layer=2)

# The oracle comparisons: the numpy side runs in float64, CTranslate2 in float32 (compute_type="float32").
# The differences are float32 rounding accumulated over 384..1536-term dot products, softmaxes over 1500
# keys and 4 residual layers; measured ~1.5e-5 on tiny.en (outputs up to ~16, logits up to ~20). 1e-3 is
# ~60x that, while any mapping error (swapped q/k, a shifted split, a lost bias, a wrong alias) moves
# outputs by O(0.1..10) -- see test_ct2_oracle_detects_a_swapped_query_and_key.
ORACLE_ATOL = 1e-3


# ----------------------------------------------------------------------------------------------
# Helpers: error checks


def assert_checkpoint_error(fn, file: Path, *fragments: str) -> str:
    """fn() raises a one-line CheckpointError that starts with the file's name and contains fragments."""
    with pytest.raises(CheckpointError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{file}: "), msg
    assert msg.count(str(file)) == 1, msg  # named once, not nested "path: path: ..."
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    return msg


# ----------------------------------------------------------------------------------------------
# Helpers: writing CTranslate2 model.bin files
#
# Format (docs/architecture.md "Checkpoints"): u32 version; u16-length-prefixed NUL-terminated spec name;
# u32 revision; u32 variable count; per variable: name, u8 rank, rank x u32 dims, u8 dtype id, u32 byte
# count, raw bytes; u32 alias count; (alias, target) name pairs. test_serializer_reproduces_ct2_files
# checks this writer byte for byte against files written by CTranslate2 itself.

CT2_DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2,
                 np.dtype(np.int32): 3, np.dtype(np.float16): 4}


def ct2_string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_bytes(variables: dict[str, np.ndarray], aliases: dict[str, str], *, version: int = 6,
              spec: str = "WhisperSpec", revision: int = 3, header_shapes: dict | None = None,
              dtype_ids: dict | None = None) -> bytes:
    """Serialize to model.bin. header_shapes / dtype_ids override what the header says about a variable
    (its bytes stay those of the array), to build inconsistent files."""
    header_shapes, dtype_ids = header_shapes or {}, dtype_ids or {}
    out = [struct.pack("<I", version), ct2_string(spec), struct.pack("<II", revision, len(variables))]
    for name, a in variables.items():
        a = np.asarray(a)
        shape = header_shapes.get(name, a.shape)
        out += [ct2_string(name), struct.pack("<B", len(shape)), struct.pack(f"<{len(shape)}I", *shape),
                struct.pack("<B", dtype_ids.get(name, CT2_DTYPE_IDS[a.dtype])), struct.pack("<I", a.nbytes),
                a.astype(a.dtype.newbyteorder("<")).tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [ct2_string(alias), ct2_string(target)]
    return b"".join(out)


def write_ct2_folder(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(data)
    (folder / "config.json").write_text(json.dumps({"suppress_ids": [], "suppress_ids_begin": []}))
    return folder


# ----------------------------------------------------------------------------------------------
# Helpers: CTranslate2's own writer (ctranslate2.specs), fed canonical weights


def vocabulary(n_vocab: int) -> list[str]:
    special = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|nocaptions|>"]
    return (special + [f"tok{i}" for i in range(n_vocab)])[:n_vocab]


def ct2_spec(weights: dict[str, np.ndarray], dims: ModelDims, quantization: str = "float16"):
    """A WhisperSpec filled the way ctranslate2.converters.transformers.WhisperLoader fills it."""
    from ctranslate2.converters.utils import fuse_linear
    from ctranslate2.specs import common_spec, whisper_spec

    spec = whisper_spec.WhisperSpec(dims.n_audio_layer, dims.n_audio_head, dims.n_text_layer, dims.n_text_head)

    def linear(s, name: str, bias: bool = True) -> None:
        s.weight = weights[f"{name}.weight"]
        if bias:
            s.bias = weights[f"{name}.bias"]

    def norm(s, name: str) -> None:
        s.gamma, s.beta = weights[f"{name}.weight"], weights[f"{name}.bias"]

    def attention(s, name: str, self_attention: bool) -> None:  # WhisperLoader.set_attention
        q, k, v = (common_spec.LinearSpec() for _ in range(3))
        linear(q, f"{name}.query")
        linear(k, f"{name}.key", bias=False)
        linear(v, f"{name}.value")
        if self_attention:
            fuse_linear(s.linear[0], [q, k, v])
        else:
            fuse_linear(s.linear[0], [q])
            fuse_linear(s.linear[1], [k, v])
        linear(s.linear[-1], f"{name}.out")
        norm(s.layer_norm, f"{name}_ln")

    def ffn(s, name: str) -> None:
        linear(s.linear_0, f"{name}.mlp.0")
        linear(s.linear_1, f"{name}.mlp.2")
        norm(s.layer_norm, f"{name}.mlp_ln")

    enc, dec = spec.encoder, spec.decoder
    linear(enc.conv1, "encoder.conv1")
    linear(enc.conv2, "encoder.conv2")
    enc.position_encodings.encodings = weights["encoder.positional_embedding"]
    norm(enc.layer_norm, "encoder.ln_post")
    for i, layer in enumerate(enc.layer):
        attention(layer.self_attention, f"encoder.blocks.{i}.attn", True)
        ffn(layer.ffn, f"encoder.blocks.{i}")
    dec.embeddings.weight = weights["decoder.token_embedding.weight"]
    dec.position_encodings.encodings = weights["decoder.positional_embedding"]
    dec.projection.weight = weights["decoder.token_embedding.weight"]  # tied, as in Whisper
    norm(dec.layer_norm, "decoder.ln")
    for i, layer in enumerate(dec.layer):
        attention(layer.self_attention, f"decoder.blocks.{i}.attn", True)
        attention(layer.attention, f"decoder.blocks.{i}.cross_attn", False)
        ffn(layer.ffn, f"decoder.blocks.{i}")
    spec.register_vocabulary(vocabulary(dims.n_vocab))
    spec.validate()
    spec.optimize(quantization=quantization)  # aliases duplicates (the tied projection), casts to fp16
    return spec


def save_ct2_spec(weights: dict[str, np.ndarray], dims: ModelDims, folder: Path,
                  quantization: str = "float16") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ct2_spec(weights, dims, quantization).save(str(folder))
    return folder


def random_weights(dims: ModelDims, seed: int) -> dict[str, np.ndarray]:
    """Canonical float32 weights, all distinct (so CTranslate2 aliases nothing but the projection)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(dims).items():
        w = rng.standard_normal(shape) * 0.5
        if name.endswith("_ln.weight") or name.endswith("ln_post.weight") or name == "decoder.ln.weight":
            w = 1.0 + 0.1 * w
        out[name] = w.astype(np.float32)
    return out


def fp16_rounded(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: w.astype(np.float16).astype(np.float32) for k, w in weights.items()}


# ----------------------------------------------------------------------------------------------
# Helpers: a minimal float64 numpy Whisper (the oracle's counterpart)


def erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7 (test_erf_approximation checks it against math.erf).
    numpy has no erf and scipy is not installed; 1.5e-7 is far below ORACLE_ATOL."""
    s, a = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))  # the exact (erf) GELU, as Whisper and CT2 use


def layer_norm(x: np.ndarray, w: dict, name: str) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]


def conv1d(x: np.ndarray, w: dict, name: str, stride: int) -> np.ndarray:
    # [c_in, t] -> [c_out, t // stride]; kernel 3, padding 1
    kernel = w[f"{name}.weight"]  # [c_out, c_in, 3]
    xp = np.pad(x, ((0, 0), (1, 1)))
    t_out = (x.shape[1] - 1) // stride + 1
    cols = np.stack([xp[:, k : k + stride * (t_out - 1) + 1 : stride] for k in range(3)], axis=1)
    return kernel.reshape(kernel.shape[0], -1) @ cols.reshape(-1, t_out) + w[f"{name}.bias"][:, None]


def attention(x: np.ndarray, kv: np.ndarray, w: dict, name: str, n_head: int, causal: bool) -> np.ndarray:
    # [n, d], [m, d] -> [n, d]
    q = x @ w[f"{name}.query.weight"].T + w[f"{name}.query.bias"]
    k = kv @ w[f"{name}.key.weight"].T  # no key bias in Whisper
    v = kv @ w[f"{name}.value.weight"].T + w[f"{name}.value.bias"]
    n, d = q.shape
    q, k, v = (a.reshape(a.shape[0], n_head, d // n_head).transpose(1, 0, 2) for a in (q, k, v))
    s = q @ k.transpose(0, 2, 1) / math.sqrt(d // n_head)
    if causal:
        s = s + np.triu(np.full((n, n), -np.inf), 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = (s @ v).transpose(1, 0, 2).reshape(n, d)
    return o @ w[f"{name}.out.weight"].T + w[f"{name}.out.bias"]


def mlp(x: np.ndarray, w: dict, name: str) -> np.ndarray:
    h = gelu(x @ w[f"{name}.mlp.0.weight"].T + w[f"{name}.mlp.0.bias"])
    return h @ w[f"{name}.mlp.2.weight"].T + w[f"{name}.mlp.2.bias"]


def np_encode(w: dict, dims: ModelDims, mel: np.ndarray) -> np.ndarray:
    # [n_mels, 2 * n_audio_ctx] -> [n_audio_ctx, n_audio_state]
    x = gelu(conv1d(mel, w, "encoder.conv1", 1))
    x = gelu(conv1d(x, w, "encoder.conv2", 2)).T + w["encoder.positional_embedding"]
    for i in range(dims.n_audio_layer):
        b = f"encoder.blocks.{i}"
        y = layer_norm(x, w, f"{b}.attn_ln")
        x = x + attention(y, y, w, f"{b}.attn", dims.n_audio_head, causal=False)
        x = x + mlp(layer_norm(x, w, f"{b}.mlp_ln"), w, b)
    return layer_norm(x, w, "encoder.ln_post")


def np_logits(w: dict, dims: ModelDims, tokens: list[int], xa: np.ndarray) -> np.ndarray:
    # [n] tokens, [n_audio_ctx, n_state] -> [n, n_vocab]
    x = w["decoder.token_embedding.weight"][tokens] + w["decoder.positional_embedding"][: len(tokens)]
    for i in range(dims.n_text_layer):
        b = f"decoder.blocks.{i}"
        y = layer_norm(x, w, f"{b}.attn_ln")
        x = x + attention(y, y, w, f"{b}.attn", dims.n_text_head, causal=True)
        x = x + attention(layer_norm(x, w, f"{b}.cross_attn_ln"), xa, w, f"{b}.cross_attn", dims.n_text_head,
                          causal=False)
        x = x + mlp(layer_norm(x, w, f"{b}.mlp_ln"), w, b)
    return layer_norm(x, w, "decoder.ln") @ w["decoder.token_embedding.weight"].T  # tied projection


def ct2_model(folder: Path):
    return ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=2)


def compare_with_ct2(model, weights: dict, dims: ModelDims, mel: np.ndarray, prompt: list[int],
                     max_length: int) -> tuple[float, float, int]:
    """(max |encoder diff|, max |logits diff|, steps compared) between CTranslate2 and np_encode/np_logits."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    ct2_enc = np.array(model.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True))[0]
    enc_diff = float(np.abs(ct2_enc - np_encode(w, dims, mel.astype(np.float64))).max())
    # Greedy, no suppression: every step's logits are the raw decoder output.
    result = model.generate(ctranslate2.StorageView.from_array(ct2_enc[None]), [prompt], beam_size=1,
                            max_length=max_length, return_logits_vocab=True, suppress_blank=False,
                            suppress_tokens=[])[0]
    steps = [np.array(s).reshape(-1) for s in result.logits[0]]
    generated = result.sequences_ids[0]
    assert steps, "CTranslate2 returned no logits"
    # The decoder side reads CTranslate2's encoder output, so its check does not inherit the encoder's.
    mine = np_logits(w, dims, prompt + generated[: len(steps) - 1], ct2_enc.astype(np.float64))
    logit_diff = 0.0
    for s, theirs in enumerate(steps):
        ours = mine[len(prompt) - 1 + s]
        assert int(np.argmax(ours)) == int(np.argmax(theirs)), f"step {s} chooses another token"
        logit_diff = max(logit_diff, float(np.abs(ours - theirs).max()))
    return enc_diff, logit_diff, len(steps)


# ----------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny() -> Checkpoint:
    return load_checkpoint()


@pytest.fixture(scope="module")
def tiny_raw() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    return read_ct2_model_bin(default_model_dir() / "model.bin")


@pytest.fixture(scope="module")
def small_weights() -> dict[str, np.ndarray]:
    return fp16_rounded(random_weights(SMALL, seed=1))


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory, small_weights) -> Path:
    """SMALL written by CTranslate2's own writer (fp16 storage)."""
    return save_ct2_spec(small_weights, SMALL, tmp_path_factory.mktemp("small_ct2"))


@pytest.fixture(scope="module")
def small_raw(small_dir) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    v, a = read_ct2_model_bin(small_dir / "model.bin")
    return {k: x.copy() for k, x in v.items()}, dict(a)


@pytest.fixture
def mutate(small_raw, tmp_path):
    """mutate(change, **ct2_bytes_kwargs) -> the path of a model.bin: SMALL with change(variables,
    aliases) applied (both are fresh copies), written next to a config.json in a fresh folder."""
    count = [0]

    def make(change=None, **kwargs) -> Path:
        v = {k: x.copy() for k, x in small_raw[0].items()}
        a = dict(small_raw[1])
        if change is not None:
            change(v, a)
        count[0] += 1
        return write_ct2_folder(tmp_path / f"m{count[0]}", ct2_bytes(v, a, **kwargs)) / "model.bin"

    return make


# ----------------------------------------------------------------------------------------------
# 1. The bundled tiny.en


def test_tiny_dims_format_and_dtype(tiny):
    assert tiny.dims == TINY_EN
    assert tiny.format == "ctranslate2"
    assert tiny.stored_dtype == "float16"
    assert tiny.path == default_model_dir()
    assert tiny.tokenizer_path.is_file()


def test_tiny_weights_are_float32_with_the_expected_names_and_shapes(tiny):
    shapes = expected_shapes(tiny.dims)
    assert set(tiny.weights) == set(shapes)
    # Counted by hand: 11 model-level tensors; an attention has 4 weights + 3 biases (no key bias) + 2 ln;
    # an mlp 4 + 2 ln; an encoder block 9 + 6, a decoder block 9 + 9 + 6.
    assert len(tiny.weights) == 11 + 4 * 15 + 4 * 24 == 167
    for name, w in tiny.weights.items():
        assert w.dtype == np.float32, name
        assert w.shape == shapes[name], name
        assert w.flags.c_contiguous, name
    hand_written = {
        "encoder.conv1.weight": (384, 80, 3), "encoder.conv2.weight": (384, 384, 3),
        "encoder.positional_embedding": (1500, 384), "decoder.positional_embedding": (448, 384),
        "decoder.token_embedding.weight": (51864, 384), "encoder.blocks.3.attn.key.weight": (384, 384),
        "decoder.blocks.3.cross_attn.value.bias": (384,), "decoder.blocks.0.mlp.0.weight": (1536, 384),
        "decoder.blocks.0.mlp.2.weight": (384, 1536), "decoder.blocks.2.cross_attn_ln.bias": (384,),
        "encoder.ln_post.weight": (384,), "decoder.ln.bias": (384,),
    }
    for name, shape in hand_written.items():
        assert tiny.weights[name].shape == shape, name
    assert not any(name.endswith("key.bias") for name in tiny.weights)


def test_tiny_file_structure(tiny_raw):
    """The facts docs/architecture.md states about the file, read from its bytes."""
    raw, aliases = tiny_raw
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert "decoder/projection/weight" not in raw
    assert {str(a.dtype) for a in raw.values() if a.ndim >= 1} == {"float16"}
    assert int(raw["encoder/num_heads"]) == 6 and int(raw["decoder/num_heads"]) == 6
    assert int(raw["decoder/activation"]) == 3  # CTranslate2's Activation.GELU: the exact erf form
    n = 384
    for side in ("encoder", "decoder"):
        for i in range(4):
            qkv_w = raw[f"{side}/layer_{i}/self_attention/linear_0/weight"]
            qkv_b = raw[f"{side}/layer_{i}/self_attention/linear_0/bias"]
            assert qkv_w.shape == (3 * n, n) and qkv_b.shape == (3 * n,)
            assert np.all(qkv_b[n : 2 * n] == 0), f"{side} layer {i}: key bias part is not zero"
            # ... while the query and value parts are not: the zero block sits exactly at [n:2n].
            assert np.any(qkv_b[:n] != 0) and np.any(qkv_b[2 * n :] != 0)
            assert np.any(qkv_w[n : 2 * n] != 0)
    for i in range(4):
        kv_w = raw[f"decoder/layer_{i}/attention/linear_1/weight"]
        kv_b = raw[f"decoder/layer_{i}/attention/linear_1/bias"]
        assert kv_w.shape == (2 * n, n) and kv_b.shape == (2 * n,)
        assert np.all(kv_b[:n] == 0) and np.any(kv_b[n:] != 0)
        assert raw[f"decoder/layer_{i}/attention/linear_0/weight"].shape == (n, n)


def test_tiny_unfusing_takes_the_right_rows_exactly(tiny, tiny_raw):
    raw, _ = tiny_raw
    w, n = tiny.weights, 384

    def rows(name: str, block: int) -> np.ndarray:
        return raw[name][block * n : (block + 1) * n].astype(np.float32)

    for side in ("encoder", "decoder"):
        for i in range(4):
            ours, theirs = f"{side}.blocks.{i}.attn", f"{side}/layer_{i}/self_attention/linear_0"
            for block, proj in enumerate(("query", "key", "value")):
                assert np.array_equal(w[f"{ours}.{proj}.weight"], rows(f"{theirs}/weight", block)), (ours, proj)
            assert np.array_equal(w[f"{ours}.query.bias"], rows(f"{theirs}/bias", 0))
            assert np.array_equal(w[f"{ours}.value.bias"], rows(f"{theirs}/bias", 2))
    for i in range(4):
        ours, theirs = f"decoder.blocks.{i}.cross_attn", f"decoder/layer_{i}/attention"
        assert np.array_equal(w[f"{ours}.query.weight"], rows(f"{theirs}/linear_0/weight", 0))
        assert np.array_equal(w[f"{ours}.key.weight"], rows(f"{theirs}/linear_1/weight", 0))
        assert np.array_equal(w[f"{ours}.value.weight"], rows(f"{theirs}/linear_1/weight", 1))
        assert np.array_equal(w[f"{ours}.value.bias"], rows(f"{theirs}/linear_1/bias", 1))
        assert np.array_equal(w[f"{ours}.out.weight"], raw[f"{theirs}/linear_2/weight"].astype(np.float32))
    # The tied projection resolves to the token embedding.
    assert np.array_equal(w["decoder.token_embedding.weight"], raw["decoder/embeddings/weight"].astype(np.float32))


def test_tiny_fp16_upcast_is_exact(tiny):
    # every fp16 value is an fp32 value: rounding back to fp16 must give back the identical number
    for name, w in tiny.weights.items():
        assert np.array_equal(w.astype(np.float16).astype(np.float32), w), name


def test_ct2_writer_refuses_tiny_into_the_identical_file(tiny, tiny_raw):
    """Fusing the loaded canonical weights with CTranslate2's own converter code and casting to fp16
    gives back every tensor of the file bit for bit, and the same alias: the un-fusing is the exact
    inverse of the official fusing."""
    raw, aliases = tiny_raw
    spec_vars = dict(ct2_spec(tiny.weights, tiny.dims).variables(ordered=True))
    spec_aliases = {k: v for k, v in spec_vars.items() if isinstance(v, str)}
    spec_tensors = {k: v for k, v in spec_vars.items() if not isinstance(v, str) and v.shape != ()}
    assert spec_aliases == aliases
    assert set(spec_tensors) == {k for k, a in raw.items() if a.ndim >= 1}
    for name, var in spec_tensors.items():
        assert tuple(var.shape) == raw[name].shape, name
        assert var.to_bytes() == raw[name].tobytes(), name


def test_serializer_reproduces_ct2_files(tiny_raw, small_dir, small_raw):
    """The test's ct2_bytes writes what CTranslate2 wrote, byte for byte, so files it builds are real."""
    assert ct2_bytes(*small_raw) == (small_dir / "model.bin").read_bytes()
    assert ct2_bytes(*tiny_raw) == (default_model_dir() / "model.bin").read_bytes()


@pytest.mark.slow  # tiny.en through CTranslate2 and numpy; test_small_model_matches_ctranslate2 is the fast tier's
def test_tiny_matches_ctranslate2_encoder_and_decoder(tiny):
    """End to end: CTranslate2 on the bundled folder vs the numpy Whisper on the loaded weights."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny.tokenizer_path))
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    assert None not in prompt
    mel = np.random.default_rng(0).standard_normal((80, 3000)).astype(np.float32)
    enc_diff, logit_diff, steps = compare_with_ct2(ct2_model(default_model_dir()), tiny.weights, tiny.dims,
                                                   mel, prompt, max_length=6)
    print(f"tiny.en vs CTranslate2: encoder max|diff| {enc_diff:.2e}, logits max|diff| {logit_diff:.2e}")
    assert enc_diff < ORACLE_ATOL
    assert logit_diff < ORACLE_ATOL
    assert steps >= 1


def test_erf_approximation():
    x = np.linspace(-6, 6, 2001)
    assert np.abs(erf(x) - np.array([math.erf(v) for v in x])).max() < 2e-7


# ----------------------------------------------------------------------------------------------
# 2. Synthetic models written by CTranslate2's writer: other dims, and the engine as oracle


def test_small_ct2_model_loads_to_its_weights(small_dir, small_weights):
    ckpt = load_checkpoint(small_dir)
    assert ckpt.dims == SMALL
    assert ckpt.format == "ctranslate2" and ckpt.stored_dtype == "float16"
    assert set(ckpt.weights) == set(small_weights)
    for name, w in small_weights.items():
        assert np.array_equal(ckpt.weights[name], w), name


def test_small_ct2_float32_storage(tmp_path):
    weights = random_weights(SMALL, seed=2)  # not fp16-representable: fp32 storage must keep every bit
    ckpt = load_checkpoint(save_ct2_spec(weights, SMALL, tmp_path, quantization="float32"))
    assert ckpt.stored_dtype == "float32"
    for name, w in weights.items():
        assert ckpt.weights[name].dtype == np.float32
        assert np.array_equal(ckpt.weights[name], w), name


def test_small_model_matches_ctranslate2(small_dir, small_weights):
    ckpt = load_checkpoint(small_dir)
    mel = np.random.default_rng(3).standard_normal((SMALL.n_mels, SMALL.n_mel_frames)).astype(np.float32)
    enc_diff, logit_diff, _ = compare_with_ct2(ct2_model(small_dir), ckpt.weights, SMALL, mel, [1, 2],
                                               max_length=SMALL.n_text_ctx)
    assert enc_diff < ORACLE_ATOL and logit_diff < ORACLE_ATOL


def test_ct2_oracle_detects_a_swapped_query_and_key(small_dir, small_weights):
    """The oracle is not blind: swapping query and key weights in one layer breaks agreement."""
    w = dict(small_weights)
    b = "encoder.blocks.1.attn"
    w[f"{b}.query.weight"], w[f"{b}.key.weight"] = w[f"{b}.key.weight"], w[f"{b}.query.weight"]
    mel = np.random.default_rng(3).standard_normal((SMALL.n_mels, SMALL.n_mel_frames)).astype(np.float32)
    ct2_enc = np.array(ct2_model(small_dir).encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True))
    wrong = np_encode({k: v.astype(np.float64) for k, v in w.items()}, SMALL, mel.astype(np.float64))
    assert np.abs(ct2_enc[0] - wrong).max() > 100 * ORACLE_ATOL


def test_ct2_aliases_of_duplicate_tensors_are_resolved(tmp_path, small_weights):
    # CTranslate2 aliases any two equal tensors (here two layer norms), not only the projection.
    w = dict(small_weights)
    w["encoder.blocks.1.mlp_ln.weight"] = w["encoder.blocks.0.mlp_ln.weight"].copy()
    folder = save_ct2_spec(w, SMALL, tmp_path)
    _, aliases = read_ct2_model_bin(folder / "model.bin")
    assert aliases["encoder/layer_1/ffn/layer_norm/gamma"] == "encoder/layer_0/ffn/layer_norm/gamma"
    ckpt = load_checkpoint(folder)
    for name in w:
        assert np.array_equal(ckpt.weights[name], w[name]), name


@st.composite
def small_dims(draw) -> ModelDims:
    head_dim = draw(st.integers(1, 4))
    n_audio_head, n_text_head = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # Whisper's audio and text widths are equal (the canonical cross-attention key is (n, n)).
    state = head_dim * n_audio_head * n_text_head
    return ModelDims(n_mels=draw(st.integers(1, 6)), n_audio_ctx=draw(st.integers(1, 5)), n_audio_state=state,
                     n_audio_head=n_audio_head, n_audio_layer=draw(st.integers(1, 3)),
                     n_vocab=draw(st.integers(4, 20)), n_text_ctx=draw(st.integers(1, 6)), n_text_state=state,
                     n_text_head=n_text_head, n_text_layer=draw(st.integers(1, 3)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dims=small_dims(), seed=st.integers(0, 2**32 - 1))
def test_any_dims_round_trip_through_ct2_and_huggingface(dims, seed):
    weights = fp16_rounded(random_weights(dims, seed))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = load_checkpoint(save_ct2_spec(weights, dims, Path(tmp) / "ct2"))
        assert ckpt.dims == dims
        hf = load_checkpoint(save_huggingface(ckpt, Path(tmp) / "hf"))
        assert hf.dims == dims
        for name, w in weights.items():
            assert np.array_equal(ckpt.weights[name], w), name
            assert np.array_equal(hf.weights[name], w), name


# ----------------------------------------------------------------------------------------------
# 3. Hugging Face round trip


def test_huggingface_round_trip_tiny_float32(tiny, tmp_path):
    folder = save_huggingface(tiny, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["d_model"] == 384 and config["vocab_size"] == 51864 and config["max_source_positions"] == 1500
    assert (folder / "tokenizer.json").read_bytes() == tiny.tokenizer_path.read_bytes()
    back = load_checkpoint(folder)
    assert back.format == "huggingface" and back.stored_dtype == "float32"
    assert back.dims == tiny.dims and back.path == folder
    assert set(back.weights) == set(tiny.weights)
    for name, w in tiny.weights.items():
        assert back.weights[name].dtype == np.float32
        assert np.array_equal(back.weights[name], w), name


def test_huggingface_round_trip_tiny_float16(tiny, tmp_path):
    back = load_checkpoint(save_huggingface(tiny, tmp_path / "hf16", dtype="float16"))
    assert back.format == "huggingface" and back.stored_dtype == "float16" and back.dims == tiny.dims
    for name, w in tiny.weights.items():  # tiny.en is fp16 at heart: nothing is lost
        assert back.weights[name].dtype == np.float32
        assert np.array_equal(back.weights[name], w), name


def test_huggingface_float16_rounds_float32_weights(tmp_path):
    weights = random_weights(SMALL, seed=4)
    ckpt = Checkpoint(dims=SMALL, weights=weights, path=tmp_path, stored_dtype="float32", format="test")
    back = load_checkpoint(save_huggingface(ckpt, tmp_path / "hf16", dtype="float16"))
    assert back.stored_dtype == "float16"
    rounded = fp16_rounded(weights)
    assert any(not np.array_equal(rounded[k], weights[k]) for k in weights)  # the rounding is visible ...
    for name in weights:  # ... and it is exactly fp16 round-to-nearest
        assert np.array_equal(back.weights[name], rounded[name]), name


# ----------------------------------------------------------------------------------------------
# 4. Bad input: a one-line CheckpointError naming the file (and the tensor)


def test_missing_folder(tmp_path):
    assert_checkpoint_error(lambda: load_checkpoint(tmp_path / "nope"), tmp_path / "nope", "no such")


def test_a_file_is_not_a_folder(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0" * 8)
    assert_checkpoint_error(lambda: load_checkpoint(f), f, "folder")


def test_empty_folder(tmp_path):
    assert_checkpoint_error(lambda: load_checkpoint(tmp_path), tmp_path, "model.bin", "model.safetensors")


def _offsets(data: bytes, aliases: dict[str, str]) -> dict[str, tuple[int, str]]:
    """Cut points in a SMALL model.bin -> (offset, what the error must mention)."""
    name = "decoder/embeddings/weight"
    start = data.index(ct2_string(name))
    shape_at = start + len(ct2_string(name)) + 1  # after the name and the rank byte
    data_at = shape_at + 4 * 2 + 1 + 4  # 2 dims, dtype id, byte count
    alias_section = len(data) - 4 - sum(len(ct2_string(a)) + len(ct2_string(t)) for a, t in aliases.items())
    return {
        "empty": (0, "the version"),
        "in the version": (2, "the version"),
        "in the spec name": (9, "the spec name"),
        "in the variable count": (len(ct2_string("WhisperSpec")) + 4 + 4 + 2, "the variable count"),
        "in a name length": (start + 1, "a variable name"),
        "mid-name": (start + 10, "a variable name"),
        "in the rank": (shape_at - 1, f"the rank of {name}"),
        "mid-shape": (shape_at + 3, f"the shape of {name}"),
        "in the dtype": (shape_at + 8, f"the dtype of {name}"),
        "in the byte count": (shape_at + 10, f"the byte count of {name}"),
        "mid-data": (data_at + 100, f"the data of {name}"),
        "in the alias count": (alias_section + 2, "the alias count"),
        "in the alias target": (len(data) - 3, "the target of alias decoder/projection/weight"),
    }


@pytest.mark.parametrize("where", ["empty", "in the version", "in the spec name", "in the variable count",
                                   "in a name length", "mid-name", "in the rank", "mid-shape", "in the dtype",
                                   "in the byte count", "mid-data", "in the alias count",
                                   "in the alias target"])
def test_truncated_model_bin(where, small_dir, small_raw, tmp_path):
    data = (small_dir / "model.bin").read_bytes()
    offset, what = _offsets(data, small_raw[1])[where]
    folder = write_ct2_folder(tmp_path / "cut", data[:offset])
    assert_checkpoint_error(lambda: load_checkpoint(folder), folder / "model.bin", "truncated", what)


def test_cut_before_the_alias_section_loses_the_projection(small_dir, small_raw, tmp_path):
    # The alias section is optional in the format; without it the tied projection is missing.
    data = (small_dir / "model.bin").read_bytes()
    cut = len(data) - 4 - sum(len(ct2_string(a)) + len(ct2_string(t)) for a, t in small_raw[1].items())
    folder = write_ct2_folder(tmp_path / "cut", data[:cut])
    assert_checkpoint_error(lambda: load_checkpoint(folder), folder / "model.bin",
                            "missing tensor decoder/projection/weight")


@pytest.mark.parametrize("cut", ["header", "embedding data", "last tensor"])
def test_truncated_tiny_model_bin(cut, tiny_raw, tmp_path):
    data = (default_model_dir() / "model.bin").read_bytes()
    emb = "decoder/embeddings/weight"
    emb_data = data.index(ct2_string(emb)) + len(ct2_string(emb)) + 1 + 8 + 1 + 4
    last = list(tiny_raw[0])[-1]
    offset, what = {"header": (5, "the spec name"), "embedding data": (emb_data + 1000, f"the data of {emb}"),
                    "last tensor": (data.rindex(ct2_string(last)) + 200, f"the data of {last}")}[cut]
    folder = write_ct2_folder(tmp_path / "cut", data[:offset])
    assert_checkpoint_error(lambda: load_checkpoint(folder), folder / "model.bin", "truncated", what)


def test_byte_count_that_does_not_match_the_shape(mutate):
    name = "decoder/layer_0/ffn/linear_0/weight"  # (32, 8) fp16 = 512 bytes; the header now says (32, 9)
    path = mutate(header_shapes={name: (32, 9)})
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, f"tensor {name} has 512 bytes", "576")


def test_consistent_but_wrong_shape(mutate):
    def reshape(v, a):
        v["decoder/layer_0/ffn/linear_0/weight"] = v["decoder/layer_0/ffn/linear_0/weight"].reshape(16, 16)

    path = mutate(reshape)
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path,
                            "decoder.blocks.0.mlp.0.weight", "(16, 16)", "(32, 8)")


def test_fused_tensor_with_the_wrong_row_count(mutate):
    name = "encoder/layer_1/self_attention/linear_0/weight"

    def cut(v, a):
        v[name] = v[name][:16]

    path = mutate(cut)
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, name, "24")


def test_fused_tensor_that_is_a_scalar(mutate):
    name = "decoder/layer_0/attention/linear_1/bias"

    def scalar(v, a):
        v[name] = np.float16(1.0).reshape(())

    path = mutate(scalar)
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, name)


def test_wrong_spec_name(mutate):
    path = mutate(spec="TransformerSpec")
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, "TransformerSpec", "WhisperSpec")


@pytest.mark.parametrize("version", [4, 7])
def test_unsupported_version(mutate, version):
    path = mutate(version=version)
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, f"version {version}")


def test_unknown_dtype_id(mutate):
    name = "encoder/conv2/bias"
    path = mutate(dtype_ids={name: 5})  # 5 is bfloat16 in CTranslate2, unknown to the reader
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, name, "dtype id 5")


@pytest.mark.parametrize("garbage", [b"\0", b"junk!"])
def test_trailing_garbage(small_dir, tmp_path, garbage):
    folder = write_ct2_folder(tmp_path / "g", (small_dir / "model.bin").read_bytes() + garbage)
    assert_checkpoint_error(lambda: load_checkpoint(folder), folder / "model.bin",
                            f"{len(garbage)} unexpected trailing bytes")


def test_missing_tensor(mutate):
    name = "encoder/layer_1/ffn/layer_norm/gamma"
    path = mutate(lambda v, a: v.pop(name))
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, f"missing tensor {name}")


def test_missing_num_heads(mutate):
    path = mutate(lambda v, a: v.pop("encoder/num_heads"))
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, "encoder/num_heads")


def test_heads_that_do_not_divide_the_width(mutate):
    def three_heads(v, a):
        v["decoder/num_heads"] = np.int16(3).reshape(())

    path = mutate(three_heads)
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, "n_text_head 3")


def test_alias_to_a_missing_tensor(mutate):
    path = mutate(lambda v, a: a.update({"decoder/projection/weight": "decoder/nothing"}))
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, "decoder/nothing")


def test_a_layer_gap_is_not_silently_dropped(tmp_path):
    # Three encoder layers with layer 1 removed must not load as a one-layer encoder.
    dims = ModelDims(**{**SMALL.as_dict(), "n_audio_layer": 3})
    folder = save_ct2_spec(random_weights(dims, seed=5), dims, tmp_path / "three")
    v, a = read_ct2_model_bin(folder / "model.bin")
    v = {k: x for k, x in v.items() if not k.startswith("encoder/layer_1/")}
    bad = write_ct2_folder(tmp_path / "gap", ct2_bytes(v, a))
    assert_checkpoint_error(lambda: load_checkpoint(bad), bad / "model.bin", "encoder/layer_2/")


def test_unknown_extra_tensor_is_not_silently_dropped(mutate):
    name = "decoder/projection/bias"  # would change every logit if it were honoured
    path = mutate(lambda v, a: v.update({name: np.ones(SMALL.n_vocab, np.float16)}))
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, name)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_a_ct2_tensor(mutate, bad):
    def poison(v, a):
        v["decoder/layer_1/self_attention/linear_0/weight"][20, 3] = bad  # row 20 of 24: the value part

    path = mutate(poison)
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path,
                            "decoder.blocks.1.attn.value.weight", "NaN or inf")


def test_untied_projection_is_refused_and_a_tied_copy_accepted(mutate, small_weights):
    emb = "decoder/embeddings/weight"

    def untie(v, a):
        del a["decoder/projection/weight"]
        v["decoder/projection/weight"] = v[emb] * np.float16(2)

    path = mutate(untie)
    assert_checkpoint_error(lambda: load_checkpoint(path.parent), path, "decoder/projection/weight", "tied")

    def copy(v, a):
        del a["decoder/projection/weight"]
        v["decoder/projection/weight"] = v[emb].copy()

    ckpt = load_checkpoint(mutate(copy).parent)
    assert np.array_equal(ckpt.weights["decoder.token_embedding.weight"],
                          small_weights["decoder.token_embedding.weight"])


# Hugging Face folders


@pytest.fixture
def hf_dir(small_dir, tmp_path) -> Path:
    return save_huggingface(load_checkpoint(small_dir), tmp_path / "hf")


def _rewrite_safetensors(folder: Path, change) -> Path:
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    return path


def test_hf_small_loads(hf_dir, small_weights):
    ckpt = load_checkpoint(hf_dir)
    assert ckpt.format == "huggingface" and ckpt.dims == SMALL
    for name, w in small_weights.items():
        assert np.array_equal(ckpt.weights[name], w), name


def test_hf_missing_tensor(hf_dir):
    name = "model.decoder.layers.1.encoder_attn.v_proj.bias"
    path = _rewrite_safetensors(hf_dir, lambda t: t.pop(name))
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), path, f"missing tensor {name}")


def test_hf_wrong_shaped_tensor(hf_dir):
    def reshape(t):
        t["model.decoder.layers.0.fc1.weight"] = t["model.decoder.layers.0.fc1.weight"].reshape(16, 16)

    path = _rewrite_safetensors(hf_dir, reshape)
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), path, "decoder.blocks.0.mlp.0.weight", "(16, 16)")


def test_hf_nan(hf_dir):
    def poison(t):
        t["model.encoder.conv1.bias"][2] = np.nan

    path = _rewrite_safetensors(hf_dir, poison)
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), path, "encoder.conv1.bias", "NaN")


def test_hf_integer_tensor(hf_dir):
    def to_int(t):
        t["model.encoder.layer_norm.bias"] = t["model.encoder.layer_norm.bias"].astype(np.int32)

    path = _rewrite_safetensors(hf_dir, to_int)
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), path, "encoder.ln_post.bias", "int32")


def test_hf_unexpected_tensor(hf_dir):
    path = _rewrite_safetensors(hf_dir, lambda t: t.update({"model.extra.weight": np.zeros(3, np.float32)}))
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), path, "model.extra.weight")


def test_hf_proj_out_tied_is_accepted_untied_refused(hf_dir):
    emb = "model.decoder.embed_tokens.weight"
    _rewrite_safetensors(hf_dir, lambda t: t.update({"proj_out.weight": t[emb].copy()}))
    assert load_checkpoint(hf_dir).format == "huggingface"
    path = _rewrite_safetensors(hf_dir, lambda t: t.update({"proj_out.weight": t[emb] + 1}))
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), path, "proj_out.weight", "tied")


def test_hf_truncated_safetensors(hf_dir):
    path = hf_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), path, "safetensors")


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("5", "expected a JSON object, got int"),
])
def test_hf_config_that_is_not_a_json_object(hf_dir, text, fragment):
    (hf_dir / "config.json").write_text(text)
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), hf_dir / "config.json", fragment)


def test_hf_config_missing(hf_dir):
    (hf_dir / "config.json").unlink()
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), hf_dir / "config.json", "missing")


@pytest.mark.parametrize("key, value", [("encoder_layers", None), ("d_model", "eight"), ("d_model", 8.5),
                                        ("vocab_size", 0), ("decoder_attention_heads", 3)])
def test_hf_config_bad_key(hf_dir, key, value):
    path = hf_dir / "config.json"
    config = json.loads(path.read_text())
    if value is None:
        del config[key]
    else:
        config[key] = value
    path.write_text(json.dumps(config))
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), path)


def test_hf_missing_key_is_named(hf_dir):
    path = hf_dir / "config.json"
    config = json.loads(path.read_text())
    del config["max_target_positions"]
    path.write_text(json.dumps(config))
    assert_checkpoint_error(lambda: load_checkpoint(hf_dir), path, "missing key max_target_positions")


def test_load_huggingface_on_a_folder_without_safetensors(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    assert_checkpoint_error(lambda: load_huggingface(hf_dir), hf_dir / "model.safetensors")


# ----------------------------------------------------------------------------------------------
# 5. check_weights


def test_check_weights_accepts_and_normalizes(small_weights):
    weights = {k: np.asfortranarray(w.astype(np.float64)) for k, w in small_weights.items()}
    out = check_weights(weights, SMALL, "src")
    for name, w in out.items():
        assert w.dtype == np.float32 and w.flags.c_contiguous, name
        assert np.array_equal(w, small_weights[name]), name


def test_check_weights_rejects_an_integer_tensor(small_weights):
    weights = dict(small_weights)
    weights["decoder.ln.weight"] = np.ones(SMALL.n_text_state, dtype=np.int64)
    assert_checkpoint_error(lambda: check_weights(weights, SMALL, "src"), Path("src"),
                            "decoder.ln.weight", "int64")


def test_check_weights_rejects_missing_names(small_weights):
    weights = dict(small_weights)
    del weights["encoder.blocks.1.attn.out.bias"]
    assert_checkpoint_error(lambda: check_weights(weights, SMALL, "src"), Path("src"),
                            "missing tensor encoder.blocks.1.attn.out.bias")
    del weights["decoder.blocks.0.cross_attn.query.weight"]
    assert_checkpoint_error(lambda: check_weights(weights, SMALL, "src"), Path("src"),
                            "decoder.blocks.0.cross_attn.query.weight", "+1 more")


def test_check_weights_rejects_extra_names(small_weights):
    weights = dict(small_weights)
    weights["encoder.blocks.0.attn.key.bias"] = np.zeros(SMALL.n_audio_state, np.float32)
    assert_checkpoint_error(lambda: check_weights(weights, SMALL, "src"), Path("src"),
                            "unexpected tensor encoder.blocks.0.attn.key.bias")


def test_check_weights_rejects_wrong_shape_and_inf(small_weights):
    weights = dict(small_weights)
    weights["encoder.conv1.weight"] = np.zeros((8, 5, 2), np.float32)
    assert_checkpoint_error(lambda: check_weights(weights, SMALL, "src"), Path("src"), "encoder.conv1.weight",
                            "(8, 5, 2)", "(8, 5, 3)")
    weights = dict(small_weights)
    weights["decoder.positional_embedding"] = small_weights["decoder.positional_embedding"].copy()
    weights["decoder.positional_embedding"][0, 0] = -np.inf
    assert_checkpoint_error(lambda: check_weights(weights, SMALL, "src"), Path("src"),
                            "decoder.positional_embedding")

