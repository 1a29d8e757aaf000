"""Refresh hard negatives and teacher scores with the model being trained, every K steps (ANCE, Xiong et al. 2021).

Negatives mined once with the starting model grow stale as the model learns: they stop being hard. ANCE re-encodes
the corpus with the current model at intervals and mines new negatives from it. :class:`HardNegativeRefreshCallback`
does this inside ordinary training, without touching the dataset: it keeps each query's labeled positives, mines
``num_negatives`` new negatives from the current model's top ``range_max`` (skipping the first ``range_min``, and the
documents the query's rows exclude, :data:`~hf_robust_ir.data.schema.EXCLUDED_COLUMN`, which stay excluded), scores
every candidate with the current model (or a separate ``teacher``) as ``teacher_scores``, and hands the new
candidate lists to the collator (:meth:`~hf_robust_ir.data.collator.RetrievalCollator.set_row_overrides`); they train
from the next optimizer step on (the trainer builds a batch the data loader prepared ahead again with them). Under
DDP every process encodes its share of the corpus and all of them get the same candidates. The collator must run in
the training process (``dataloader_num_workers=0``), where the overrides are.
Every checkpoint holds the candidates in use (``hard_negative_refresh.json``), and a run resumed from it trains on
them until the next refresh, as the uninterrupted run does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

STATE_NAME = "hard_negative_refresh.json"


class HardNegativeRefreshCallback(TrainerCallback):
    """Every ``every_steps`` optimizer steps, re-mine the training rows' negatives with the current model.

    Args:
        rows: the training rows (canonical ``datasets.Dataset``); their positives (label > 0) are kept.
        corpus: document id -> text.
        collator: the trainer's :class:`~hf_robust_ir.data.collator.RetrievalCollator`.
        every_steps: refresh interval K in optimizer steps.
        num_negatives, range_min, range_max: as in :func:`~hf_robust_ir.mining.mine_hard_negatives`.
        teacher: a BiEncoder / CrossEncoder that scores the new candidates (default: the model being trained).
        batch_size: encoding batch size.
    """

    def __init__(
        self,
        rows: Any,
        corpus: Mapping[str, str],
        collator: Any,
        every_steps: int,
        num_negatives: int = 7,
        range_min: int = 0,
        range_max: int = 100,
        teacher: Any = None,
        batch_size: int = 64,
    ):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        if not hasattr(collator, "set_row_overrides"):
            raise ValueError(f"{type(collator).__name__} cannot take refreshed candidates (no set_row_overrides)")
        from ..mining import check_mining_arguments

        try:  # now, not at the first refresh every_steps training steps later
            check_mining_arguments(num_negatives, range_min, range_max, batch_size)
        except ValueError as exc:
            raise ValueError(f"hard-negative refresh: {exc}") from None
        self.rows, self.corpus, self.collator = rows, corpus, collator
        self.every_steps, self.num_negatives = every_steps, num_negatives
        self.range_min, self.range_max = range_min, range_max
        self.teacher, self.batch_size = teacher, batch_size
        self.refreshes = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if args.dataloader_num_workers:
            raise ValueError(
                "hard-negative refresh needs dataloader_num_workers=0: worker processes hold their own collator copy"
            )

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():  # every process that writes checkpoints (save_on_each_node)
            self.save(folder)

    def save(self, folder: str | Path) -> None:
        """Write the refreshed candidates in use (none before the first refresh) into a checkpoint folder."""
        overrides = getattr(self.collator, "row_overrides", None) or {}
        state = {"refreshes": self.refreshes, "overrides": overrides}
        (Path(folder) / STATE_NAME).write_text(json.dumps(state, default=float))

    def load(self, folder: str | Path) -> None:
        """Give the collator the candidates a checkpoint was trained on (see :meth:`save`); a checkpoint written
        before the first refresh, or without the file, leaves the rows as they are."""
        path = Path(folder) / STATE_NAME
        if not path.is_file():
            return
        state = json.loads(path.read_text())
        self.refreshes = int(state.get("refreshes", 0))
        if state.get("overrides"):
            self.collator.set_row_overrides(state["overrides"])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0 and state.global_step < state.max_steps:
            self.refresh(getattr(model, "module", model))
        return control

    def refresh(self, model: Any) -> dict[str, dict[str, list]]:
        """Mine and score new candidates with ``model`` and give them to the collator; returns the overrides."""
        from ..data.schema import EXCLUDED_COLUMN, RetrievalCorpus, excluded_doc_ids
        from ..mining import mine_hard_negatives
        from ..scoring import score_candidates

        queries = dict(zip(self.rows["query_id"], self.rows["query"]))
        qrels: dict[str, dict[str, float]] = {}
        excluded: dict[str, dict[str, None]] = {}  # ordered sets
        for row in self.rows:  # rows of the same query pool their positives and exclusions: none may be mined
            judged = qrels.setdefault(row["query_id"], {})
            for doc_id, label in zip(row["doc_ids"], row["labels"]):
                if label > 0:
                    judged[doc_id] = max(label, judged.get(doc_id, label))
            excluded.setdefault(row["query_id"], {}).update(dict.fromkeys(excluded_doc_ids(row)))
        qrels = {qid: judged for qid, judged in qrels.items() if judged}
        mined = mine_hard_negatives(
            model,
            RetrievalCorpus(corpus=dict(self.corpus), queries=queries, qrels=qrels, name="refresh"),
            num_negatives=self.num_negatives,
            range_min=self.range_min,
            range_max=self.range_max,
            batch_size=self.batch_size,
            show_progress_bar=False,
            excluded=excluded,
        )
        teacher_scores = mined["teacher_scores"]
        if self.teacher is not None:
            teacher_scores = score_candidates(
                self.teacher,
                list(mined["query"]),
                [[self.corpus[d] for d in ids] for ids in mined["doc_ids"]],
                batch_size=self.batch_size,
            )
        overrides = {
            row["query_id"]: {
                "doc_ids": row["doc_ids"],
                "labels": row["labels"],
                "teacher_scores": scores,
                "label_source": row.get("label_source") or [],
                EXCLUDED_COLUMN: [
                    doc_id for doc_id in excluded[row["query_id"]] if doc_id not in qrels[row["query_id"]]
                ],
            }
            for row, scores in zip(mined, teacher_scores)
        }
        self.collator.set_row_overrides(overrides)
        self.refreshes += 1
        logger.info("refreshed the hard negatives of %d queries (refresh %d)", len(overrides), self.refreshes)
        return overrides
