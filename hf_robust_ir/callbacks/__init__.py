"""Trainer callbacks: loss schedules and logging of what the loss did."""

from .loss_schedule import LossScheduleCallback, scheduled_value

__all__ = ["LossScheduleCallback", "scheduled_value"]
