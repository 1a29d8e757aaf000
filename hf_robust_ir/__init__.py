"""hf_robust_ir: dense retrievers and rerankers robust to wrong training labels."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["from_pretrained", "push_to_hub", "download"]


def __getattr__(name: str) -> Any:
    """Lazy top-level access to :mod:`hf_robust_ir.hub` (``import hf_robust_ir`` stays light)."""
    if name in __all__:
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'hf_robust_ir' has no attribute {name!r}")
