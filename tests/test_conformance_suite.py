"""The user-facing conformance suite passes a correct backend and fails a buggy one, saying why."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from whisperkv.reference.checks.conformance import PLUGIN, pytest_args

SUITE = ["-p", PLUGIN, "--pyargs", "whisperkv.reference.checks.conformance"]


def conformance(candidate: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args(candidate, "-q", "-p", "no:cacheprovider")],
        capture_output=True, text=True, timeout=1200,
    )


@pytest.mark.slow  # the whole conformance suite in a subprocess: ~1 min
def test_a_correct_backend_passes_every_property() -> None:
    pytest.importorskip("tvm")
    p = conformance("tvm")
    assert p.returncode == 0, p.stdout[-3000:]
    assert "11 passed" in p.stdout  # every property, batches and select included


@pytest.mark.slow  # the whole conformance suite in a subprocess: ~1 min
def test_a_buggy_backend_fails_with_the_first_wrong_step_and_the_cause() -> None:
    p = conformance("mutant:swapped_slots")
    assert p.returncode == 1
    # the per-property tests that see the bug fail; the ones that cannot see it pass
    assert "test_conformance.py::test_every_step_matches_the_reference" in p.stdout
    assert "passed" in p.stdout  # e.g. the encoder and the prefill are fine
    assert "DIVERGE at window 0, step step 1" in p.stdout
    assert "DIAGNOSIS: self slots remapped to the wrong indices" in p.stdout


def test_the_suite_refuses_to_run_without_a_candidate() -> None:
    p = subprocess.run([sys.executable, "-m", "pytest", *SUITE, "-q",
                        "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    assert "needs --candidate" in p.stdout + p.stderr


@pytest.mark.slow  # two pytest runs in subprocesses; the refusal above is the fast tier's
def test_bad_audio_or_candidate_is_one_usage_error() -> None:
    for extra in (["--candidate", "numpy", "--conformance-audio", "/no/such.wav"],
                  ["--candidate", "python:os:getcwd"]):
        p = subprocess.run([sys.executable, "-m", "pytest", *SUITE, "-q",
                            "-p", "no:cacheprovider", *extra], capture_output=True, text=True, timeout=600)
        assert p.returncode == 4, p.stdout + p.stderr  # pytest's exit code for usage errors
        assert "whisperkv conformance:" in p.stderr and "Traceback" not in p.stdout + p.stderr


LAST_ROW = '''
import numpy as np

from whisperkv.reference.model import NumpyModel


class LastRowEverywhere(NumpyModel):
    name = "last-row-everywhere"

    def prefill(self, tokens, audio_features, kv):
        logits, kv = super().prefill(tokens, audio_features, kv)
        return np.repeat(logits[:, -1:], logits.shape[1], axis=1), kv
'''


@pytest.mark.slow  # the prefill property of the suite in a subprocess
def test_a_backend_that_returns_the_last_row_everywhere_fails_the_start_rows_property(tmp_path) -> None:
    (tmp_path / "last_row.py").write_text(LAST_ROW)
    p = subprocess.run(
        [sys.executable, "-m", "pytest",
         *pytest_args("python:last_row:LastRowEverywhere", "-q", "-p", "no:cacheprovider", "-k", "every_start_token")],
        capture_output=True, text=True, timeout=1200, env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert p.returncode == 1, p.stdout[-3000:]
    assert "prefill logits at start position 0 (<|startoftranscript|>)" in p.stdout
