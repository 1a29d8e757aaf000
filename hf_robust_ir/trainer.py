"""RetrievalTrainer: ``transformers.Trainer`` for bi-encoders and rerankers with any loss under the loss contract.

It overrides only what it must: ``compute_loss`` (embeddings -> cross-device candidates -> target matrix -> loss),
``evaluate`` (retrieval metrics from a :class:`~hf_robust_ir.evaluation.RetrievalEvaluator`), and saving / loading
(the model folder is a BiEncoder folder that also loads in transformers and sentence-transformers).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback, TrainingArguments

from .callbacks.loss_schedule import LossScheduleCallback
from .data.collator import PAD_KEY, RetrievalCollator, build_targets
from .data.reranker_collator import RerankerCollator
from .data.token_noise import TokenNoise
from .losses import RetrievalLoss, get_loss
from .losses.base import mean_across_processes

logger = logging.getLogger(__name__)


def _json_field(name: str, text: str) -> Any:
    """A training argument given as a JSON string (from the command line), or a ValueError naming the argument."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc}): {text!r}") from None


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
    loss_schedule_end: float | None = field(default=None, metadata={"help": "alpha at the last optimizer step"})
    confidence_warmup_steps: int | None = field(
        default=None, metadata={"help": "steps before label weakening's confidence rule turns on (default: loss's)"}
    )
    forward_chunk_size: int | None = field(
        default=None,
        metadata={"help": "encoder forward over at most this many texts at a time, grouped by length (CPU: 16)"},
    )
    guide_model: str | None = field(
        default=None,
        metadata={"help": "guide BiEncoder folder for losses that mask by guide scores (loss: guide_masked)"},
    )
    guide_lexical_weight: float | None = field(
        default=None,
        metadata={
            "help": "add BM25 over the training corpus to the guide's scores with this weight (HybridGuide: cosine + "
            "w x BM25 / the query's largest attainable BM25); needs bm25s"
        },
    )
    student_noise: dict | str | None = field(
        default=None,
        metadata={
            "help": "token noise on the student's inputs (noisy student): "
            "{kind: shuffle|delete|replace|mask|sequential, p: 0.1}"
        },
    )
    refresh_steps: int | None = field(
        default=None,
        metadata={"help": "every K steps, re-mine hard negatives and teacher scores with the current model (ANCE)"},
    )
    refresh_num_negatives: int = field(default=7, metadata={"help": "negatives per query kept by each refresh"})
    refresh_range_max: int = field(default=100, metadata={"help": "a refresh mines from the model's top-k"})
    refresh_teacher: str | None = field(
        default=None,
        metadata={
            "help": "folder of the BiEncoder / CrossEncoder that scores each refresh's candidates (default: the model "
            "being trained); a loss that learns from teacher scores needs it"
        },
    )
    model_card: bool = field(
        default=True, metadata={"help": "write README.md (the model card) into checkpoints and output_dir"}
    )
    remove_unused_columns: bool = False
    average_tokens_across_devices: bool = False
    ddp_find_unused_parameters: bool | None = False

    def __post_init__(self):
        if isinstance(self.loss_kwargs, str):
            text = self.loss_kwargs.strip()
            self.loss_kwargs = _json_field("loss_kwargs", self.loss_kwargs) if text else None
        if self.loss_kwargs is not None and not isinstance(self.loss_kwargs, dict):
            raise ValueError(f"loss_kwargs must be a JSON object of keyword arguments, got {self.loss_kwargs!r}")
        if isinstance(self.student_noise, str):
            text = self.student_noise.strip()
            self.student_noise = _json_field("student_noise", text) if text.startswith("{") else (text or None)
        TokenNoise.from_config(self.student_noise)  # invalid settings fail here, not at the first batch
        if self.bf16 and not self.use_cpu and not torch.accelerator.is_available():
            # transformers refuses bf16 without an accelerator unless told the run is on the CPU; CPUs with
            # AVX512-BF16/AMX run bf16 autocast natively, so say it for the user instead of failing
            self.use_cpu = True
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
    matrix over them, and the loss. With ``P`` processes each holding ``B/P`` queries this gives, after DDP's gradient
    averaging, the same gradients as one process holding all ``B`` (the loss averages over the queries of every
    process: :func:`~hf_robust_ir.losses.base.mean_across_processes`), and the mean of the processes' losses is the
    loss of that one process. When ``inputs`` carry guide embeddings (``RetrievalTrainer.guide_model``), the loss also
    gets ``guide_scores`` (guide ``q·d``) over the same candidate columns."""
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
    scores = similarity(query_embeddings, document_embeddings)
    guided: dict[str, torch.Tensor] = {}
    if "guide_document_embeddings" in inputs:
        guide_documents = inputs["guide_document_embeddings"]
        if cross_device_negatives and distributed:  # the guide sees the same gathered candidate columns
            guide_documents, _ = gather_documents(guide_documents, inputs["doc_keys"])
        guided["guide_scores"] = inputs["guide_query_embeddings"] @ guide_documents.T
    with mean_across_processes():
        return loss(scores, labels, mask, teacher, **guided)


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


@contextlib.contextmanager
def evaluation_sample(collator: Any):
    """Collate evaluation rows with epoch 0's sample of candidates and without student noise, so that every
    evaluation of a run scores the same clean batches (the collator's training epoch and noise are restored after)."""
    epoch = getattr(collator, "epoch", None) if hasattr(collator, "set_epoch") else None
    noise = getattr(collator, "student_noise", None)
    if epoch is not None:
        collator.set_epoch(0)
    if noise is not None:
        collator.student_noise = None
    try:
        yield
    finally:
        if epoch is not None:
            collator.set_epoch(epoch)
        if noise is not None:
            collator.student_noise = noise


def _check_teacher_scores(loss: RetrievalLoss, rows: Any) -> None:
    """A loss that learns from teacher scores gets rows that have some, instead of a silent zero loss."""
    if not getattr(loss, "needs_teacher", False) or rows is None:
        return
    if not (hasattr(rows, "select") and hasattr(rows, "__len__") and rows.column_names):
        return  # streamed rows cannot be read ahead: the loss sees what they hold
    sample = rows.select(range(min(len(rows), 1000)))["teacher_scores"] if "teacher_scores" in rows.column_names else []
    if not any(len(scores or []) for scores in sample):
        raise ValueError(
            f"loss {loss.config()['name']!r} learns from teacher scores, but the training rows have none: "
            "fill them with `hf-robust-ir score --teacher DIR` (or hf_robust_ir.scoring.score_rows), or mine the rows"
        )


def default_collator(model: torch.nn.Module, corpus: dict[str, str], args: RetrievalTrainingArguments):
    """The collator a model trains with: per-query pair groups for a reranker, the batch target matrix otherwise."""
    from .modeling import CrossEncoder

    seed = args.data_seed if args.data_seed is not None else args.seed
    common = {"group_size": args.group_size, "positives_per_query": args.positives_per_query, "seed": seed}
    if isinstance(model, CrossEncoder):
        if args.student_noise is not None:
            raise ValueError("student_noise (token noise on the student's inputs) is for bi-encoders only")
        return RerankerCollator.for_model(model, corpus, max_length=args.document_max_length, **common)
    return RetrievalCollator.for_model(
        model,
        corpus,
        query_max_length=args.query_max_length,
        document_max_length=args.document_max_length,
        in_batch_negatives=args.in_batch_negatives,
        student_noise=args.student_noise,
        **common,
    )


def best_model_metric_error(metric: str | None) -> str | None:
    """Why ``metric_for_best_model`` cannot pick the best checkpoint of a run evaluated by a retrieval evaluator, or
    None: the evaluator reports retrieval metrics, no loss."""
    if metric not in ("loss", "eval_loss"):
        return None
    return (
        f"metric_for_best_model is {metric!r}, but the evaluator reports retrieval metrics (eval_ndcg@10, "
        "eval_recall@100, eval_mrr@10, eval_map), no loss: set metric_for_best_model, e.g. 'ndcg@10' (transformers "
        "picks 'loss' for load_best_model_at_end when none is set)"
    )


def unread_guide_setting(loss: Any, guide_model: Any, guide_lexical_weight: float | None) -> str | None:
    """The guide setting (``guide_model`` or ``guide_lexical_weight``) given for a loss that reads no guide, or None."""
    if getattr(loss, "needs_guide_scores", False):
        return None
    given = (("guide_model", guide_model), ("guide_lexical_weight", guide_lexical_weight))
    return next((name for name, value in given if value is not None), None)


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
        guide_model: a frozen BiEncoder (or its folder; default ``args.guide_model``) for losses with
            ``needs_guide_scores`` (:class:`~hf_robust_ir.losses.GuideMaskedLoss`): each step it embeds the batch's
            query and document texts without gradient, in eval mode, and the loss gets ``guide_scores`` over the
            same candidate matrix (cross-device documents included). Bi-encoders only.
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
        guide_model: Any = None,
        **kwargs: Any,
    ):
        if kwargs.get("compute_loss_func") is not None:  # compute_loss would never call it
            raise ValueError(
                "RetrievalTrainer computes the loss with `loss` (a RetrievalLoss, or args.loss by name) over the "
                "batch's target matrix; compute_loss_func is not used: write the loss as a RetrievalLoss instead"
            )
        if data_collator is None:
            if corpus is None:
                raise ValueError("RetrievalTrainer needs the corpus (doc id -> text) or a data_collator")
            data_collator = default_collator(model, corpus, args)
        if args.forward_chunk_size is not None and hasattr(model, "forward_chunk_size"):
            model.forward_chunk_size = args.forward_chunk_size
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise ValueError(
                "the training rows are empty (0 queries): nothing to train on. A relabeling strategy such as "
                "'remove' drops every query that has a flagged candidate; check the relabel summary's counts"
            )
        self.loss = loss if loss is not None else get_loss(args.loss, **(args.loss_kwargs or {}))
        _check_teacher_scores(self.loss, train_dataset)
        self.guide_model = self._load_guide(
            guide_model if guide_model is not None else args.guide_model, model, args, corpus, train_dataset
        )
        self.evaluator = evaluator
        problem = best_model_metric_error(args.metric_for_best_model)
        if evaluator is not None and problem:
            raise ValueError(problem)
        # a streamed dataset under several processes: accelerate would build each batch on the main process and
        # slice its tensors along the first dimension, which a batch of [B, C] targets and D documents does not
        # allow; each process collates its own share of the stream instead
        accelerator_config = args.accelerator_config
        if accelerator_config.dispatch_batches:
            raise ValueError("accelerator_config.dispatch_batches cannot split retrieval batches: leave it unset")
        accelerator_config.dispatch_batches = False
        kwargs.setdefault("processing_class", getattr(model, "tokenizer", None))
        # Trainer refuses an eval strategy without an eval_dataset; the evaluator stands in for one.
        evaluator_only = evaluator is not None and kwargs.get("eval_dataset") is None
        if evaluator_only:
            kwargs["eval_dataset"] = "evaluator"
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator, **kwargs)
        # compute_loss never reads num_items_in_batch: Trainer must divide the loss by the accumulation steps itself,
        # whatever the model's forward accepts (a forward taking **kwargs would otherwise switch that off)
        self.model_accepts_loss_kwargs = False
        if evaluator_only:
            self.eval_dataset = None
        elif evaluator is not None:
            logger.warning("eval_dataset is not used: with an evaluator, evaluate() reports the evaluator's metrics")
        if hasattr(data_collator, "set_query_candidates") and train_dataset is not None:
            # rows of one query (one per positive, say) pool their labels: a row's positive is never another row's
            # in-batch negative; a stream cannot be read ahead, so its rows keep their own lists
            if isinstance(train_dataset, (datasets.Dataset, Sequence)):
                data_collator.set_query_candidates(train_dataset)
        if hasattr(data_collator, "set_epoch"):
            if args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
                raise ValueError(
                    "dataloader_persistent_workers keeps each worker's copy of the collator from the first epoch, "
                    "so every epoch would train on the first epoch's sample of candidates: turn it off (workers "
                    "then start each epoch with its epoch number) or use dataloader_num_workers=0"
                )
            self.add_callback(EpochSamplingCallback(data_collator))
        self.hard_negative_refresh = None
        if args.refresh_steps:
            from .callbacks.refresh import HardNegativeRefreshCallback

            if corpus is None or train_dataset is None:
                raise ValueError("refresh_steps needs the training rows and the corpus")
            if isinstance(data_collator, RerankerCollator):  # it mines with the model: a bi-encoder's embeddings
                raise ValueError("refresh_steps mines new negatives with the model being trained: a bi-encoder")
            teacher = None
            if args.refresh_teacher:
                from .scoring import load_teacher

                teacher = load_teacher(args.refresh_teacher).to(args.device).eval()
            elif getattr(self.loss, "needs_teacher", False):
                logger.warning(
                    "loss %r learns from the rows' teacher scores, and each refresh replaces them with the scores of "
                    "the model being trained (self-distillation); set refresh_teacher to keep a teacher's scores",
                    self.loss.config()["name"],
                )
            self.hard_negative_refresh = HardNegativeRefreshCallback(
                train_dataset,
                corpus,
                data_collator,
                every_steps=args.refresh_steps,
                num_negatives=args.refresh_num_negatives,
                range_max=args.refresh_range_max,
                teacher=teacher,
            )
            self.add_callback(self.hard_negative_refresh)
        self.loss_schedule = LossScheduleCallback(
            self.loss,
            alpha_schedule=args.loss_schedule,
            alpha_start=args.loss_schedule_start,
            alpha_end=args.loss_schedule_end,
            warmup_steps=args.confidence_warmup_steps,
        )
        self.add_callback(self.loss_schedule)
        self.model_card = None
        if args.model_card:
            from .callbacks.model_card import ModelCardCallback

            name = getattr(evaluator, "name", "")
            self.model_card = ModelCardCallback(
                loss=self.loss,
                loss_schedule=self.loss_schedule,
                base_model=getattr(getattr(model, "retrieval_config", None), "base_model", None),
                eval_dataset_info={"dataset": name} if name else None,
                repo_id=args.hub_model_id,
            )
            self.add_callback(self.model_card)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Our card (:class:`~hf_robust_ir.callbacks.ModelCardCallback`) instead of transformers' generic one."""
        if self.model_card is not None and self.args.should_save:
            self.model_card.write(
                self.args.output_dir, self.args, self.state, model=self.accelerator.unwrap_model(self.model)
            )

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        base_model: str | None = None,
        **kwargs: Any,
    ) -> str | None:
        """Push the trained model and its card with :func:`hf_robust_ir.hub.push_to_hub` (adapter-only for LoRA;
        ``base_model``: the Hub id of a LoRA model's local base), from the main process only (the others get None).
        The repository: the one made for ``push_to_hub=True`` (``hub_model_id``, else the output folder's name),
        else ``args.hub_model_id``, else the output folder's name. ``private`` and ``revision`` default to
        ``args.hub_private_repo`` and ``args.hub_revision``."""
        from .hub import push_to_hub

        self.create_model_card()
        if not self.is_world_process_zero():
            return None
        card = Path(self.args.output_dir) / "README.md"
        return push_to_hub(
            self.accelerator.unwrap_model(self.model),
            self.hub_model_id or self.args.hub_model_id or Path(self.args.output_dir).absolute().name,
            private=bool(self.args.hub_private_repo if private is None else private),
            token=token or self.args.hub_token,
            commit_message=commit_message or "End of training",
            card=card if card.exists() else None,
            base_model=base_model,
            revision=revision if revision is not None else self.args.hub_revision,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """A save with ``push_to_hub=True`` pushes the model as :meth:`push_to_hub` does (the retriever's folder, its
        card, safetensors, the token check), not transformers' copy of the output folder, which adds
        ``training_args.bin``: a pickle holding ``hub_token``. ``hub_strategy`` ``checkpoint`` and
        ``all_checkpoints`` also upload the checkpoint folder (the optimizer state, to resume from) without its
        ``training_args.bin``, which a resume does not read."""
        from huggingface_hub import HfApi
        from transformers.trainer import TRAINING_ARGS_NAME as TRAINING_ARGS
        from transformers.trainer_utils import HubStrategy, SaveStrategy

        from .hub import _endpoint, find_token_in_folder

        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if self.args.save_strategy == SaveStrategy.STEPS:
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch or 0)}"
        self.push_to_hub(commit_message=message)
        if self.args.hub_strategy not in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            return
        folder = Path(checkpoint_folder)
        leaked = [path for path in find_token_in_folder(folder, self.args.hub_token) if path.name != TRAINING_ARGS]
        if leaked:
            raise RuntimeError(f"refusing to upload {folder}: the Hub token appears in {[p.name for p in leaked]}")
        HfApi(endpoint=_endpoint(None), token=self.args.hub_token).upload_folder(
            repo_id=self.hub_model_id,
            folder_path=str(folder),
            path_in_repo="last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT else folder.name,
            commit_message=message + ", checkpoint",
            revision=self.args.hub_revision,
            ignore_patterns=[TRAINING_ARGS],
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also carry the loss's scheduled alpha and its statistics (plausible-set size, ...)."""
        if "loss" in logs:
            logs = {**logs, **self.loss_schedule.log_values()}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ guide model
    def _load_guide(
        self, guide: Any, model: torch.nn.Module, args: Any, corpus: Any, train_dataset: Any
    ) -> torch.nn.Module | None:
        if not getattr(self.loss, "needs_guide_scores", False):
            unread = unread_guide_setting(self.loss, guide, args.guide_lexical_weight)
            if unread:
                raise ValueError(f"{unread} is set but loss {self.loss.config()['name']!r} reads no guide")
            return None
        from .modeling import CrossEncoder

        if isinstance(model, CrossEncoder):  # the guide scores the candidate matrix of a bi-encoder batch
            raise ValueError("guide-model masking is for bi-encoders; a reranker trains on per-query groups")
        if guide is None:
            raise ValueError(f"loss {self.loss.config()['name']!r} needs a guide model: set guide_model")
        if guide is model:
            raise ValueError("the guide model is frozen: pass a separate copy, not the model being trained")
        if isinstance(guide, (str, os.PathLike)):
            from .modeling import BiEncoder

            guide = BiEncoder.from_pretrained(str(guide))
        if args.guide_lexical_weight is not None:
            from .modeling import HybridGuide

            if isinstance(guide, HybridGuide):
                raise ValueError("guide_lexical_weight is for a dense guide; this guide is already a HybridGuide")
            if corpus is None:
                raise ValueError("guide_lexical_weight needs the corpus (BM25's statistics): pass corpus=")
            # the training queries' tokens get exact columns; rows that cannot be read ahead (streamed) are hashed
            queries = list(train_dataset["query"]) if isinstance(train_dataset, datasets.Dataset) else None
            guide = HybridGuide(guide, corpus, queries=queries, lexical_weight=args.guide_lexical_weight)
        guide.requires_grad_(False)
        return guide.eval()

    def guide_embeddings(self, inputs: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """The guide's query and document embeddings of a batch (no gradient, eval mode, its own tokenizer)."""
        guide = self.guide_model
        if guide.device != device:
            guide.to(device)
        queries, documents = inputs["query_texts"], inputs["document_texts"]
        query_embeddings = guide.encode_queries(queries, batch_size=len(queries))
        document_embeddings = guide.encode_documents(documents, batch_size=max(len(documents), 1))
        return {
            "guide_query_embeddings": torch.from_numpy(query_embeddings).to(device),
            "guide_document_embeddings": torch.from_numpy(document_embeddings).to(device),
        }

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A batch built before the collator's candidates were refreshed is built again with them (the data loader
        prepares the next batch ahead), so a refresh at step k trains from step k + 1 on, as a run resumed there."""
        if hasattr(self.data_collator, "current"):
            inputs = self.data_collator.current(dict(inputs))
        return super()._prepare_inputs(inputs)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # a reranker: scores of each query's candidate group (never with a guide model: refused in __init__)
        if "pairs" in inputs:
            pair_scores = model(**inputs["pairs"])
            scores = group_pair_scores(pair_scores, inputs["pair_rows"], inputs["pair_cols"], inputs["labels"].shape)
            scores = scores / self.accelerator.unwrap_model(self.model).temperature
            with mean_across_processes():  # the mean over every process's queries, as for a bi-encoder
                loss = self.loss(scores, inputs["labels"], inputs["mask"], inputs["teacher"])
            return (loss, {"scores": scores}) if return_outputs else loss
        outputs = model(query=inputs["query"], document=inputs["document"])
        if self.guide_model is not None:
            inputs = {**inputs, **self.guide_embeddings(inputs, outputs["query_embeddings"].device)}
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
            # the collator's setting, which built the one-process mask: a collator passed in may differ from args
            in_batch_negatives=getattr(self.data_collator, "in_batch_negatives", self.args.in_batch_negatives),
        )

    # ------------------------------------------------------------------ evaluation
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """On an ``eval_dataset`` of training rows (no evaluator): the training loss on them (``eval_loss``),
        without gradient; no predictions. Every evaluation collates the rows alike (:func:`evaluation_sample`)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Retrieval metrics of the current model, logged with ``metric_key_prefix`` (``eval_ndcg@10``, ...)."""
        if self.evaluator is None:
            # its data loader draws a seed from the CPU generator, which dropout on the CPU also draws from: evaluating
            # during training would change the training that follows
            with torch.random.fork_rng(devices=[]), evaluation_sample(self.data_collator):
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
        if self.hard_negative_refresh is not None:  # the refreshed candidates the checkpoint was trained on
            self.hard_negative_refresh.load(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_weights_from(self.state.best_model_checkpoint)
