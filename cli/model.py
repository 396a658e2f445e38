"""`vlft model tiny --family F --output DIR`: write a built-in tiny model dir."""

from __future__ import annotations

from pathlib import Path

from vlft.arguments import TinyModelArguments
from vlft.families import FAMILIES
from vlft.cli.parsing import build_parser, parse_args

SUBCOMMANDS = ("tiny",)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(f"usage: vlft model tiny --family {{{','.join(FAMILIES)}}} --output DIR")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if "-h" in argv or "--help" in argv:
        build_parser(TinyModelArguments, "vlft model tiny").print_help()
        return 0
    args = parse_args(TinyModelArguments, argv[1:], "vlft model tiny")
    from vlft.model.tiny import build_tiny_model

    path = build_tiny_model(args.family, Path(args.output), seed=args.seed)
    print(f"wrote a tiny {args.family} model to {path}")
    return 0
