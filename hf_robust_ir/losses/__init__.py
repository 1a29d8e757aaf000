"""Losses under one contract: ``forward(scores[B, C], labels[B, C], mask[B, C], teacher=None) -> scalar``."""

from .base import LOSS_REGISTRY, RetrievalLoss, get_loss, masked_log_softmax, positive_target, register_loss
from .contrastive import InfoNCELoss
from .guided import GuideMaskedLoss
from .robust import (
    FocalLoss,
    GCELoss,
    HardBootstrappingLoss,
    LabelSmoothingLoss,
    MAELoss,
    NCERCELoss,
    PolyLoss,
    RINCELoss,
    SCELoss,
    SoftBootstrappingLoss,
    TaylorCELoss,
)
from .weakening import LabelRelaxationLoss, LabelWeakeningLoss

__all__ = [
    "LOSS_REGISTRY",
    "FocalLoss",
    "GCELoss",
    "GuideMaskedLoss",
    "HardBootstrappingLoss",
    "InfoNCELoss",
    "LabelRelaxationLoss",
    "LabelSmoothingLoss",
    "LabelWeakeningLoss",
    "MAELoss",
    "NCERCELoss",
    "PolyLoss",
    "RINCELoss",
    "RetrievalLoss",
    "SCELoss",
    "SoftBootstrappingLoss",
    "TaylorCELoss",
    "get_loss",
    "masked_log_softmax",
    "positive_target",
    "register_loss",
]
