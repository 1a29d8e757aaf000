"""Hard-negative mining: the exact negatives a tiny corpus yields under each filter, teacher scores, chunking."""

from __future__ import annotations

import numpy as np
import pytest

from hf_robust_ir.data.schema import ROW_FEATURES, RetrievalCorpus
from hf_robust_ir.mining import MiningStats, mine_hard_negatives, select_negatives


class VectorEncoder:
    """Reads each text as its own vector ("0.8 0.6" -> [0.8, 0.6]), so every score is known in advance."""

    def __init__(self):
        self.document_calls: list[int] = []

    def encode_queries(self, texts, batch_size=32, bf16=False, show_progress_bar=False):
        return np.array([[float(x) for x in t.split()] for t in texts], dtype=np.float32)

    def encode_documents(self, texts, batch_size=32, bf16=False, show_progress_bar=False):
        self.document_calls.append(len(texts))
        return self.encode_queries(texts)


# Query "1 0" scores a document "s t" as s. Retrieved order (positives p1, p2 marked *):
#   n1 .95, n2 .90, *p1 .80, n3 .70, *p2 .60, n4 .58, n5 .50, n6 .40, n7 .30, n8 .20, *p3 .10
# Non-positive ranks: n1 0, n2 1, n3 2, n4 3, n5 4, n6 5, n7 6, n8 7.
# q2 has positive p3 (grade 2) only; its query "0 1" scores a document by its 2nd coordinate (see the fixture).
SCORES = {"n1": 0.95, "n2": 0.9, "p1": 0.8, "n3": 0.7, "p2": 0.6, "n4": 0.58, "n5": 0.5, "n6": 0.4, "n7": 0.3}
SCORES.update({"n8": 0.2, "p3": 0.1})


@pytest.fixture
def data() -> RetrievalCorpus:
    second = {"n8": 0.9, "p3": -0.5}  # what query q2 = "0 1" scores; 0 for the others
    corpus = {doc_id: f"{score} {second.get(doc_id, 0.0)}" for doc_id, score in SCORES.items()}
    return RetrievalCorpus(
        corpus=corpus,
        queries={"q1": "1 0", "q2": "0 1", "q3": "1 1"},
        qrels={"q1": {"p1": 1, "p2": 1, "n7": 0}, "q2": {"p3": 2}, "q3": {"n1": 0}},
        name="toy",
    )


def negatives_of(rows, query_id: str) -> list[str]:
    """The row's negatives, best first (judged negatives come before mined ones in the row itself)."""
    row = rows[[r["query_id"] for r in rows].index(query_id)]
    negatives = [
        (score, doc) for doc, label, score in zip(row["doc_ids"], row["labels"], row["teacher_scores"]) if not label
    ]
    return [doc for _, doc in sorted(negatives, reverse=True)]


def mine(data, **kwargs):
    kwargs.setdefault("num_negatives", 3)
    return mine_hard_negatives(VectorEncoder(), data, show_progress_bar=False, **kwargs)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, ["n1", "n2", "n3"]),  # the three most similar non-positives
        ({"range_min": 2, "range_max": 5}, ["n3", "n4", "n5"]),  # non-positive ranks 2, 3, 4
        # lowest positive p2 = 0.60: absolute margin 0.05 keeps score <= 0.55
        ({"absolute_margin": 0.05}, ["n5", "n6", "n7"]),
        # relative margin 0.2 keeps score <= 0.60 - 0.2 * 0.60 = 0.48
        ({"relative_margin": 0.2}, ["n6", "n7", "n8"]),
        ({"max_score": 0.75}, ["n3", "n4", "n5"]),
        ({"min_score": 0.35, "max_score": 0.75, "num_negatives": 10}, ["n3", "n4", "n5", "n6"]),
        # ranks are counted before the filters: range_min=3 skips n1, n2, n3 whatever max_score removes
        ({"range_min": 3, "max_score": 0.75}, ["n4", "n5", "n6"]),
        # window n1..n4 (ranks 0-3), all above 0.55: no negative passes
        ({"range_max": 4, "absolute_margin": 0.05}, []),
    ],
)
def test_expected_negatives_under_each_filter(data, kwargs, expected):
    rows = mine(data, **kwargs)
    assert negatives_of(rows, "q1") == expected


def test_rows_are_canonical_with_teacher_scores_for_every_document(data):
    rows = mine(data, absolute_margin=0.05)
    assert rows.features == ROW_FEATURES
    assert [r["query_id"] for r in rows] == ["q1", "q2"]  # q3 has no positive
    q1 = rows[0]
    # positives first with their grades, then the judged negative n7 (source qrels), then mined ones
    assert q1["doc_ids"] == ["p1", "p2", "n7", "n5", "n6"]
    assert q1["labels"] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert q1["label_source"] == ["qrels", "qrels", "qrels", "mined", "mined"]
    assert q1["teacher_scores"] == pytest.approx([0.8, 0.6, 0.3, 0.5, 0.4])

    # q2 = "0 1" scores n8 0.9, its positive p3 -0.5 (last of all) and the rest 0. With range_max=2 only the top 3
    # are retrieved, so p3 is not among them, yet it still gets its exact score. The rest tie at 0 (faiss breaks the
    # tie), so only the best negative is checked.
    q2 = mine(data, num_negatives=2, range_max=2)[1]
    assert q2["doc_ids"][0] == "p3" and q2["labels"][0] == 2.0
    assert q2["teacher_scores"][0] == pytest.approx(-0.5)
    assert q2["doc_ids"][1] == "n8" and q2["teacher_scores"][1] == pytest.approx(0.9)
    assert len(q2["doc_ids"]) == 3


def test_multiple_positives_use_the_lowest_positive_score():
    # positive scores 0.8 and 0.6; a candidate at 0.7 sits above the weaker positive, so a margin of 0 removes it
    ranked = [("a", 0.9), ("p1", 0.8), ("b", 0.7), ("p2", 0.6), ("c", 0.5)]
    chosen = select_negatives(ranked, {"p1": 0.8, "p2": 0.6}, num_negatives=5, absolute_margin=0.0)
    assert chosen == [("c", 0.5)]


def test_relative_margin_with_a_negative_positive_score():
    # pos = -0.5, r = 0.1: keep score <= -0.5 - 0.05 = -0.55 (pos * (1 - r) = -0.45 would keep more)
    ranked = [("a", -0.5), ("b", -0.52), ("c", -0.6)]
    stats = MiningStats()
    chosen = select_negatives(ranked, {"p": -0.5}, num_negatives=3, relative_margin=0.1, stats=stats)
    assert chosen == [("c", -0.6)]
    assert stats.skipped == {"relative_margin": 2} and stats.short_queries == 1


def test_identical_ids_are_not_candidates():
    data = RetrievalCorpus(
        corpus={"q1": "1 0", "a": "0.9 0", "p": "0.5 0", "b": "0.1 0"},
        queries={"q1": "1 0"},
        qrels={"q1": {"p": 1}},
    )
    assert negatives_of(mine(data, num_negatives=2), "q1") == ["a", "b"]
    assert negatives_of(mine(data, num_negatives=2, ignore_identical_ids=False), "q1") == ["q1", "a"]


def test_chunked_encoding_and_ivf_index_give_the_exact_result(data):
    encoder = VectorEncoder()
    rows = mine_hard_negatives(
        encoder, data, num_negatives=3, chunk_size=4, index_factory="IVF2,Flat", search_params="nprobe=2",
        absolute_margin=0.05, show_progress_bar=False,
    )  # fmt: skip
    assert encoder.document_calls == [4, 4, 3]
    assert negatives_of(rows, "q1") == ["n5", "n6", "n7"]


def test_argument_checks(data):
    with pytest.raises(ValueError, match="does not fit"):
        mine(data, num_negatives=5, range_min=2, range_max=5)
    with pytest.raises(ValueError, match="range_min"):
        mine(data, range_min=5, range_max=5)


def test_mine_command_writes_rows_and_corpus_pointer(tmp_path, tiny_model_path, capsys):
    import argparse
    import json

    import datasets
    from test_evaluation import write_beir_folder

    from hf_robust_ir.commands import mine as mine_command

    write_beir_folder(tmp_path / "beir", split="train")
    parser = argparse.ArgumentParser()
    mine_command.add_arguments(parser)
    out = tmp_path / "mined"
    argv = ["--model", tiny_model_path, "--data", str(tmp_path / "beir"), "--output", str(out), "--quiet"]
    argv += ["--num_negatives", "2", "--range_max", "4", "--max_length", "32"]
    assert mine_command.run(parser.parse_args(argv)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 3

    rows = datasets.load_from_disk(str(out))
    assert rows.features == ROW_FEATURES and len(rows) == 3
    assert len((out / "rows.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "hf_robust_ir_data.json").read_text())["corpus"] == str((tmp_path / "beir").resolve())
    for row in rows:
        assert row["labels"][0] > 0 and len(row["teacher_scores"]) == len(row["doc_ids"])
        assert sum(1 for label in row["labels"] if label == 0) >= 2  # q3 may add its judged negative d3


def test_mine_command_names_a_model_with_nan_embeddings_in_one_line(tmp_path, tiny_model_path, capsys):
    from test_evaluation import nan_model_folder, write_beir_folder

    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir", split="train")
    broken = nan_model_folder(tiny_model_path, tmp_path / "broken")
    capsys.readouterr()
    argv = ["mine", "--model", str(broken), "--data", str(tmp_path / "beir"), "--output", str(tmp_path / "out")]
    assert main(argv + ["--quiet", "--num_negatives", "2", "--range_max", "4", "--max_length", "32"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.splitlines()[-1].startswith("error: document 'd1' has a NaN or infinite embedding")


def test_a_shared_index_gives_the_same_rows_without_encoding_the_corpus_again(data):
    from hf_robust_ir.evaluation import DocumentIndex

    encoder = VectorEncoder()
    index = DocumentIndex.from_corpus(encoder, data.corpus, show_progress_bar=False)  # keeps no positive embeddings
    calls_after_indexing = len(encoder.document_calls)
    shared = mine_hard_negatives(encoder, data, num_negatives=3, show_progress_bar=False, index=index)
    # only the 3 positives were encoded again, not the corpus
    assert sum(encoder.document_calls[calls_after_indexing:]) == 3
    assert shared.to_list() == mine(data).to_list()


def test_positives_encoded_for_a_shared_index_show_the_progress_bar_asked_for(data):
    from hf_robust_ir.evaluation import DocumentIndex

    class ProgressRecordingEncoder(VectorEncoder):
        def __init__(self):
            super().__init__()
            self.document_progress: list[bool] = []

        def encode_documents(self, texts, batch_size=32, bf16=False, show_progress_bar=False):
            self.document_progress.append(show_progress_bar)
            return super().encode_documents(texts)

    encoder = ProgressRecordingEncoder()
    index = DocumentIndex.from_corpus(encoder, data.corpus, show_progress_bar=False)  # keeps no positive embeddings
    mine_hard_negatives(encoder, data, num_negatives=3, show_progress_bar=True, index=index)
    assert encoder.document_calls[-1] == 3  # the positives
    assert encoder.document_progress[-1] is True


def test_mine_command_refuses_a_cross_encoder_and_a_split_without_positives(tmp_path, tiny_model_path, capsys):
    from test_evaluation import save_tiny_reranker, write_beir_folder

    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir", split="train")
    (tmp_path / "beir" / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n")
    reranker = save_tiny_reranker(tmp_path / "reranker")
    capsys.readouterr()  # the save's progress bar
    base = ["mine", "--data", str(tmp_path / "beir"), "--quiet", "--max_length", "32"]
    assert main([*base, "--model", reranker, "--output", str(tmp_path / "a")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: --model") and "cross-encoder" in captured.err
    # no rows: save_to_disk would write a folder that load_from_disk (and `train`, `score --rows`) cannot read
    assert main([*base, "--model", tiny_model_path, "--split", "dev", "--output", str(tmp_path / "b")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and "dev.tsv" in captured.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mine_command_refuses_bad_sizes_before_loading_the_model(tmp_path, capsys):
    from test_evaluation import write_beir_folder

    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir", split="train")
    # the data folder stands in for the model: the check comes before any model is loaded
    base = ["mine", "--model", str(tmp_path / "beir"), "--data", str(tmp_path / "beir"), "--quiet"]
    base += ["--output", str(tmp_path / "out")]
    for extra, message in [
        (["--num_negatives", "0"], "num_negatives must be >= 1, got 0"),
        (["--range_min", "5", "--range_max", "5"], "need 0 <= range_min < range_max, got range_min=5, range_max=5"),
        (["--chunk_size", "0"], "chunk_size must be >= 1, got 0"),
        (["--batch_size", "0"], "batch_size must be >= 1, got 0"),
        (
            ["--min_score", "0.8", "--max_score", "0.5"],
            "min_score=0.8 is above max_score=0.5: no negative could be kept",
        ),
    ]:
        assert main([*base, *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        mine(RetrievalCorpus(corpus={"d": "1 0"}, queries={"q": "1 0"}, qrels={"q": {"d": 1}}), chunk_size=0)


def test_copies_of_a_positive_are_never_negatives():
    # "copy" has p1's exact text under another id: it ties with p1 at 0.8 and is an unlabeled positive. Like p1 it is
    # skipped before ranks are counted: non-positive ranks n1 0, n2 1, n3 2 (not n1 0, copy 1, n2 2).
    data = RetrievalCorpus(
        corpus={"n1": "0.9 0", "p1": "0.8 0", "copy": "0.8 0", "n2": "0.7 0", "n3": "0.5 0"},
        queries={"q1": "1 0"},
        qrels={"q1": {"p1": 1}},
    )
    stats = MiningStats()
    # range_max=2 retrieves enough for two non-positives although p1 and its copy both rank above n2
    rows = mine(data, num_negatives=2, range_max=2, stats=stats)
    assert negatives_of(rows, "q1") == ["n1", "n2"]
    assert rows[0]["doc_ids"] == ["p1", "n1", "n2"] and rows[0]["labels"] == [1.0, 0.0, 0.0]
    assert stats.copies_of_positives == 1
    assert negatives_of(mine(data, num_negatives=1, range_min=1, range_max=3), "q1") == ["n2"]


def test_documents_a_query_excludes_are_skipped_before_ranks_are_counted(data):
    # q1's non-positive ranks without n1 and n3: n2 0, n4 1, n5 2, n6 3 (range_max=2 still finds two of them)
    stats = MiningStats()
    rows = mine(data, num_negatives=2, range_max=2, excluded={"q1": ["n1", "n3"], "q2": []}, stats=stats)
    assert negatives_of(rows, "q1") == ["n2", "n4"]
    assert "n1" not in rows[0]["doc_ids"] and "n3" not in rows[0]["doc_ids"]
    assert negatives_of(rows, "q2")[0] == "n8"  # q2 excludes nothing (its other candidates all tie at 0)
    assert stats.excluded == 2 and stats.as_dict()["excluded_skipped"] == 2
    assert negatives_of(mine(data, num_negatives=1, range_min=1, excluded={"q1": {"n1"}}), "q1") == ["n3"]


def test_mine_command_names_faiss_settings_it_cannot_use_in_one_line(tmp_path, tiny_model_path, capsys):
    """Bad faiss settings are refused before the corpus is encoded, without a traceback."""
    from test_evaluation import write_beir_folder

    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir", split="train")  # 6 documents; the tiny model's embeddings have 32 dims
    base = ["mine", "--model", tiny_model_path, "--data", str(tmp_path / "beir"), "--quiet", "--max_length", "32"]
    base += ["--num_negatives", "2", "--range_max", "4", "--output", str(tmp_path / "out")]
    for extra, message in [
        (["--index_factory", "Bogus"], "error: --index_factory 'Bogus': could not parse index string Bogus"),
        (["--index_factory", "IVF4096,Flat"], "error: --index_factory 'IVF4096,Flat': 4096 lists need at least 4096"),
        (["--index_factory", "IVF2,PQ5"], "error: --index_factory 'IVF2,PQ5': The dimension of the vector (d)"),
        (["--search_params", "nprobe=abc"], "error: --search_params 'nprobe=abc': could not interpret parameters"),
        (["--index_factory", "HNSW32", "--search_params", "nprobe=4"], "error: --search_params 'nprobe=4': "),
    ]:
        assert main([*base, *extra]) == 2, extra
        captured = capsys.readouterr()  # stderr also holds the model's loading progress bar
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        assert captured.out == "" and len(errors) == 1 and errors[0].startswith(message), captured.err
        assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()
