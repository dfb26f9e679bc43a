"""An int8 candidate: an Optimum ONNX folder with its MatMul weights quantized (onnxruntime's dynamic
quantization), for `whisperkv verify FILES --candidate OUT_DIR --agreement` (docs/verify.md, section 8).

    whisperkv export-onnx whisper-onnx/                      # the fp32 export (or any Optimum folder)
    python tools/quantize_onnx.py whisper-onnx/ whisper-int8/
    whisperkv verify clips/ --candidate whisper-int8/ --agreement

Each .onnx file of the folder is written under the same name to OUT_DIR by
`onnxruntime.quantization.quantize_dynamic`: MatMul weights stored as int8 (per tensor, symmetric: QInt8),
activations quantized per call (DynamicQuantizeLinear + MatMulInteger). Only MatMul with a stored weight:
every attention projection and MLP layer (32 in tiny.en's decoder); the convolutions, layer norms, the
attention's own products (activations by activations) and the output projection (tied to the token
embedding through a Transpose, so not a stored weight) stay float32. The graphs' inputs and outputs do not
change, so the folder opens as any Optimum export does. Other files of the folder are not copied.

onnxruntime's quantization module ships with onnxruntime itself (whisperkv's `onnx` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def quantize_folder(src: str | Path, dst: str | Path) -> list[Path]:
    """Every *.onnx of `src` quantized to int8 (MatMul weights, QInt8) into `dst`, same names; -> the files."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    models = sorted(src.glob("*.onnx"))
    if not models:
        raise FileNotFoundError(f"{src}: no *.onnx files (an Optimum export: whisperkv export-onnx DIR)")
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for model in models:
        out = dst / model.name
        # MatMul only: the weights of every projection. QInt8 (signed) weights: the symmetric range that
        # onnxruntime's CPU MatMulInteger kernels take for weights; activations are quantized per call.
        quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="int8 (dynamic, MatMul weights) copies of an Optimum ONNX folder")
    p.add_argument("src", help="an Optimum ONNX folder (whisperkv export-onnx DIR)")
    p.add_argument("dst", help="where the quantized .onnx files are written (same names)")
    args = p.parse_args(argv)
    try:
        for path in quantize_folder(args.src, args.dst):
            print(path)
    except FileNotFoundError as e:
        print(f"quantize_onnx: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
