"""whisperkv: OpenAI's Whisper through a decoding loop you can read, check and trust.

    import whisperkv
    model = whisperkv.load_model()                  # bundled tiny.en, numpy reference backend
    result = model.transcribe("a.wav")
    print(result["text"])

The installed package holds three parts: `whisperkv.reference` (the model core, the checking tools in
`reference.checks`, the application in `reference.app`), `whisperkv.backends` (the plug-in backends) and
this small public face. The source folders are `reference/` and `backends/` (pyproject.toml maps them).
"""

from whisperkv.reference.decoding import DecodingOptions, DecodingResult
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.errors import InputError, WhisperkvError
from whisperkv.reference.registry import available_backends
from whisperkv.reference.transcribe import Transcript, Whisper, load_model

__version__ = "0.2.0"

__all__ = [
    "DecodingOptions", "DecodingResult", "InputError", "ModelDims", "Transcript", "Whisper", "WhisperkvError",
    "__version__", "available_backends", "load_model",
]
