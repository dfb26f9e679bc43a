"""Write whisper.cpp's ggml model file (the `ggml-tiny.en.bin` layout) from whisperkv's canonical weights.

    python tools/export_ggml.py OUT.bin                      # the bundled tiny.en, f16 matrices (whisper.cpp's default)
    python tools/export_ggml.py OUT.bin --f32                # every tensor float32 (see below)
    python tools/export_ggml.py OUT.bin --checkpoint DIR     # another CTranslate2 / Hugging Face folder

A benchmark peer (benchmarks/bench_start.py runs whisper.cpp through pywhispercpp on the same weights as
every other engine); nothing in the product reads or writes this format. The layout is the one whisper.cpp's
models/convert-pt-to-ggml.py writes and src/whisper.cpp's whisper_model_load reads, all little-endian:

    int32 magic 0x67676d6c ("ggml")
    int32 n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
          n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype (1: mostly f16, 0: f32)
    int32 n_mel, n_fft; float32[n_mel * n_fft]        the mel filterbank, row-major (80 x 201 for tiny)
    int32 n_words; n_words x (uint32 len, bytes)       token ids 0 .. n_words-1 as raw bytes (no specials:
                                                        whisper.cpp names the ids from <|endoftext|> on itself)
    then per tensor until the end of the file:
    int32 n_dims, name_len, ftype (0: f32, 1: f16); int32 ne[n_dims] (numpy's shape reversed);
    bytes name; the data, C order

Tensor names are openai-whisper's state-dict names (the canonical names of reference/weights.py). As the
converter does, matrices and the conv kernels are f16; vectors, the conv biases (stored as [n, 1]) and the
positional embeddings stay f32 (whisper.cpp's loader checks each tensor's byte size against those types).
The bundled checkpoint holds float16, so the f16 file carries exactly its values: no rounding happens here.
An all-f32 file (--f32, the converter's use-f32) loads, but whisper.cpp 1.8.5 (pywhispercpp 1.5.1) then
aborts in its first convolution (ggml's im2col asserts an f16 kernel): the f16 default is the file to use.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

GGML_MAGIC = 0x67676D6C
HPARAMS = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
           "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype")
FTYPE_F32, FTYPE_F16 = 0, 1
# whisper.cpp keeps these f32 whatever the file's ftype (whisper_model_load creates them as GGML_TYPE_F32).
F32_ALWAYS = ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
              "decoder.positional_embedding")
CONV_BIASES = ("encoder.conv1.bias", "encoder.conv2.bias")  # [n] -> [n, 1]: ggml adds them to [T, n] by broadcast


def vocab_bytes(tokenizer_json: str | os.PathLike, multilingual: bool) -> list[bytes]:
    """Token ids 0 .. <|endoftext|>-1 as raw bytes, from the checkpoint's tokenizer.json (the project's
    Tokenizer reads the same file). These are the ids the converter writes from openai's .tiktoken ranks;
    an id with no entry is written empty, as whisper.cpp's loader allows."""
    from whisperkv.reference.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_json, multilingual)
    return [tok.token_bytes(i) for i in range(tok.eot)]


def ggml_order(names: list[str]) -> list[str]:
    """openai-whisper's state-dict order (a module's own parameters and buffers before its children's):
    the positional embeddings lead encoder and decoder. whisper.cpp looks tensors up by name, so the order
    only makes the file read like the converter's."""
    lead = [n for n in ("encoder.positional_embedding", "decoder.positional_embedding") if n in names]
    enc = [n for n in names if n.startswith("encoder.") and n not in lead]
    dec = [n for n in names if n.startswith("decoder.") and n not in lead]
    return [lead[0], *enc, lead[1], *dec] if len(lead) == 2 else names


def tensor_record(name: str, w: np.ndarray, use_f16: bool) -> tuple[int, np.ndarray]:
    """-> (ftype, the array to write) for one canonical tensor, by the converter's rule."""
    data = np.asarray(w, dtype=np.float32)
    if name in CONV_BIASES:
        data = data.reshape(data.shape[0], 1)
    if use_f16 and data.ndim >= 2 and name not in F32_ALWAYS:
        return FTYPE_F16, np.ascontiguousarray(data.astype(np.float16))
    return FTYPE_F32, np.ascontiguousarray(data)


def write_ggml(out: BinaryIO, weights: dict[str, np.ndarray], hparams: dict[str, int], filters: np.ndarray,
               words: list[bytes], use_f16: bool = True) -> int:
    """Write the whole file to `out`; -> the number of tensors written."""
    out.write(struct.pack("<i", GGML_MAGIC))
    out.write(struct.pack(f"<{len(HPARAMS)}i", *(hparams[k] for k in HPARAMS[:-1]),
                          FTYPE_F16 if use_f16 else FTYPE_F32))
    filters = np.ascontiguousarray(filters, dtype="<f4")
    out.write(struct.pack("<ii", *filters.shape))
    out.write(filters.tobytes())
    out.write(struct.pack("<i", len(words)))
    for word in words:
        out.write(struct.pack("<I", len(word)))
        out.write(word)
    names = ggml_order(list(weights))
    for name in names:
        ftype, data = tensor_record(name, weights[name], use_f16)
        key = name.encode()
        out.write(struct.pack("<iii", data.ndim, len(key), ftype))
        out.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))  # ggml's ne[]: fastest axis first
        out.write(key)
        out.write(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())
    return len(names)


def export_ggml(path: str | os.PathLike, checkpoint: str | os.PathLike | None = None, use_f16: bool = True) -> Path:
    """Export a checkpoint (default: the bundled tiny.en) to whisper.cpp's ggml file at `path`.

    The file is written beside its final name and renamed, so a reader never sees half a file.
    """
    from whisperkv.reference.audio import N_FFT, mel_filters
    from whisperkv.reference.files import atomic_path
    from whisperkv.reference.weights import load_checkpoint

    ck = load_checkpoint(checkpoint)
    dims = ck.dims
    hparams = {k: getattr(dims, k) for k in HPARAMS[:-1]}
    filters = mel_filters(dims.n_mels, n_fft=N_FFT)  # [n_mels, 1 + n_fft/2]: what openai's mel_filters.npz holds
    words = vocab_bytes(ck.path / "tokenizer.json", dims.is_multilingual)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".bin") as tmp, open(tmp, "wb") as f:
        write_ggml(f, ck.weights, hparams, filters, words, use_f16)
    return path


# ----------------------------------------------------------------------------------------------
# Reading a file back: for the structural test, and to inspect a file from elsewhere


@dataclass
class GgmlFile:
    hparams: dict[str, int]
    filters: np.ndarray  # [n_mel, n_fft] float32
    words: list[bytes]
    tensors: dict[str, tuple[int, np.ndarray]]  # name -> (ftype, array in numpy's shape)


def read_ggml(path: str | os.PathLike) -> GgmlFile:
    """Parse a ggml Whisper file (f32 / f16 tensors only: quantised files are not this tool's)."""
    buf = memoryview(Path(path).read_bytes())
    pos = 0

    def ints(n: int, fmt: str = "i") -> tuple[int, ...]:
        nonlocal pos
        out = struct.unpack_from(f"<{n}{fmt}", buf, pos)
        pos += 4 * n
        return out

    def raw(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(buf):
            raise ValueError(f"{path}: truncated at byte {pos} (wanted {n} more)")
        out = bytes(buf[pos:pos + n])
        pos += n
        return out

    (magic,) = ints(1)
    if magic != GGML_MAGIC:
        raise ValueError(f"{path}: bad magic {magic:#x}")
    hparams = dict(zip(HPARAMS, ints(len(HPARAMS)), strict=True))
    n_mel, n_fft = ints(2)
    filters = np.frombuffer(raw(4 * n_mel * n_fft), dtype="<f4").reshape(n_mel, n_fft)
    (n_words,) = ints(1)
    words = [raw(ints(1, "I")[0]) for _ in range(n_words)]
    tensors: dict[str, tuple[int, np.ndarray]] = {}
    while pos < len(buf):
        n_dims, name_len, ftype = ints(3)
        ne = ints(n_dims)
        name = raw(name_len).decode()
        dtype = {FTYPE_F32: np.dtype("<f4"), FTYPE_F16: np.dtype("<f2")}[ftype]
        count = int(np.prod(ne))
        tensors[name] = (ftype, np.frombuffer(raw(count * dtype.itemsize), dtype=dtype).reshape(tuple(reversed(ne))))
    return GgmlFile(hparams, filters, words, tensors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the ggml file to write (e.g. ggml-tiny.en.bin)")
    ap.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the bundled tiny.en)")
    ap.add_argument("--f32", action="store_true",
                    help="every tensor float32 (default: f16 matrices; whisper.cpp 1.8.5 cannot run f32 files)")
    args = ap.parse_args(argv)
    path = export_ggml(args.out, args.checkpoint, use_f16=not args.f32)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
