"""A pytest conformance suite for any Whisper backend: `pytest --pyargs reference.conformance --candidate SPEC`.

SPEC is what `whisperkv verify --candidate` takes: a backend name, mutant:NAME, python:MODULE:FACTORY,
or a folder. The options are registered by the `whisperkv` pytest plugin (reference/conformance/plugin.py).
"""
