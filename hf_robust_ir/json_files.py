"""Read the JSON files of a model folder with errors that name the file and what is wrong in it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_KIND_NAMES = {dict: "a JSON object", list: "a JSON list"}


def read_json_file(path: str | os.PathLike, expected: type = dict) -> Any:
    """The content of ``path``, which must be ``expected`` (``dict``: an object, ``list``: a list of objects).

    A :class:`~hf_robust_ir.data.schema.DataFormatError` (a ``ValueError``; the command line prints it as one
    ``error:`` line) naming the file, with the line of a parse error, rather than a bare ``JSONDecodeError`` or an
    ``AttributeError`` later on."""
    from .data.schema import DataFormatError

    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(
            str(path), error.lineno, None, f"not valid JSON (column {error.colno}: {error.msg})"
        ) from None
    except UnicodeDecodeError as error:
        problem = f"not UTF-8 text (byte {error.start} is 0x{error.object[error.start]:02x})"
        raise DataFormatError(str(path), None, None, problem) from None
    except IsADirectoryError:
        raise DataFormatError(str(path), None, None, "is a folder, not a JSON file") from None
    if not isinstance(content, expected):
        raise DataFormatError(str(path), None, None, f"expected {_KIND_NAMES[expected]}, got {type(content).__name__}")
    if expected is list:
        for position, item in enumerate(content):
            if not isinstance(item, dict):
                raise DataFormatError(
                    str(path), None, None, f"entry {position} should be a JSON object, got {type(item).__name__}"
                )
    return content
