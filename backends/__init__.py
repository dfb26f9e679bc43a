"""Plug-in backends. Each is imported only when asked for, so a missing optional dependency (tvm)
only matters to the one who asks for that backend."""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:factory"; a factory takes (checkpoint, **options) and returns a Backend.
BACKENDS: dict[str, str] = {
    "numpy": "reference.model:NumpyModel",
    "tvm": "backends.tvm:TVMBackend",
    "onnxruntime": "backends.onnx.ort:OnnxRuntimeBackend",
    "tvm-onnx": "backends.onnx.tvm_onnx:TVMOnnxBackend",
}


def get_backend(name: str, checkpoint: Any, **options: Any) -> Any:
    from reference.registry import BackendUnavailable

    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    module_name, factory = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailable(f"backend {name!r} needs a package that is not installed: {e}") from e
    return getattr(module, factory)(checkpoint, **options)


def open_folder(path: Any, checkpoint: Any) -> Any:
    """A folder of model files -> the backend that runs it (`whisperkv verify --candidate FOLDER`).

    - An Optimum ONNX export (*.onnx) runs in onnxruntime (for TVM's import of the same files, use the
      `tvm-onnx` backend with onnx_dir=FOLDER: it compiles into the cache, never into your folder).
    - A folder of compiled libraries and no *.onnx (encoder_model.so, decoder_model.so,
      decoder_with_past_model.so, or their *_fp16.so; weights embedded, as the seed built them) runs
      through TVM's Relax VM, bound by the libraries' own parameter names (backends/onnx/tvm_libs.py).
    """
    from pathlib import Path

    from reference.registry import BackendUnavailable

    folder = Path(path)
    if any(folder.glob("*.onnx")):
        return get_backend("onnxruntime", checkpoint, onnx_dir=folder)
    if any(folder.glob("*.so")):
        try:
            from backends.onnx.tvm_libs import TVMLibraryFolderBackend
        except ImportError as e:
            raise BackendUnavailable(f"{folder}: a folder of compiled libraries needs TVM, which is not "
                                     f"installed: {e}") from e
        return TVMLibraryFolderBackend(checkpoint, folder)
    raise BackendUnavailable(f"{folder}: no *.onnx and no *.so files: expected an Optimum ONNX export "
                             "(encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx) or those "
                             "three compiled by TVM (encoder_model.so, decoder_model.so, "
                             "decoder_with_past_model.so)")
