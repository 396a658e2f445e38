"""Command-line arguments from the argument dataclasses, ms-swift style (`--flag value`, `--flag true`).

Precedence: command line > environment variable named in the field's metadata > default. This is
the one place environment variables become typed arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import typing
from typing import Any, Literal, Mapping

from vlft.errors import VlftError

TRUE = {"true", "1", "yes", "y", "on"}
FALSE = {"false", "0", "no", "n", "off"}


def parse_bool(text: str) -> bool:
    """swift-style booleans: true/false, 1/0, yes/no."""
    low = str(text).strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _converter(hint: Any):
    """(convert-one-string, nargs, choices) for a field's type hint."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _converter(args[0])
    if origin is Literal:
        return str, None, list(typing.get_args(hint))
    if origin is list:
        return _converter(args[0])[0], "+", None
    if origin is dict or hint is dict:
        return json.loads, None, None
    if hint is bool:
        return parse_bool, None, None
    if hint in (int, float, str):
        return hint, None, None
    raise TypeError(f"unsupported argument type {hint}")


def _convert(name: str, convert, text: str):
    try:
        return convert(text)
    except (ValueError, json.JSONDecodeError) as e:
        raise VlftError(f"--{name} {text!r}: {e}") from None


def build_parser(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one `--name` per dataclass field (all strings; converted in parse_args)."""
    parser = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        _, nargs, choices = _converter(hints[f.name])
        help_text = f.metadata.get("help", "")
        if "env" in f.metadata:
            help_text += f" [env: {f.metadata['env']}]"
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(f"--{f.name}", nargs=nargs, choices=choices, default=argparse.SUPPRESS,
                            help=f"{help_text} (default: {default})" if help_text else None, metavar=f.name.upper())
    return parser


def parse_args(cls: type, argv: list[str], prog: str, environ: Mapping[str, str] | None = None):
    """Parse argv into an instance of the dataclass `cls`; unknown flags suggest the nearest known one."""
    environ = os.environ if environ is None else environ
    parser = build_parser(cls, prog)
    known, unknown = parser.parse_known_args(argv)
    flags = [f"--{f.name}" for f in dataclasses.fields(cls)]
    for token in unknown:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            near = difflib.get_close_matches(flag, flags, n=1)
            raise VlftError(f"{prog}: unknown argument {flag}" + (f"; did you mean {near[0]}?" if near else ""))
    if unknown:
        raise VlftError(f"{prog}: unexpected value(s) {' '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        convert, nargs, _ = _converter(hints[f.name])
        if f.name in vars(known):
            raw = vars(known)[f.name]
            values[f.name] = [_convert(f.name, convert, r) for r in raw] if nargs else _convert(f.name, convert, raw)
        elif "env" in f.metadata and environ.get(f.metadata["env"]) not in (None, ""):
            values[f.name] = _convert(f.metadata["env"], convert, environ[f.metadata["env"]])
    return cls(**values)


def print_help_and_exit(parser: argparse.ArgumentParser) -> None:
    parser.print_help()
    sys.exit(0)
