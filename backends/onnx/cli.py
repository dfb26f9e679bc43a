"""`whisperkv export-onnx OUT_DIR [--model DIR] [--fp16] [--merged]`: a checkpoint as Optimum's ONNX models.
`whisperkv compile-onnx ONNX_DIR OUT_DIR [--model DIR] [--fp16] [--any-batch]`: an Optimum folder compiled by
TVM into the seed's three libraries (encoder_model.so, decoder_model.so, decoder_with_past_model.so), weights
embedded, with the CPU schedules of backends/tvm/schedule_rules.py; `whisperkv verify AUDIO --candidate
OUT_DIR` runs them.

Both are contributed to the `whisperkv` command through the one `whisperkv.commands` entry point of this
module (pyproject.toml): `add_cli` registers both subcommands.
"""

from __future__ import annotations

import argparse
import sys


def _export(args: argparse.Namespace) -> int:
    from whisperkv.reference.weights import load_checkpoint

    from .export import export_onnx

    checkpoint = load_checkpoint(args.model)
    paths = export_onnx(checkpoint, args.out_dir, fp16=args.fp16, cache_position=args.cache_position,
                        past_encoder_hidden_states=args.past_encoder_hidden_states, merged=args.merged)
    for path in paths.values():
        print(path)
    return 0


def _compile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from whisperkv.reference.errors import InputError
    from whisperkv.reference.weights import load_checkpoint

    if Path(args.out_dir).resolve() == Path(args.onnx_dir).resolve():
        # a folder with *.onnx is opened as ONNX (backends.open_folder): the libraries need their own
        raise InputError(f"{args.out_dir}: write the libraries to another folder than the ONNX files")
    dims = load_checkpoint(args.model).dims
    try:
        from .tvm_libs import compile_onnx_folder, find_libraries
    except ImportError as e:  # tvm (or onnx) is optional
        raise InputError(f"compile-onnx needs TVM and onnx, which are not installed: {e}") from e
    seconds = compile_onnx_folder(args.onnx_dir, args.out_dir, dims, fp16=True if args.fp16 else None,
                                  batch=None if args.any_batch else 1)
    for part, path in find_libraries(args.out_dir, True if args.fp16 else None).items():
        print(path)
        print(f"whisperkv: {path.name}: compiled in {seconds[part]:.1f} s", file=sys.stderr)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export-onnx", help="write encoder_model.onnx, decoder_model.onnx and "
                              "decoder_with_past_model.onnx (Hugging Face Optimum's layout)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    p.add_argument("--fp16", action="store_true", help="float16 weights (layer norm and softmax stay float32; "
                   "files named *_fp16.onnx)")
    p.add_argument("--merged", action="store_true", help="also write decoder_model_merged.onnx (both decoders "
                   "in one If on use_cache_branch, as Optimum's default export)")
    p.add_argument("--cache-position", action="store_true", help=argparse.SUPPRESS)  # other Optimum versions'
    p.add_argument("--past-encoder-hidden-states", action="store_true", help=argparse.SUPPRESS)  # variants
    p.set_defaults(run=_export)

    c = subparsers.add_parser("compile-onnx", help="compile an Optimum folder's three ONNX models with TVM, "
                              "scheduled for this CPU, into encoder_model.so, decoder_model.so and "
                              "decoder_with_past_model.so (weights embedded: the seed's libraries)")
    c.add_argument("onnx_dir", metavar="ONNX_DIR", help="the Optimum export (e.g. from export-onnx)")
    c.add_argument("out_dir", metavar="OUT_DIR", help="where the libraries go (not ONNX_DIR)")
    c.add_argument("--model", default=None, help="the checkpoint whose dims the export has (default: the "
                   "bundled tiny.en)")
    c.add_argument("--fp16", action="store_true", help="compile the *_fp16.onnx files (default: the fp32 ones "
                   "when present)")
    c.add_argument("--any-batch", action="store_true", help="decoders that take any number of rows (default: "
                   "batch 1, as the seed compiled them)")
    c.set_defaults(run=_compile)
    return p
