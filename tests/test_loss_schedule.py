"""LossScheduleCallback: α schedules, the confidence warm-up, and what it adds to the training logs."""

import math

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_robust_ir.callbacks import LossScheduleCallback, scheduled_value
from hf_robust_ir.losses import (
    GuideMaskedLoss,
    InfoNCELoss,
    LabelRelaxationLoss,
    LabelSmoothingLoss,
    LabelWeakeningLoss,
    WeightedSumLoss,
)


def _step(callback, step, max_steps=11):
    state = TrainerState(global_step=step, max_steps=max_steps)
    callback.on_step_begin(None, state, TrainerControl())
    return callback.loss


def test_linear_schedule():
    callback = LossScheduleCallback(LabelRelaxationLoss(), "linear", alpha_start=0.3, alpha_end=0.0)
    # 0.3 + (0 − 0.3)·t at t = step / 10: steps 0 … 10 of a run of 11, the last one at the end value
    assert _step(callback, 0).alpha == pytest.approx(0.3)
    assert _step(callback, 5).alpha == pytest.approx(0.15)
    assert _step(callback, 8).alpha == pytest.approx(0.06)
    assert _step(callback, 9).alpha == pytest.approx(0.03)
    assert _step(callback, 10).alpha == pytest.approx(0.0)
    assert _step(callback, 12).alpha == pytest.approx(0.0)  # held at the end value


def test_cosine_schedule():
    callback = LossScheduleCallback(LabelRelaxationLoss(), "cosine", alpha_start=0.3, alpha_end=0.0)
    # 0 + 0.3·(1 + cos(π t)) / 2
    assert _step(callback, 0).alpha == pytest.approx(0.3)
    assert _step(callback, 5).alpha == pytest.approx(0.15)  # the midpoint
    assert _step(callback, 2, max_steps=9).alpha == pytest.approx(0.3 * (1 + math.cos(math.pi / 4)) / 2)  # 0.25607
    assert _step(callback, 10).alpha == pytest.approx(0.0)
    # rising schedules work the same way: 0.0 -> 0.2, at t = 0.25: 0.2 + (0 − 0.2)(1 + cos(π/4))/2 = 0.02929
    rising = LossScheduleCallback(LabelRelaxationLoss(), "cosine", alpha_start=0.0, alpha_end=0.2)
    assert _step(rising, 25, max_steps=101).alpha == pytest.approx(0.2 * (1 - math.cos(math.pi / 4)) / 2)


def test_constant_schedule_and_defaults():
    loss = LabelRelaxationLoss(alpha=0.2)
    callback = LossScheduleCallback(loss)
    assert callback.alpha_start == callback.alpha_end == 0.2
    assert _step(callback, 7).alpha == 0.2
    # the start defaults to the loss's value, the end to the start
    linear = LossScheduleCallback(LabelRelaxationLoss(alpha=0.25), "linear", alpha_end=0.05)
    assert _step(linear, 5).alpha == pytest.approx(0.15)
    assert LossScheduleCallback(LabelRelaxationLoss(alpha=0.25), "linear").value_at(5, 10) == 0.25


def test_schedule_steps_overrides_max_steps():
    callback = LossScheduleCallback(LabelRelaxationLoss(), "linear", alpha_start=0.4, alpha_end=0.0, schedule_steps=5)
    assert _step(callback, 1, max_steps=100).alpha == pytest.approx(0.3)
    assert _step(callback, 4, max_steps=100).alpha == pytest.approx(0.0)  # the schedule's last step
    assert _step(callback, 50, max_steps=100).alpha == pytest.approx(0.0)


def test_scheduled_value():
    assert scheduled_value("linear", 1.0, 0.0, 3, 0) == 1.0  # unknown length: stays at the start
    # a one-step schedule: the start at step 0, the end after it
    assert [scheduled_value("linear", 1.0, 0.0, step, 1) for step in (0, 1)] == [1.0, 0.0]
    with pytest.raises(ValueError, match="schedule"):
        scheduled_value("step", 1.0, 0.0, 3, 10)
    with pytest.raises(ValueError, match="alpha_schedule"):
        LossScheduleCallback(LabelRelaxationLoss(), "exponential")


def test_other_parameter_and_losses_without_it():
    smoothing = LossScheduleCallback(LabelSmoothingLoss(), "linear", alpha_end=0.0, parameter="epsilon")
    assert _step(smoothing, 5).epsilon == pytest.approx(0.05)
    assert smoothing.log_values() == {"loss_epsilon": pytest.approx(0.05)}
    # InfoNCE has nothing to schedule or report
    plain = LossScheduleCallback(InfoNCELoss())
    _step(plain, 3)
    assert plain.log_values() == {}
    with pytest.raises(ValueError, match="no single attribute"):
        LossScheduleCallback(InfoNCELoss(), "linear", alpha_start=0.1, alpha_end=0.0)
    with pytest.raises(ValueError, match="it has none"):  # a schedule without end points is not ignored either
        LossScheduleCallback(InfoNCELoss(), "cosine")


def test_schedule_end_points_pass_the_losses_own_range_checks():
    """The schedule sets the attribute directly; its end points are checked by the loss's constructor first."""
    with pytest.raises(
        ValueError, match=r"end epsilon=1.5 is refused by LabelSmoothingLoss: epsilon must be in \[0, 1\]"
    ):
        LossScheduleCallback(LabelSmoothingLoss(), "linear", alpha_end=1.5, parameter="epsilon")
    with pytest.raises(
        ValueError, match=r"start alpha=1.0 is refused by LabelWeakeningLoss: alpha must be in \[0, 1\)"
    ):
        LossScheduleCallback(GuideMaskedLoss(inner="label_weakening"), "linear", alpha_start=1.0, alpha_end=0.0)
    with pytest.raises(ValueError, match="alpha must be 0"):  # Taylor-CE on the plausible set takes no relaxation
        LossScheduleCallback(LabelWeakeningLoss(alpha=0.0, taylor_order=2), "linear", alpha_start=0.1)
    inner = WeightedSumLoss([{"name": "label_relaxation"}, {"name": "infonce"}])
    assert LossScheduleCallback(inner, "linear", alpha_start=0.2, alpha_end=0.0).alpha_start == 0.2
    with pytest.raises(ValueError, match="refused by LabelRelaxationLoss"):
        LossScheduleCallback(inner, "linear", alpha_end=-0.1)


def test_a_sum_with_two_scheduled_terms_is_refused_not_ignored():
    both = WeightedSumLoss([{"name": "label_relaxation"}, {"name": "label_weakening"}])
    assert LossScheduleCallback(both).scheduled is False  # constant: nothing asked, nothing to refuse
    with pytest.raises(ValueError, match="2 of its inner losses have one"):
        LossScheduleCallback(both, "linear", alpha_end=0.0)


def test_confidence_warmup():
    loss = LabelWeakeningLoss(warmup_steps=3)
    callback = LossScheduleCallback(loss)  # warm-up taken from the loss
    callback.on_train_begin(None, TrainerState(global_step=0, max_steps=10), TrainerControl())
    assert loss.confidence_enabled is False
    assert [_step(callback, step).confidence_enabled for step in range(5)] == [False, False, False, True, True]
    assert callback.config() == {
        "parameter": "alpha",
        "schedule": "constant",
        "start": 0.1,
        "end": 0.1,
        "schedule_steps": None,
        "confidence_warmup_steps": 3,
    }
    # an explicit warm-up wins over the loss's
    explicit = LossScheduleCallback(LabelWeakeningLoss(warmup_steps=3), warmup_steps=1)
    assert [_step(explicit, step).confidence_enabled for step in range(3)] == [False, True, True]
    # without a warm-up the rule is left as the user set it
    off = LabelWeakeningLoss(confidence_enabled=False)
    assert _step(LossScheduleCallback(off), 5).confidence_enabled is False
    # a rule switched off by the user stays off after the warm-up
    off_after = LossScheduleCallback(LabelWeakeningLoss(warmup_steps=2, confidence_enabled=False))
    assert _step(off_after, 4).confidence_enabled is False


def test_a_confidence_warmup_for_a_loss_without_a_confidence_rule_is_refused():
    # InfoNCE has no confidence rule: a warm-up would be accepted and change nothing
    with pytest.raises(ValueError, match="InfoNCELoss has no confidence rule to warm up"):
        LossScheduleCallback(InfoNCELoss(), warmup_steps=5)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0, got -1"):
        LossScheduleCallback(LabelWeakeningLoss(), warmup_steps=-1)
    assert LossScheduleCallback(InfoNCELoss(), warmup_steps=0).config()["confidence_warmup_steps"] == 0
    inner = WeightedSumLoss([{"name": "label_weakening"}, {"name": "infonce"}])  # the sum forwards the rule
    assert LossScheduleCallback(inner, warmup_steps=2).config()["confidence_warmup_steps"] == 2


def test_warmup_changes_the_loss():
    # s = [1, 3, 0], α = 0: during the warm-up S = {0} (−log p0), after it S = {0, 1}
    loss = LabelWeakeningLoss(alpha=0.0, warmup_steps=2)
    callback = LossScheduleCallback(loss)
    scores, labels, mask = torch.tensor([[1.0, 3.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3).bool()
    z = math.e + math.e**3 + 1
    assert _step(callback, 1)(scores, labels, mask).item() == pytest.approx(-math.log(math.e / z), abs=1e-6)
    assert _step(callback, 2)(scores, labels, mask).item() == pytest.approx(
        -math.log((math.e + math.e**3) / z), abs=1e-6
    )


def test_on_log_adds_alpha_and_statistics():
    loss = LabelWeakeningLoss(alpha=0.1, margin=1.0)
    callback = LossScheduleCallback(loss, "linear", alpha_end=0.0)
    state = TrainerState(global_step=5, max_steps=11)  # α = 0.1 − 0.1·5/10
    callback.on_step_begin(None, state, TrainerControl())
    scores = torch.tensor([[1.0, 3.0, 0.0], [3.0, 1.0, 0.0]], requires_grad=True)
    loss(scores, torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), torch.ones(2, 3, dtype=torch.bool))
    state.log_history.append({"loss": 1.0, "step": 5})
    logs = {"loss": 1.0}
    callback.on_log(None, state, TrainerControl(), logs=logs)
    # row 0: S = {0, 1}, outranked, p_S = 0.958 >= 1 − 0.05 (inside); row 1: S = {0}, p0 = 0.844 (outside)
    expected = {
        "loss": 1.0,
        "loss_alpha": pytest.approx(0.05),
        "confidence_rule": 1.0,
        "plausible_set_size": 1.5,
        "added_per_query": 0.5,
        "outranked_fraction": 0.5,
        "credal_fraction": 0.5,
    }
    assert logs == expected
    assert state.log_history[-1] == {**expected, "step": 5}
    # the statistics restart at each log
    logs = {"loss": 0.5}
    callback.on_log(None, state, TrainerControl(), logs=logs)
    assert logs == {"loss": 0.5, "loss_alpha": pytest.approx(0.05), "confidence_rule": 1.0}
    # evaluation logs and logs the trainer already filled are left alone
    eval_logs = {"eval_ndcg@10": 0.3}
    callback.on_log(None, state, TrainerControl(), logs=eval_logs)
    assert eval_logs == {"eval_ndcg@10": 0.3}
    merged = {"loss": 0.5, "loss_alpha": 0.07}
    callback.on_log(None, state, TrainerControl(), logs=merged)
    assert merged == {"loss": 0.5, "loss_alpha": 0.07}


class _ScoreTable(torch.nn.Module):
    """A 'model' whose scores are parameters: enough for the Trainer to run real optimizer steps on a loss."""

    def __init__(self, loss):
        super().__init__()
        self.scores = torch.nn.Parameter(torch.tensor([[1.0, 3.0, 0.0], [3.0, 1.0, 0.0]]))
        self.loss = loss
        self.seen = []

    def forward(self, labels, **kwargs):
        self.seen.append((self.loss.alpha, self.loss.confidence_enabled))
        mask = torch.ones_like(labels, dtype=torch.bool)
        return {"loss": self.loss(self.scores, labels, mask)}


def test_inside_a_trainer(tmp_path):
    from transformers import Trainer

    loss = LabelWeakeningLoss(alpha=0.3, warmup_steps=2)
    model = _ScoreTable(loss)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=1,
        logging_steps=2,
        learning_rate=0.1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    rows = [{"labels": [1.0, 0.0, 0.0]}] * 4
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=lambda batch: {"labels": torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])},
        callbacks=[LossScheduleCallback(loss, "linear", alpha_end=0.1)],
    )
    trainer.train()
    # α = 0.3 − 0.2·step/3 at steps 0..3 (the last step runs at alpha_end); the rule is off for steps 0 and 1
    assert model.seen == [
        (pytest.approx(0.3), False),
        (pytest.approx(0.3 - 0.2 / 3), False),
        (pytest.approx(0.3 - 0.4 / 3), True),
        (pytest.approx(0.1), True),
    ]
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in train_logs] == [2, 4]
    # a log after step n reports what the last step ran with: after step 2, α and the rule of step index 1
    assert train_logs[0]["loss_alpha"] == pytest.approx(0.3 - 0.2 / 3) and train_logs[0]["confidence_rule"] == 0.0
    assert train_logs[1]["loss_alpha"] == pytest.approx(0.1) and train_logs[1]["confidence_rule"] == 1.0
    for entry in train_logs:
        assert {"plausible_set_size", "outranked_fraction", "added_per_query", "credal_fraction"} <= set(entry)
    assert train_logs[0]["plausible_set_size"] == pytest.approx(1.0)  # rule off in steps 0 and 1
    assert train_logs[1]["plausible_set_size"] == pytest.approx(1.5)  # query 0 gains candidate 1 (3 > 1 + 1)
