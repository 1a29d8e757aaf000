"""Trainer callbacks: loss schedules, logging of what the loss did, hard-negative refresh, and the model card."""

from .loss_schedule import LossScheduleCallback, scheduled_value
from .model_card import ModelCardCallback
from .refresh import HardNegativeRefreshCallback

__all__ = ["HardNegativeRefreshCallback", "LossScheduleCallback", "ModelCardCallback", "scheduled_value"]
