"""The Optimum folder in onnxruntime: an independent engine for the same three graphs.

    OnnxRuntimeBackend(checkpoint)                      # exports the checkpoint to the cache first
    OnnxRuntimeBackend(checkpoint, onnx_dir="whisper-tiny-onnx/")   # any Optimum-layout folder

A folder may hold decoder_model_merged.onnx instead of the two decoders (folder.find_files(merged=True));
when it holds both forms, the two separate decoders are used and the merged file is not loaded.

The checkpoint supplies the dims the folder is checked against (and, to the caller, the tokenizer).
KV slots are numpy arrays: onnxruntime's CPU provider reads contiguous numpy inputs in place. Any number
of rows per call (Optimum's batch_size axis is dynamic); `select` is a numpy take along the batch axis,
which returns a new contiguous array, so the next step reads it in place too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from whisperkv.reference.weights import Checkpoint

from . import layout
from .cache import exported_folder
from .folder import OnnxFolderError, PartBinding, check_part, find_files, signature_from_session
from .protocol import OptimumBackend


def session_options(threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    opts.inter_op_num_threads = 1  # the three graphs are sequential; a second pool only competes for cores
    opts.log_severity_level = 3  # errors only: fp16 graphs otherwise log every Cast the CPU provider inserts
    return opts


def load_sessions(paths: dict[str, Path], dims: Any, threads: int | None = None
                  ) -> tuple[dict[str, ort.InferenceSession], dict[str, PartBinding]]:
    opts = session_options(threads)
    sessions, bindings = {}, {}
    for part, path in paths.items():
        try:
            sessions[part] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise OnnxFolderError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from e
        bindings[part] = check_part(part, path, signature_from_session(sessions[part]), dims)
    return sessions, bindings


class OnnxRuntimeBackend(OptimumBackend):
    name = "onnxruntime"

    def __init__(self, checkpoint: Checkpoint, onnx_dir: str | os.PathLike | None = None, fp16: bool | None = None,
                 threads: int | None = None) -> None:
        folder = Path(onnx_dir) if onnx_dir is not None else exported_folder(checkpoint, fp16=bool(fp16))
        self.folder = folder
        paths = find_files(folder, fp16, merged=True)
        self.fp16 = paths[layout.ENCODER].name.endswith("_fp16.onnx")
        self.sessions, bindings = load_sessions(paths, checkpoint.dims, threads)
        super().__init__(checkpoint.dims, bindings)
        if self.fp16:
            self.name = "onnxruntime-fp16"

    def _native(self, x: np.ndarray) -> np.ndarray:
        return x

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def _take(self, x: np.ndarray, rows: list[int]) -> np.ndarray:
        return np.take(x, rows, axis=0)

    def _stack(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs, axis=0)

    def _run(self, part: str, feeds: dict[str, Any], outputs: list[str]) -> list[np.ndarray]:
        inputs = self.bindings[part].inputs
        # Files whose float inputs are float16 get float16 (Optimum's own fp16 exports keep float32 I/O).
        feeds = {k: (v.astype(np.float16) if inputs[k].dtype == "float16" and v.dtype != np.float16 else v)
                 for k, v in feeds.items()}
        out = self.sessions[part].run(outputs, feeds)
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in out]
