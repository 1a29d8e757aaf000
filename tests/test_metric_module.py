"""The local ``evaluate`` module loads by path, offline, and gives the numbers of ``score_run``."""

from __future__ import annotations

import math
import os
from pathlib import Path

import evaluate
import pytest

from hf_robust_ir.evaluation import METRIC_KEYS, METRIC_MODULE_PATH, score_run

QRELS = {"q1": {"a": 1, "z": 0}, "q2": {"d": 1, "e": 2}, "q3": {"h": 1}, "q4": {"i": 0}}
RUN = {"q1": {"b": 0.9, "a": 0.8, "c": 0.7}, "q2": {"x": 0.9, "d": 0.8, "e": 0.1}, "q4": {"i": 1.0}}


def as_rows(qrels, run):
    """One prediction and one reference row per query of either dict (empty lists where a query is missing)."""
    query_ids = sorted(set(qrels) | set(run))
    predictions = [
        {"query_id": q, "doc_ids": list(run.get(q, {})), "scores": list(run.get(q, {}).values())} for q in query_ids
    ]
    references = [
        {"query_id": q, "doc_ids": list(qrels.get(q, {})), "relevance": list(qrels.get(q, {}).values())}
        for q in query_ids
    ]
    return predictions, references


@pytest.fixture(scope="module")
def metric():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: loading must not need the network
    return evaluate.load(METRIC_MODULE_PATH)


def test_loads_by_folder_and_by_script_path(metric):
    assert Path(METRIC_MODULE_PATH, "retrieval_metrics.py").is_file()
    assert metric.name == "retrieval_metrics"
    by_script = evaluate.load(str(Path(METRIC_MODULE_PATH, "retrieval_metrics.py")))
    assert type(by_script).__name__ == "RetrievalMetrics"


def test_same_numbers_as_score_run(metric):
    predictions, references = as_rows(QRELS, RUN)
    result = metric.compute(predictions=predictions, references=references)
    expected = score_run(QRELS, RUN)
    assert tuple(result) == METRIC_KEYS
    assert result == pytest.approx(expected, abs=1e-12)
    # q1: RR 1/2; q2: RR 1/2; q3: nothing retrieved, 0; q4 has no relevant document and is not averaged
    assert result["mrr@10"] == pytest.approx((0.5 + 0.5 + 0) / 3)


def test_rows_match_by_query_id_and_batches_accumulate(metric):
    predictions, references = as_rows(QRELS, RUN)
    # rows in different orders, fed in two batches
    metric.add_batch(predictions=predictions[:2], references=references[::-1][:2])
    metric.add_batch(predictions=predictions[2:], references=references[::-1][2:])
    assert metric.compute() == pytest.approx(score_run(QRELS, RUN), abs=1e-12)


def test_misaligned_row_lengths_are_rejected(metric):
    with pytest.raises(ValueError, match="2 doc_ids but 1 scores"):
        metric.compute(
            predictions=[{"query_id": "q", "doc_ids": ["a", "b"], "scores": [1.0]}],
            references=[{"query_id": "q", "doc_ids": ["a"], "relevance": [1]}],
        )


def test_a_fractional_grade_is_refused_not_truncated(metric):
    """An int64 feature would cut 0.5 to 0 (not relevant) and drop the query from the mean without a word."""
    predictions = [{"query_id": "q", "doc_ids": ["d1", "d2"], "scores": [0.9, 0.5]}]
    with pytest.raises(ValueError, match="grade 0.5 of query 'q', document 'd2' is not an integer"):
        metric.compute(predictions=predictions, references=[{"query_id": "q", "doc_ids": ["d2"], "relevance": [0.5]}])
    # whole grades given as floats are read as integers: d2 (grade 2) at rank 2 of 2
    result = metric.compute(
        predictions=predictions, references=[{"query_id": "q", "doc_ids": ["d2"], "relevance": [2.0]}]
    )
    assert result["mrr@10"] == pytest.approx(0.5) and result["map"] == pytest.approx(0.5)
    assert result["ndcg@10"] == pytest.approx((2 / math.log2(3)) / 2)  # trec_eval's gain is the grade: 2 at rank 2


def test_a_document_given_twice_with_different_values_is_refused(metric):
    references = [{"query_id": "q", "doc_ids": ["d1"], "relevance": [1]}]
    # d1 at 0.9 and again at 0.1 (e.g. two passages of one document): which score ranks it is ambiguous
    predictions = [
        {"query_id": "q", "doc_ids": ["d1", "d2"], "scores": [0.9, 0.5]},
        {"query_id": "q", "doc_ids": ["d1"], "scores": [0.1]},
    ]
    with pytest.raises(ValueError, match=r"query 'q': document 'd1' has two scores \(0.9 and 0.1\)"):
        metric.compute(predictions=predictions, references=references * 2)
    with pytest.raises(ValueError, match=r"query 'q': document 'd1' has two grades \(1 and 0\)"):
        metric.compute(
            predictions=predictions[:1],
            references=[{"query_id": "q", "doc_ids": ["d1", "d1"], "relevance": [1, 0]}],
        )
    # the same row twice (a distributed sampler repeats rows to even out its shards) is the row once: d1 at rank 1
    result = metric.compute(predictions=predictions[:1] * 2, references=references * 2)
    assert result == pytest.approx({"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map": 1.0})


def test_a_nan_score_is_refused_rather_than_ranked_anywhere(metric):
    """trec_eval ranked d2, scored NaN, above d1: MRR@10 read 0.5."""
    references = [{"query_id": "q", "doc_ids": ["d1"], "relevance": [1]}]
    predictions = [{"query_id": "q", "doc_ids": ["d1", "d2"], "scores": [0.5, math.nan]}]
    with pytest.raises(ValueError, match=r"run score of query 'q', document 'd2' is NaN: it cannot be ranked"):
        metric.compute(predictions=predictions, references=references)
