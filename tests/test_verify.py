"""`verify` raises no false alarm on correct backends (the reference itself, float64, small noise), compares
everything the protocol returns, survives candidates that fail, and reports in text and JSON, file by file;
`trace` shows the slots grow as the layout says. The bug catalogue is tests/test_mutants.py, the signature
rules tests/test_signatures.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from whisperkv.reference import kv as kvslots
from whisperkv.reference.checks import causes, impact
from whisperkv.reference.checks.verify import Tolerance, describe, distance, verify
from whisperkv.reference.model import NumpyModel

from .helpers import (
    AUDIO_DIR,
    CLIP_PARAMS,
    SHORT_CLIP,
    TINY_VOCAB_DIMS,
    random_windows,
    small_checkpoint,
    whisperkv,
    windows,
)

CLIP = AUDIO_DIR / SHORT_CLIP  # short: 5 sampled tokens, so a full verify is ~1 s


@pytest.fixture(scope="module")
def reference(tiny_en) -> NumpyModel:
    return tiny_en.backend


@pytest.mark.parametrize("clip", CLIP_PARAMS)
def test_the_reference_agrees_with_itself_on_every_clip(tiny_en, reference, clip: str) -> None:
    # A second, independent NumpyModel instance: no shared state, same math.
    report = verify(reference, NumpyModel(tiny_en.checkpoint), tiny_en.tokenizer, tiny_en.checkpoint,
                    windows(AUDIO_DIR / clip))
    assert report.agree and report.ties == 0 and report.first_divergence is None
    assert report.steps > 0
    # comparing everything the protocol returns costs less than the reference's own decoding (~25% measured)
    assert report.seconds["compare"] < report.seconds["reference"], report.seconds


class Float64Model(NumpyModel):
    """The reference's math in float64 (weights widened): correct, computed differently, slots of another dtype."""

    name = "float64"

    def __init__(self, checkpoint) -> None:
        super().__init__((checkpoint.dims, {k: w.astype(np.float64) for k, w in checkpoint.weights.items()}))


class Noisy(NumpyModel):
    """Every array it returns carries noise of 1e-5 of its scale: rounding of another summation order, enlarged."""

    name = "noisy"

    def __init__(self, checkpoint) -> None:
        super().__init__(checkpoint)
        self.rng = np.random.default_rng(0)

    def noisy(self, x: np.ndarray) -> np.ndarray:
        scale = np.float32(1e-5 * max(1.0, float(np.abs(x).max())))
        return (x + self.rng.standard_normal(x.shape).astype(np.float32) * scale).astype(x.dtype)

    def encode(self, mel):
        return self.noisy(super().encode(mel))

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        return self.noisy(logits), [self.noisy(s) for s in kv]

    def step(self, tokens, kv):
        logits, present = super().step(tokens, kv)
        return self.noisy(logits), [self.noisy(s) for s in present]


@pytest.mark.parametrize("make", [Float64Model, Noisy])
def test_correct_candidates_computed_differently_agree(tiny_en, reference, make) -> None:
    report = verify(reference, make(tiny_en.checkpoint), tiny_en.tokenizer, tiny_en.checkpoint, windows(CLIP))
    assert report.agree and report.ties == 0, describe(report, tiny_en.tokenizer)
    compared = [c for s in report.stages for c in [s.features, s.logits, *s.slots] if c is not None]
    worst = max(c.relative for c in compared)
    # the difference was seen (not zero) and stays inside the tolerance: measured 2e-6 (float64), 1.3e-4 (noise
    # of 1e-5 in the features, amplified by the decoder), against verify's 1e-3
    assert 0 < worst < Tolerance().relative
    if make is Float64Model:  # the dtypes are reported, and a wider one is no divergence
        assert {c.cand_dtype for c in compared} == {"float64"} and {c.ref_dtype for c in compared} == {"float32"}


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
    # a shift of every logit changes no probability: named so, and judged harmless to the decisions
    assert strict.diagnosis.cause == causes.LOGITS_SHIFTED.label and "+0.5" in strict.diagnosis.evidence
    assert strict.impact.changed_choices == 0 and strict.diagnosis.replayed == []
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


# ----------------------------------------------------------------------------------------------
# Candidates that fail, and the report's forms (a small random model with tiny.en's vocabulary: fast)


@pytest.fixture(scope="module")
def small(tiny_en):
    """(reference, checkpoint, tokenizer, windows) of a small random model with tiny.en's vocabulary."""
    ck = small_checkpoint(TINY_VOCAB_DIMS, seed=1)
    return NumpyModel(ck), ck, tiny_en.tokenizer, random_windows(TINY_VOCAB_DIMS, 1, 2)


def test_a_candidate_that_raises_is_a_finding_not_a_crash(small) -> None:
    reference, ck, tok, mels = small

    class FailsAtStep2(NumpyModel):
        name = "fails"

        def step(self, tokens, kv):
            if kvslots.self_length(kv) > len(tok.sot_sequence()):  # the second step
                raise RuntimeError("kernel launch failed")
            return super().step(tokens, kv)

    report = verify(reference, FailsAtStep2(ck), tok, ck, mels)
    first = report.first_divergence
    assert not report.agree and (first.window, first.stage, first.step) == (0, "step", 2)
    assert first.error == "RuntimeError: kernel launch failed" and "kernel launch failed" in first.reason
    assert report.diagnosis.cause == causes.CANDIDATE_ERROR.label
    # both windows were compared to the candidate's failure, and the user would see no transcript at all
    assert [w.error for w in report.impact.windows] == [first.error] * 2
    assert report.impact.severity == impact.CATASTROPHIC
    assert "DIVERGE at window 0, step step 2" in "\n".join(describe(report, tok))


def test_a_candidate_returning_too_few_slots_is_reported_by_shape(small) -> None:
    reference, ck, tok, mels = small

    class DropsLastLayer(NumpyModel):
        name = "drops"

        def prefill(self, tokens, audio_features, kv):
            logits, kv = super().prefill(tokens, audio_features, kv)
            return logits, kv[:-4]

    report = verify(reference, DropsLastLayer(ck), tok, ck, mels)
    first = report.first_divergence
    assert (first.stage, first.step) == ("prefill", 0)
    last = kvslots.n_slots(ck.dims.n_text_layer) - 4
    assert first.reason.startswith(f"slot {last} ({kvslots.slot_name(last)}): shape [] vs reference")
    assert first.slots[last].cand_dtype.startswith("unreadable (IndexError")


def test_the_json_report_is_strict_json_with_everything_compared(small) -> None:
    reference, ck, tok, mels = small
    from whisperkv.reference.checks.mutants import make_mutant

    report = verify(reference, make_mutant("nan_logits", ck, tok), tok, ck, mels)
    text = json.dumps(report.as_dict(all_stages=True), allow_nan=False)  # NaN and inf become strings
    d = json.loads(text)
    step = d["first_divergence"]
    assert step["logits"]["nonfinite"].startswith("NaN at [0]") and step["logits"]["max_abs"] == "inf"
    assert {"cause", "evidence", "found_by", "where", "part", "layer", "replayed"} <= set(d["diagnosis"])
    assert d["impact"]["severity"] == impact.CATASTROPHIC and set(d["seconds"]) >= {"reference", "total"}
    assert all(len(s["slots"]) == kvslots.n_slots(ck.dims.n_text_layer) for s in d["stages"] if s["stage"] != "encode")


@pytest.mark.slow  # four CLI runs of verify on real clips
def test_several_files_and_folders_in_one_call(tmp_path) -> None:
    other = AUDIO_DIR / "speechbrain_example1_birch_canoe.wav"
    p = whisperkv("verify", CLIP, other, "--candidate", "numpy")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("AGREE:") == 2 and "SUMMARY" in p.stdout and "2 of 2 file(s) agree" in p.stdout
    assert p.stdout.index("SUMMARY") > p.stdout.rindex("AGREE:")  # the table after the reports
    j = whisperkv("verify", CLIP, other, "--candidate", "mutant:logits_scaled", "--format", "json")
    assert j.returncode == 1, j.stderr
    d = json.loads(j.stdout)
    assert d["agree"] is False and [f["diagnosis"]["cause"] for f in d["files"]] == ["logits scaled"] * 2
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / SHORT_CLIP).write_bytes(CLIP.read_bytes())
    (folder / "notes.txt").write_text("not audio")
    f = whisperkv("verify", folder, "--candidate", "numpy", "--format", "json")
    assert f.returncode == 0 and json.loads(f.stdout)["audio"].endswith(SHORT_CLIP)  # one file: one report
    bad = whisperkv("verify", CLIP, "--candidate", "numpy", "--tolerance", "nan")
    assert bad.returncode == 2 and "must be a finite number > 0" in bad.stderr
