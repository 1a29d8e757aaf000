"""A weighted sum of losses under the loss contract, e.g. a hard-label loss plus a distillation term."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .base import RetrievalLoss, get_loss, loss_stat_totals, register_loss, stat_ratios

_FORWARDED = ("alpha", "confidence_enabled", "warmup_steps")  # scheduled attributes of an inner loss
_ENTRY_KEYS = ("name", "weight", "kwargs")


def _weight(value: Any, where: str) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: weight must be a number, got {value!r}") from None
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{where}: weight must be finite and >= 0, got {value!r}")
    return weight


def _term(entry: Any, index: int) -> tuple[RetrievalLoss, float]:
    """One ``(loss, weight)`` from a dict ``{name, weight, kwargs}``, a ``(loss, weight)`` pair or a loss."""
    where = f"losses[{index}]"
    if isinstance(entry, RetrievalLoss):
        return entry, 1.0
    if isinstance(entry, Mapping):
        if "name" not in entry:
            raise ValueError(f"{where}: a loss entry needs a 'name', got keys {sorted(entry)}")
        kwargs = dict(entry.get("kwargs") or {})
        extra = {key: value for key, value in entry.items() if key not in _ENTRY_KEYS}
        both = sorted(set(extra) & set(kwargs))
        if both:
            raise ValueError(f"{where}: {both} given both in 'kwargs' and at the top level")
        return get_loss(entry["name"], **kwargs, **extra), _weight(entry.get("weight", 1.0), where)
    if isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2:
        loss, weight = entry
        if isinstance(loss, str):
            loss = get_loss(loss)
        if not isinstance(loss, RetrievalLoss):
            raise TypeError(f"{where}: expected a RetrievalLoss or a registered name, got {type(loss).__name__}")
        return loss, _weight(weight, where)
    raise TypeError(f"{where}: expected a dict {{name, weight, kwargs}}, a (loss, weight) pair or a RetrievalLoss")


@register_loss("weighted_sum")
class WeightedSumLoss(RetrievalLoss):
    """A weighted sum of registered losses, all called on the same batch:

        L = Σ_k w_k · L_k(scores, labels, mask, teacher)

    Each entry of ``losses`` is a dict ``{"name": registered name, "weight": w (default 1.0), "kwargs": {...}}``
    (other keys of the dict are taken as keyword arguments too, so the entries of :meth:`config` build the same loss
    again), a ``(loss, weight)`` pair with a :class:`RetrievalLoss` or a registered name, or a :class:`RetrievalLoss`
    (weight 1.0). Weights must be finite and ``>= 0``; a term of weight 0 is still computed and stays in the config,
    but adds nothing to the value or the gradient, even when its value is infinite or NaN. The citation joins those of
    the inner losses. A recipe mixing InfoNCE with teacher distillation::

        loss: weighted_sum
        loss_kwargs:
          losses:
            - {name: infonce, weight: 1.0}
            - {name: kl_distillation, weight: 0.5, kwargs: {teacher_temperature: 1.0}}

    When an inner loss needs the guide model's scores (``needs_guide_scores``, e.g.
    :class:`~hf_robust_ir.losses.GuideMaskedLoss`), so does the sum: ``forward`` takes ``guide_scores`` and passes
    them only to the inner losses that need them. The scheduled attributes ``alpha``, ``confidence_enabled`` and
    ``warmup_steps`` are read and set through the sum when exactly one inner loss has them (so
    :class:`~hf_robust_ir.callbacks.LossScheduleCallback` schedules e.g. the ``alpha`` of a label-weakening term).
    ``needs_teacher`` is true when an inner loss needs teacher scores. :meth:`stats` merges the inner losses'
    statistics.
    """

    citation = ""

    def __init__(self, losses: Sequence[Mapping[str, Any] | tuple[RetrievalLoss | str, float] | RetrievalLoss]):
        super().__init__()
        if isinstance(losses, (Mapping, str, RetrievalLoss)) or not isinstance(losses, Sequence):
            raise TypeError("losses must be a list of loss entries")
        if not losses:
            raise ValueError("weighted_sum needs at least one loss")
        terms = [_term(entry, index) for index, entry in enumerate(losses)]
        self.losses = nn.ModuleList(loss for loss, _ in terms)
        self.weights = tuple(weight for _, weight in terms)
        self.needs_guide_scores = any(getattr(loss, "needs_guide_scores", False) for loss in self.losses)
        self.needs_teacher = any(getattr(loss, "needs_teacher", False) for loss in self.losses)
        self.citation = "\n".join(dict.fromkeys(loss.citation for loss in self.losses if loss.citation))

    def _owner(self, name: str) -> nn.Module | None:
        """The single inner loss with attribute ``name``; ``None`` when none or several have it."""
        losses = self.__dict__.get("_modules", {}).get("losses")
        if losses is None:
            return None
        owners = [loss for loss in losses if hasattr(loss, name)]
        return owners[0] if len(owners) == 1 else None

    def __getattr__(self, name: str) -> Any:
        if name in _FORWARDED:
            owner = self._owner(name)
            if owner is not None:
                return getattr(owner, name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        owner = self._owner(name) if name in _FORWARDED else None
        if owner is not None:
            setattr(owner, name, value)
        else:
            super().__setattr__(name, value)

    def config(self) -> dict[str, Any]:
        entries = []
        for loss, weight in zip(self.losses, self.weights):
            inner = loss.config()
            entries.append({"name": inner.pop("name"), "weight": weight, **inner})
        return {"name": self.registry_name, "losses": entries}

    def forward(self, scores, labels, mask, teacher=None, guide_scores=None) -> torch.Tensor:
        total = None
        for loss, weight in zip(self.losses, self.weights):
            if getattr(loss, "needs_guide_scores", False):
                value = loss(scores, labels, mask, teacher, guide_scores=guide_scores)
            else:
                value = loss(scores, labels, mask, teacher)
            if weight == 0.0:  # computed (its statistics, and the same collectives on every process), not added:
                continue  # 0 · inf would be NaN
            total = weight * value if total is None else total + weight * value
        return total if total is not None else scores.sum() * 0.0

    def reset_stats(self) -> None:
        for loss in self.losses:
            if hasattr(loss, "reset_stats"):
                loss.reset_stats()

    def stats(self) -> dict[str, float]:
        """The inner losses' statistics in one dict (empty when none keeps any). A key that several inner losses
        report is prefixed with the loss's registry name, ``"<name>/<key>"`` (``"<name><index>/<key>"`` when the same
        loss appears twice)."""
        return stat_ratios(self.stat_totals())

    def stat_totals(self) -> dict[str, tuple[Any, Any]]:
        """:meth:`stats` as ``(sum, count)`` pairs, under the same keys."""
        reports = [(index, loss, loss_stat_totals(loss)) for index, loss in enumerate(self.losses)]
        reports = [(index, loss, totals) for index, loss, totals in reports if totals]
        key_counts = Counter(key for _, _, totals in reports for key in totals)
        name_counts = Counter(loss.registry_name for _, loss, _ in reports)
        merged: dict[str, tuple[Any, Any]] = {}
        for index, loss, totals in reports:
            prefix = loss.registry_name if name_counts[loss.registry_name] == 1 else f"{loss.registry_name}{index}"
            for key, value in totals.items():
                merged[key if key_counts[key] == 1 else f"{prefix}/{key}"] = value
        return merged
