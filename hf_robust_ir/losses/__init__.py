"""Losses under one contract: ``forward(scores[B, C], labels[B, C], mask[B, C], teacher=None) -> scalar``."""

from .base import LOSS_REGISTRY, RetrievalLoss, get_loss, masked_log_softmax, positive_target, register_loss
from .combined import WeightedSumLoss
from .contrastive import InfoNCELoss
from .distillation import GuideDistillationLoss, KLDistillationLoss, ListNetLoss, MarginMSELoss, WassersteinListwiseLoss
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
    "GuideDistillationLoss",
    "GuideMaskedLoss",
    "HardBootstrappingLoss",
    "InfoNCELoss",
    "KLDistillationLoss",
    "LabelRelaxationLoss",
    "LabelSmoothingLoss",
    "LabelWeakeningLoss",
    "ListNetLoss",
    "MAELoss",
    "MarginMSELoss",
    "NCERCELoss",
    "PolyLoss",
    "RINCELoss",
    "RetrievalLoss",
    "SCELoss",
    "SoftBootstrappingLoss",
    "TaylorCELoss",
    "WassersteinListwiseLoss",
    "WeightedSumLoss",
    "get_loss",
    "masked_log_softmax",
    "positive_target",
    "register_loss",
]
