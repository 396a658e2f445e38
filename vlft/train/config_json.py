"""A JSON object given to a flag (`--deepspeed`, `--fsdp`, `--fsdp_config`), with errors that name the flag and source."""

from __future__ import annotations

import json

from vlft.errors import VlftError


def json_object(text: str, where: str) -> dict:
    """`text` parsed as a JSON object; `where` (the flag and the file or `(inline JSON)`) begins each error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise VlftError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise VlftError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value
