"""Append-only JSON-lines progress files that survive an interruption mid-write."""

from __future__ import annotations

from pathlib import Path
from typing import IO


def open_for_append(path: str | Path) -> IO[str]:
    """Open a JSON-lines progress file for appending, first cutting a last line that an interruption left without its
    newline: the readers skip that line (its rows are done again), and a record appended to it would be lost too."""
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
    return path.open("a", encoding="utf-8")
