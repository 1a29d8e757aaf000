"""The loss contract and the registry of losses by name.

Every loss is an ``nn.Module`` with ``forward(scores[B, C], labels[B, C], mask[B, C], teacher=None) -> scalar``:

- ``scores``: similarity logits, already divided by the temperature;
- ``labels``: relevance per (query, candidate), 0 = negative, > 0 = relevant (graded allowed);
- ``mask``: ``True`` where the candidate takes part in the query's softmax (padding, duplicates and, optionally,
  other queries' documents are ``False``);
- ``teacher``: soft supervision scores, ``NaN`` where the teacher has no score.

Losses know nothing about models, tokenizers or devices. Each exposes ``config()`` (for the model card) and
``citation``. A loss that keeps statistics of what it did (label weakening's plausible sets, guide masking) exposes
``stat_totals()``: ``{name: (sum, count)}`` since the last ``reset_stats()``, with names that do not depend on the
data, so that processes can add them up before the ratios are logged (``stats()``, :func:`stat_ratios`).

A loss that averages over queries does so with :func:`mean_over_queries`; inside :func:`mean_across_processes` (the
trainer enters it around every loss call) that mean runs over the queries of all processes, so that a distributed
step trains as one process holding the whole batch would, however the queries that count are spread.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

LOSS_REGISTRY: dict[str, type[RetrievalLoss]] = {}
_MEAN_ACROSS_PROCESSES = contextvars.ContextVar("mean_across_processes", default=False)


def register_loss(name: str):
    """Class decorator: make a loss available by ``name`` in recipes (``loss: name``)."""

    def decorator(cls: type[RetrievalLoss]) -> type[RetrievalLoss]:
        if name in LOSS_REGISTRY:
            raise ValueError(f"a loss named {name!r} is already registered ({LOSS_REGISTRY[name].__name__})")
        cls.registry_name = name
        LOSS_REGISTRY[name] = cls
        return cls

    return decorator


def get_loss(name: str, **kwargs: Any) -> RetrievalLoss:
    """Build a registered loss by name, e.g. ``get_loss("infonce")``."""
    if name not in LOSS_REGISTRY:
        raise KeyError(f"unknown loss {name!r}; registered losses: {sorted(LOSS_REGISTRY)}")
    return LOSS_REGISTRY[name](**kwargs)


class RetrievalLoss(nn.Module):
    """Base class: stores constructor arguments so ``config()`` can report them."""

    registry_name: str = ""
    citation: str = ""

    def config(self) -> dict[str, Any]:
        """Name and hyperparameters, as they should appear in a model card."""
        params = inspect.signature(type(self).__init__).parameters
        values = {name: getattr(self, name) for name in params if name != "self" and hasattr(self, name)}
        return {"name": self.registry_name or type(self).__name__, **values}

    def forward(
        self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError


def check_batch(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
    """Refuse ``labels`` or ``mask`` of another shape than ``scores[B, C]``: they would broadcast silently, e.g. the
    index of each query's positive (``labels[B]``) over the ``[B, B]`` scores of an in-batch-only batch."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, C] (queries × candidates), got shape {tuple(scores.shape)}")
    for name, value in (("labels", labels), ("mask", mask)):
        if value.shape != scores.shape:
            raise ValueError(
                f"{name} {tuple(value.shape)} do not match scores {tuple(scores.shape)}: scores, labels and mask are "
                "[B, C], one value per (query, candidate) (labels: the relevance of each candidate, not an index)"
            )


def check_guide_scores(loss: RetrievalLoss, scores: torch.Tensor, guide_scores: torch.Tensor | None, why: str = ""):
    """Refuse a call of a loss that reads the guide model's scores (``needs_guide_scores``) without them, or with
    scores over other candidates than ``scores``; ``why`` names the option that makes the loss read them."""
    if guide_scores is None:
        raise ValueError(f"{type(loss).__name__}{why} needs guide_scores (set guide_model on the trainer)")
    if guide_scores.shape != scores.shape:
        raise ValueError(f"guide_scores {tuple(guide_scores.shape)} do not match scores {tuple(scores.shape)}")


def whole_number(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` when it is a whole number ``>= minimum`` (a recipe's YAML may give ``2.0``, a sweep a
    NumPy integer); else a ``ValueError`` naming the setting."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not float(value).is_integer()
        or value < minimum
    ):
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def true_or_false(value: Any, name: str) -> bool:
    """``value`` as a ``bool`` when it is one (NumPy's too); else a ``ValueError`` naming the setting. A string such
    as ``"false"`` from a quoted recipe value would otherwise read as true."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def stat_ratios(totals: Mapping[str, tuple[Any, Any]]) -> dict[str, float]:
    """``{name: sum / count}`` of a loss's ``stat_totals()``, leaving out the names with nothing counted."""
    return {name: float(total) / float(count) for name, (total, count) in totals.items() if float(count) > 0}


def loss_stat_totals(loss: Any) -> dict[str, tuple[Any, Any]]:
    """A loss's statistics as ``(sum, count)`` pairs: its ``stat_totals()``, or for a loss that keeps only ratios
    (``stats()``) each ratio with a count of 1; empty for a loss that keeps none."""
    if hasattr(loss, "stat_totals"):
        return dict(loss.stat_totals())
    if hasattr(loss, "stats"):
        return {name: (value, 1.0) for name, value in loss.stats().items()}
    return {}


def masked_log_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax over the masked-in candidates; ``-inf`` where ``mask`` is ``False``."""
    return torch.log_softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1)


def positive_target(labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target distribution over each row's positives, proportional to their grades, and which rows have one."""
    relevance = torch.where(mask, labels.float().clamp(min=0), torch.zeros_like(labels, dtype=torch.float))
    total = relevance.sum(-1, keepdim=True)
    has_positive = total.squeeze(-1) > 0
    return relevance / total.clamp(min=1e-12), has_positive


@contextlib.contextmanager
def mean_across_processes() -> Iterator[None]:
    """Within this block, under ``torch.distributed`` with ``P > 1`` processes, :func:`mean_over_queries` returns
    ``P · Σ_local / N_all`` (``N_all``: the counted queries of every process, all-reduced). DDP averages gradients over
    the ``P`` processes, so the step's gradient is that of the mean over all ``N_all`` queries — one process holding
    the whole batch — even when the queries that count (with a positive, with teacher scores) are spread unevenly,
    where a mean per process would weigh the processes' queries differently. Each process's loss value is then its
    share of the global mean; their average, which the trainer logs, is the global mean. Every process must make the
    same loss calls (the count is a collective operation). Outside a process group it changes nothing."""
    token = _MEAN_ACROSS_PROCESSES.set(True)
    try:
        yield
    finally:
        _MEAN_ACROSS_PROCESSES.reset(token)


def mean_over_queries(per_query: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_query`` over the ``counted`` rows (e.g. those with a positive); 0 (still part of the graph) when
    there are none. Over the rows of every process inside :func:`mean_across_processes`."""
    kept = torch.where(counted, per_query, torch.zeros_like(per_query))
    count = counted.sum()
    if _MEAN_ACROSS_PROCESSES.get() and dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world > 1:
            total = count.detach().to(torch.float32)
            dist.all_reduce(total)
            return kept.sum() * world / total.clamp(min=1)
    return kept.sum() / count.clamp(min=1)
