"""RetrievalTrainer: ``transformers.Trainer`` for bi-encoders and rerankers with any loss under the loss contract.

It overrides only what it must: ``compute_loss`` (embeddings -> cross-device candidates -> target matrix -> loss),
``evaluate`` (retrieval metrics from a :class:`~hf_robust_ir.evaluation.RetrievalEvaluator`), and saving / loading
(the model folder is a BiEncoder folder that also loads in transformers and sentence-transformers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback, TrainingArguments

from .callbacks.loss_schedule import LossScheduleCallback
from .data.collator import PAD_KEY, RetrievalCollator, build_targets
from .data.reranker_collator import RerankerCollator
from .losses import RetrievalLoss, get_loss


@dataclass
class RetrievalTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus what retrieval training needs. Defaults differ from transformers' in three places:
    ``remove_unused_columns=False`` (rows are id lists, not model inputs), ``average_tokens_across_devices=False``
    (it would rescale a custom loss by the number of processes under DDP) and ``ddp_find_unused_parameters=False``."""

    loss: str = field(default="infonce", metadata={"help": "registered loss name (hf_robust_ir.losses)"})
    loss_kwargs: dict | str | None = field(default=None, metadata={"help": "keyword arguments of the loss"})
    group_size: int = field(default=8, metadata={"help": "documents sampled per query (positives + negatives)"})
    positives_per_query: int = field(default=1, metadata={"help": "positives sampled per query"})
    query_max_length: int | None = field(default=None, metadata={"help": "query truncation (default: model's)"})
    document_max_length: int | None = field(default=None, metadata={"help": "document truncation (default: model's)"})
    in_batch_negatives: bool = field(default=True, metadata={"help": "other queries' documents are negatives"})
    cross_device_negatives: bool = field(
        default=True, metadata={"help": "gather documents from all processes (with gradient) as negatives"}
    )
    loss_schedule: str = field(
        default="constant", metadata={"help": "schedule of the loss's alpha: constant, linear or cosine"}
    )
    loss_schedule_start: float | None = field(default=None, metadata={"help": "alpha at step 0 (default: loss's)"})
    loss_schedule_end: float | None = field(default=None, metadata={"help": "alpha at the last step"})
    confidence_warmup_steps: int | None = field(
        default=None, metadata={"help": "steps before label weakening's confidence rule turns on (default: loss's)"}
    )
    forward_chunk_size: int | None = field(
        default=None,
        metadata={"help": "encoder forward over at most this many texts at a time, grouped by length (CPU: 16)"},
    )
    remove_unused_columns: bool = False
    average_tokens_across_devices: bool = False
    ddp_find_unused_parameters: bool | None = False

    def __post_init__(self):
        if isinstance(self.loss_kwargs, str):
            import json

            self.loss_kwargs = json.loads(self.loss_kwargs) if self.loss_kwargs.strip() else None
        super().__post_init__()


class _AllGatherWithGradient(torch.autograd.Function):
    """All-gather equal-sized tensors; the backward sums every rank's gradient and returns this rank's slice.

    Written here instead of ``torch.distributed.nn.functional.all_gather`` (deprecated) because its backward needs
    reduce-scatter or all-to-all, which not every backend has; an all-reduce works on gloo, NCCL and the rest.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_documents(embeddings: torch.Tensor, doc_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather document embeddings (with gradient) and their keys from every process, padded to equal size.

    Each embedding's gradient flows back to the process that computed it, summed over the losses of all processes.
    """
    world = dist.get_world_size()
    local = torch.tensor([embeddings.shape[0]], device=embeddings.device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    pad = int(max(s.item() for s in sizes)) - embeddings.shape[0]
    if pad:
        embeddings = torch.cat([embeddings, embeddings.new_zeros(pad, embeddings.shape[1])])
        doc_keys = torch.cat([doc_keys, doc_keys.new_full((pad,), PAD_KEY)])
    keys = [torch.empty_like(doc_keys) for _ in range(world)]
    dist.all_gather(keys, doc_keys.contiguous())
    return _AllGatherWithGradient.apply(embeddings), torch.cat(keys)


def loss_from_embeddings(
    loss: RetrievalLoss,
    similarity: Any,
    query_embeddings: torch.Tensor,
    document_embeddings: torch.Tensor,
    inputs: dict[str, Any],
    cross_device_negatives: bool = True,
    in_batch_negatives: bool = True,
) -> torch.Tensor:
    """Scores of the local queries against the batch documents (of all processes when distributed), the target
    matrix over them, and the loss. With ``P`` processes each holding ``B/P`` queries this gives the same loss and,
    after DDP's gradient averaging, the same gradients as one process holding all ``B``."""
    labels, mask, teacher = inputs["labels"], inputs["mask"], inputs["teacher"]
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if cross_device_negatives and distributed:
        document_embeddings, doc_keys = gather_documents(document_embeddings, inputs["doc_keys"])
        labels, mask, teacher = build_targets(
            inputs["candidate_keys"],
            inputs["candidate_labels"],
            inputs["candidate_teacher"],
            doc_keys,
            in_batch_negatives,
        )
    return loss(similarity(query_embeddings, document_embeddings), labels, mask, teacher)


def group_pair_scores(
    pair_scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, shape: torch.Size
) -> torch.Tensor:
    """Place the scores of flattened (query, document) pairs into ``[B, G]``; empty slots are 0 (and masked)."""
    scores = pair_scores.new_zeros(shape, dtype=torch.float)
    return scores.index_put((rows, cols), pair_scores.float().view(-1))


class EpochSamplingCallback(TrainerCallback):
    """Give the collator the epoch number so it draws a new sample of each query's candidates every epoch."""

    def __init__(self, collator: RetrievalCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.set_epoch(int(state.epoch or 0))


def default_collator(model: torch.nn.Module, corpus: dict[str, str], args: RetrievalTrainingArguments):
    """The collator a model trains with: per-query pair groups for a reranker, the batch target matrix otherwise."""
    from .modeling import CrossEncoder

    seed = args.data_seed if args.data_seed is not None else args.seed
    common = {"group_size": args.group_size, "positives_per_query": args.positives_per_query, "seed": seed}
    if isinstance(model, CrossEncoder):
        return RerankerCollator.for_model(model, corpus, max_length=args.document_max_length, **common)
    return RetrievalCollator.for_model(
        model,
        corpus,
        query_max_length=args.query_max_length,
        document_max_length=args.document_max_length,
        in_batch_negatives=args.in_batch_negatives,
        **common,
    )


class RetrievalTrainer(Trainer):
    """Train a :class:`~hf_robust_ir.modeling.BiEncoder` (in-batch + hard negatives) or a
    :class:`~hf_robust_ir.modeling.CrossEncoder` (per-query candidate groups) on canonical rows.

    Args:
        model: the BiEncoder or CrossEncoder.
        args: :class:`RetrievalTrainingArguments`.
        train_dataset: canonical rows (``datasets.Dataset`` with ``query_id, query, doc_ids, labels, ...``).
        corpus: document id -> text, for the rows' ``doc_ids``.
        loss: a loss module under the loss contract; default: built from ``args.loss`` and ``args.loss_kwargs``.
        evaluator: a :class:`~hf_robust_ir.evaluation.RetrievalEvaluator`; ``evaluate()`` reports its metrics as
            ``eval_ndcg@10`` etc., so ``metric_for_best_model="ndcg@10"`` and ``load_best_model_at_end`` work.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        args: RetrievalTrainingArguments,
        train_dataset: Any = None,
        corpus: dict[str, str] | None = None,
        loss: RetrievalLoss | None = None,
        evaluator: Any = None,
        data_collator: Any = None,
        **kwargs: Any,
    ):
        if data_collator is None:
            if corpus is None:
                raise ValueError("RetrievalTrainer needs the corpus (doc id -> text) or a data_collator")
            data_collator = default_collator(model, corpus, args)
        if args.forward_chunk_size is not None and hasattr(model, "forward_chunk_size"):
            model.forward_chunk_size = args.forward_chunk_size
        self.loss = loss if loss is not None else get_loss(args.loss, **(args.loss_kwargs or {}))
        self.evaluator = evaluator
        kwargs.setdefault("processing_class", getattr(model, "tokenizer", None))
        # Trainer refuses an eval strategy without an eval_dataset; the evaluator stands in for one.
        evaluator_only = evaluator is not None and kwargs.get("eval_dataset") is None
        if evaluator_only:
            kwargs["eval_dataset"] = "evaluator"
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator, **kwargs)
        if evaluator_only:
            self.eval_dataset = None
        if hasattr(data_collator, "set_epoch"):
            self.add_callback(EpochSamplingCallback(data_collator))
        self.loss_schedule = LossScheduleCallback(
            self.loss,
            alpha_schedule=args.loss_schedule,
            alpha_start=args.loss_schedule_start,
            alpha_end=args.loss_schedule_end,
            warmup_steps=args.confidence_warmup_steps,
        )
        self.add_callback(self.loss_schedule)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also carry the loss's scheduled alpha and its statistics (plausible-set size, ...)."""
        if "loss" in logs:
            logs = {**logs, **self.loss_schedule.log_values()}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "pairs" in inputs:  # a reranker: scores of each query's candidate group
            pair_scores = model(**inputs["pairs"])
            scores = group_pair_scores(pair_scores, inputs["pair_rows"], inputs["pair_cols"], inputs["labels"].shape)
            scores = scores / self.accelerator.unwrap_model(self.model).temperature
            loss = self.loss(scores, inputs["labels"], inputs["mask"], inputs["teacher"])
            return (loss, {"scores": scores}) if return_outputs else loss
        outputs = model(query=inputs["query"], document=inputs["document"])
        loss = self.compute_loss_from_embeddings(outputs["query_embeddings"], outputs["document_embeddings"], inputs)
        return (loss, outputs) if return_outputs else loss

    def compute_loss_from_embeddings(
        self, query_embeddings: torch.Tensor, document_embeddings: torch.Tensor, inputs: dict[str, Any]
    ) -> torch.Tensor:
        """The loss from embeddings; split from ``compute_loss`` so wrappers (e.g. cached gradients) can reuse it."""
        return loss_from_embeddings(
            self.loss,
            self.accelerator.unwrap_model(self.model).similarity,
            query_embeddings,
            document_embeddings,
            inputs,
            cross_device_negatives=self.args.cross_device_negatives,
            in_batch_negatives=self.args.in_batch_negatives,
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Retrieval metrics of the current model, logged with ``metric_key_prefix`` (``eval_ndcg@10``, ...)."""
        if self.evaluator is None:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        model = self.accelerator.unwrap_model(self.model)
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in self.evaluator(model).items()}
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ------------------------------------------------------------------ saving and loading
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)

    def _load_weights_from(self, folder: str) -> None:
        model = self.accelerator.unwrap_model(self.model)
        saved = type(model).from_pretrained(folder)
        model.load_state_dict(saved.state_dict())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._load_weights_from(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_weights_from(self.state.best_model_checkpoint)
