"""`vlft data check` (validate every line, print a report) and `vlft data encode` (one JSON per line)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from vlft.arguments import DataCheckArguments, DataEncodeArguments
from vlft.cli.parsing import build_parser, parse_args

SUBCOMMANDS = {"check": DataCheckArguments, "encode": DataEncodeArguments}
USAGE = "usage: vlft data {check,encode} --model M --dataset D [...]   (`vlft data check --help`)"


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"vlft data: unknown subcommand {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    name, cls = argv[0], SUBCOMMANDS[argv[0]]
    if "-h" in argv or "--help" in argv:
        build_parser(cls, f"vlft data {name}").print_help()
        return 0
    args = parse_args(cls, argv[1:], f"vlft data {name}")
    return check(args) if name == "check" else encode(args)


def _encode_all(args: DataCheckArguments, keep_pixels: bool):
    from vlft.data.pipeline import build_encoder, encode_dataset

    encoder, model_dir, family = build_encoder(args)
    return encoder, encode_dataset(args, encoder, model_dir, args.dataset, keep_pixels=keep_pixels)


def check(args: DataCheckArguments) -> int:
    from vlft.data.report import check_report

    _, results = _encode_all(args, keep_pixels=False)  # the encodings `vlft sft` reuses from the cache
    report, ok = check_report(results, args.max_length, args.max_errors, strict=args.strict)
    print(report)
    return 0 if ok else 1


def encode(args: DataEncodeArguments) -> int:
    """Every line's encoding or error (--strict true), or the encoded lines only and the others listed as
    skipped at the end (--strict false); exit 1 when a line is in error, or when nothing encoded."""
    from vlft.data.report import encoded_line, one_line

    encoder, results = _encode_all(args, keep_pixels=True)
    errors = [r for r in results if r.error is not None]
    written = results if args.strict else [r for r in results if r.error is None]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + f".{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for result in written:
            f.write(json.dumps(encoded_line(result, encoder.tokenizer), ensure_ascii=False) + "\n")
    os.replace(tmp, output)
    if args.strict:
        for r in errors:
            print(one_line(str(r.error)), file=sys.stderr)
        print(f"wrote {len(results)} lines ({len(results) - len(errors)} encoded, {len(errors)} with errors) "
              f"to {output}")
        return 1 if errors else 0
    if errors:
        print(f"skipped {len(errors)} line(s) (--strict false):", file=sys.stderr)
        for r in errors:
            print(f"  {one_line(str(r.error))}", file=sys.stderr)
    print(f"wrote {len(written)} encoded lines to {output}, skipped {len(errors)}")
    return 0 if written else 1
