"""Collate canonical rows into (query, document) pairs for a cross-encoder, grouped per query.

Each query gets a group of up to ``group_size`` sampled candidates (positives first), sampled exactly as the
bi-encoder collator samples them. The reranker scores every pair; the trainer places the scores into ``scores[B, G]``
at ``pair_rows`` / ``pair_cols``, so any loss under the loss contract trains a reranker as it trains a retriever:
``labels[B, G]``, ``mask[B, G]`` (False for the empty slots of short groups) and ``teacher[B, G]`` (NaN where unknown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .collator import RetrievalCollator
from .schema import check_candidate_lists


class RerankerCollator(RetrievalCollator):
    """Per-query groups of (query, document) pairs for a :class:`~hf_robust_ir.modeling.CrossEncoder`.

    Args:
        tokenizer: the reranker's tokenizer.
        corpus: document id -> text.
        group_size: candidates per query (positives + negatives); fewer when the list is shorter.
        positives_per_query: positives sampled per query.
        max_length: truncation length of a pair (the longer side is cut first).
        seed: sampling seed; a query's sample depends only on ``(seed, epoch, query_id)``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        corpus: Mapping[str, str],
        group_size: int = 8,
        positives_per_query: int = 1,
        max_length: int = 512,
        seed: int = 42,
        pad_to_multiple_of: int | None = None,
    ):
        super().__init__(
            tokenizer,
            corpus,
            group_size=group_size,
            positives_per_query=positives_per_query,
            seed=seed,
            pad_to_multiple_of=pad_to_multiple_of,
        )
        self.max_length = max_length

    @classmethod
    def for_model(cls, model: Any, corpus: Mapping[str, str], **kwargs: Any) -> RerankerCollator:
        """A collator with the tokenizer and max length of a :class:`~hf_robust_ir.modeling.CrossEncoder`."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.setdefault("max_length", model.max_length)
        return cls(model.tokenizer, corpus, **kwargs)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        queries, documents, pair_rows, pair_cols = [], [], [], []
        groups: list[list[int]] = []
        for i, row in enumerate(rows):
            check_candidate_lists(row, f"training row of query {row.get('query_id')!r}", None)
            group, seen = [], set()
            for j in self.sample(row):
                doc_id = row["doc_ids"][j]
                if doc_id in seen:  # a document listed twice for one query is scored once
                    continue
                seen.add(doc_id)
                group.append(j)
                if doc_id not in self.corpus:
                    raise KeyError(f"document id {doc_id!r} of query {row['query_id']!r} is not in the corpus")
                queries.append(row["query"])
                documents.append(self.corpus[doc_id])
                pair_rows.append(i)
                pair_cols.append(len(group) - 1)
            groups.append(group)
        width = max(len(g) for g in groups)
        labels = torch.zeros(len(rows), width)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        teacher = torch.full((len(rows), width), float("nan"))
        for i, (row, group) in enumerate(zip(rows, groups)):
            # a document listed more than once takes its largest label (and teacher score), as in the bi-encoder's
            # target matrix: one listed as a negative and again as a positive is a positive
            best_label, best_teacher = _largest_per_document(row["doc_ids"], row["labels"]), {}
            if len(row.get("teacher_scores") or []):
                best_teacher = _largest_per_document(row["doc_ids"], row["teacher_scores"])
            labels[i, : len(group)] = torch.tensor([best_label[row["doc_ids"][j]] for j in group])
            mask[i, : len(group)] = True
            if best_teacher:
                teacher[i, : len(group)] = torch.tensor([best_teacher[row["doc_ids"][j]] for j in group])
        pairs = self.tokenizer(
            queries,
            documents,
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors="pt",
        )
        return {
            "pairs": dict(pairs),
            "pair_rows": torch.tensor(pair_rows, dtype=torch.long),
            "pair_cols": torch.tensor(pair_cols, dtype=torch.long),
            "labels": labels,
            "mask": mask,
            "teacher": teacher,
            "doc_ids": [[row["doc_ids"][j] for j in group] for row, group in zip(rows, groups)],
        }


def _largest_per_document(doc_ids: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """Each document's largest value over its listings in a row (NaN, an unknown teacher score, counts as lowest)."""
    largest: dict[str, float] = {}
    for doc_id, value in zip(doc_ids, values):
        value = float(value)
        held = largest.get(doc_id)
        if held is None or value > held or (math.isnan(held) and not math.isnan(value)):
            largest[doc_id] = value
    return largest
