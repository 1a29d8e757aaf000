"""Retrieval evaluation: metric values worked by hand, faiss search, chunked indexing, the evaluator end to end."""

from __future__ import annotations

import json
import math
import zlib

import faiss
import numpy as np
import pytest

from hf_robust_ir.data.schema import RetrievalCorpus
from hf_robust_ir.evaluation import (
    METRIC_KEYS,
    DocumentIndex,
    RetrievalEvaluator,
    build_index,
    per_query_scores,
    score_run,
    search,
)


class HashingEncoder:
    """Deterministic bag-of-words vectors: each lower-cased word adds 1 at ``crc32(word) % dim``; L2-normalized."""

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.document_calls: list[int] = []

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def encode_queries(self, texts, batch_size=32, bf16=False, show_progress_bar=False):
        return self._encode(texts)

    def encode_documents(self, texts, batch_size=32, bf16=False, show_progress_bar=False):
        self.document_calls.append(len(texts))
        return self._encode(texts)


L3 = math.log2(3)  # discount of rank 2: 1 / log2(2 + 1)

# Hand-worked run. trec_eval's nDCG uses the grade as gain and 1/log2(rank + 1) as discount.
QRELS = {
    "q1": {"a": 1},  # one relevant doc, retrieved at rank 2
    "q2": {"d": 1, "e": 1},  # two relevant docs, one at rank 2, the other never retrieved
    "q3": {"f": 2, "g": 1},  # graded: the grade-1 doc comes before the grade-2 doc
    "q4": {"h": 1},  # relevant doc, but the run has nothing for q4
    "q5": {"i": 0},  # no relevant doc: not evaluated at all
    "q6": {"r": 1, "z": 0},  # relevant doc at rank 11: outside MRR@10 and nDCG@10, inside Recall@100
}
RUN = {
    "q1": {"b": 0.9, "a": 0.8, "c": 0.7},
    "q2": {"x": 0.9, "d": 0.8, "y": 0.7},
    "q3": {"g": 0.9, "f": 0.8},
    "q5": {"i": 1.0},
    "q6": {**{f"n{i}": 1.0 - i / 100 for i in range(10)}, "r": 0.5},
    "q7": {"a": 1.0},  # not judged: ignored
}
EXPECTED = {
    # DCG = 1/log2(3), IDCG = 1;  RR = 1/2;  recall = 1/1;  AP = (1/2) / 1
    "q1": {"ndcg@10": 1 / L3, "recall@100": 1.0, "mrr@10": 0.5, "map": 0.5},
    # DCG = 1/log2(3), IDCG = 1 + 1/log2(3);  RR = 1/2;  recall = 1/2;  AP = (1/2) / 2
    "q2": {"ndcg@10": (1 / L3) / (1 + 1 / L3), "recall@100": 0.5, "mrr@10": 0.5, "map": 0.25},
    # DCG = 1 + 2/log2(3), IDCG = 2 + 1/log2(3);  RR = 1;  recall = 1;  AP = (1/1 + 2/2) / 2
    "q3": {"ndcg@10": (1 + 2 / L3) / (2 + 1 / L3), "recall@100": 1.0, "mrr@10": 1.0, "map": 1.0},
    # nothing retrieved: 0 everywhere (pytrec_eval would leave q4 out of its output)
    "q4": {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0, "map": 0.0},
    # rank 11: nDCG@10 = 0, MRR@10 = 0 (uncut RR would be 1/11), recall = 1, AP = (1/11) / 1
    "q6": {"ndcg@10": 0.0, "recall@100": 1.0, "mrr@10": 0.0, "map": 1 / 11},
}


def test_per_query_scores_match_hand_worked_values():
    scores = per_query_scores(QRELS, RUN)
    assert set(scores) == set(EXPECTED)  # q5 (no relevant doc) and q7 (not judged) are not evaluated
    for qid, expected in EXPECTED.items():
        assert scores[qid] == pytest.approx(expected, abs=1e-9), qid


def test_score_run_averages_over_judged_queries_with_a_relevant_doc():
    metrics = score_run(QRELS, RUN)
    assert tuple(metrics) == METRIC_KEYS
    # e.g. MRR@10 = (1/2 + 1/2 + 1 + 0 + 0) / 5 = 0.4
    assert metrics["mrr@10"] == pytest.approx(0.4)
    assert metrics["recall@100"] == pytest.approx((1 + 0.5 + 1 + 0 + 1) / 5)
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(np.mean([row[key] for row in EXPECTED.values()]), abs=1e-12)


def test_score_run_other_cutoffs_and_empty_inputs():
    metrics = score_run(QRELS, RUN, ndcg_at=(1, 10), recall_at=(2,), mrr_at=(1,))
    assert set(metrics) == {"ndcg@1", "ndcg@10", "recall@2", "mrr@1", "map"}
    # nDCG@1: only q3 has a relevant doc at rank 1 (gain 1 of an ideal 2)
    assert metrics["ndcg@1"] == pytest.approx(0.5 / 5)
    assert score_run({}, RUN) == dict.fromkeys(METRIC_KEYS, 0.0)
    assert score_run(QRELS, {}) == dict.fromkeys(METRIC_KEYS, 0.0)


def test_fractional_grades_are_refused_rather_than_cut():
    assert score_run({"q": {"a": 2.0, "b": 0}}, {"q": {"a": 1.0, "b": 0.5}})["ndcg@10"] == 1.0  # 2.0 is an integer
    with pytest.raises(ValueError, match=r"grade 0.5 of query 'q', document 'a' is not an integer"):
        score_run({"q": {"a": 0.5}}, {"q": {"a": 1.0}})
    for grade in (float("nan"), float("inf")):  # named like a fractional grade, not Python's conversion error
        with pytest.raises(ValueError, match=rf"grade {grade!r} of query 'q', document 'a' is not an integer"):
            score_run({"q": {"a": grade, "b": 1}}, {"q": {"a": 1.0}})


def test_a_nan_run_score_is_refused_rather_than_ranked_anywhere():
    # trec_eval put the NaN-scored "a" at rank 3 here, below "b" and "c": MRR@10 read 1/3
    with pytest.raises(ValueError, match=r"run score of query 'q', document 'a' is NaN"):
        score_run({"q": {"a": 1}}, {"q": {"a": float("nan"), "b": 0.5, "c": 0.2}})
    with pytest.raises(ValueError, match=r"run score of query 'q', document 'b' is NaN"):
        score_run({"q": {"a": 1}}, {"q": {"b": float("nan"), "a": 0.5}})
    assert score_run({"q": {"a": 1}}, {"q": {"b": 0.9, "a": 0.5, "c": -math.inf}})["mrr@10"] == 0.5  # inf ranks


def test_an_index_refuses_sizes_below_one_before_encoding(tiny_model_path):
    from hf_robust_ir.evaluation import DocumentIndex
    from hf_robust_ir.modeling import BiEncoder

    model = BiEncoder.from_pretrained(tiny_model_path)
    for sizes in ({"chunk_size": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="batch_size and chunk_size must be >= 1"):
            DocumentIndex.from_corpus(model, {"d": "text"}, show_progress_bar=False, **sizes)


def test_mrr_cut_follows_trec_eval_tie_order():
    # equal scores: trec_eval ranks the larger doc id first, so "b" is rank 1 and "a" rank 2
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0, "b": 1.0}}
    assert score_run(qrels, run, mrr_at=(1,))["mrr@1"] == 0.0
    assert score_run(qrels, run, mrr_at=(2,))["mrr@2"] == 0.5


# ---------------------------------------------------------------------------------------------------------- faiss


def exact_top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def random_data():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((400, 16)).astype(np.float32)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    return queries, docs


def test_exact_search_returns_true_top_k(random_data):
    queries, docs = random_data
    scores, indices = search(queries, docs, top_k=10)
    np.testing.assert_array_equal(indices, exact_top_k(queries, docs, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ docs.T, indices, axis=1), rtol=1e-5)
    # non-contiguous float64 input is accepted; k is capped at the corpus size
    scores, indices = search(queries.astype(np.float64)[:, :], np.asfortranarray(docs[:5]), top_k=50)
    assert indices.shape == (20, 5)


@pytest.mark.parametrize(
    "factory, params, min_recall",
    [("IVF8,Flat", "nprobe=8", 1.0), ("IVF8,Flat", None, 0.99), ("HNSW16", "efSearch=64", 0.9)],
)
def test_index_factory_strings(random_data, factory, params, min_recall):
    queries, docs = random_data
    _, indices = search(queries, docs, top_k=10, index_factory=factory, search_params=params)
    truth = exact_top_k(queries, docs, 10)
    recall = np.mean([len(set(found) & set(true)) / 10 for found, true in zip(indices, truth)])
    assert recall >= min_recall
    assert build_index(16, factory).metric_type == faiss.METRIC_INNER_PRODUCT


def test_document_index_adds_in_chunks_and_trains_ivf_on_first_chunks(random_data):
    queries, docs = random_data
    ids = [f"d{i}" for i in range(len(docs))]
    index = DocumentIndex("IVF8,Flat", search_params="nprobe=8", max_train_points=150, keep_ids={"d3", "d399"})
    for start in range(0, len(docs), 100):
        index.add(ids[start : start + 100], docs[start : start + 100])
        # trained (and filled) once 150 vectors were pending, i.e. after the second chunk
        assert index.index.is_trained == (start >= 100)
    index.finish()
    assert index.index.ntotal == len(docs) == len(index)
    np.testing.assert_array_equal(index.kept_embeddings["d399"], docs[399])
    hits = index.search(queries, top_k=5)
    assert [[doc_id for doc_id, _ in row] for row in hits] == [
        [ids[i] for i in row] for row in exact_top_k(queries, docs, 5)
    ]


def test_document_index_from_corpus_encodes_chunk_by_chunk():
    corpus = {f"d{i}": f"word{i} common" for i in range(25)}
    model = HashingEncoder()
    index = DocumentIndex.from_corpus(model, corpus, chunk_size=10, show_progress_bar=False)
    assert model.document_calls == [10, 10, 5]
    assert index.doc_ids == list(corpus)
    assert index.index.ntotal == 25


class SizedHashingEncoder(HashingEncoder):
    """A :class:`HashingEncoder` that tells its embedding size, as a BiEncoder does."""

    @property
    def embedding_dim(self) -> int:
        return self.dim


def test_index_settings_faiss_refuses_are_named_before_the_corpus_is_encoded():
    """A typo in ``search_params`` failed inside faiss only once the whole corpus was encoded (and one in
    ``index_factory`` once the first chunk was)."""
    corpus = {f"d{i}": f"word{i} common" for i in range(25)}
    for settings, message in (
        ({"index_factory": "IVF2,Flat", "search_params": "nprob=2"}, r"search_params 'nprob=2' .* 'IVF2,Flat' index"),
        ({"index_factory": "Flat", "search_params": "nprobe=2"}, r"search_params 'nprobe=2' .* 'Flat' index"),
        ({"index_factory": "IVF2,Flatt"}, r"index_factory 'IVF2,Flatt' is not a faiss index"),
    ):
        model = SizedHashingEncoder()
        with pytest.raises(ValueError, match=message):
            DocumentIndex.from_corpus(model, corpus, chunk_size=10, show_progress_bar=False, **settings)
        assert model.document_calls == []
    model = HashingEncoder()  # no embedding_dim: the index is built at the first chunk, and refused there
    with pytest.raises(ValueError, match=r"search_params 'nprob=2'"):
        DocumentIndex.from_corpus(
            model, corpus, chunk_size=10, index_factory="IVF2,Flat", search_params="nprob=2", show_progress_bar=False
        )
    assert model.document_calls == [10]
    model = SizedHashingEncoder()
    index = DocumentIndex.from_corpus(
        model, corpus, chunk_size=10, index_factory="IVF2,Flat", search_params="nprobe=2", show_progress_bar=False
    )
    assert model.document_calls == [10, 10, 5] and index.index.ntotal == 25
    assert faiss.extract_index_ivf(index.index).nprobe == 2
    with pytest.raises(ValueError, match="embeddings of size 8 for an index of size 64"):
        index.add(["new"], np.ones((1, 8), np.float32))


# ------------------------------------------------------------------------------------------------------ evaluator


@pytest.fixture
def tiny_corpus() -> RetrievalCorpus:
    return RetrievalCorpus(
        corpus={
            "d1": "apples grow on trees",
            "d2": "bananas are yellow fruit",
            "d3": "cars drive on roads",
            "q1": "what color are bananas",  # same id as query q1 and its exact text
        },
        queries={"q1": "what color are bananas", "q2": "where do apples grow", "q3": "roads"},
        qrels={"q1": {"d2": 1}, "q2": {"d1": 1, "d3": 0}, "q3": {"d3": 0}},
        name="tiny",
    )


def test_evaluator_end_to_end(tiny_corpus):
    evaluator = RetrievalEvaluator(tiny_corpus, top_k=3, batch_size=2, show_progress_bar=False)
    metrics = evaluator(HashingEncoder())
    assert tuple(metrics) == METRIC_KEYS
    assert set(evaluator.last_run) == {"q1", "q2"}  # q3 has no relevant document
    assert all(len(docs) == 3 for docs in evaluator.last_run.values())
    # the bag-of-words overlap ranks each query's relevant document first
    assert metrics == pytest.approx({"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map": 1.0})
    assert metrics == pytest.approx(score_run(tiny_corpus.qrels, evaluator.last_run))


def test_evaluator_drops_documents_whose_id_is_the_query_id(tiny_corpus):
    model = HashingEncoder()
    evaluator = RetrievalEvaluator(tiny_corpus, top_k=4, show_progress_bar=False)
    evaluator(model)
    assert "q1" not in evaluator.last_run["q1"]
    assert max(evaluator.last_run["q1"], key=evaluator.last_run["q1"].get) == "d2"

    keep = RetrievalEvaluator(tiny_corpus, top_k=4, ignore_identical_ids=False, show_progress_bar=False)
    metrics = keep(model)
    # the identical document now ranks first (cosine 1), pushing d2 to rank 2
    assert max(keep.last_run["q1"], key=keep.last_run["q1"].get) == "q1"
    assert metrics["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)


def test_evaluator_refuses_relevant_documents_missing_from_the_corpus(tiny_corpus):
    """Before, such a judgment was silently counted: recall@100 read 0.75 here for a model that found everything."""
    from hf_robust_ir.data.schema import DataFormatError

    qrels = {**tiny_corpus.qrels, "q2": {"d1": 1, "d3": 0, "d9": 1, "d8": 0}}  # d8, judged 0, changes no metric
    data = RetrievalCorpus(tiny_corpus.corpus, tiny_corpus.queries, qrels, "tiny")
    message = "tiny, field 'qrels': 1 relevant judgments name documents that are not in the corpus, which no model "
    message += "can retrieve: (query, document) [('q2', 'd9')]"
    with pytest.raises(DataFormatError) as exc:
        RetrievalEvaluator(data, show_progress_bar=False)
    assert str(exc.value) == message
    del qrels["q2"]["d9"]
    assert RetrievalEvaluator(data, show_progress_bar=False)(HashingEncoder())["recall@100"] == 1.0


def test_evaluator_logs_how_many_judged_queries_it_leaves_out(tiny_corpus, caplog):
    with caplog.at_level("INFO", logger="hf_robust_ir.evaluation"):
        evaluator = RetrievalEvaluator(tiny_corpus, show_progress_bar=False)
    assert evaluator.query_ids == ["q1", "q2"]
    assert caplog.messages == [
        "1 of 3 judged queries (tiny) have no relevant document (grade > 0) and are left out of the mean"
    ]
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_robust_ir.evaluation"):
        RetrievalEvaluator(RetrievalCorpus(tiny_corpus.corpus, tiny_corpus.queries, {"q1": {"d2": 1}}))
    assert caplog.messages == []


def test_evaluator_refuses_qrels_without_a_relevant_document(tiny_corpus):
    """Every metric read 0.0, like a model that finds nothing (a training run whose eval split has only grade-0
    judgments reported eval_ndcg@10 = 0 at every evaluation and chose its best checkpoint on that)."""
    from hf_robust_ir.data.schema import DataFormatError

    for qrels, judged in (({}, 0), ({"q3": {"d3": 0}}, 1)):
        data = RetrievalCorpus(tiny_corpus.corpus, tiny_corpus.queries, qrels, "tiny")
        with pytest.raises(DataFormatError) as exc:
            RetrievalEvaluator(data, name="tiny/dev")
        assert str(exc.value) == (
            f"tiny/dev, field 'qrels': no judged query has a relevant document (grade > 0) among {judged} judged "
            "queries: there is nothing to evaluate"
        )


def test_integer_ids_are_read_as_strings_in_corpus_queries_qrels_and_run(tiny_corpus):
    """pytrec_eval failed with an obscure TypeError on the integer ids of a corpus built by hand."""
    from hf_robust_ir.data.schema import DataFormatError

    data = RetrievalCorpus(
        corpus={10: "apples grow on trees", 11: "bananas are yellow fruit", np.int64(12): "cars drive on roads"},
        queries={1: "where do apples grow", "2": "what color are bananas"},
        qrels={1: {10: 1}, 2: {"11": 1, 12: 0}},  # strings and integers mixed: they still match
        name="ints",
    )
    evaluator = RetrievalEvaluator(data, top_k=3, show_progress_bar=False)
    metrics = evaluator(HashingEncoder())
    assert metrics == pytest.approx({"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map": 1.0})
    assert set(evaluator.last_run) == {"1", "2"} and set(evaluator.last_run["1"]) == {"10", "11", "12"}
    assert data.qrels == {1: {10: 1}, 2: {"11": 1, 12: 0}}  # the caller's corpus is left as it was
    assert RetrievalEvaluator(tiny_corpus, show_progress_bar=False).data is tiny_corpus  # string ids: no copy
    assert score_run({1: {10: 1}}, {"1": {10: 0.5, 11: 0.9}})["mrr@10"] == 0.5

    # two ids that are one string: either could be meant
    with pytest.raises(DataFormatError, match=r"^ints, field 'corpus': ids 10 and '10' are one id as strings"):
        RetrievalEvaluator(RetrievalCorpus({10: "a", "10": "b"}, data.queries, data.qrels, "ints"))
    with pytest.raises(DataFormatError, match=r"^qrels: ids 1 and '1' are one id as strings"):
        score_run({1: {"a": 1}, "1": {"b": 1}}, {})
    with pytest.raises(DataFormatError, match=r"^run: ids 10 and '10' \(documents of query '1'\) are one id"):
        score_run({"1": {"10": 1}}, {"1": {10: 0.5, "10": 0.4}})
    # a float id (a qrels column read with a missing value, say) is no id
    with pytest.raises(DataFormatError, match=r"^ints, field 'qrels': id 1.0 is a float: ids are strings"):
        RetrievalEvaluator(RetrievalCorpus(data.corpus, data.queries, {1.0: {10: 1}}, "ints"))


class BrokenEncoder(HashingEncoder):
    """A model whose output overflowed: row ``nan_row`` of every document (or query) batch is NaN (or infinite)."""

    def __init__(self, nan_row: int, queries: bool = False):
        super().__init__()
        self.nan_row, self.queries = nan_row, queries

    def encode_queries(self, texts, batch_size=32, bf16=False, show_progress_bar=False):
        out = self._encode(texts)
        if self.queries:
            out[self.nan_row, 3] = np.inf
        return out

    def encode_documents(self, texts, batch_size=32, bf16=False, show_progress_bar=False):
        out = self._encode(texts)
        if not self.queries:
            out[self.nan_row] = np.nan
        return out


def test_nan_or_infinite_embeddings_are_refused(tiny_corpus):
    """Before, faiss left a NaN document out of every result list and returned nothing for a NaN query: the metrics
    read like those of a model that could not find the document (or anything)."""
    evaluator = RetrievalEvaluator(tiny_corpus, show_progress_bar=False)
    with pytest.raises(ValueError, match=r"^document 'd2' has a NaN or infinite embedding \(1 of 4 in this chunk\)"):
        evaluator(BrokenEncoder(nan_row=1))
    with pytest.raises(ValueError, match=r"^query 'q2' has a NaN or infinite embedding \(1 of 2 in this chunk\)"):
        evaluator(BrokenEncoder(nan_row=1, queries=True))
    index = DocumentIndex()
    index.add(["a", "b"], np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match=r"^query of row 0 has a NaN"):
        index.finish().search(np.array([[np.nan, 1.0]], np.float32), top_k=1)


# ------------------------------------------------------------------------------------------------------------ CLI


def write_beir_folder(folder, split: str = "test") -> None:
    """A 6-document BEIR folder with 3 judged queries."""
    import json

    docs = {
        "d1": ("Apples", "apples grow on trees in orchards"),
        "d2": ("Bananas", "bananas are a yellow tropical fruit"),
        "d3": ("Cars", "cars drive on roads and highways"),
        "d4": ("Boats", "boats sail on the sea"),
        "d5": ("", "trains run on rails"),
        "d6": ("Planes", "planes fly in the sky"),
    }
    queries = {"q1": "where do apples grow", "q2": "what color are bananas", "q3": "how do boats travel"}
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for doc_id, (title, text) in docs.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq3\td4\t1\nq3\td3\t0\n"
    )


def test_eval_command_prints_one_json_object(tmp_path, tiny_model_path, capsys):
    import argparse
    import json

    from hf_robust_ir.commands import eval as eval_command

    write_beir_folder(tmp_path / "beir")
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    out_file = tmp_path / "out" / "metrics.json"
    argv = ["--model", tiny_model_path, "--data", str(tmp_path / "beir"), "--top_k", "5", "--quiet"]
    argv += ["--max_length", "32", "--output", str(out_file), "--run_output", str(tmp_path / "run.trec")]
    assert eval_command.run(parser.parse_args(argv)) == 0
    stdout = capsys.readouterr().out
    assert len(stdout.strip().splitlines()) == 1
    metrics = json.loads(stdout)
    assert tuple(metrics) == METRIC_KEYS
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert json.loads(out_file.read_text()) == metrics
    assert len((tmp_path / "run.trec").read_text().splitlines()) == 3 * 5

    missing = parser.parse_args(["--model", tiny_model_path, "--data", str(tmp_path / "nope")])
    assert eval_command.run(missing) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_trec_run_file_keeps_the_evaluated_order_and_distinct_scores(tmp_path):
    from hf_robust_ir.commands.eval import write_trec_run

    # trec_eval re-sorts a run file by score, then by doc id descending: scores 0.1234561 and 0.1234564 written to 6
    # decimals would tie and swap, and tied scores are ranked as the evaluation ranked them (the larger id first)
    write_trec_run({"q": {"a": 0.1234561, "b": 0.1234564, "c": 0.5, "d": 0.5}}, tmp_path / "run.trec", tag="t")
    assert (tmp_path / "run.trec").read_text().splitlines() == [
        "q Q0 d 1 0.5 t",
        "q Q0 c 2 0.5 t",
        "q Q0 b 3 0.1234564 t",
        "q Q0 a 4 0.1234561 t",
    ]


def test_eval_command_creates_the_folders_of_its_run_output(tmp_path, tiny_model_path, capsys):
    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir")
    run_file = tmp_path / "runs" / "tiny" / "test.trec"
    argv = ["eval", "--model", tiny_model_path, "--data", str(tmp_path / "beir"), "--quiet", "--max_length", "32"]
    assert main([*argv, "--top_k", "2", "--run_output", str(run_file)]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(METRIC_KEYS)
    lines = [line.split() for line in run_file.read_text().splitlines()]
    assert [(qid, rank) for qid, _, _, rank, _, _ in lines] == [(q, r) for q in ("q1", "q2", "q3") for r in "12"]


def test_eval_command_refuses_output_paths_it_cannot_write_before_loading_anything(tmp_path, capsys, monkeypatch):
    """--output naming a folder failed with IsADirectoryError after the whole evaluation."""
    from hf_robust_ir.cli import main
    from hf_robust_ir.commands import eval as eval_command

    monkeypatch.setattr(eval_command, "load_bi_encoder", lambda *a: pytest.fail("the model was loaded"))
    write_beir_folder(tmp_path / "beir")
    (tmp_path / "results").mkdir()
    (tmp_path / "plain").write_text("x")
    argv = ["eval", "--model", str(tmp_path / "beir"), "--data", str(tmp_path / "beir"), "--quiet"]
    cases = [
        (["--output", str(tmp_path / "results")], f"error: --output {str(tmp_path / 'results')!r} is a folder"),
        (
            ["--run_output", str(tmp_path / "plain" / "run.trec")],
            f"error: --run_output {str(tmp_path / 'plain' / 'run.trec')!r} cannot be made: {str(tmp_path / 'plain')!r}"
            " is a file",
        ),
    ]
    for extra, message in cases:
        assert main([*argv, *extra]) == 2
        assert capsys.readouterr().err.strip().startswith(message)


def test_evaluator_and_eval_command_refuse_nonpositive_sizes_before_encoding(tiny_corpus, tmp_path, capsys):
    from hf_robust_ir.cli import main

    for name in ("top_k", "batch_size", "chunk_size"):
        with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
            RetrievalEvaluator(tiny_corpus, **{name: 0})
    write_beir_folder(tmp_path / "beir")
    argv = ["eval", "--model", str(tmp_path / "beir"), "--data", str(tmp_path / "beir"), "--quiet"]
    # the data folder stands in for the model: the check comes before any model is loaded
    assert main([*argv, "--top_k", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "error: top_k must be >= 1, got 0\n"
    assert main([*argv, "--max_length", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "error: max_length must be >= 1, got 0\n"


def test_mrr_cut_ranks_at_trec_eval_float32_precision():
    # trec_eval keeps scores as float32: 0.3 + 1e-11 and 0.3 tie there, so the larger id "b" is rank 1, as nDCG@1 says
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 0.30000000001, "b": 0.3}}
    metrics = score_run(qrels, run, ndcg_at=(1,), mrr_at=(1, 2))
    assert metrics["ndcg@1"] == 0.0
    assert metrics["mrr@1"] == 0.0
    assert metrics["mrr@2"] == 0.5


def test_document_index_refuses_repeated_ids_unfinished_searches_and_empty_corpora():
    from hf_robust_ir.evaluation import DocumentIndex

    vectors = np.eye(3, dtype=np.float32)
    index = DocumentIndex()
    index.add(["a", "b"], vectors[:2])
    with pytest.raises(ValueError, match="'b' is added to the index twice"):  # across chunks
        index.add(["b"], vectors[2:])
    with pytest.raises(ValueError, match="'c' is added to the index twice"):  # within one chunk
        DocumentIndex().add(["c", "c"], vectors[:2])
    index.add(["c"], vectors[2:])
    assert [doc for doc, _ in index.finish().search(vectors[:1], top_k=1)[0]] == ["a"]
    assert sorted(doc for doc, _ in index.search(vectors[:1], top_k=3)[0]) == ["a", "b", "c"]  # each once
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        index.search(vectors[:1], top_k=0)
    trained = DocumentIndex(index_factory="IVF1,Flat", max_train_points=100)
    trained.add(["x", "y"], vectors[:2])  # fewer than max_train_points: waiting for the index's training
    with pytest.raises(ValueError, match="call finish"):
        trained.search(vectors[:1], top_k=1)
    assert [doc for doc, _ in trained.finish().search(vectors[:1], top_k=1)[0]] == ["x"]
    with pytest.raises(ValueError, match="corpus is empty"):
        DocumentIndex.from_corpus(None, {}, show_progress_bar=False)


def save_tiny_reranker(path) -> str:
    """A tiny random BertForSequenceClassification(num_labels=1) with the MiniLM tokenizer: a cross-encoder folder."""
    import torch
    from conftest import minilm_path, tiny_bert_config
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(num_labels=1)).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return str(path)


def test_eval_command_refuses_a_cross_encoder_and_a_split_without_relevant_documents(tmp_path, tiny_model_path, capsys):
    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir")
    (tmp_path / "beir" / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td3\t0\n")  # no relevant doc
    reranker = save_tiny_reranker(tmp_path / "reranker")
    capsys.readouterr()  # the save's progress bar
    base = ["eval", "--data", str(tmp_path / "beir"), "--quiet", "--max_length", "32"]
    # a reranker read as a bi-encoder would give metrics of a model nobody trained
    assert main([*base, "--model", reranker]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: --model") and "cross-encoder" in captured.err
    # 0.0 for every metric would read as a model that finds nothing
    assert main([*base, "--model", tiny_model_path, "--split", "dev"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and "dev.tsv" in captured.err


def nan_model_folder(tiny_model_path, folder):
    """A copy of the tiny model whose output is NaN (a NaN layer-norm weight): a broken checkpoint."""
    import torch
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(tiny_model_path)
    with torch.no_grad():
        model.embeddings.LayerNorm.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(folder)
    return folder


def test_eval_command_names_a_nan_embedding_in_one_line(tmp_path, tiny_model_path, capsys):
    """A model whose output is NaN (here a checkpoint with a NaN layer-norm weight) stopped the command with a
    traceback."""
    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir")
    broken = nan_model_folder(tiny_model_path, tmp_path / "broken")
    capsys.readouterr()  # the save's progress bar
    argv = ["eval", "--model", str(broken), "--data", str(tmp_path / "beir"), "--quiet", "--max_length", "32"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.splitlines()[-1] == (
        f"error: --model {str(broken)!r}: document 'd1' has a NaN or infinite embedding (6 of 6 in this chunk): "
        "the model's output is broken (an overflow under half precision, say)"
    )


def test_quiet_eval_draws_no_bar_of_transformers_and_the_loud_one_counts_queries(tiny_model_path, tmp_path, capsys):
    """--quiet left the "Loading weights" bar transformers draws when it loads the model; the query bar read
    "encode querys"."""
    import transformers

    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir")
    argv = ["eval", "--model", tiny_model_path, "--data", str(tmp_path / "beir")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Loading weights" in err and "encode queries" in err and "encode documents" in err
    assert main([*argv, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "encode" not in err
    assert transformers.utils.logging.is_progress_bar_enabled()  # restored for whatever runs next in the process
