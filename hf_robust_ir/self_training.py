"""Noisy self-training (NST, arXiv 2311.15563): a teacher labels synthetic queries softly, a noisy student learns them.

One round, with ``T`` the teacher of the round (round 0: the starting model fine-tuned on the labeled rows):

1. ``T`` encodes the corpus once; the index serves the evaluation of ``T``, the soft labels and the hard negatives;
2. synthetic queries (one :class:`~hf_robust_ir.synthetic.QueryGenerator` run over sampled passages, made once and
   reused by every round) get their top-``candidates_per_query`` passages under ``T`` as candidates, the source
   passage as the labeled positive, and ``T``'s scores as ``teacher_scores`` (soft labels);
3. a fresh student (the starting model) is pre-trained on those rows with the distillation loss, token noise on its
   inputs only (:class:`~hf_robust_ir.data.TokenNoise`);
4. the student is fine-tuned on the labeled rows, with hard negatives mined by ``T``;
5. the student becomes the teacher of the next round.

Every round's checkpoint and metrics are saved under ``output_dir/round_<r>`` and recorded in
``output_dir/self_training_state.json`` as soon as the round ends; a restarted run resumes after the last finished
round with its checkpoint as the teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets

logger = logging.getLogger(__name__)

STATE_NAME = "self_training_state.json"
SYNTHETIC_NAME = "synthetic_queries.jsonl"


@dataclass
class SelfTrainingArguments:
    """The loop's settings (the fields of a ``hf-robust-ir self-train`` recipe)."""

    output_dir: str = field(metadata={"help": "folder of the rounds (round_<r>/model) and the loop's state"})
    model: str | None = field(
        default=None, metadata={"help": "starting model folder: the first teacher and every round's fresh student"}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "BEIR folder (default: $HF_ROBUST_IR_DATA, then ../shared/data/scifact)"}
    )
    train_split: str = field(default="train", metadata={"help": "qrels split of the labeled training queries"})
    eval_split: str | None = field(default="test", metadata={"help": "split every round is evaluated on (null: none)"})
    selection_split: str | None = field(
        default=None,
        metadata={
            "help": "a labeled split (e.g. dev) every round is also scored on, to choose the round to use; without "
            "it the last round is reported (choosing on eval_split would choose on the labels the result is measured "
            "with)"
        },
    )
    labeled_fraction: float = field(
        default=1.0, metadata={"help": "share of the labeled training queries kept (seeded sample)"}
    )
    max_eval_queries: int | None = field(default=None, metadata={"help": "evaluate on the first N judged queries"})
    rounds: int = field(default=2, metadata={"help": "student rounds after the round-0 teacher"})
    train_initial_teacher: bool = field(
        default=True, metadata={"help": "round 0 fine-tunes the starting model on the labeled rows"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the labeled sample, the synthetic queries and training"})
    # synthetic queries
    query_generator: dict = field(
        default_factory=lambda: {"type": "extractive", "mode": "sentence"},
        metadata={"help": "{type: extractive, ...} (a sentence of a passage) or {type: hf, model_name_or_path: DIR}"},
    )
    synthetic_passages: int | None = field(
        default=2000, metadata={"help": "passages sampled from the corpus for synthetic queries (null: all)"}
    )
    queries_per_passage: int = field(default=1, metadata={"help": "synthetic queries per sampled passage"})
    candidates_per_query: int = field(
        default=15, metadata={"help": "teacher top-k per synthetic query, scored as soft labels"}
    )
    # student pre-training on synthetic rows
    pretrain_loss: str = field(default="kl_distillation", metadata={"help": "loss of the pre-training on soft labels"})
    pretrain_loss_kwargs: dict = field(
        default_factory=lambda: {"teacher_temperature": 0.05}, metadata={"help": "keyword arguments of pretrain_loss"}
    )
    pretrain_epochs: float = field(default=1.0, metadata={"help": "epochs over the synthetic rows"})
    pretrain_group_size: int = field(default=8, metadata={"help": "candidates per synthetic query in a batch"})
    student_noise: dict | None = field(
        default_factory=lambda: {"kind": "shuffle", "p": 0.1},
        metadata={"help": "token noise on the student's inputs in pre-training (null: none)"},
    )
    pretrain_training_kwargs: dict = field(
        default_factory=dict, metadata={"help": "more RetrievalTrainingArguments of pre-training, e.g. {bf16: true}"}
    )
    # fine-tuning on labeled rows
    finetune_loss: str = field(default="infonce", metadata={"help": "loss of the fine-tuning on the labeled rows"})
    finetune_loss_kwargs: dict | None = field(default=None, metadata={"help": "keyword arguments of finetune_loss"})
    finetune_epochs: float = field(default=1.0, metadata={"help": "epochs over the labeled rows"})
    hard_negatives: int = field(default=1, metadata={"help": "hard negatives per labeled query, mined by the teacher"})
    mining_range_max: int = field(default=30, metadata={"help": "mine among the teacher's top-k"})
    # shared by both stages
    learning_rate: float = field(default=2e-5, metadata={"help": "learning rate of both stages"})
    batch_size: int = field(default=32, metadata={"help": "queries per batch"})
    warmup_steps: float = field(default=0.1, metadata={"help": "warm-up steps (a fraction below 1)"})
    max_length: int = field(default=256, metadata={"help": "token limit of queries and passages"})
    encode_batch_size: int = field(default=64, metadata={"help": "batch size of encoding (mining, evaluation)"})
    forward_chunk_size: int | None = field(
        default=None, metadata={"help": "encoder forward over at most this many texts at a time"}
    )
    training_kwargs: dict = field(
        default_factory=dict, metadata={"help": "more RetrievalTrainingArguments for both stages"}
    )
    show_progress_bar: bool = field(default=True, metadata={"help": "progress bars on stderr"})


def build_query_generator(
    config: dict[str, Any], labeled_pairs: list[tuple[str, str]] | None = None, work_dir: Path | None = None
) -> Any:
    """A query generator from ``{"type": "extractive" | "hf", ...keyword arguments}``.

    ``{"type": "hf", "model_name_or_path": DIR, "train_on_labeled": true, "training": {...}}`` first fine-tunes the
    doc2query model on the labeled ``(passage, query)`` pairs (:func:`~hf_robust_ir.synthetic.train_query_generator`,
    ``Seq2SeqTrainer`` for seq2seq models; ``training`` holds its training arguments) into ``work_dir``.
    """
    from .synthetic import ExtractiveQueryGenerator, HFQueryGenerator, train_query_generator

    kind, kwargs = config.get("type", "extractive"), {k: v for k, v in config.items() if k != "type"}
    if kind == "extractive":
        return ExtractiveQueryGenerator(**kwargs)
    if kind == "hf":
        training = kwargs.pop("training", None) or {}
        if kwargs.pop("train_on_labeled", False):
            if not labeled_pairs or work_dir is None:
                raise ValueError("query_generator: train_on_labeled needs labeled pairs and a work folder")
            kwargs["model_name_or_path"] = train_query_generator(
                labeled_pairs, kwargs["model_name_or_path"], work_dir, **training
            )
        return HFQueryGenerator(**kwargs)
    raise ValueError(f"query_generator type must be 'extractive' or 'hf', got {kind!r}")


def sample_labeled_queries(rows: datasets.Dataset, fraction: float, seed: int) -> datasets.Dataset:
    """A seeded sample of ``ceil(fraction · n)`` rows (all of them at fraction 1), in their original order.

    The sample is drawn over the rows' query ids in sorted order, so it depends on which queries there are, not on
    the order of the lines of the qrels file."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return rows
    query_ids = rows["query_id"]
    by_query_id = sorted(range(len(rows)), key=lambda i: query_ids[i])
    keep = sorted(random.Random(seed).sample(by_query_id, math.ceil(fraction * len(rows))))
    return rows.select(keep)


class SelfTrainingLoop:
    """Run the loop of the module docstring; :meth:`run` returns the per-round records (and resumes)."""

    def __init__(
        self,
        args: SelfTrainingArguments,
        data_dir: str | Path,
        labeled_qrels: dict[str, dict[str, int]] | None = None,
        initial_index: Any = None,
    ):
        """``labeled_qrels`` replaces the split's qrels as the labeled data (e.g. noisy labels; ``labeled_fraction``
        still applies); ``initial_index`` is a :class:`~hf_robust_ir.evaluation.DocumentIndex` of the corpus made
        with the starting model, which spares round 0 one corpus encoding."""
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.data_dir = Path(data_dir)
        self.labeled_qrels = labeled_qrels
        self.initial_index = initial_index

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.output_dir / STATE_NAME

    def load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"rounds": []}
        state = json.loads(self.state_path.read_text())
        if state.get("arguments") != self._recorded_arguments():
            raise ValueError(
                f"{self.state_path} was written with other settings; use another output_dir or delete the file"
            )
        return state

    def _recorded_arguments(self) -> dict[str, Any]:
        recorded = asdict(self.args)
        for name in ("output_dir", "show_progress_bar", "rounds", "encode_batch_size"):  # may change on resume
            recorded.pop(name)
        if recorded["selection_split"] is None:  # as states written before the option existed hold it
            recorded.pop("selection_split")
        return json.loads(json.dumps(recorded))

    def save_state(self, state: dict[str, Any]) -> None:
        state["arguments"] = self._recorded_arguments()
        partial = self.state_path.with_suffix(".tmp")
        partial.write_text(json.dumps(state, indent=2) + "\n")
        partial.replace(self.state_path)  # atomic: an interruption leaves the old or the new file

    # ------------------------------------------------------------------ data
    def load_data(self) -> tuple[Any, Any, datasets.Dataset]:
        from .data import load_beir, rows_from_qrels

        train = load_beir(self.data_dir, split=self.args.train_split)
        test = self._evaluation_split(self.args.eval_split)
        if self.labeled_qrels is not None:
            train = dataclasses.replace(train, qrels=self.labeled_qrels)
        labeled = sample_labeled_queries(rows_from_qrels(train), self.args.labeled_fraction, self.args.seed)
        return train, test, labeled

    def _evaluation_split(self, split: str | None) -> Any:
        """A split to score rounds on (its first ``max_eval_queries`` queries), or None."""
        from .data import load_beir

        if not split:
            return None
        data = load_beir(self.data_dir, split=split)
        if self.args.max_eval_queries is not None:
            keep = sorted(data.qrels)[: self.args.max_eval_queries]
            data.qrels = {q: data.qrels[q] for q in keep}
        return data

    def _selection_split(self, labeled_queries: set[str]) -> Any:
        """The selection split without the labeled training queries it shares with them (a round chosen on the
        queries it was trained on would be chosen for fitting them), or None."""
        data = self._evaluation_split(self.args.selection_split)
        if data is None:
            return None
        shared = labeled_queries & set(data.qrels)
        if shared:
            logger.warning(
                "selection_split %r shares %d of its %d queries with the labeled training queries; they are left out"
                " of the selection",
                self.args.selection_split,
                len(shared),
                len(data.qrels),
            )
            data.qrels = {q: judged for q, judged in data.qrels.items() if q not in shared}
            if not data.qrels:
                raise ValueError(
                    f"selection_split {self.args.selection_split!r} holds only labeled training queries; use a"
                    " split of other queries (e.g. dev)"
                )
        return data

    def synthetic_queries(
        self,
        corpus: dict[str, str],
        labeled_pairs: list[tuple[str, str]] | None = None,
        state: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The synthetic query rows, made once and kept in ``output_dir/synthetic_queries.jsonl``.

        With the loop's ``state``, the file's digest is recorded in it, and a file the state does not record (left by
        a run whose state file was deleted, so made with other settings) is made again rather than reused."""
        from .synthetic import synthetic_query_rows

        path = self.output_dir / SYNTHETIC_NAME
        if path.exists():
            text = path.read_text()
            if state is None or state.get("synthetic_queries") == _text_digest(text):
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            logger.warning("%s is not recorded in %s (another run's queries): making them again", path, STATE_NAME)
        doc_ids = sorted(corpus)
        if self.args.synthetic_passages is not None and self.args.synthetic_passages < len(doc_ids):
            doc_ids = sorted(random.Random(self.args.seed).sample(doc_ids, self.args.synthetic_passages))
        generator = build_query_generator(self.args.query_generator, labeled_pairs, self.output_dir / "query_generator")
        rows = synthetic_query_rows(
            corpus,
            generator,
            doc_ids=doc_ids,
            num_queries=self.args.queries_per_passage,
            show_progress=self.args.show_progress_bar,
        )
        text = "".join(json.dumps(row) + "\n" for row in rows)
        partial = path.with_suffix(".tmp")
        partial.write_text(text)
        partial.replace(path)
        if state is not None:
            state["synthetic_queries"] = _text_digest(text)
            self.save_state(state)
        logger.info("%d synthetic queries from %d passages (%s)", len(rows), len(doc_ids), generator.config())
        return rows

    def soft_label_rows(self, teacher: Any, corpus: dict[str, str], synthetic: list[dict], index: Any):
        """Synthetic queries with the teacher's top-k as candidates and its scores as ``teacher_scores``."""
        from .data.schema import RetrievalCorpus
        from .mining import mine_hard_negatives

        queries = {row["query_id"]: row["query"] for row in synthetic}
        qrels = {row["query_id"]: {row["doc_ids"][0]: 1} for row in synthetic}
        k = self.args.candidates_per_query
        return mine_hard_negatives(
            teacher,
            RetrievalCorpus(corpus=corpus, queries=queries, qrels=qrels, name="synthetic"),
            num_negatives=k,
            range_max=k,
            batch_size=self.args.encode_batch_size,
            index=index,
            show_progress_bar=self.args.show_progress_bar,
        )

    # ------------------------------------------------------------------ training
    def _training_args(
        self, folder: Path, loss: str, loss_kwargs: dict | None, epochs: float, group_size: int, **extra
    ):
        from .trainer import RetrievalTrainingArguments

        settings: dict[str, Any] = {
            "output_dir": str(folder),
            "per_device_train_batch_size": self.args.batch_size,
            "learning_rate": self.args.learning_rate,
            "warmup_steps": self.args.warmup_steps,
            "lr_scheduler_type": "linear",
            "num_train_epochs": epochs,
            "seed": self.args.seed,
            "data_seed": self.args.seed,
            "loss": loss,
            "loss_kwargs": loss_kwargs,
            "group_size": group_size,
            "forward_chunk_size": self.args.forward_chunk_size,
            "save_strategy": "no",
            "report_to": "none",
            "logging_steps": 10,
            "disable_tqdm": not self.args.show_progress_bar,
            **self.args.training_kwargs,
            **extra,
        }
        return RetrievalTrainingArguments(**settings)

    def _fresh_student(self):
        from .modeling import BiEncoder

        return BiEncoder.from_pretrained(
            self.model_path, query_max_length=self.args.max_length, document_max_length=self.args.max_length
        )

    def _train(self, model: Any, rows: datasets.Dataset, corpus: dict[str, str], training_args: Any) -> Any:
        from .trainer import RetrievalTrainer

        trainer = RetrievalTrainer(model, training_args, train_dataset=rows, corpus=corpus)
        trainer.train()
        return trainer.accelerator.unwrap_model(trainer.model)

    def finetune(self, model: Any, labeled: datasets.Dataset, corpus: dict[str, str], folder: Path) -> Any:
        args = self._training_args(
            folder / "finetune",
            self.args.finetune_loss,
            self.args.finetune_loss_kwargs,
            self.args.finetune_epochs,
            1 + self.args.hard_negatives,
        )
        return self._train(model, labeled, corpus, args)

    def pretrain(self, model: Any, rows: datasets.Dataset, corpus: dict[str, str], folder: Path) -> Any:
        args = self._training_args(
            folder / "pretrain",
            self.args.pretrain_loss,
            self.args.pretrain_loss_kwargs,
            self.args.pretrain_epochs,
            self.args.pretrain_group_size,
            student_noise=self.args.student_noise,
            **self.args.pretrain_training_kwargs,
        )
        return self._train(model, rows, corpus, args)

    def write_card(self, checkpoint: Path, record: dict[str, Any], labeled_queries: int) -> None:
        """The round's model card: its teacher, the synthetic data and noise of its pre-training, its metrics."""
        from .hub import write_model_card

        write_model_card(checkpoint, _card_info(self.args, str(self.model_path), record, labeled_queries))

    # ------------------------------------------------------------------ the loop
    def run(self, on_round: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        from .commands.train import default_model_path
        from .evaluation import DocumentIndex, RetrievalEvaluator
        from .hub import _model_class
        from .mining import mine_hard_negatives
        from .modeling import BiEncoder, CrossEncoder

        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.model_path = self.args.model or default_model_path()
        if _model_class(Path(self.model_path)) is CrossEncoder:  # read as a BiEncoder, its head would be dropped
            raise ValueError(
                f"model {str(self.model_path)!r} is a cross-encoder (reranker) folder; self-training needs a bi-encoder"
            )
        state = self.load_state()
        if self.args.selection_split and self.args.selection_split == self.args.eval_split:
            raise ValueError(
                f"selection_split {self.args.selection_split!r} is the eval_split: a round chosen on it is chosen on"
                " the labels it is measured with; use another labeled split (e.g. dev)"
            )
        if self.args.selection_split and self.args.selection_split == self.args.train_split:
            raise ValueError(
                f"selection_split {self.args.selection_split!r} is the train_split: a round chosen on it is chosen on"
                " the labels it was trained on; use another labeled split (e.g. dev)"
            )
        train, test, labeled = self.load_data()
        corpus = train.corpus

        def evaluator_of(data: Any) -> Any:
            if data is None:
                return None
            batch_size, progress = self.args.encode_batch_size, self.args.show_progress_bar
            return RetrievalEvaluator(data, batch_size=batch_size, show_progress_bar=progress)

        evaluator = evaluator_of(test)
        labeled_data = type(train)(
            corpus=corpus, queries=train.queries, qrels={q: train.qrels[q] for q in labeled["query_id"]}, name="labeled"
        )
        selector = evaluator_of(self._selection_split(set(labeled_data.qrels)))
        logger.info("%d labeled training queries (fraction %.2f)", len(labeled), self.args.labeled_fraction)
        # the settings do not pin the labeled rows (labeled_qrels, the data folder, its files): their digest does
        digest = _labeled_digest(labeled_data)
        if state.setdefault("labeled_data", digest) != digest:  # a state without one predates the check
            raise ValueError(
                f"{self.state_path} was written for other labeled data (data folder, qrels or labeled_qrels); use"
                " another output_dir or delete the file"
            )
        corpus_digest = _corpus_digest(corpus)
        if state.setdefault("corpus", corpus_digest) != corpus_digest:  # a state without one predates the check
            raise ValueError(
                f"{self.state_path} was written for another corpus (its documents' ids or texts differ); use another"
                " output_dir or delete the file"
            )

        finished = {record["round"] for record in state["rounds"]}
        # a corpus index is reused: the starting model's for round 0, each student's (made for its evaluation) as
        # the next round's teacher index
        indexes: dict[str, Any] = {str(self.model_path): self.initial_index} if self.initial_index is not None else {}

        def index_of(path: str, model: Any) -> Any:
            found = indexes.pop(str(path), None)
            if found is not None:
                return found
            return DocumentIndex.from_corpus(
                model, corpus, batch_size=self.args.encode_batch_size, show_progress_bar=self.args.show_progress_bar
            )

        def mine_labeled(teacher: Any, index: Any) -> datasets.Dataset:
            return mine_hard_negatives(
                teacher,
                labeled_data,
                num_negatives=self.args.hard_negatives,
                range_max=self.args.mining_range_max,
                batch_size=self.args.encode_batch_size,
                index=index,
                show_progress_bar=self.args.show_progress_bar,
            )

        for round_number in range(self.args.rounds + 1):
            if round_number in finished:
                continue
            start = time.perf_counter()
            folder = self.output_dir / f"round_{round_number}"
            previous = [r for r in state["rounds"] if r["round"] == round_number - 1]
            teacher_path = previous[0]["checkpoint"] if previous else self.model_path
            teacher = BiEncoder.from_pretrained(
                teacher_path, query_max_length=self.args.max_length, document_max_length=self.args.max_length
            )
            record: dict[str, Any] = {"round": round_number, "teacher": str(teacher_path)}
            if round_number == 0:
                student = teacher
                if self.args.train_initial_teacher:
                    rows = mine_labeled(teacher, index_of(teacher_path, teacher))
                    student = self.finetune(self._fresh_student(), rows, corpus, folder)
                record["stage"] = "teacher"
            else:
                index = index_of(teacher_path, teacher)
                pairs = [
                    (corpus[d], train.queries[q])
                    for q, judged in labeled_data.qrels.items()
                    for d, grade in judged.items()
                    if grade > 0
                ]
                synthetic = self.synthetic_queries(corpus, pairs, state)
                soft_rows = self.soft_label_rows(teacher, corpus, synthetic, index)
                labeled_rows = mine_labeled(teacher, index)
                del index
                student = self.pretrain(self._fresh_student(), soft_rows, corpus, folder)
                student = self.finetune(student, labeled_rows, corpus, folder)
                record.update(stage="student", synthetic_queries=len(soft_rows))
            checkpoint = folder / "model"
            student.save_pretrained(str(checkpoint))
            record["checkpoint"] = str(checkpoint)
            indexes.clear()
            if evaluator is not None or selector is not None:
                student_index = index_of(str(checkpoint), student)
                for key, scorer in (("metrics", evaluator), ("selection_metrics", selector)):
                    if scorer is not None:
                        record[key] = {k: round(float(v), 5) for k, v in scorer(student, student_index).items()}
                indexes[str(checkpoint)] = student_index
            record["seconds"] = round(time.perf_counter() - start, 1)
            self.write_card(checkpoint, record, len(labeled))
            state["rounds"].append(record)
            self.save_state(state)
            logger.info("round %d done: %s", round_number, record.get("metrics"))
            if on_round is not None:
                on_round(record)
        # the rounds asked for: a resume with fewer rounds than finished does not report the later ones
        return sorted((r for r in state["rounds"] if r["round"] <= self.args.rounds), key=lambda r: r["round"])


def _labeled_digest(labeled: Any) -> str:
    """A digest of the labeled training rows: the sampled queries in order, their texts and judgments."""
    rows = [[q, labeled.queries[q], sorted(judged.items())] for q, judged in labeled.qrels.items()]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _corpus_digest(corpus: dict[str, str]) -> str:
    """A digest of the corpus: every document id with its text, in id order."""
    digest = hashlib.sha256()
    for doc_id in sorted(corpus):
        digest.update(json.dumps([doc_id, corpus[doc_id]]).encode())
    return digest.hexdigest()


def _card_info(args: SelfTrainingArguments, model_path: str, record: dict[str, Any], labeled_queries: int) -> Any:
    from .hub import ModelCardInfo, library_versions
    from .losses import get_loss

    finetune = get_loss(args.finetune_loss, **(args.finetune_loss_kwargs or {}))
    pretrain = get_loss(args.pretrain_loss, **(args.pretrain_loss_kwargs or {}))
    settings = {
        "self_training_round": record["round"],
        "teacher": record["teacher"],
        "labeled_fraction": args.labeled_fraction,
        "labeled_queries": labeled_queries,
    }
    if record["round"] > 0:
        settings.update(
            synthetic_queries=record.get("synthetic_queries"),
            query_generator=args.query_generator,
            candidates_per_query=args.candidates_per_query,
            pretrain_loss=pretrain.config(),
            student_noise=args.student_noise,
        )
    metrics = record.get("metrics")
    return ModelCardInfo(
        model_name=f"{Path(args.output_dir).name} (self-training round {record['round']})",
        base_model=model_path,
        datasets=[{"path": args.data_dir or "", "split": args.train_split, "queries": labeled_queries}],
        loss=finetune.config(),
        hyperparameters=settings,
        eval_results=[{"dataset": args.eval_split, "split": args.eval_split, "metrics": metrics}] if metrics else [],
        versions=library_versions(),
        citations=[getattr(pretrain, "citation", "")] if record["round"] > 0 else [],
        tags=["self-training"],
    )


def selected_round(rounds: list[dict[str, Any]], metric: str = "ndcg@10") -> tuple[dict[str, Any] | None, str]:
    """The round to use and how it was chosen: the highest ``metric`` on the selection split when the rounds were
    scored on one (``selection_metrics``), else the last round. Never the best on the evaluation split, whose labels
    would then choose the result they measure."""
    scored = [r for r in rounds if metric in r.get("selection_metrics", {})]
    if scored:
        return max(scored, key=lambda r: r["selection_metrics"][metric]), f"selection split {metric}"
    return (max(rounds, key=lambda r: r["round"]) if rounds else None), "last round"
