"""whisperkv: OpenAI's Whisper through a decoding loop you can read, check and trust.

    import whisperkv
    model = whisperkv.load_model()                  # bundled tiny.en, numpy reference backend
    result = model.transcribe("a.wav")
    print(result["text"])

The installed package holds three parts: `whisperkv.reference` (the model core, the checking tools in
`reference.checks`, the application in `reference.app`), `whisperkv.backends` (the plug-in backends) and
this small public face. The source folders are `reference/` and `backends/` (pyproject.toml maps them).

The names below are imported on first use (PEP 562), so that `import whisperkv.x` costs no numpy: the
`whisperkv` command starts its heap warm-up (reference/app/heap.py) before the heavy imports, on the core
they leave idle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_LAZY = {  # public name -> the module that defines it
    "DecodingOptions": "whisperkv.reference.decoding",
    "DecodingResult": "whisperkv.reference.decoding",
    "ModelDims": "whisperkv.reference.dims",
    "InputError": "whisperkv.reference.errors",
    "WhisperkvError": "whisperkv.reference.errors",
    "available_backends": "whisperkv.reference.registry",
    "Transcript": "whisperkv.reference.transcribe",
    "Whisper": "whisperkv.reference.transcribe",
    "load_model": "whisperkv.reference.transcribe",
}

__all__ = [  # (a literal, for linters and type checkers; tests/test_layout.py holds it to _LAZY)
    "DecodingOptions", "DecodingResult", "InputError", "ModelDims", "Transcript", "Whisper", "WhisperkvError",
    "__version__", "available_backends", "load_model",
]

if TYPE_CHECKING:
    from whisperkv.reference.decoding import DecodingOptions, DecodingResult
    from whisperkv.reference.dims import ModelDims
    from whisperkv.reference.errors import InputError, WhisperkvError
    from whisperkv.reference.registry import available_backends
    from whisperkv.reference.transcribe import Transcript, Whisper, load_model


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'whisperkv' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
