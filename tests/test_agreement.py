"""`whisperkv verify FILES --candidate X --agreement` (reference/checks/agreement.py, docs/verify.md section 8):
a candidate judged by its free-running decisions, the reference's margin at each disagreement, and the WER
against the reference's transcripts.

Fast tier: the word and token measures on constructed cases, the margins on a small random model against
an independent teacher-forced run, the reference as its own candidate and a catalogue bug through the CLI.
Slow tier: the candidates the issue asks for, an int8-quantized ONNX export (tools/quantize_onnx.py) and an
fp16 export, over three of the shared clips; their figures are printed at the end of the run.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whisperkv.reference.checks import agreement as agree
from whisperkv.reference.checks.impact import word_errors
from whisperkv.reference.decoding import DecodingOptions
from whisperkv.reference.model import NumpyModel

from .helpers import (
    AUDIO_DIR,
    SHORT_CLIP,
    SMALL,
    ToyTokenizer,
    as_tokenizer,
    forced_run,
    random_windows,
    show_report,
    small_checkpoint,
    whisperkv,
    windows,
)

ROOT = Path(__file__).resolve().parent.parent
TOY_START = [0, 1]  # the random model's start sequence; its EOT is n_vocab - 1
TOY_OPTIONS = DecodingOptions(suppress_tokens=None, suppress_blank=False)  # no filter needs a real tokenizer
REPORT: list[str] = []  # the int8 and fp16 figures, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def figures(request):
    yield
    show_report(request, "verify --agreement: quantized and fp16 ONNX candidates vs the reference", REPORT)


# ----------------------------------------------------------------------------------------------
# Words, word errors, token alignment


def test_words_are_lower_case_without_punctuation() -> None:
    assert agree.words("One, two, three.") == ["one", "two", "three"]
    assert agree.words("It’s a well-known \"fact\" - isn't it?") == ["it's", "a", "well", "known", "fact", "isn't",
                                                                     "it"]
    assert agree.words("  ") == []
    # numbers are not spelled out: "10" against "ten" is an error, as the WER counts it
    assert word_errors(agree.words("go forward ten meters"), agree.words("Go forward 10 meters.")) == 1


def test_rate_of_empty_transcripts() -> None:
    assert agree.rate(0, 0) == 0.0  # nothing said, nothing heard
    assert agree.rate(3, 0) == 1.0  # nothing said, something heard: all inserted
    assert agree.rate(1, 4) == 0.25


tokens = st.lists(st.integers(0, 3), max_size=8)  # a small alphabet: many repeats, many alignments


@given(tokens, tokens)
def test_matched_is_the_longest_common_subsequence(a: list[int], b: list[int]) -> None:
    # brute force: the longest subsequence of a (2^8 at most) that is also a subsequence of b
    def within(sub: tuple[int, ...], seq: list[int]) -> bool:
        it = iter(seq)
        return all(x in it for x in sub)

    longest = max(n for n in range(len(a) + 1) for sub in itertools.combinations(a, n) if within(sub, b))
    assert agree.matched(a, b) == longest == agree.matched(b, a)


@given(tokens, tokens)
def test_word_errors_are_an_edit_distance(a: list[int], b: list[int]) -> None:
    d = word_errors(a, b)
    assert d == word_errors(b, a)
    assert (d == 0) == (a == b)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    # substitutions count once: never more than insertions and deletions alone need
    assert d <= len(a) + len(b) - 2 * agree.matched(a, b)


@given(tokens, tokens)
def test_first_difference_is_where_the_sequences_part(a: list[int], b: list[int]) -> None:
    k = agree.first_difference(a, b)
    if k is None:
        assert a == b
    else:
        assert a[:k] == b[:k] and (k == min(len(a), len(b)) or a[k] != b[k])


# ----------------------------------------------------------------------------------------------
# Margins, on a small random model against an independent teacher-forced run


class Nudged(NumpyModel):
    """The reference with its logits moved: `bias` added to some tokens' logits at some transitions
    ({transition: {token: bias}}, 0 = prefill) and Gaussian noise of `noise` everywhere."""

    def __init__(self, checkpoint, bias: dict[int, dict[int, float]] | None = None, noise: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__(checkpoint)
        self.bias, self.noise, self.rng = bias or {}, noise, np.random.default_rng(seed)
        self.transition = 0

    def nudge(self, logits: np.ndarray) -> np.ndarray:
        out = logits + self.noise * self.rng.standard_normal(logits.shape).astype(np.float32)
        for token, b in self.bias.get(self.transition, {}).items():
            out[..., token] += b
        self.transition += 1
        return out

    def prefill(self, tokens, audio_features, kv):
        self.transition = 0  # each window's decoding starts here
        logits, kv = super().prefill(tokens, audio_features, kv)
        return self.nudge(logits), kv

    def step(self, tokens, kv):
        logits, present = super().step(tokens, kv)
        return self.nudge(logits), present


def toy_agreement(candidate, checkpoint, seed: int) -> agree.FileAgreement:
    tok = as_tokenizer(ToyTokenizer(TOY_START, SMALL.n_vocab))
    return agree.agreement(NumpyModel(checkpoint), candidate, tok, random_windows(SMALL, seed, 2), options=TOY_OPTIONS)


def reference_logits(checkpoint, mel: np.ndarray, forced: list[int]) -> list[np.ndarray]:
    """The reference's logits at each choice, teacher-forced with `forced` (helpers.forced_run: another path)."""
    ref = NumpyModel(checkpoint)
    return [logits[0] for logits, _ in forced_run(ref, TOY_START, ref.encode(mel[None]), forced)]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), noise=st.sampled_from([0.0, 0.05, 0.5, 5.0]))
def test_disagreements_are_the_references_choices_on_the_candidates_tokens(seed: int, noise: float) -> None:
    checkpoint = small_checkpoint(SMALL, seed)
    f = toy_agreement(Nudged(checkpoint, noise=noise, seed=seed), checkpoint, seed)
    eot = SMALL.n_vocab - 1
    for w, mel in zip(f.windows, random_windows(SMALL, seed, 2), strict=True):
        ref = w.ref_tokens + [eot] * w.ref_ended
        cand = w.cand_tokens + [eot] * w.cand_ended
        assert (w.first_difference is None) == (ref == cand) == (not w.disagreements) == (w.matched == w.decisions)
        # every choice of the candidate, judged by the reference given the candidate's tokens so far
        rows = reference_logits(checkpoint, mel, w.cand_tokens)[: len(cand)]
        want = [(step, int(np.argmax(row)), token, float(row[np.argmax(row)]) - float(row[token]))
                for step, (row, token) in enumerate(zip(rows, cand, strict=True)) if np.argmax(row) != token]
        got = [(d.step, d.ref_token, d.cand_token, d.margin) for d in w.disagreements]
        # the same numpy calls on the same inputs: the same float32 logits, so the margins are equal exactly
        assert got == want
        if w.disagreements:  # the first is where the free runs part, on their common prefix
            first = w.disagreements[0]
            assert first.step == w.first_difference and first.ref_token == ref[first.step] and first.margin >= 0
    assert 0.0 <= f.agreement <= 1.0 and (f.agreement == 1.0) == f.identical
    if noise == 0.0:  # the reference as its own candidate
        assert f.identical and f.wer == 0.0 and not f.disagreements


def test_a_near_tie_flip_is_judged_by_the_references_gap() -> None:
    checkpoint, seed = small_checkpoint(SMALL, 3), 3
    mel = random_windows(SMALL, seed, 1)[0]
    row = reference_logits(checkpoint, mel, [])[0]  # the reference's choice at prefill
    first, second = np.argsort(-row)[:2]
    gap = float(row[first] - row[second])
    for lift in (gap + 0.01, gap + 100.0):
        # lifting the runner-up past the top by a little or by a lot flips the same decision: its margin is
        # the reference's own gap either way, whatever the candidate's logits are (the same float32 logits,
        # computed by the same calls: equal to rounding of the subtraction, rel 1e-6)
        f = toy_agreement(Nudged(checkpoint, bias={0: {int(second): lift}}), checkpoint, seed)
        d = f.windows[0].disagreements[0]
        assert (d.step, d.ref_token, d.cand_token) == (0, first, second) and d.margin == pytest.approx(gap, rel=1e-6)
    # a token the reference finds unlikely: its margin is large, and the verdict names it
    worst = int(np.argmin(row[: SMALL.n_vocab - 1]))
    f = toy_agreement(Nudged(checkpoint, bias={0: {worst: 1e4}}), checkpoint, seed)
    d = f.windows[0].disagreements[0]
    assert d.cand_token == worst and d.margin == pytest.approx(float(row[first] - row[worst]), rel=1e-6)
    verdict = agree.judge([f], margin_limit=d.margin / 2)
    assert not verdict.acceptable and "reference margin above" in verdict.reasons[0]
    # after it the candidate is the reference again: no other disagreement (any WER passes this limit)
    assert agree.judge([f], margin_limit=d.margin * 2, wer_limit=math.inf).acceptable


def test_a_candidate_that_raises_is_not_acceptable() -> None:
    class Broken(NumpyModel):
        def step(self, tokens, kv):
            raise RuntimeError("kernel missing")

    checkpoint = small_checkpoint(SMALL, 5)
    f = toy_agreement(Broken(checkpoint), checkpoint, 5)
    assert f.errors and all("RuntimeError: kernel missing" in e for e in f.errors)
    verdict = agree.judge([f])
    assert not verdict.acceptable and "the candidate failed" in verdict.reasons[0]
    json.dumps(verdict.as_dict(), allow_nan=False)  # strict JSON, even with no margin to report


# ----------------------------------------------------------------------------------------------
# The CLI: the reference as its own candidate, a catalogue bug, bad combinations

CLIP = AUDIO_DIR / SHORT_CLIP


def test_the_reference_as_candidate_agrees_exactly() -> None:
    p = whisperkv("verify", CLIP, "--candidate", "numpy", "--agreement", "--format", "json")
    assert p.returncode == 0, p.stderr
    body = json.loads(p.stdout)  # strict JSON: parse_constant would have to accept NaN otherwise
    s = body["summary"]
    assert body["acceptable"] and body["reasons"] == []
    assert (s["mean_agreement"], s["identical_files"], s["disagreements"], s["wer"]) == (1.0, 1, 0, 0.0)
    assert s["max_margin"] is None and s["human_delta"] == 0.0  # the clip's human transcript is in MANIFEST.tsv
    f = body["files"][0]
    assert f["ref_text"] == f["cand_text"] and f["transcript"] and f["ref_human_errors"] == f["cand_human_errors"]


def test_a_catalogue_bug_is_not_acceptable() -> None:
    # position_off_by_one changes "go" at prefill: the reference was sure of its choice there
    p = whisperkv("verify", CLIP, "--candidate", "mutant:position_off_by_one", "--agreement")
    assert p.returncode == 1, p.stderr
    assert "NOT ACCEPTABLE" in p.stdout and "reference margin above" in p.stdout, p.stdout
    assert "window 0 step 0" in p.stdout  # the first difference, in the table


@pytest.mark.parametrize("extra, message", [
    ((), "no audio files given"),
    ((str(CLIP), "--jobs", "2"), "--agreement runs in this process"),
    ((str(CLIP), "--manifest", "run.jsonl"), "--agreement runs in this process"),
])
def test_bad_combinations_are_one_line_errors(extra: tuple[str, ...], message: str, tmp_path: Path) -> None:
    p = whisperkv("verify", *extra, "--candidate", "numpy", "--agreement", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
    assert not (tmp_path / "run.jsonl").exists()  # refused before anything was written


# ----------------------------------------------------------------------------------------------
# The candidates: int8-quantized and fp16 ONNX exports, over three shared clips

# two short clips, and the 50 s one on which int8 parts from the reference (twice, both near-ties): so the
# real candidate's disagreements are checked too, not only identical runs
onnx_clips = ["pocketsphinx_goforward.wav", "speechbrain_example1_birch_canoe.wav",
              "ljspeech_LJ001-0001_to_0008_concat.wav"]


def quantize_folder(src: Path, dst: Path) -> list[Path]:
    """tools/quantize_onnx.py's quantize_folder (a script, not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("quantize_onnx", ROOT / "tools" / "quantize_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.quantize_folder(src, dst)


@pytest.fixture(scope="module")
def onnx_candidates(tiny_en, tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("onnxruntime")
    from whisperkv.backends.onnx.export import export_onnx

    out = tmp_path_factory.mktemp("agreement")
    export_onnx(tiny_en.checkpoint, out / "fp32")
    export_onnx(tiny_en.checkpoint, out / "fp16", fp16=True)
    quantize_folder(out / "fp32", out / "int8")
    return {"int8": out / "int8", "fp16": out / "fp16"}


@pytest.mark.slow  # an export and a quantization of tiny.en, then 56 s of speech decoded by both (~1 min)
@pytest.mark.parametrize("kind", ["int8", "fp16"])
def test_quantized_and_fp16_candidates_are_judged_by_decisions(tiny_en, onnx_candidates, kind: str) -> None:
    from whisperkv.reference.checks.candidates import resolve_candidate

    candidate = resolve_candidate(str(onnx_candidates[kind]), tiny_en.checkpoint, tiny_en.tokenizer)
    paths = [str(AUDIO_DIR / c) for c in onnx_clips]
    human = agree.human_transcripts(paths)
    files = [agree.agreement(NumpyModel(tiny_en.checkpoint), candidate, tiny_en.tokenizer,
                             windows(p, tiny_en.dims.n_mels), audio=p, transcript=human[p]) for p in paths]
    result = agree.judge(files)
    for f in files:
        assert not f.errors
        assert (f.agreement == 1.0) == f.identical == (not f.disagreements)
        if f.identical:  # the same tokens: the same transcript, the same WER against the human one
            assert f.wer == 0.0 and f.human_delta == 0.0
        for w in f.windows:
            if w.first_difference is not None:  # a difference always has its margin, the first at the parting
                assert w.disagreements and w.disagreements[0].step == w.first_difference
    REPORT.append(f"{kind}: " + "; ".join(line.strip() for line in agree.summary_lines(result, tiny_en.tokenizer)))
    # a correct export whose only error is its precision: every flip a near-tie, the transcripts the same
    assert result.acceptable, result.reasons
