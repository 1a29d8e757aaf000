"""What the commands share: logging to stderr, checks of input paths, loading a BiEncoder with a max length."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging() -> None:
    """Library progress at INFO on stderr (stdout is kept for the command's JSON)."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hf_robust_ir").setLevel(logging.INFO)


def input_error(data_dir: Path, model: str | None = None) -> str | None:
    """A message for a missing BEIR folder or model folder, or None when both are there."""
    if not data_dir.is_dir():
        return f"error: --data {str(data_dir)!r} is not a folder (expected a BEIR folder)"
    if model is not None and not Path(model).exists():
        return f"error: --model {model!r} does not exist (pass a local model folder)"
    return None


def load_bi_encoder(model: str, max_length: int | None = None):
    """A BiEncoder, with both max lengths set to ``max_length`` when given."""
    from ..modeling import BiEncoder

    overrides = {} if max_length is None else {"query_max_length": max_length, "document_max_length": max_length}
    return BiEncoder.from_pretrained(model, **overrides)
