"""The canonical training row: a query with a labeled candidate list, by id, over a separate corpus.

```
query_id: str          query: str
doc_ids: list[str]     candidates (positives and negatives, any order)
labels: list[float]    relevance per candidate: 0 = negative, > 0 = relevant (graded allowed)
teacher_scores: list[float]  soft supervision per candidate; empty list when there is none
label_source: list[str]      provenance per candidate: "qrels", "relabeled:<judge>", "synthetic", "noise", ...
```

One optional column, :data:`EXCLUDED_COLUMN` (``excluded_doc_ids: list[str]``), lists documents that must never be a
negative of the row's query although they are not among its labels (relabeling's ``hn_remove`` writes there the
negatives its judge found relevant): the collators never sample them as the query's negatives, the target matrix
masks them out of the query's softmax when they reach the batch as another query's candidate, and hard-negative
mining (:func:`hf_robust_ir.mining.mine_hard_negatives`, the refresh callback) skips them. A document the query
labels relevant stays a positive.

The corpus is a plain ``dict[str, str]`` from document id to the text a model reads (``title + " " + text``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

ROW_FEATURES = datasets.Features(
    {
        "query_id": datasets.Value("string"),
        "query": datasets.Value("string"),
        "doc_ids": datasets.Sequence(datasets.Value("string")),
        "labels": datasets.Sequence(datasets.Value("float32")),
        "teacher_scores": datasets.Sequence(datasets.Value("float32")),
        "label_source": datasets.Sequence(datasets.Value("string")),
    }
)

EXCLUDED_COLUMN = "excluded_doc_ids"
EXCLUDED_FEATURE = datasets.Sequence(datasets.Value("string"))


def excluded_doc_ids(row: Mapping[str, Any]) -> list[str]:
    """The documents a row excludes from its query's negatives (:data:`EXCLUDED_COLUMN`; none when absent)."""
    values = row.get(EXCLUDED_COLUMN)
    return [] if values is None else list(values)


class DataFormatError(ValueError):
    """Bad input data. The message names the file (or dataset), the line (or row) and the field."""

    def __init__(self, source: str, line: int | None, field: str | None, problem: str):
        self.source, self.line, self.field, self.problem = source, line, field, problem
        where = str(source)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


def check_candidate_lists(
    row: Mapping[str, Any], source: str, line: int | None, fields: Sequence[str] = ("labels", "teacher_scores")
) -> None:
    """At least one ``doc_ids`` entry, and one value per entry in each of ``fields`` of a canonical row; ``labels``
    is required, the others may be empty. A :class:`DataFormatError` names the source, line and field (a shorter list
    would be broadcast over the row by torch or fail with a message about tensor sizes)."""
    n = len(row["doc_ids"])
    if n == 0:
        raise DataFormatError(
            source, line, "doc_ids", "no doc ids: a training row needs at least one candidate document"
        )
    for name in fields:
        values = row.get(name)
        if name != "labels" and (values is None or len(values) == 0):
            continue
        if values is None or len(values) != n:
            raise DataFormatError(
                source, line, name, f"{'no' if values is None else len(values)} values for {n} doc_ids"
            )


def document_text(title: str | None, text: str | None) -> str:
    """The text a model reads for a document, as MTEB and BEIR build it: ``title + " " + text``, stripped."""
    return f"{title or ''} {text or ''}".strip()


@dataclass
class RetrievalCorpus:
    """A BEIR-style collection: documents, queries and graded relevance judgments (qrels) of one split."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    name: str = ""

    def __repr__(self) -> str:  # the dicts are large; say their sizes instead
        return (
            f"RetrievalCorpus(name={self.name!r}, documents={len(self.corpus)}, queries={len(self.queries)}, "
            f"judged_queries={len(self.qrels)})"
        )


@dataclass
class TrainingData:
    """Canonical training rows plus the corpus their ``doc_ids`` point into."""

    rows: datasets.Dataset
    corpus: dict[str, str]
