"""Append-only JSON-lines progress files that survive an interruption mid-write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO


def open_for_append(path: str | Path) -> IO[str]:
    """Open a JSON-lines progress file for appending, first cutting a last line that an interruption left without its
    newline: the readers skip that line (its rows are done again), and a record appended to it would be lost too. A
    last line that is a whole JSON object (only its newline was lost) is ended instead: the readers count it as done."""
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            start = data.rfind(b"\n") + 1
            if _is_json_object(data[start:]):
                with path.open("ab") as handle:
                    handle.write(b"\n")
            else:
                with path.open("r+b") as handle:
                    handle.truncate(start)
    return path.open("a", encoding="utf-8")


def _is_json_object(line: bytes) -> bool:
    """Whether ``line`` parses as a JSON object; no proper prefix of a serialized object does."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
