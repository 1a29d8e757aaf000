"""benchmarks/hybrid_guide_retrieval.py on a SciFact slice with a tiny model: weight 0 is the dense retriever as the
library's evaluator scores it, and ``bm25`` is what bm25s itself retrieves."""

import json

import numpy as np
import pytest
from conftest import benchmark_module

from hf_robust_ir.data.beir import load_beir
from hf_robust_ir.evaluation import RetrievalEvaluator, relevant_queries, score_run
from hf_robust_ir.modeling import BiEncoder


def test_weight_zero_is_the_dense_model_and_bm25_is_bm25s(tiny_model_path, small_beir, tmp_path):
    out = tmp_path / "guide.json"
    argv = ["--model", tiny_model_path, "--data_dir", str(small_beir.parent), "--datasets", small_beir.name,
            "--weights", "0", "0.6", "--max_length", "32", "--no-bf16", "--out", str(out)]  # fmt: skip
    with benchmark_module("hybrid_guide_retrieval") as bench:
        assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    scores = report["datasets"][small_beir.name]["scores"]
    assert set(scores) == {"hybrid@0", "hybrid@0.6", "bm25"}

    data = load_beir(small_beir, split="test")
    model = BiEncoder.from_pretrained(tiny_model_path, query_max_length=32, document_max_length=32)
    dense = RetrievalEvaluator(data, top_k=100, show_progress_bar=False)(model)
    assert scores["hybrid@0"]["ndcg@10"] == pytest.approx(dense["ndcg@10"], abs=1e-6)

    import bm25s
    import Stemmer

    doc_ids = list(data.corpus)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25(k1=1.5, b=0.75)
    retriever.index(bm25s.tokenize([data.corpus[d] for d in doc_ids], stopwords="en", stemmer=stemmer))
    query_ids = relevant_queries(data.qrels)
    tokens = bm25s.tokenize([data.queries[q] for q in query_ids], stopwords="en", stemmer=stemmer)
    found, found_scores = retriever.retrieve(tokens, k=len(doc_ids))
    run = {q: {doc_ids[j]: float(s) for j, s in zip(row, row_scores) if s > 0} for q, row, row_scores in
           zip(query_ids, np.asarray(found), np.asarray(found_scores))}  # fmt: skip
    assert scores["bm25"]["ndcg@10"] == pytest.approx(score_run(data.qrels, run)["ndcg@10"], abs=1e-6)
    assert scores["bm25"]["ndcg@10"] > 0


def test_bad_arguments_stop_with_a_message(tiny_model_path, small_beir, tmp_path):
    with benchmark_module("hybrid_guide_retrieval") as bench:
        argv = ["--model", tiny_model_path, "--data_dir", str(small_beir.parent), "--datasets", "missing"]
        with pytest.raises(SystemExit, match=r"^error: missing: .*test.tsv not found"):
            bench.main([*argv, "--out", str(tmp_path / "x.json")])
        assert not (tmp_path / "x.json").exists()
        with pytest.raises(SystemExit):
            bench.parse_args(["--weights", "-1", "--out", str(tmp_path / "x.json")])
        with pytest.raises(SystemExit):
            bench.parse_args([])  # --out is required
