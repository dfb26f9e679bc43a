"""`whisperkv compile [--model DIR] [--force] [--pack-weights]`: build the TVM library for a checkpoint into
the cache (and its packed weights).

Contributed to the `whisperkv` command through the `whisperkv.commands` entry point (pyproject.toml).
Importing this module does not import tvm: the command does, only when it has to compile.
"""

from __future__ import annotations

import argparse


def _compile(args: argparse.Namespace) -> int:
    from whisperkv.reference.weights import load_checkpoint

    from . import ensure_compiled

    print(ensure_compiled(load_checkpoint(args.model), force=args.force, quiet=args.quiet,
                          pack_weights=args.pack_weights))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    c = subparsers.add_parser("compile", help="compile the TVM library for a checkpoint's shape into the cache")
    c.add_argument("--model", default=None, help="checkpoint folder (default: the bundled tiny.en)")
    c.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    c.add_argument("--pack-weights", action="store_true",
                   help="also write the checkpoint's weights, packed for the kernels, into the cache (else the "
                        "first tvm run does)")
    c.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    c.set_defaults(run=_compile)
    return c
