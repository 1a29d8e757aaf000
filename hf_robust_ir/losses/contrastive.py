"""Contrastive losses: multi-positive InfoNCE."""

from __future__ import annotations

import torch

from .base import RetrievalLoss, check_batch, masked_log_softmax, mean_over_queries, positive_target, register_loss


@register_loss("infonce")
class InfoNCELoss(RetrievalLoss):
    """Multi-positive InfoNCE (van den Oord et al. 2018; Karpukhin et al. 2020, DPR).

    ``p = softmax(s)`` over the masked-in candidates of a query, ``q_k = y_k / Σ_j y_j`` over its positives (one
    positive: the one-hot target of standard InfoNCE; several: the target mass spread over them by grade), and

        L = mean_i  − Σ_k q_ik · log p_ik

    Rows without any positive are left out of the mean (a batch without positives gives 0).
    """

    citation = (
        "@article{oord2018cpc, title={Representation Learning with Contrastive Predictive Coding}, "
        "author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol}, journal={arXiv:1807.03748}, year={2018}}"
    )

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        check_batch(scores, labels, mask)
        log_probs = masked_log_softmax(scores, mask)
        target, has_positive = positive_target(labels, mask)
        per_query = -torch.where(target > 0, target * log_probs, torch.zeros_like(log_probs)).sum(-1)
        return mean_over_queries(per_query, has_positive)
