"""A pytest conformance suite for any Whisper backend: one test per property a backend must have.

Run it with `whisperkv conformance --candidate SPEC [-- PYTEST_ARGS]`, or with pytest itself:

    pytest -p whisperkv.reference.checks.conformance.plugin --pyargs whisperkv.reference.checks.conformance \
        --candidate SPEC [--conformance-audio FILE ...] [--conformance-model DIR] [--conformance-tolerance X]

SPEC is what `whisperkv verify --candidate` takes: a backend name, mutant:NAME, python:MODULE:FACTORY,
or a folder. The options and fixtures come from plugin.py.
"""

PLUGIN = f"{__name__}.plugin"


def pytest_args(candidate: str, *extra: str) -> list[str]:
    """The pytest command line (after `pytest`) that runs this suite against `candidate`."""
    return ["-p", PLUGIN, "--pyargs", __name__, "--candidate", candidate, *extra]
