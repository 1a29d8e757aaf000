"""Write a model card (``README.md``) into every checkpoint and the output folder while a model trains.

The card (:mod:`hf_robust_ir.hub`) records the base model, the training data, the loss and its config, the relabeling
summary and noise-benchmark results when the run has them, the non-default training arguments, the evaluation metrics
of the saved weights (as ``model-index``: in a checkpoint the latest evaluation; at the end of training with
``load_best_model_at_end`` the evaluation of the best checkpoint), a table of the training logs, library versions,
usage snippets and citations.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from transformers import TrainerCallback

from ..hub import ModelCardInfo, model_card_info_from_model, non_default_hyperparameters, write_model_card

logger = logging.getLogger(__name__)


class ModelCardCallback(TrainerCallback):
    """Collect the run's logs and evaluation metrics and write ``README.md`` on each save and at the end of training.

    Args:
        loss: the loss the trainer calls (``trainer.loss``); its ``config()`` (as built: a scheduled value at the
            schedule's start, the confidence rule as set) and ``citation`` go into the card.
        base_model: the model training started from (a Hub id goes into the metadata; a local path only into text).
        train_dataset_info: one dict (or a list) per training set: ``id`` (Hub dataset id) or ``path``, ``split``,
            ``rows``, ``corpus_size``, ...; default: the number of rows of the trainer's training set.
        relabel_summary: the relabeling run's summary (judge, strategy counts), optionally with ``strategy``.
        noise_results: label-noise benchmark results (rows of dicts, or a dict of dicts).
        eval_dataset_info: ``{"dataset": name, "dataset_type": Hub id or name, "split": ...}`` for the eval metrics.
        loss_schedule: the :class:`~hf_robust_ir.callbacks.LossScheduleCallback`, whose ``config()`` is recorded.
        model_name: the card's title and ``model-index`` name (default: the output folder's name).
        repo_id: the Hub repository the model will be published as (used in the usage snippets).
        **card_fields: other :class:`~hf_robust_ir.hub.ModelCardInfo` fields (``license``, ``language``, ``tags``,
            ``citations``).

    Cards are written by the main process only (``args.should_save``).
    """

    def __init__(
        self,
        loss: Any = None,
        base_model: str | None = None,
        train_dataset_info: dict[str, Any] | list[dict[str, Any]] | None = None,
        relabel_summary: dict[str, Any] | None = None,
        noise_results: list[dict[str, Any]] | dict[str, Any] | None = None,
        eval_dataset_info: dict[str, Any] | None = None,
        loss_schedule: Any = None,
        model_name: str | None = None,
        repo_id: str | None = None,
        **card_fields: Any,
    ):
        unknown = set(card_fields) - set(ModelCardInfo.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown model card field(s): {sorted(unknown)}")
        self.loss = loss
        self.base_model = base_model
        if isinstance(train_dataset_info, dict):
            train_dataset_info = [train_dataset_info]
        self.train_dataset_info = list(train_dataset_info or [])
        self.relabel_summary = relabel_summary
        self.noise_results = noise_results
        self.eval_dataset_info = dict(eval_dataset_info or {})
        self.loss_schedule = loss_schedule
        self.model_name = model_name
        self.repo_id = repo_id
        self.card_fields = card_fields
        self.log_history: list[dict[str, Any]] = []
        self.eval_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ what the card says
    def card_info(
        self,
        args: Any,
        state: Any,
        model: Any = None,
        train_rows: int | None = None,
        eval_metrics: dict[str, float] | None = None,
    ) -> ModelCardInfo:
        """The :class:`~hf_robust_ir.hub.ModelCardInfo` of the run so far; ``eval_metrics`` default to the latest."""
        fields: dict[str, Any] = dict(self.card_fields)
        fields["model_name"] = self.model_name or (self.repo_id or "").split("/")[-1] or _folder_name(args.output_dir)
        fields["repo_id"] = self.repo_id
        if self.base_model:
            fields["base_model"] = self.base_model
        datasets = [dict(d) for d in self.train_dataset_info] or ([{"path": "training set"}] if train_rows else [])
        if train_rows is not None and datasets and len(datasets) == 1:
            datasets[0].setdefault("rows", train_rows)
        fields["datasets"] = datasets
        citations = list(fields.pop("citations", []) or [])
        if self.loss is not None:
            fields["loss"] = (
                _configured_loss_config(self.loss, self.loss_schedule)
                if hasattr(self.loss, "config")
                else {"name": type(self.loss).__name__}
            )
            citations.insert(0, getattr(self.loss, "citation", ""))
        if self.loss_schedule is not None and hasattr(self.loss_schedule, "config"):
            fields["loss_schedule"] = self.loss_schedule.config()
        fields["citations"] = citations
        fields["relabel_summary"] = self.relabel_summary
        fields["noise_results"] = self.noise_results
        fields["hyperparameters"] = non_default_hyperparameters(args)
        fields["training_log"] = list(getattr(state, "log_history", None) or self.log_history)
        eval_metrics = self.eval_metrics if eval_metrics is None else eval_metrics
        if eval_metrics:
            prefix_free = {k.removeprefix("eval_"): v for k, v in eval_metrics.items() if _is_metric(k)}
            entry = {"dataset": "evaluation set", **self.eval_dataset_info, "metrics": prefix_free}
            fields["eval_results"] = [entry] if prefix_free else []
        if model is not None:
            return model_card_info_from_model(model, **fields)
        info = ModelCardInfo()
        for name, value in fields.items():
            setattr(info, name, value)
        return info

    def saved_model_metrics(self, args: Any, state: Any) -> dict[str, float]:
        """The metrics of the weights in the output folder after training: with ``load_best_model_at_end``,
        transformers loads the best checkpoint back before ``on_train_end``, so those of the evaluation at its step
        (from ``state.log_history``); else the latest evaluation's."""
        best = getattr(state, "best_model_checkpoint", None)
        if not (best and getattr(args, "load_best_model_at_end", False)):
            return self.eval_metrics
        match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(os.path.normpath(best)))
        step = int(match.group(1)) if match else getattr(state, "best_global_step", None)
        at_best = {
            key: value
            for entry in getattr(state, "log_history", None) or []
            if entry.get("step") == step
            for key, value in entry.items()
            if _is_metric(key)
        }
        return at_best or self.eval_metrics

    def write(
        self, folder: str, args: Any, state: Any, eval_metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        """Write the card into ``folder``; ``eval_metrics`` default to :meth:`saved_model_metrics`."""
        if not getattr(args, "should_save", True):
            return
        dataloader = kwargs.get("train_dataloader")
        dataset = getattr(dataloader, "dataset", None)
        try:
            rows = len(dataset) if dataset is not None else None
        except TypeError:  # a stream (accelerate's shard of one defines __len__ but cannot answer)
            rows = None
        if eval_metrics is None:
            eval_metrics = self.saved_model_metrics(args, state)
        info = self.card_info(args, state, kwargs.get("model"), rows, eval_metrics)
        write_model_card(folder, info)
        logger.info("Wrote the model card to %s", os.path.join(folder, "README.md"))

    # ------------------------------------------------------------------ TrainerCallback hooks
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.log_history.append({**logs, "step": state.global_step, "epoch": state.epoch})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics:
            self.eval_metrics = dict(metrics)

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):  # a checkpoint: the latest evaluation, not the best so far
            self.write(folder, args, state, eval_metrics=self.eval_metrics, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        self.write(args.output_dir, args, state, **kwargs)


def _configured_loss_config(loss: Any, schedule: Any) -> dict[str, Any]:
    """``loss.config()`` as the loss was built: the schedule moves its parameter (recorded at the schedule's start,
    with the schedule's own table beside it) and turns the confidence rule off during the warm-up (recorded as the
    user set it). The loss is left as the schedule set it."""
    configured: dict[str, Any] = {}
    if getattr(schedule, "scheduled", False) and schedule.alpha_start is not None:
        configured[schedule.parameter] = schedule.alpha_start
    if getattr(schedule, "manages_confidence", False):
        configured["confidence_enabled"] = schedule.confidence_after_warmup
    in_use = {name: getattr(loss, name) for name in configured}
    try:
        for name, value in configured.items():
            setattr(loss, name, value)
        return loss.config()
    finally:
        for name, value in in_use.items():
            setattr(loss, name, value)


def _is_metric(key: str) -> bool:
    return key.startswith("eval_") and not key.endswith(("_runtime", "_per_second", "_loss")) and key != "eval_epoch"


def _folder_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or "hf_robust_ir-retriever"
