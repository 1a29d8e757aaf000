"""Dense retrieval metrics (nDCG@10, Recall@100, MRR@10, MAP) as a local ``evaluate`` module.

Load it by path, offline: ``evaluate.load(hf_robust_ir.evaluation.METRIC_MODULE_PATH)``. The numbers come from
:func:`hf_robust_ir.evaluation.score_run` (pytrec_eval), the same function the retrieval evaluator uses.
"""

from __future__ import annotations

import math

import datasets
import evaluate

from hf_robust_ir.evaluation import score_run

_DESCRIPTION = """\
Ranking metrics of a retrieval run against graded relevance judgments, computed with pytrec_eval (trec_eval):
nDCG@10 (graded gains), Recall@100, MRR@10 (reciprocal rank of the first relevant document within the top 10) and MAP
(over everything retrieved). A document is relevant when its grade is > 0. The mean is taken over the queries with at
least one relevant judgment; such a query with no retrieved documents scores 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one row per query: ``{"query_id": str, "doc_ids": list[str], "scores": list[float]}``, the
        retrieved documents and their scores (higher is better; order does not matter, ties are broken as trec_eval
        does). A query that retrieved nothing may have empty lists.
    references: one row per query: ``{"query_id": str, "doc_ids": list[str], "relevance": list[int]}``, the judged
        documents and their integer grades (0 = not relevant; a fractional grade is an error). Rows are matched to
        predictions by ``query_id``, not by position; several rows with the same ``query_id`` are merged, and a
        document listed again must have the same score (grade) as before.
Returns:
    ``{"ndcg@10": float, "recall@100": float, "mrr@10": float, "map": float}``
Examples:
    >>> import evaluate
    >>> from hf_robust_ir.evaluation import METRIC_MODULE_PATH
    >>> metric = evaluate.load(METRIC_MODULE_PATH)
    >>> metric.compute(
    ...     predictions=[{"query_id": "q1", "doc_ids": ["d1", "d2"], "scores": [0.9, 0.5]}],
    ...     references=[{"query_id": "q1", "doc_ids": ["d2"], "relevance": [1]}],
    ... )["mrr@10"]
    0.5
"""

_CITATION = """\
@inproceedings{VanGysel2018pytreceval,
  title={Pytrec\\_eval: An Extremely Fast Python Interface to trec\\_eval},
  author={Van Gysel, Christophe and de Rijke, Maarten},
  booktitle={SIGIR},
  year={2018}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalMetrics(evaluate.Metric):
    """nDCG@10, Recall@100, MRR@10 and MAP of a retrieval run (pytrec_eval)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "query_id": datasets.Value("string"),
                        "doc_ids": datasets.Sequence(datasets.Value("string")),
                        "scores": datasets.Sequence(datasets.Value("float64")),
                    },
                    "references": {
                        "query_id": datasets.Value("string"),
                        "doc_ids": datasets.Sequence(datasets.Value("string")),
                        # float, so that a fractional grade reaches score_run's check instead of being cut to int
                        "relevance": datasets.Sequence(datasets.Value("float64")),
                    },
                }
            ),
            reference_urls=["https://github.com/cvangysel/pytrec_eval", "https://github.com/usnistgov/trec_eval"],
        )

    def _compute(self, predictions: list[dict], references: list[dict]) -> dict[str, float]:
        run: dict[str, dict[str, float]] = {}
        for row in predictions:
            if len(row["doc_ids"]) != len(row["scores"]):
                raise ValueError(
                    f"query {row['query_id']!r}: {len(row['doc_ids'])} doc_ids but {len(row['scores'])} scores"
                )
            _merge(run.setdefault(row["query_id"], {}), row["query_id"], row["doc_ids"], row["scores"], "scores")
        qrels: dict[str, dict[str, float]] = {}
        for row in references:
            if len(row["doc_ids"]) != len(row["relevance"]):
                raise ValueError(
                    f"query {row['query_id']!r}: {len(row['doc_ids'])} doc_ids but {len(row['relevance'])} grades"
                )
            _merge(qrels.setdefault(row["query_id"], {}), row["query_id"], row["doc_ids"], row["relevance"], "grades")
        return score_run(qrels, run)


def _merge(merged: dict[str, float], query_id: str, doc_ids: list[str], values: list[float], what: str) -> None:
    """Add one row's documents to its query's; a document seen again must have the same value (a repeated row, as a
    distributed sampler pads its shards with, is harmless; two different scores or grades are ambiguous)."""
    for doc_id, value in zip(doc_ids, map(float, values)):
        seen = merged.setdefault(doc_id, value)
        if seen != value and not (math.isnan(seen) and math.isnan(value)):
            raise ValueError(f"query {query_id!r}: document {doc_id!r} has two {what} ({seen:g} and {value:g})")
