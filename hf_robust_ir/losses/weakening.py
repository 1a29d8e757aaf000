"""Label relaxation and label weakening: train against a set of plausible targets instead of one hard label.

Both losses apply the label-relaxation loss of Lienen & Hüllermeier (2021) to the probability mass of a set ``S`` of a
query's candidates, ``p̂_S = Σ_{k∈S} p̂_k`` with ``p̂ = softmax(s)`` over the masked-in candidates. The credal set is
``{p : p_S >= 1 − α}``; the loss is 0 inside it and otherwise ``KL(p^r || p̂)``, with ``p^r`` the projection of ``p̂``
on it:

    L = 0                                                   if p̂_S >= 1 − α
    L = (1 − α) log((1 − α) / p̂_S) + α log(α / (1 − p̂_S))   otherwise

(the projection keeps the shape of ``p̂`` inside and outside ``S``: ``p^r_k = (1 − α) p̂_k / p̂_S`` for ``k ∈ S`` and
``α p̂_k / (1 − p̂_S)`` outside; with ``S = {y}`` this is the paper's closed form). ``α = 0`` gives ``−log p̂_S``.

- :class:`LabelRelaxationLoss`: ``S = P``, the labeled positives (grades are ignored: any positive counts).
- :class:`LabelWeakeningLoss`: ``S = P ∪ C``, where ``C`` adds the candidates the model itself is confident are
  relevant (Sharma 2025), chosen from detached scores and bounded in size.

Both keep statistics of the plausible sets they built (see :meth:`LabelRelaxationLoss.stats`), which
:class:`~hf_robust_ir.callbacks.LossScheduleCallback` logs.
"""

from __future__ import annotations

import math

import torch

from .base import (
    RetrievalLoss,
    check_batch,
    check_guide_scores,
    masked_log_softmax,
    mean_over_queries,
    register_loss,
    stat_ratios,
    true_or_false,
    whole_number,
)

RULES = ("margin", "topk_prob")


def _log_mass(log_probs: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """``log Σ_{k∈members} p_k`` per row; ``-inf`` for rows without members (with a gradient free of NaN)."""
    nonempty = members.any(-1, keepdim=True)
    selected = torch.where(members, log_probs, torch.full_like(log_probs, float("-inf")))
    selected = torch.where(nonempty, selected, torch.zeros_like(selected))
    return torch.where(nonempty.squeeze(-1), torch.logsumexp(selected, -1), float("-inf"))


def relaxation_loss(
    log_probs: torch.Tensor, plausible: torch.Tensor, mask: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row label-relaxation loss on the mass of the ``plausible`` set, and which rows are inside the credal set.

    ``log_probs`` is the masked log-softmax; rows with an empty set give 0. The gradient is exactly 0 inside the
    credal set.
    """
    log_in = _log_mass(log_probs, plausible)
    log_out = _log_mass(log_probs, mask & ~plausible)
    has_set = plausible.any(-1)
    if alpha >= 1.0:  # every distribution is in the credal set
        return torch.where(mask, log_probs, torch.zeros_like(log_probs)).sum(-1) * 0.0, has_set
    holds_all = has_set & ~(mask & ~plausible).any(-1)  # p̂_S = 1 exactly, whatever the rounding of log p̂_S
    if alpha <= 0.0:
        return torch.where(has_set, -log_in, torch.zeros_like(log_in)), holds_all
    inside = holds_all | (has_set & (log_in >= math.log1p(-alpha)))
    active = has_set & ~inside
    # outside the active rows the logs may be -inf: replace them so neither branch carries inf or NaN into backward
    log_in = torch.where(active, log_in, torch.zeros_like(log_in))
    log_out = torch.where(active, log_out, torch.zeros_like(log_out))
    value = (1.0 - alpha) * (math.log1p(-alpha) - log_in) + alpha * (math.log(alpha) - log_out)
    return torch.where(active, value, torch.zeros_like(value)), inside


def taylor_mass_loss(
    log_probs: torch.Tensor, plausible: torch.Tensor, mask: torch.Tensor, order: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row Taylor cross-entropy (Feng et al. 2020) of the mass of the ``plausible`` set,
    ``Σ_{j=1..order} (1 − p̂_S)^j / j`` (the series of ``−log p̂_S`` around ``p̂_S = 1``, bounded by ``Σ_j 1/j``), and
    which rows hold all the mass (loss 0). Rows with an empty set give 0."""
    has_set = plausible.any(-1)
    log_in = _log_mass(log_probs, plausible)
    rest = 1.0 - torch.where(has_set, log_in, torch.zeros_like(log_in)).exp()
    value = sum(rest**j / j for j in range(1, order + 1))
    inside = has_set & ~(mask & ~plausible).any(-1)
    return torch.where(has_set, value, torch.zeros_like(value)), inside


@register_loss("label_relaxation")
class LabelRelaxationLoss(RetrievalLoss):
    """Label relaxation (Lienen & Hüllermeier, AAAI 2021), generalized from one label ``y`` to the positive set ``P``:

        L = 0 if p̂_P >= 1 − α, else (1 − α) log((1 − α) / p̂_P) + α log(α / (1 − p̂_P)),   p̂_P = Σ_{k∈P} p̂_k

    A query whose positives already hold ``1 − α`` of the mass contributes neither loss nor gradient, so the model
    is not pushed to full confidence in a label that may be wrong. ``α → 0`` gives ``−log p̂_P`` (cross-entropy for
    one positive). Rows without a positive are left out of the mean.
    """

    citation = (
        "@inproceedings{lienen2021label, title={From Label Smoothing to Label Relaxation}, author={Lienen, Julian and "
        'H{\\"u}llermeier, Eyke}, booktitle={AAAI}, year={2021}}'
    )

    def __init__(self, alpha: float = 0.1):
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.reset_stats()

    def plausible_set(
        self,
        scores: torch.Tensor,
        positives: torch.Tensor,
        mask: torch.Tensor,
        guide_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The set ``S`` per row as a boolean matrix, from detached float ``scores``; here the labeled positives."""
        return positives

    def forward(self, scores, labels, mask, teacher=None, guide_scores=None) -> torch.Tensor:
        check_batch(scores, labels, mask)
        mask = mask.bool()
        positives = mask & (labels > 0)
        has_positive = positives.any(-1)
        if getattr(self, "needs_guide_scores", False):
            check_guide_scores(self, scores, guide_scores, " with guide_margin")
        detached = scores.detach().float()
        with torch.no_grad():
            plausible = self.plausible_set(detached, positives, mask, guide_scores) & mask
        per_query, inside = self.set_loss(masked_log_softmax(scores, mask), plausible, mask)
        if torch.is_grad_enabled():
            self._record(detached, positives, plausible, mask, inside, has_positive)
        return mean_over_queries(per_query, has_positive)

    def set_loss(
        self, log_probs: torch.Tensor, plausible: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row loss on the mass of the set ``S`` and which rows need no update: label relaxation."""
        return relaxation_loss(log_probs, plausible, mask, float(self.alpha))

    # ------------------------------------------------------------------ statistics
    def reset_stats(self) -> None:
        """Start a new window of statistics (the callback calls this at every logging step)."""
        self._stat_sums: dict[str, torch.Tensor] = {}
        self._stat_rows: torch.Tensor | None = None

    def stats(self) -> dict[str, float]:
        """Means over the queries with a positive seen in training forward passes since the last :meth:`reset_stats`:

        - ``plausible_set_size``: ``|S|``;
        - ``added_per_query``: ``|S \\ P|``, candidates added from the model's confidence;
        - ``outranked_fraction``: queries where some masked-in candidate that is not a labeled positive scores
          strictly above the best labeled positive;
        - ``credal_fraction``: queries already inside the credal set (loss and gradient 0);
        - ``replaced_fraction`` (label weakening with ``replace_margin`` only): queries whose labels left the set.

        Empty when nothing was seen. Forward passes without gradient (evaluation) are not counted.
        """
        return stat_ratios(self.stat_totals())

    def stat_totals(self) -> dict[str, tuple[torch.Tensor | float, torch.Tensor | float]]:
        """The statistics of :meth:`stats` as ``(sum over queries, queries counted)``, every name always present."""
        rows = 0.0 if self._stat_rows is None else self._stat_rows
        return {name: (self._stat_sums.get(name, 0.0), rows) for name in self._stat_names()}

    def _stat_names(self) -> list[str]:
        names = ["plausible_set_size", "added_per_query", "outranked_fraction", "credal_fraction"]
        return names + ["replaced_fraction"] if getattr(self, "replace_margin", None) is not None else names

    @torch.no_grad()
    def _record(self, scores, positives, plausible, mask, inside, has_positive) -> None:
        others = mask & ~positives
        best_positive = scores.masked_fill(~positives, float("-inf")).amax(-1)
        best_other = scores.masked_fill(~others, float("-inf")).amax(-1)
        rows = has_positive.float()
        batch = {
            "plausible_set_size": (plausible.sum(-1).float() * rows).sum(),
            "added_per_query": ((plausible & ~positives).sum(-1).float() * rows).sum(),
            "outranked_fraction": ((best_other > best_positive).float() * rows).sum(),
            "credal_fraction": ((inside & has_positive).float()).sum(),
        }
        if "replaced_fraction" in self._stat_names():
            batch["replaced_fraction"] = ((~(plausible & positives).any(-1)).float() * rows).sum()
        for name, value in batch.items():
            self._stat_sums[name] = self._stat_sums[name] + value if name in self._stat_sums else value
        self._stat_rows = rows.sum() if self._stat_rows is None else self._stat_rows + rows.sum()


@register_loss("label_weakening")
class LabelWeakeningLoss(LabelRelaxationLoss):
    """Label weakening (Sharma 2025): label relaxation on the plausible set ``S = P ∪ C``,

        L = 0 if p̂_S >= 1 − α, else (1 − α) log((1 − α) / p̂_S) + α log(α / (1 − p̂_S)),   p̂_S = Σ_{k∈S} p̂_k

    where ``P`` are the labeled positives and ``C`` the candidates the model is confident are relevant, chosen from
    the detached scores (no gradient flows through the choice) among the masked-in non-positives of queries that
    have a positive:

    - ``rule="margin"``: candidates scoring more than ``margin`` (logit units: scores are already divided by the
      temperature) above the *best* labeled positive, i.e. ones the model ranks above every label;
    - ``rule="topk_prob"``: candidates among the model's ``top_m`` with probability ``p̂_k >= min_prob``.

    With ``guide_margin`` set, a candidate must also pass the same test under a frozen guide model (agreement of two
    models): ``g[i, k] > max_{p∈P} g[i, p] + guide_margin`` with ``g`` the guide's ``q·d`` (cosine units, the trainer
    passes ``guide_scores``; ``needs_guide_scores`` is then true). The guide — typically the starting model — is
    not fooled by what the student learned from noisy labels, and the student keeps the guide from adding the hard
    negatives it already ranks correctly; the combination is this library's, not the paper's.

    With ``replace_margin`` set as well, a row whose added candidate the guide ranks more than ``replace_margin``
    above the best label drops its labels from the set: ``S = C`` (the label is *replaced*, not weakened), for
    disagreements too large to be a near tie between two relevant passages (a wrong positive swapped in for the
    true one). ``replace_margin`` should be larger than ``guide_margin``; rows below it keep ``S = P ∪ C``.

    With ``taylor_order = t`` the loss on the set's mass is Taylor cross-entropy instead of label relaxation,
    ``L = Σ_{j=1..t} (1 − p̂_S)^j / j`` (Feng et al. 2020; needs ``α = 0``): bounded, so a row whose set still misses
    the relevant passage pulls with at most ``Σ_j 1/j``, while ``−log p̂_S`` grows without bound.

    At most ``max_added`` candidates join (the highest-scoring ones; ``None`` for no bound), so the model cannot
    talk itself into many. With ``α = 0`` this is the marginal likelihood ``−log Σ_{k∈S} p̂_k``. With the rule off
    (``confidence_enabled=False``) it is :class:`LabelRelaxationLoss`. The model's own confidence is meaningless at
    the start of training: ``warmup_steps`` is the number of optimizer steps during which
    :class:`~hf_robust_ir.callbacks.LossScheduleCallback` keeps the rule off (without that callback the rule follows
    ``confidence_enabled`` alone). Teacher scores are not used.
    """

    citation = (
        "@article{sharma2025weakened, title={Learning to Retrieve with Weakened Labels: Robust Training under Label "
        "Noise}, author={Sharma, Arnab}, journal={arXiv:2512.13237}, year={2025}}"
    )

    def __init__(
        self,
        alpha: float = 0.1,
        rule: str = "margin",
        margin: float = 1.0,
        top_m: int = 1,
        min_prob: float = 0.5,
        max_added: int | None = 1,
        warmup_steps: int = 0,
        confidence_enabled: bool = True,
        guide_margin: float | None = None,
        replace_margin: float | None = None,
        taylor_order: int | None = None,
    ):
        super().__init__(alpha=alpha)
        taylor_order = None if taylor_order is None else whole_number(taylor_order, "taylor_order")
        if taylor_order is not None and alpha != 0.0:
            raise ValueError(f"taylor_order replaces label relaxation: alpha must be 0, got {alpha}")
        self.taylor_order = taylor_order
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        top_m = whole_number(top_m, "top_m")
        if not 0.0 <= min_prob <= 1.0:
            raise ValueError(f"min_prob must be in [0, 1], got {min_prob}")
        max_added = None if max_added is None else whole_number(max_added, "max_added", minimum=0)
        warmup_steps = whole_number(warmup_steps, "warmup_steps", minimum=0)
        self.rule, self.margin, self.top_m, self.min_prob = rule, margin, top_m, min_prob
        self.max_added, self.warmup_steps = max_added, warmup_steps
        self.confidence_enabled = true_or_false(confidence_enabled, "confidence_enabled")
        if replace_margin is not None and guide_margin is None:
            raise ValueError("replace_margin needs guide_margin (the replacement is judged by the guide)")
        if replace_margin is not None and replace_margin < guide_margin:
            raise ValueError(f"replace_margin ({replace_margin}) must be >= guide_margin ({guide_margin})")
        self.guide_margin = None if guide_margin is None else float(guide_margin)
        self.replace_margin = None if replace_margin is None else float(replace_margin)
        self.needs_guide_scores = self.guide_margin is not None

    def set_loss(
        self, log_probs: torch.Tensor, plausible: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Label relaxation on the mass of ``S``, or its Taylor cross-entropy with ``taylor_order`` set."""
        if self.taylor_order is None:
            return super().set_loss(log_probs, plausible, mask)
        if self.alpha != 0.0:  # a schedule moved it
            raise ValueError(f"taylor_order replaces label relaxation: alpha must stay 0, got {self.alpha}")
        return taylor_mass_loss(log_probs, plausible, mask, self.taylor_order)

    def plausible_set(
        self,
        scores: torch.Tensor,
        positives: torch.Tensor,
        mask: torch.Tensor,
        guide_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.confidence_enabled or self.max_added == 0:
            return positives
        eligible = mask & ~positives & positives.any(-1, keepdim=True)
        masked_scores = scores.masked_fill(~mask, float("-inf"))
        if self.rule == "margin":
            best_positive = scores.masked_fill(~positives, float("-inf")).amax(-1, keepdim=True)
            confident = eligible & (scores > best_positive + self.margin)
        else:
            top = masked_scores.topk(min(self.top_m, scores.shape[-1]), dim=-1).indices
            in_top = torch.zeros_like(mask).scatter(-1, top, True)
            probs = torch.softmax(masked_scores, -1)
            confident = eligible & in_top & (probs >= self.min_prob)
        if self.guide_margin is not None:
            guide = guide_scores.float()
            guide_best_positive = guide.masked_fill(~positives, float("-inf")).amax(-1, keepdim=True)
            confident = confident & (guide > guide_best_positive + self.guide_margin)
        if self.max_added is not None and self.max_added < scores.shape[-1]:
            best = scores.masked_fill(~confident, float("-inf")).topk(self.max_added, dim=-1).indices
            confident = confident & torch.zeros_like(mask).scatter(-1, best, True)
        if self.replace_margin is not None:
            replace = (confident & (guide > guide_best_positive + self.replace_margin)).any(-1, keepdim=True)
            return torch.where(replace, confident, positives | confident)
        return positives | confident
