"""What several test modules share: the clips, small random checkpoints, and the kernel comparison.

No test module imports another; they import from here (`from .helpers import ...`). Token agreement
between two backends is never checked here: that is `whisperkv.reference.checks.verify.verify`, with
its one tolerance and one tie rule.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from whisperkv.reference import kv as kvslots
from whisperkv.reference.audio import load_audio, mel_windows
from whisperkv.reference.backend import Backend
from whisperkv.reference.checks.verify import Report
from whisperkv.reference.decoding import Decoder, DecodingOptions, State, TeacherForcing
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.model import NumpyModel
from whisperkv.reference.tokenizer import Tokenizer
from whisperkv.reference.weights import Checkpoint, random_weights

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
AUDIO_DIR = FIXTURES / "audio"


def clip_manifest() -> list[dict[str, str]]:
    with open(AUDIO_DIR / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


CLIPS = [row["file"] for row in clip_manifest()]

WHISPERKV = [sys.executable, "-m", "whisperkv"]  # the command, run from this environment


def default_sigint() -> None:
    """A child's SIGINT as a terminal gives it: a test runner started in the background (a non-interactive
    shell's `&`) ignores SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def whisperkv(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess:
    """`whisperkv ARGS` in a child process, output captured as text (600 s: far above any command here)."""
    return subprocess.run([*WHISPERKV, *map(str, args)], capture_output=True, text=True, timeout=600, **kwargs)
SHORT_CLIP = "pocketsphinx_goforward.wav"  # 2.8 s: one window, 5 sampled tokens; the fast tier's real speech

# every clip, as parameters: the short one in the fast tier, the others marked slow (the full suite's)
CLIP_PARAMS = [pytest.param(c, marks=() if c == SHORT_CLIP else pytest.mark.slow) for c in CLIPS]

# clip -> (word error rate, hypothesis, human transcript), filled by tests/test_oracle.py, printed at the end
WER_REPORT: dict[str, tuple[float, str, str]] = {}


def windows(clip: str | Path, n_mels: int = 80) -> list[np.ndarray]:
    """The log-mel windows of a shared clip (a name in AUDIO_DIR or a path): what verify() takes."""
    return [mel for _, mel in mel_windows(load_audio(AUDIO_DIR / clip), n_mels)]


# ----------------------------------------------------------------------------------------------
# Small random checkpoints


def small_checkpoint(dims: ModelDims, seed: int = 0) -> Checkpoint:
    return Checkpoint(dims, random_weights(dims, seed), Path("/nonexistent"), "float32", "random")


SMALL = ModelDims(n_mels=4, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=2, n_vocab=20,
                  n_text_ctx=10, n_text_state=8, n_text_head=2, n_text_layer=2)

# tiny dims with tiny.en's vocabulary, so the real tokenizer and the state machine's filters apply in
# verify(); n_text_ctx 16 -> verify samples at most 8 tokens per window
TINY_VOCAB_DIMS = ModelDims(n_mels=4, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=2,
                            n_vocab=51864, n_text_ctx=16, n_text_state=8, n_text_head=2, n_text_layer=2)


@st.composite
def small_dims(draw: st.DrawFn) -> ModelDims:
    head_dim = draw(st.sampled_from([2, 4]))
    # at least 4 wide: a LayerNorm over 2 values outputs +-gain whatever the input, so a 1e-7 rounding
    # difference upstream flips into O(1e-4) logits and no fixed atol separates kernels from bugs
    heads = draw(st.integers(1 if head_dim == 4 else 2, 3))
    n_state = head_dim * heads
    return ModelDims(n_mels=draw(st.integers(1, 5)), n_audio_ctx=draw(st.integers(1, 6)), n_audio_state=n_state,
                     n_audio_head=heads, n_audio_layer=draw(st.integers(1, 2)), n_vocab=draw(st.integers(8, 40)),
                     n_text_ctx=draw(st.integers(5, 12)), n_text_state=n_state, n_text_head=heads,
                     n_text_layer=draw(st.integers(1, 3)))


def random_windows(dims: ModelDims, seed: int, n: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((dims.n_mels, dims.n_mel_frames)).astype(np.float32) for _ in range(n)]


class ToyTokenizer:
    """What verify()'s decoding rules and messages need from a tokenizer, for a random model's small vocabulary.

    Use with DecodingOptions(suppress_tokens=None, suppress_blank=False): no filter then asks for a word's
    ids. `eot` is an ordinary id of the vocabulary (the last), so a window may end early, as a real one does.
    """

    def __init__(self, start: list[int], n_vocab: int) -> None:
        self.start, self.eot, self.no_speech = list(start), n_vocab - 1, None
        self.sot = self.start[0]

    def sot_sequence(self, language: str | None = None, task: str = "transcribe", timestamps: bool = False
                     ) -> list[int]:
        return list(self.start)  # (the toy model has no timestamps: always this start)

    def token_text(self, token: int) -> str:  # what verify's messages print for a token
        return f"<{token}>"


def as_tokenizer(toy: ToyTokenizer) -> Tokenizer:
    return toy  # type: ignore[return-value]  # duck-typed: only sot_sequence, eot and token_text are read


def assert_agrees(report: Report, ties_allowed: bool = False) -> None:
    """verify()'s verdict: agreement; on real audio (ties_allowed=False) no tie, and past prefill."""
    assert report.agree and report.first_divergence is None, (report.first_divergence, report.diagnosis)
    if not ties_allowed:  # docs/architecture.md: ties are rare on real audio; the shared clips have none
        assert report.ties == 0, [s.reason for s in report.stages if s.verdict == "tie"]
        assert report.steps > 0  # every window of speech samples a token before EOT


# The bound the ONNX fp32 tests held tiny.en's logits to before verify() judged them, kept beside verify's
# relative rule: 1e-3 absolute (measured: 4e-5 at worst, reassociation only; a wrong position, mask, slot or
# weight moves logits by O(1)), now on every logit of every stage instead of the top five.
FP32_LOGIT_ATOL = 1e-3


def assert_logits_within(report: Report, atol: float) -> None:
    worst = max(s.max_abs for s in report.stages if s.stage != "encode")
    assert worst <= atol, f"{report.audio}: logits max |Δ| {worst:.3g} > {atol:g}"


def no_speech_prob(backend: Backend, tokenizer: Tokenizer, mel: np.ndarray) -> float:
    """The state machine's no_speech_prob of one window: START and PREFILL only (verify compares the
    logits at the last start position; this one is read at <|startoftranscript|>)."""
    run = Decoder(backend, tokenizer).begin([backend.encode(mel[None])])
    while run.state in (State.START, State.PREFILL):
        run.advance()
    return run.groups[0].no_speech_prob


def forced_run(backend: Backend, start: list[int], features: Any, forced: list[int]
               ) -> Iterator[tuple[np.ndarray, list[Any]]]:
    """The decoding machine on a random model: `start` as the start sequence, then `forced` teacher-forced
    (tokens below n_vocab - 1: the toy EOT is n_vocab - 1). Yields (logits [1, n_vocab], slots) after
    PREFILL and after each STEP."""
    toy = ToyTokenizer(start, backend.dims.n_vocab)
    assert toy.eot not in forced, "a forced EOT would end the run early"
    options = DecodingOptions(suppress_tokens=None, suppress_blank=False,
                              sample_len=backend.dims.n_text_ctx - len(start))
    decoder = Decoder(backend, as_tokenizer(toy), options, strategy=lambda: TeacherForcing(list(forced), toy.eot))
    run = decoder.begin([features])
    run.advance()  # START
    while run.state is not State.DONE:
        run.advance()
        yield np.asarray(run.logits), run.kv


# ----------------------------------------------------------------------------------------------
# Kernel property checks: raw outputs of a random small model, not token agreement

# float32 through different kernels on O(1) activations: ~1e-6 observed; 1e-4 still fails on any wrong
# position, mask, slot or weight (those move logits by O(0.1)).
SMALL_ATOL = 1e-4


def compare_with_reference(backend: Backend, ref: NumpyModel, seed: int, n_start: int, n_steps: int,
                           atol: float) -> None:
    """Encoder output, prefill and step logits and the slot shapes of `backend` against the reference: two
    decoding machines in lockstep, both teacher-forced with the same random tokens (not greedy ones: every
    position is reached whatever the logits), within `atol` (absolute: the random models' values are O(1),
    so the caller's atol is explained with its precision)."""
    rng = np.random.default_rng(seed)
    d = ref.dims
    mel = rng.standard_normal((1, d.n_mels, d.n_mel_frames)).astype(np.float32)
    start = rng.integers(0, d.n_vocab, n_start).tolist()
    forced = rng.integers(0, d.n_vocab - 1, n_steps).tolist()
    got_f, ref_f = backend.encode(mel), ref.encode(mel)
    np.testing.assert_allclose(backend.to_numpy(got_f), ref_f, atol=atol)
    transitions = 0
    lockstep = zip(forced_run(backend, start, got_f, forced), forced_run(ref, start, ref_f, forced), strict=True)
    for (got, kv), (want, ref_kv) in lockstep:
        np.testing.assert_allclose(got, want, atol=atol)
        assert kvslots.shapes([backend.to_numpy(s) for s in kv]) == kvslots.shapes(ref_kv)
        transitions += 1
    assert transitions == min(n_steps + 1, d.n_text_ctx - n_start)  # prefill, then a step per forced token


def show_report(request: pytest.FixtureRequest, title: str, lines: list[str]) -> None:
    """Print a module's figures under `title` at its end, on success too (a report, not a failure message)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if lines and reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_sep("-", title)
            for line in lines:
                reporter.write_line(line)
