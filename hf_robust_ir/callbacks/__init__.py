"""Trainer callbacks: loss schedules, logging of what the loss did, and the model card."""

from .loss_schedule import LossScheduleCallback, scheduled_value
from .model_card import ModelCardCallback

__all__ = ["LossScheduleCallback", "ModelCardCallback", "scheduled_value"]
