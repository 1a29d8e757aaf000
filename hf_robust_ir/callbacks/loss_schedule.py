"""Schedule a loss hyperparameter over training, warm up the weakening rule, and log what the loss did.

Training-time changes to a loss go through its attributes: the callback holds the loss object and, at the start of
every optimizer step, sets ``loss.alpha`` (or another ``parameter``) from the schedule and turns the loss's confidence
rule (``loss.confidence_enabled``, :class:`~hf_robust_ir.losses.LabelWeakeningLoss`) off during the warm-up.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import TrainerCallback

from ..losses.base import stat_ratios

SCHEDULES = ("constant", "linear", "cosine")


def scheduled_value(schedule: str, start: float, end: float, step: int, total_steps: int) -> float:
    """The value at step index ``step`` of a schedule over steps ``0 … total_steps − 1``: ``start`` at the first,
    ``end`` at the last and after it; ``total_steps <= 0`` stays at ``start``.

    ``constant``: ``start``; ``linear``: ``start + (end − start)·t``; ``cosine``: ``end + (start − end)(1 + cos πt)/2``,
    with ``t = step / (total_steps − 1)`` clamped to [0, 1].
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return start
    progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0) if total_steps > 0 else 0.0
    if schedule == "linear":
        return start + (end - start) * progress
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0


def summed_over_processes(totals: dict[str, tuple[Any, Any]]) -> dict[str, tuple[float, float]]:
    """``(sum, count)`` pairs added up over the processes of an initialized ``torch.distributed`` group (one
    ``all_reduce``, a collective every process must call); as they are when there is one process."""
    import torch.distributed as dist

    if not totals or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return totals
    names = sorted(totals)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    packed = torch.tensor([[float(totals[name][0]), float(totals[name][1])] for name in names], dtype=torch.float64)
    packed = packed.to(device)
    dist.all_reduce(packed)
    return {name: (float(packed[i, 0]), float(packed[i, 1])) for i, name in enumerate(names)}


def _owners_of(loss: Any, parameter: str) -> list[Any]:
    """The modules inside ``loss`` (itself included) that hold ``parameter`` as their own attribute (wrappers such as
    ``guide_masked`` and ``weighted_sum`` only forward it)."""
    modules = loss.modules() if hasattr(loss, "modules") else [loss]
    return [module for module in modules if parameter in vars(module)]


def _check_scheduled_value(owner: Any, parameter: str, value: float, which: str) -> None:
    """Refuse a schedule end point the loss's constructor refuses (the schedule sets the attribute directly, past the
    constructor's range checks): the loss is built again from its ``config()`` with ``parameter=value``. Every value
    of the three schedules lies between the two end points, so checking both covers the run."""
    kwargs = {name: entry for name, entry in owner.config().items() if name != "name"}
    try:
        type(owner)(**{**kwargs, parameter: value})
    except ValueError as exc:
        raise ValueError(
            f"loss schedule: {which} {parameter}={value} is refused by {type(owner).__name__}: {exc}"
        ) from None


class LossScheduleCallback(TrainerCallback):
    """Anneal a loss hyperparameter, warm up label weakening's confidence rule, and log the loss's statistics.

    Args:
        loss: the loss object the trainer calls (e.g. ``trainer.loss``).
        alpha_schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` from ``alpha_start`` to ``alpha_end``.
        alpha_start: value at step 0; default: the loss's value when the callback is built.
        alpha_end: value at the schedule's last step (the run's last optimizer step by default); default:
            ``alpha_start``.
        schedule_steps: length of the schedule in optimizer steps (``alpha_end`` from its last step on); default:
            the run's ``max_steps``.
        warmup_steps: optimizer steps during which the loss's confidence rule is off; default: the loss's own
            ``warmup_steps`` (0 if it has none). After the warm-up the rule returns to the loss's setting at
            construction, so a rule switched off by the user stays off. A warm-up for a loss without a confidence
            rule (``confidence_enabled``) is refused.
        parameter: the loss attribute to schedule (``"alpha"``; e.g. ``"epsilon"`` for label smoothing). A loss
            without it is not scheduled, only logged; asking such a loss for a schedule (a schedule other than
            ``constant``, or an end point) is refused, as is a ``weighted_sum`` with several terms holding it.
            The end points must pass the loss's own range checks (``alpha`` in [0, 1), ``epsilon`` in [0, 1], …).

    At each training log (``logs`` holding ``"loss"``) it adds ``loss_<parameter>`` (the value in use),
    ``confidence_rule`` (1.0 when the rule is on) and the loss's statistics since the previous log
    (``plausible_set_size``, ``added_per_query``, ``outranked_fraction``, ``credal_fraction``), then resets them.
    Under several processes the statistics cover every process's queries (their ``stat_totals`` are summed with
    ``torch.distributed.all_reduce``, which every process reaches at the same log), as the logged loss does.
    It fills ``logs`` in place, which the callbacks after it see, and the matching ``state.log_history`` entry.
    Reporting integrations (TensorBoard, W&B) run before user callbacks; a trainer that wants them to see these
    values merges :meth:`log_values` into its logs in ``Trainer.log``, after which this callback leaves them as they
    are.
    """

    def __init__(
        self,
        loss: Any,
        alpha_schedule: str = "constant",
        alpha_start: float | None = None,
        alpha_end: float | None = None,
        schedule_steps: int | None = None,
        warmup_steps: int | None = None,
        parameter: str = "alpha",
    ):
        if alpha_schedule not in SCHEDULES:
            raise ValueError(f"alpha_schedule must be one of {SCHEDULES}, got {alpha_schedule!r}")
        self.loss = loss
        self.parameter = parameter
        self.alpha_schedule = alpha_schedule
        self.scheduled = hasattr(loss, parameter)
        asked = alpha_schedule != "constant" or alpha_start is not None or alpha_end is not None
        if not self.scheduled and asked:
            owners = _owners_of(loss, parameter)
            why = f"{len(owners)} of its inner losses have one" if len(owners) > 1 else "it has none"
            raise ValueError(f"{type(loss).__name__} has no single attribute {parameter!r} to schedule ({why})")
        self.alpha_start = float(getattr(loss, parameter)) if alpha_start is None and self.scheduled else alpha_start
        self.alpha_end = self.alpha_start if alpha_end is None else alpha_end
        if self.scheduled and asked:
            owner = next(iter(_owners_of(loss, parameter)), loss)  # a wrapper forwards to exactly one inner loss
            _check_scheduled_value(owner, parameter, self.alpha_start, "start")
            _check_scheduled_value(owner, parameter, self.alpha_end, "end")
        if warmup_steps is not None and warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if warmup_steps and not hasattr(loss, "confidence_enabled"):
            raise ValueError(f"{type(loss).__name__} has no confidence rule to warm up (warmup_steps={warmup_steps})")
        self.schedule_steps = schedule_steps
        self.warmup_steps = int(getattr(loss, "warmup_steps", 0) or 0) if warmup_steps is None else warmup_steps
        self.manages_confidence = hasattr(loss, "confidence_enabled") and self.warmup_steps > 0
        self.confidence_after_warmup = bool(getattr(loss, "confidence_enabled", True))

    def config(self) -> dict[str, Any]:
        """The schedule, for the model card next to the loss's ``config()``."""
        return {
            "parameter": self.parameter if self.scheduled else None,
            "schedule": self.alpha_schedule,
            "start": self.alpha_start,
            "end": self.alpha_end,
            "schedule_steps": self.schedule_steps,
            "confidence_warmup_steps": self.warmup_steps if self.manages_confidence else 0,
        }

    @property
    def log_key(self) -> str:
        return f"loss_{self.parameter}"

    def value_at(self, step: int, max_steps: int) -> float:
        """The scheduled value at optimizer step ``step`` of a run of ``max_steps``."""
        total = self.schedule_steps if self.schedule_steps is not None else max_steps
        return scheduled_value(self.alpha_schedule, self.alpha_start, self.alpha_end, step, total)

    def apply(self, step: int, max_steps: int) -> None:
        """Set the loss's scheduled parameter and confidence rule for optimizer step ``step``."""
        if self.scheduled:
            setattr(self.loss, self.parameter, self.value_at(step, max_steps))
        if self.manages_confidence:
            self.loss.confidence_enabled = self.confidence_after_warmup and step >= self.warmup_steps

    def log_values(self) -> dict[str, float]:
        """What a training log gets: the scheduled value, the rule's state and the loss's statistics (then reset)."""
        values: dict[str, float] = {}
        if self.scheduled:
            values[self.log_key] = float(getattr(self.loss, self.parameter))
        if hasattr(self.loss, "confidence_enabled"):
            values["confidence_rule"] = float(bool(self.loss.confidence_enabled))
        if hasattr(self.loss, "stat_totals"):  # sums and counts: added up over the processes before the ratios
            values.update(stat_ratios(summed_over_processes(self.loss.stat_totals())))
        elif hasattr(self.loss, "stats"):  # ratios only: this process's
            values.update(self.loss.stats())
        if hasattr(self.loss, "reset_stats"):
            self.loss.reset_stats()
        return values

    # ------------------------------------------------------------------ TrainerCallback hooks
    def on_train_begin(self, args, state, control, **kwargs):
        self.apply(state.global_step, state.max_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        self.apply(state.global_step, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        if self.log_key in logs or "confidence_rule" in logs or "plausible_set_size" in logs:
            return  # the trainer merged log_values() already
        values = self.log_values()
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            last = state.log_history[-1]
            if "loss" in last:
                for name, value in values.items():
                    last.setdefault(name, value)
