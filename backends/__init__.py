"""whisperkv's own plug-in backends. They register through entry points (pyproject.toml, groups
`whisperkv.backends` and `whisperkv.folders`), exactly as a third party's backend package would; the
reference finds them there and never imports this package by name. Each backend is imported only when
asked for, so a missing optional dependency (tvm, onnxruntime) only matters to the one who asks for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from whisperkv.reference.registry import BackendUnavailable, FolderNotRecognised, create_backend


def open_folder(path: str | os.PathLike, checkpoint: Any) -> Any:
    """A folder of model files -> the backend that runs it (`whisperkv verify --candidate FOLDER`).

    - An Optimum ONNX export (*.onnx) runs in onnxruntime (for TVM's import of the same files, use the
      `tvm-onnx` backend with onnx_dir=FOLDER: it compiles into the cache, never into your folder).
    - A folder of compiled libraries and no *.onnx (encoder_model.so, decoder_model.so,
      decoder_with_past_model.so, or their *_fp16.so; weights embedded, as the seed built them) runs
      through TVM's Relax VM, bound by the libraries' own parameter names (backends/onnx/tvm_libs.py).
    """
    folder = Path(path)
    if any(folder.glob("*.onnx")):
        return create_backend("onnxruntime", checkpoint, onnx_dir=folder)
    if any(folder.glob("*.so")):
        try:
            from .onnx.tvm_libs import TVMLibraryFolderBackend
        except ImportError as e:
            raise BackendUnavailable(f"{folder}: a folder of compiled libraries needs TVM, which is not "
                                     f"installed: {e}") from e
        return TVMLibraryFolderBackend(checkpoint, folder)
    raise FolderNotRecognised("no *.onnx and no *.so files: expected an Optimum ONNX export "
                              "(encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx) or those "
                              "three compiled by TVM (encoder_model.so, decoder_model.so, "
                              "decoder_with_past_model.so)")
