"""Audio libsndfile cannot read (m4a, mp4, aac, video containers), decoded by FFmpeg through PyAV (reference/audio.py).

Every file here is made in the test with PyAV's own encoders and muxers: AAC in .m4a (lossy, as users' files
are), ALAC in .m4a and PCM in Matroska (lossless: the very samples of the wav they were made from), a video
track beside the audio, a video without audio, and broken files. `av` is optional: the tests that make
files skip without it; the one for its absence runs either way.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisperkv.reference import audio as A
from whisperkv.reference.audio import AudioError, load_audio, mel_windows, open_audio

from .helpers import AUDIO_DIR

CLIP = AUDIO_DIR / "speechrecognition_english_one_two_three.wav"  # 2.7 s at 44.1 kHz: "One, two, three."


def encode(path: Path, samples: np.ndarray | None, rate: int = 0, codec: str = "", sample_format: str = "",
           video: bool = False, options: dict[str, str] | None = None) -> Path:
    """Write samples [channels, n] (in `sample_format`'s dtype) as one audio stream, optionally beside a video.

    Frames carry their pts, so that the muxer records the encoder's priming delay (an MP4 edit list) and the
    decoder drops it: the decoded samples then line up with the input's.
    """
    av = pytest.importorskip("av")
    with av.open(str(path), "w", options=options or {}) as out:
        if video:
            picture = out.add_stream("mpeg4", rate=10)
            picture.width = picture.height = 16
            picture.pix_fmt = "yuv420p"
        if samples is not None:
            layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
            planar = sample_format.endswith("p")
            stream = out.add_stream(codec, rate=rate, layout=layout)
            for i in range(0, samples.shape[1], 1024):
                block = samples[:, i : i + 1024]
                data = np.ascontiguousarray(block) if planar else np.ascontiguousarray(block.T).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(data, format=sample_format, layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        if video:
            for k in range(3):
                image = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
                image.pts = k
                out.mux(picture.encode(image))
            out.mux(picture.encode(None))
    return path


def stereo_int16(n: int = 30_000, seed: int = 0) -> np.ndarray:
    # [2, n] int16: two different channels, so that the downmix is tested too
    return (np.random.default_rng(seed).standard_normal((2, n)) * 3000).astype(np.int16)


def clip_as_aac(tmp_path: Path, name: str = "clip.m4a", options: dict[str, str] | None = None) -> Path:
    x, sr = sf.read(str(CLIP), dtype="float32", always_2d=True)
    stereo = np.ascontiguousarray(np.repeat(x, 2, axis=1).T)  # [2, n]: a stereo file, as phones record
    return encode(tmp_path / name, stereo, sr, "aac", "fltp", options=options)


def one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


# ----------------------------------------------------------------------------------------------
# The samples: what libsndfile would give, where the codec is lossless


@pytest.mark.parametrize("container,codec,sample_format,video", [
    ("m4a", "alac", "s16p", False),  # Apple Lossless; decoded as s32p
    ("mkv", "pcm_s16le", "s16", True),  # interleaved PCM beside a video track
])
def test_lossless_files_give_the_wavs_samples_exactly(tmp_path: Path, container: str, codec: str,
                                                      sample_format: str, video: bool) -> None:
    x = stereo_int16()
    wav = tmp_path / "ref.wav"
    sf.write(str(wav), x.T, 22050, subtype="PCM_16")
    other = encode(tmp_path / f"ref.{container}", x, 22050, codec, sample_format, video=video)
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(other))  # really a file only PyAV reads
    want = load_audio(wav)
    assert np.array_equal(load_audio(other), want)  # int -> float, the downmix and the resampler: bit for bit
    assert [(s, w.tobytes()) for s, w in open_audio(other).mel_windows()] == \
        [(s, w.tobytes()) for s, w in open_audio(wav).mel_windows()]


def test_aac_decodes_close_to_the_wav_and_streams_as_it_loads(tmp_path: Path) -> None:
    m4a = clip_as_aac(tmp_path)
    wav, ours = load_audio(CLIP), load_audio(m4a)
    # AAC pads its last frame: a little longer, never shorter; the priming delay is dropped (no lag).
    assert len(wav) <= len(ours) <= len(wav) + 16000 * 2048 // 44100
    rel = np.sqrt(np.mean((ours[: len(wav)] - wav) ** 2) / np.mean(wav**2))
    assert rel < 0.1, rel  # measured 0.029: AAC's loss at its default bit rate; a one-frame lag gives > 1
    # The file is read in _READ_BLOCK pieces when streamed (2 here): the very windows of the whole-file load.
    streamed = open_audio(m4a)
    assert streamed.n_samples == len(ours)
    assert [(s, w.tobytes()) for s, w in streamed.mel_windows()] == [(s, w.tobytes()) for s, w in mel_windows(ours)]


@pytest.mark.slow  # two real decodes, ~8 s on 2 shared cores; the fast tier checks the samples above
def test_m4a_transcript_equals_the_wavs(tmp_path: Path, tiny_en) -> None:
    m4a = clip_as_aac(tmp_path)
    want = tiny_en.transcribe(str(CLIP))
    got = tiny_en.transcribe(str(m4a))
    assert want["text"].strip() == "One, two, three."
    assert got["text"] == want["text"]


# ----------------------------------------------------------------------------------------------
# Validation as for libsndfile's files


def test_non_finite_samples_are_refused_as_in_a_wav(tmp_path: Path) -> None:
    x = (stereo_int16(3 * A._READ_BLOCK) / 32768).astype(np.float32)
    x[1, A._READ_BLOCK + 5] = np.nan
    x[0, 2 * A._READ_BLOCK + 7] = -np.inf
    wav = tmp_path / "bad.wav"
    sf.write(str(wav), x.T, 22050, subtype="FLOAT")
    mkv = encode(tmp_path / "bad.mkv", x, 22050, "pcm_f32le", "flt")
    for load in (load_audio, open_audio):
        with pytest.raises(AudioError) as from_wav:
            load(wav)
        with pytest.raises(AudioError) as from_mkv:
            load(mkv)
        assert str(from_mkv.value).replace(str(mkv), str(wav)) == str(from_wav.value)
    assert f"1 NaN and 1 inf sample(s) of {6 * A._READ_BLOCK}; first at frame {A._READ_BLOCK + 5} " in \
        str(from_mkv.value)


# ----------------------------------------------------------------------------------------------
# Files nobody can read: one line naming the file, never a traceback


def test_text_file_named_m4a(tmp_path: Path) -> None:
    pytest.importorskip("av")
    path = tmp_path / "notes.m4a"
    path.write_text("not audio\nat all\n")
    for load in (load_audio, open_audio):
        with pytest.raises(AudioError) as err:
            load(path)
        message = one_line_naming(err, path)
        assert "not an audio file libsndfile or PyAV can read" in message and "Invalid data" in message


def test_truncated_m4a(tmp_path: Path) -> None:
    # An MP4 muxer writes its index (moov) last: cut, the file has none and PyAV cannot open it.
    whole = clip_as_aac(tmp_path).read_bytes()
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AudioError) as err:
        open_audio(cut)
    assert "not an audio file libsndfile or PyAV can read" in one_line_naming(err, cut)


def test_truncated_streamable_m4a_is_refused_not_shortened(tmp_path: Path) -> None:
    # With the index first ("faststart"), a cut file opens and decodes up to the cut, then a packet fails:
    # refused, rather than transcribed as if the recording ended there.
    whole = clip_as_aac(tmp_path, "fast.m4a", options={"movflags": "faststart"}).read_bytes()
    assert whole.find(b"moov") < whole.find(b"mdat")
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(whole[: len(whole) // 2])
    for load in (load_audio, open_audio):
        with pytest.raises(AudioError) as err:
            load(cut)
        message = one_line_naming(err, cut)
        assert "cannot decode audio after " in message and "truncated or corrupt" in message


def test_video_without_audio(tmp_path: Path) -> None:
    path = encode(tmp_path / "silent_film.mp4", None, video=True)
    with pytest.raises(AudioError) as err:
        open_audio(path)
    assert "no audio stream (PyAV found video" in one_line_naming(err, path)


def test_without_pyav_the_error_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        path = clip_as_aac(tmp_path)  # a real m4a where PyAV is installed
    except pytest.skip.Exception:
        path = tmp_path / "clip.m4a"
        path.write_bytes(b"\x00\x00\x00\x18ftypM4A \x00\x00\x02\x00isomiso2" + bytes(64))
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError, as when it is missing
    for load in (load_audio, open_audio):
        with pytest.raises(AudioError) as err:
            load(path)
        message = one_line_naming(err, path)
        assert "not an audio file libsndfile can read" in message and "pip install 'whisperkv[av]'" in message
    assert len(load_audio(CLIP)) > 0  # what libsndfile reads needs no PyAV
