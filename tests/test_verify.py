"""`verify` catches every classic bug at the right step with the right diagnosis, and raises no false alarm
on correct backends; `trace` shows the slots grow as the layout says."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from whisperkv.reference import kv as kvslots
from whisperkv.reference.audio import load_audio, mel_windows
from whisperkv.reference.checks.mutants import MUTANTS, make_mutant
from whisperkv.reference.checks.verify import Tolerance, distance, verify
from whisperkv.reference.model import NumpyModel

from .helpers import AUDIO_DIR, CLIP_PARAMS, SHORT_CLIP, whisperkv

CLIP = AUDIO_DIR / SHORT_CLIP  # short: 5 sampled tokens, so a full verify is ~1 s

# where each mutant must first be caught: the stage whose numbers it changes first
EXPECTED_STAGE = {
    "wrong_start": ("prefill", 0),
    "zero_cross": ("prefill", 0),
    "cross_wrong_input": ("prefill", 0),
    "position_off_by_one": ("prefill", 0),
    "no_final_ln": ("prefill", 0),
    "swapped_slots": ("step", 1),  # presents are first returned by the first step
    "not_appended": ("step", 1),
    "fp16_overflow": ("step", 1),
    "eot_ignored": ("step", 1),  # its <|endoftext|> logit is -inf from the first step on
}


def windows(path) -> list[np.ndarray]:
    return [mel for _, mel in mel_windows(load_audio(path))]


@pytest.fixture(scope="module")
def reference(tiny_en) -> NumpyModel:
    return tiny_en.backend


def test_every_mutant_has_an_expected_stage() -> None:
    assert set(EXPECTED_STAGE) == set(MUTANTS)


# one mutant caught at prefill and one at a step in the fast tier; every mutant in the full suite
FAST_MUTANTS = {"zero_cross", "swapped_slots"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST_MUTANTS else pytest.mark.slow)
                                  for n in sorted(MUTANTS)])
def test_each_mutant_is_caught_with_its_diagnosis(tiny_en, reference, name: str) -> None:
    mutant = make_mutant(name, tiny_en.checkpoint, tiny_en.tokenizer)
    report = verify(reference, mutant, tiny_en.tokenizer, tiny_en.checkpoint, windows(CLIP))
    assert not report.agree
    first = report.first_divergence
    assert (first.stage, first.step) == EXPECTED_STAGE[name], first.reason
    assert first.verdict == "diverge"
    assert report.diagnosis.cause == MUTANTS[name].cause, report.diagnosis


@pytest.mark.parametrize("clip", CLIP_PARAMS)
def test_the_reference_agrees_with_itself_on_every_clip(tiny_en, reference, clip: str) -> None:
    # A second, independent NumpyModel instance: no shared state, same math.
    report = verify(reference, NumpyModel(tiny_en.checkpoint), tiny_en.tokenizer, tiny_en.checkpoint,
                    windows(AUDIO_DIR / clip))
    assert report.agree and report.ties == 0 and report.first_divergence is None
    assert report.steps > 0


# One clip each through the registry's backends (the slow tier; tests/test_tvm.py and tests/test_onnx.py
# run the same verify() with the same backends on the short clip in the fast tier and on every clip here).
@pytest.mark.slow
@pytest.mark.parametrize("clip", [SHORT_CLIP])
def test_tvm_backend_raises_no_false_alarm(tiny_en, reference, clip: str) -> None:
    tvm_backend = pytest.importorskip("whisperkv.backends.tvm")
    candidate = tvm_backend.TVMBackend(tiny_en.checkpoint, quiet=True)
    report = verify(reference, candidate, tiny_en.tokenizer, tiny_en.checkpoint, windows(AUDIO_DIR / clip))
    assert report.agree, (report.first_divergence, report.diagnosis)
    assert report.ties == 0  # docs/architecture.md: ties must be rare on real audio; none on the shared clips


def test_tolerance_is_what_separates_agreement_from_divergence(tiny_en, reference) -> None:
    class Nudged(NumpyModel):
        """Adds a fixed offset to every logit of one step: harmless to the argmax, visible to the tolerance."""

        def step(self, token, kv):
            logits, present = super().step(token, kv)
            return logits + np.float32(0.5), present

    # +0.5 on logits of scale ~20: 2.5% relative, far above the default 1e-3 and below a 0.1 tolerance
    nudged = Nudged(tiny_en.checkpoint)
    strict = verify(reference, nudged, tiny_en.tokenizer, tiny_en.checkpoint, windows(CLIP))
    assert not strict.agree and strict.first_divergence.stage == "step"
    assert strict.first_divergence.ref_token == strict.first_divergence.cand_token
    loose = verify(reference, nudged, tiny_en.tokenizer, tiny_en.checkpoint, windows(CLIP),
                   tolerance=Tolerance(relative=0.1))
    assert loose.agree


def test_every_start_position_is_compared_not_only_the_last(tiny_en, reference) -> None:
    class LastRowEverywhere(NumpyModel):
        """Returns the last start position's logits for every start position: every token and every slot is
        right, but no_speech_prob, read at <|startoftranscript|>, is not."""

        def prefill(self, tokens, audio_features, kv):
            logits, kv = super().prefill(tokens, audio_features, kv)
            return np.repeat(logits[:, -1:], logits.shape[1], axis=1), kv

    report = verify(reference, LastRowEverywhere(tiny_en.checkpoint), tiny_en.tokenizer, tiny_en.checkpoint,
                    windows(CLIP))
    stage = report.first_divergence
    assert not report.agree and stage.stage == "prefill"
    assert "start position 0 (<|startoftranscript|>)" in stage.reason and "no_speech_prob" in stage.reason
    assert stage.ref_no_speech_prob != stage.cand_no_speech_prob


def test_a_tie_is_reported_not_passed_or_failed(tiny_en, reference) -> None:
    class Tied(NumpyModel):
        """A reference whose first choice is a near-tie: its top-two logits are made 1e-4 apart."""

        def prefill(self, tokens, audio_features, kv):
            logits, kv = super().prefill(tokens, audio_features, kv)
            last = logits[0, -1]  # row 0, last start position
            best, second = np.argsort(-last)[:2]
            last[second] = last[best] - np.float32(1e-4)
            return logits, kv

    class TiedOther(Tied):
        def prefill(self, tokens, audio_features, kv):
            logits, kv = super().prefill(tokens, audio_features, kv)
            last = logits[0, -1]  # row 0, last start position
            best, second = np.argsort(-last)[:2]
            last[best], last[second] = last[second], last[best]
            return logits, kv

    report = verify(Tied(tiny_en.checkpoint), TiedOther(tiny_en.checkpoint), tiny_en.tokenizer,
                    tiny_en.checkpoint, windows(CLIP))
    assert report.agree and report.ties == 1
    assert [s.verdict for s in report.stages] == ["agree", "tie"]


def test_distance_handles_infinities_and_shapes() -> None:
    a = np.array([1.0, -np.inf, 3.0], np.float32)
    assert distance(a, a.copy()) == 0.0
    assert distance(a, np.array([1.0, 0.0, 3.0], np.float32)) == np.inf
    assert distance(a, np.array([1.0, -np.inf, 3.5], np.float32)) == pytest.approx(0.5)  # exact in float32
    assert distance(a, a[:2]) == np.inf



@pytest.mark.slow  # seven CLI runs of verify
def test_verify_cli_exit_codes_and_json() -> None:
    good = whisperkv("verify", CLIP, "--candidate", "numpy", "--format", "json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["agree"] is True
    bad = whisperkv("verify", CLIP, "--candidate", "mutant:position_off_by_one", "--format", "json")
    assert bad.returncode == 1, bad.stderr
    d = json.loads(bad.stdout)
    assert d["first_divergence"]["stage"] == "prefill"
    assert d["diagnosis"]["cause"] == "positional offset off by one"
    text = whisperkv("verify", CLIP, "--candidate", "mutant:zero_cross")
    assert text.returncode == 1 and "DIAGNOSIS: cross K/V left zero" in text.stdout
    assert "top-5" in text.stdout and "max |Δ|" in text.stdout
    for spec in ("nonsense", "python:no_such_module:f", "mutant:nope"):
        p = whisperkv("verify", CLIP, "--candidate", spec)
        assert p.returncode == 2 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, spec
    assert whisperkv("verify", AUDIO_DIR / "missing.wav", "--candidate", "numpy").returncode == 2


def test_a_damaged_onnx_folder_is_a_one_line_error(tmp_path) -> None:
    for part in ("encoder_model", "decoder_model", "decoder_with_past_model"):
        (tmp_path / f"{part}.onnx").write_text("not a protobuf")
    p = whisperkv("verify", CLIP, "--candidate", tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "encoder_model.onnx") in lines[0], lines


@pytest.mark.slow  # two CLI runs of verify
def test_python_factory_candidates(tmp_path) -> None:
    (tmp_path / "my_backend.py").write_text(
        "from whisperkv.reference.model import NumpyModel\n"
        "from whisperkv.reference.checks.mutants import PositionOffByOne\n"
        "def good(checkpoint):\n    return NumpyModel(checkpoint)\n"
        "def bad(checkpoint):\n    return PositionOffByOne(checkpoint)\n"
    )
    env_path = f"{tmp_path}"
    run = lambda spec: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "whisperkv", "verify", str(CLIP), "--candidate", spec], capture_output=True,
        text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": env_path},
    )
    assert run("python:my_backend:good").returncode == 0
    bad = run("python:my_backend:bad")
    assert bad.returncode == 1 and "positional offset off by one" in bad.stdout


def test_trace_shows_growth_of_self_slots_only() -> None:
    p = whisperkv("trace", CLIP)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    rows = [line for line in lines if line.split() and line.split()[0] in ("START", "PREFILL", "STEP", "DONE")]
    assert rows[0].startswith("START") and rows[1].startswith("PREFILL") and rows[-1].startswith("DONE")
    steps = [r for r in rows if r.startswith("STEP")]
    assert len(steps) >= 1
    n_self = len(kvslots.self_slots(4))
    assert f"{n_self} x [1, 6, 2, 64] grew +2" in rows[1]  # the two start tokens
    for i, row in enumerate(steps, start=1):
        assert f"{n_self} x [1, 6, {2 + i}, 64] grew +1" in row
        assert f"{n_self} x [1, 6, 1500, 64] stayed" in row  # cross slots never change after prefill
    assert "<|endoftext|>" in steps[-1]
    assert lines[-1].startswith("# text: Go forward")


@pytest.mark.slow  # a CLI trace with matplotlib, and a decode
def test_trace_plot_is_a_png_of_the_growth_and_the_attention(tiny_en, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from whisperkv.reference.app.plot import cross_attention_map, kv_growth

    out = tmp_path / "trace.png"
    p = whisperkv("trace", CLIP, "--plot", out)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(out).shape[:2] == (800, 1000)  # figsize 10 x 8 inches at 100 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.png"]  # written atomically: no temporary left

    mel = windows(CLIP)[0]
    features = tiny_en.backend.encode(mel[None])
    result = tiny_en.decode(mel, trace=True)
    attention = cross_attention_map(tiny_en.backend, result, features)
    assert attention.shape == (len(result.tokens) + 1, tiny_en.dims.n_audio_ctx)  # one row per choice, EOT too
    # each row is a mean of softmax rows: a distribution over the audio positions (float32 sums: 1e-5)
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)
    steps, self_len, cross_len = kv_growth(result, tiny_en.dims.n_text_layer)
    assert list(self_len) == [0] + list(range(2, 2 + len(result.tokens) + 1))
    assert list(cross_len) == [tiny_en.dims.n_audio_ctx] * len(steps)


@pytest.mark.slow  # see the TVM test above
@pytest.mark.parametrize("clip", [SHORT_CLIP])
def test_onnxruntime_backend_raises_no_false_alarm(tiny_en, reference, clip: str) -> None:
    pytest.importorskip("onnxruntime")
    from whisperkv.reference.registry import create_backend

    candidate = create_backend("onnxruntime", tiny_en.checkpoint)  # the fp32 Optimum export, cached
    report = verify(reference, candidate, tiny_en.tokenizer, tiny_en.checkpoint, windows(AUDIO_DIR / clip))
    assert report.agree, (report.first_divergence, report.diagnosis)
    assert report.ties == 0
