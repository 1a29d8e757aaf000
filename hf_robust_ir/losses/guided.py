"""Guide-model masking of likely false negatives during training (GISTEmbed, Solatorio 2024, arXiv 2402.16829)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .base import RetrievalLoss, check_batch, check_guide_scores, get_loss, loss_stat_totals, register_loss, stat_ratios

_FORWARDED = ("alpha", "confidence_enabled", "warmup_steps")  # scheduled attributes of the inner loss


@register_loss("guide_masked")
class GuideMaskedLoss(RetrievalLoss):
    """Mask the candidates a guide model scores too close to the positive, then apply an inner loss.

    With ``g[i, c]`` the guide's score (``q·d`` of its embeddings, cosine when it normalizes) and
    ``p_i = max_{c: y_ic > 0} g[i, c]`` the best labeled positive of query ``i``, every non-positive candidate with

    - ``margin_strategy="absolute"``: ``g[i, c] > p_i - margin``, or
    - ``margin_strategy="relative"``: ``g[i, c] > p_i · (1 - margin)``

    is masked out (``mask = 0``) before ``inner(scores, labels, mask', teacher)``: in-batch and hard negatives the
    guide finds as relevant as the positive are likely false negatives and leave the softmax. ``margin=0`` is
    GISTEmbed's rule; the rules are those of sentence-transformers' ``GISTEmbedLoss`` and of
    :class:`~hf_robust_ir.relabel.judges.EmbeddingJudge`. Rows without a positive are left unchanged.

    A negative ``margin`` masks only candidates the guide ranks that far *above* the positive (``margin=-0.2``: more
    than 0.2 cosine above it), the in-batch form of removing flagged hard negatives before training (RLHN's
    ``hn_remove`` with an :class:`~hf_robust_ir.relabel.judges.EmbeddingJudge`; the guide is frozen, so a
    candidate is masked in every step it is sampled in).

    ``score_threshold=t`` replaces the rule relative to the positive by one on the candidate's own guide score
    (NV-Retriever's TopK-Abs, Moreira et al. 2024, arXiv 2407.15831): every non-positive candidate with
    ``g[i, c] > t`` is masked, in rows without a positive too. It suits data whose labeled positives score below the
    mined negatives, where any rule relative to the positive masks nearly everything.

    The trainer passes ``guide_scores[B, C]`` over the same candidates as ``scores`` (``needs_guide_scores``); an
    inner loss that reads them too (label weakening with ``guide_margin``) gets them, with the masked matrix.
    Scheduled attributes of the inner loss (``alpha``, ...) are read and set through this wrapper.
    """

    needs_guide_scores = True
    citation = (
        "@article{solatorio2024gistembed, title={GISTEmbed: Guided In-sample Selection of Training Negatives for Text "
        "Embedding Fine-tuning}, author={Solatorio, Aivin V.}, journal={arXiv:2402.16829}, year={2024}}"
    )

    def __init__(
        self,
        inner: str | Mapping[str, Any] | RetrievalLoss = "infonce",
        inner_kwargs: dict[str, Any] | None = None,
        margin: float = 0.0,
        margin_strategy: str = "absolute",
        score_threshold: float | None = None,
    ):
        super().__init__()
        if margin_strategy not in ("absolute", "relative"):
            raise ValueError(f"margin_strategy must be 'absolute' or 'relative', got {margin_strategy!r}")
        if score_threshold is not None and (margin, margin_strategy) != (0.0, "absolute"):
            raise ValueError(
                "score_threshold is a rule on the candidate's own score: give it without margin or margin_strategy"
            )
        self.inner = _inner_loss(inner, inner_kwargs)
        self.margin = float(margin)
        self.margin_strategy = margin_strategy
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self.reset_stats()

    def __getattr__(self, name: str) -> Any:
        if name in _FORWARDED:
            inner = self._modules.get("inner")
            if inner is not None and hasattr(inner, name):
                return getattr(inner, name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        inner = self.__dict__.get("_modules", {}).get("inner")
        if name in _FORWARDED and inner is not None and hasattr(inner, name):
            setattr(inner, name, value)
        else:
            super().__setattr__(name, value)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.registry_name,
            "inner": self.inner.config(),
            "margin": self.margin,
            "margin_strategy": self.margin_strategy,
            **({"score_threshold": self.score_threshold} if self.score_threshold is not None else {}),
        }

    @torch.no_grad()
    def guide_mask(
        self, guide_scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, record: bool = True
    ) -> torch.Tensor:
        """``mask`` with the candidates the guide ranks too close to the best positive (or, under
        ``score_threshold``, above the threshold) switched off; ``record`` counts them in :meth:`stats`."""
        guide = guide_scores.float()
        positives = (labels > 0) & mask
        if self.score_threshold is not None:
            too_close = (guide > self.score_threshold) & ~positives
            judged_rows = torch.ones_like(positives[:, 0])
        else:
            best = torch.where(positives, guide, torch.full_like(guide, float("-inf"))).amax(-1, keepdim=True)
            limit = best - self.margin if self.margin_strategy == "absolute" else best * (1 - self.margin)
            judged_rows = positives.any(-1)
            too_close = (guide > limit) & ~positives & judged_rows[:, None]
        if record:
            self._masked = self._masked + (too_close & mask).sum()  # tensors: no device sync per step
            self._rows = self._rows + judged_rows.sum()
        return mask & ~too_close

    def forward(self, scores, labels, mask, teacher=None, guide_scores=None) -> torch.Tensor:
        check_batch(scores, labels, mask)
        check_guide_scores(self, scores, guide_scores)
        # passes without gradient (evaluation) are not counted, as label weakening does not count them
        masked = self.guide_mask(guide_scores, labels, mask, record=torch.is_grad_enabled())
        if getattr(self.inner, "needs_guide_scores", False):  # e.g. label weakening with guide agreement
            return self.inner(scores, labels, masked, teacher, guide_scores=guide_scores)
        return self.inner(scores, labels, masked, teacher)

    def reset_stats(self) -> None:
        self._masked, self._rows = 0, 0
        if hasattr(self.inner, "reset_stats"):
            self.inner.reset_stats()

    def stats(self) -> dict[str, float]:
        """``guide_masked_per_query``: candidates masked per query the rule applies to (with a positive, or every
        query under ``score_threshold``) in training passes since the last reset (plus the inner loss's
        statistics)."""
        return stat_ratios(self.stat_totals())

    def stat_totals(self) -> dict[str, tuple[Any, Any]]:
        """:meth:`stats` as ``(sum, count)`` pairs."""
        return {**loss_stat_totals(self.inner), "guide_masked_per_query": (self._masked, self._rows)}


def _inner_loss(inner: str | Mapping[str, Any] | RetrievalLoss, inner_kwargs: dict[str, Any] | None) -> RetrievalLoss:
    """The inner loss from a registered name (+ ``inner_kwargs``), a config dict ``{"name": ..., **kwargs}`` (what
    :meth:`GuideMaskedLoss.config` writes) or a built loss."""
    if isinstance(inner, RetrievalLoss):
        if inner_kwargs:
            raise ValueError("inner_kwargs apply to an inner loss given by name or config, not to a built loss")
        return inner
    if isinstance(inner, str):
        return get_loss(inner, **(inner_kwargs or {}))
    if isinstance(inner, Mapping):
        if "name" not in inner:
            raise ValueError(f"inner: a loss config needs a 'name', got keys {sorted(inner)}")
        kwargs = {key: value for key, value in inner.items() if key != "name"}
        both = sorted(set(kwargs) & set(inner_kwargs or {}))
        if both:
            raise ValueError(f"inner: {both} given both in the inner config and in inner_kwargs")
        return get_loss(inner["name"], **kwargs, **(inner_kwargs or {}))
    raise TypeError(f"inner: expected a registered name, a config dict or a RetrievalLoss, got {type(inner).__name__}")
