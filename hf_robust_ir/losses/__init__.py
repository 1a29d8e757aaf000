"""Losses under one contract: ``forward(scores[B, C], labels[B, C], mask[B, C], teacher=None) -> scalar``."""

from .base import LOSS_REGISTRY, RetrievalLoss, get_loss, masked_log_softmax, positive_target, register_loss
from .contrastive import InfoNCELoss

__all__ = [
    "LOSS_REGISTRY",
    "InfoNCELoss",
    "RetrievalLoss",
    "get_loss",
    "masked_log_softmax",
    "positive_target",
    "register_loss",
]
