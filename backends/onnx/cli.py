"""`whisperkv export-onnx OUT_DIR [--model DIR] [--fp16] [--merged]`: a checkpoint as Optimum's ONNX models.

Contributed to the `whisperkv` command through the `whisperkv.commands` entry point (pyproject.toml).
"""

from __future__ import annotations

import argparse


def _export(args: argparse.Namespace) -> int:
    from whisperkv.reference.weights import load_checkpoint

    from .export import export_onnx

    checkpoint = load_checkpoint(args.model)
    paths = export_onnx(checkpoint, args.out_dir, fp16=args.fp16, cache_position=args.cache_position,
                        past_encoder_hidden_states=args.past_encoder_hidden_states, merged=args.merged)
    for path in paths.values():
        print(path)
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
    return p
