"""BEIR folder loading and qrels -> canonical rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hf_robust_ir.data import ROW_FEATURES, DataFormatError, RetrievalCorpus, load_beir, rows_from_qrels

CORPUS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin thins blood."},
    {"_id": 2, "title": "", "text": "Ibuprofen reduces fever."},
    {"_id": "d3", "text": "Paracetamol is an analgesic."},
    {"_id": "d4", "title": "Only a title"},
]
QUERIES = [
    {"_id": "q1", "text": "what thins blood"},
    {"_id": "q2", "text": "fever medicine"},
    {"_id": "q3", "text": "painkillers"},
    {"_id": "q4", "text": "never judged"},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t0\n\nq2\t2\t1\nq2\td4\t1\nq3\td3\t0\n"


def jsonl(objects: list[dict]) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


def write_beir(
    root: Path,
    corpus: str | None = None,
    queries: str | None = None,
    qrels: str = QRELS,
    split: str = "test",
) -> Path:
    folder = root / "toy"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text(jsonl(CORPUS) if corpus is None else corpus)
    (folder / "queries.jsonl").write_text(jsonl(QUERIES) if queries is None else queries)
    (folder / "qrels" / f"{split}.tsv").write_text(qrels)
    return folder


def assert_error(exc: pytest.ExceptionInfo, file: str, line: int | None, field: str | None) -> None:
    message = str(exc.value)
    assert file in message
    if line is not None:
        assert f"line {line}" in message
        assert exc.value.line == line
    if field is not None:
        assert f"field '{field}'" in message
        assert exc.value.field == field


# ---------------------------------------------------------------- loading a valid folder


def test_load_small_folder_exactly(tmp_path):
    data = load_beir(write_beir(tmp_path))
    assert isinstance(data, RetrievalCorpus)
    assert data.name == "toy"
    assert data.corpus == {
        "d1": "Aspirin Aspirin thins blood.",
        "2": "Ibuprofen reduces fever.",
        "d3": "Paracetamol is an analgesic.",
        "d4": "Only a title",
    }
    assert data.queries == {"q1": "what thins blood", "q2": "fever medicine", "q3": "painkillers"}
    assert data.qrels == {"q1": {"d1": 2, "d3": 0}, "q2": {"2": 1, "d4": 1}, "q3": {"d3": 0}}
    assert all(type(g) is int for judged in data.qrels.values() for g in judged.values())


def test_all_queries_kept_when_asked(tmp_path):
    data = load_beir(write_beir(tmp_path), queries_for_split_only=False)
    assert list(data.queries) == ["q1", "q2", "q3", "q4"]


def test_qrels_header_is_optional_and_blank_lines_skipped(tmp_path):
    body = QRELS.split("\n", 1)[1]
    folder = write_beir(tmp_path, corpus="\n" + jsonl(CORPUS) + "\n\n", qrels=body)
    data = load_beir(folder)
    assert data.qrels == {"q1": {"d1": 2, "d3": 0}, "q2": {"2": 1, "d4": 1}, "q3": {"d3": 0}}
    assert len(data.corpus) == 4


def test_other_split(tmp_path):
    folder = write_beir(tmp_path, qrels="q4\td1\t1\n", split="train")
    data = load_beir(folder, split="train")
    assert data.qrels == {"q4": {"d1": 1}}
    assert data.queries == {"q4": "never judged"}


# ---------------------------------------------------------------- errors: corpus and queries


def test_malformed_json_line(tmp_path):
    corpus = jsonl(CORPUS[:2]) + '{"_id": "d3", "text": "unterminated\n' + jsonl(CORPUS[3:])
    with pytest.raises(DataFormatError, match="malformed JSON") as exc:
        load_beir(write_beir(tmp_path, corpus=corpus))
    assert_error(exc, "corpus.jsonl", 3, None)


def test_line_not_an_object(tmp_path):
    with pytest.raises(DataFormatError, match="JSON object") as exc:
        load_beir(write_beir(tmp_path, queries=jsonl(QUERIES) + '["q5", "text"]\n'))
    assert_error(exc, "queries.jsonl", 5, None)


def test_missing_id(tmp_path):
    corpus = jsonl(CORPUS[:1] + [{"title": "t", "text": "no id"}] + CORPUS[1:])
    with pytest.raises(DataFormatError, match="missing '_id'") as exc:
        load_beir(write_beir(tmp_path, corpus=corpus))
    assert_error(exc, "corpus.jsonl", 2, "_id")


def test_id_of_wrong_type(tmp_path):
    queries = jsonl(QUERIES + [{"_id": ["q5"], "text": "a list id"}])
    with pytest.raises(DataFormatError, match="string or an integer") as exc:
        load_beir(write_beir(tmp_path, queries=queries))
    assert_error(exc, "queries.jsonl", 5, "_id")


def test_duplicate_id_names_first_line(tmp_path):
    corpus = jsonl(CORPUS + [{"_id": "d3", "title": "", "text": "again"}])
    with pytest.raises(DataFormatError, match="duplicate _id 'd3' \\(first seen on line 3\\)") as exc:
        load_beir(write_beir(tmp_path, corpus=corpus))
    assert_error(exc, "corpus.jsonl", 5, "_id")


def test_int_and_string_ids_collide(tmp_path):
    corpus = jsonl(CORPUS + [{"_id": "2", "text": "string twin of int 2"}])
    with pytest.raises(DataFormatError, match="duplicate _id '2'") as exc:
        load_beir(write_beir(tmp_path, corpus=corpus))
    assert_error(exc, "corpus.jsonl", 5, "_id")


def test_document_without_title_or_text(tmp_path):
    corpus = jsonl(CORPUS[:3] + [{"_id": "d4", "contents": "a Pyserini field, not BEIR's"}])
    with pytest.raises(DataFormatError, match="no 'title' or 'text'") as exc:
        load_beir(write_beir(tmp_path, corpus=corpus))
    assert_error(exc, "corpus.jsonl", 4, "text")


def test_empty_query_text(tmp_path):
    queries = jsonl(QUERIES[:1] + [{"_id": "q2", "text": "  "}] + QUERIES[2:])
    with pytest.raises(DataFormatError, match="query text is empty") as exc:
        load_beir(write_beir(tmp_path, queries=queries))
    assert_error(exc, "queries.jsonl", 2, "text")


def test_text_of_wrong_type(tmp_path):
    corpus = jsonl(CORPUS[:1] + [{"_id": "d2", "title": "t", "text": 42}])
    with pytest.raises(DataFormatError, match="must be a string") as exc:
        load_beir(write_beir(tmp_path, corpus=corpus))
    assert_error(exc, "corpus.jsonl", 2, "text")


# ---------------------------------------------------------------- errors: qrels


def test_qrels_missing_column(tmp_path):
    with pytest.raises(DataFormatError, match="found 2") as exc:
        load_beir(write_beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t2\n"))
    assert_error(exc, "test.tsv", 3, "score")


def test_qrels_separated_by_spaces(tmp_path):
    with pytest.raises(DataFormatError, match="separated by tabs") as exc:
        load_beir(write_beir(tmp_path, qrels="q1 d1 1\n"))
    assert_error(exc, "test.tsv", 1, "corpus-id")


def test_qrels_extra_column(tmp_path):
    with pytest.raises(DataFormatError, match="found 4") as exc:
        load_beir(write_beir(tmp_path, qrels="q1\t0\td1\t1\n"))
    assert_error(exc, "test.tsv", 1, None)


def test_qrels_non_integer_score(tmp_path):
    with pytest.raises(DataFormatError, match="integer relevance grade") as exc:
        load_beir(write_beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t0.5\n"))
    assert_error(exc, "test.tsv", 2, "score")


def test_qrels_bytes_that_are_not_utf8_are_named_by_line(tmp_path):
    folder = write_beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    qrels = folder / "qrels" / "test.tsv"
    qrels.write_bytes(qrels.read_bytes() + b"q2\td\xff\t1\n")
    with pytest.raises(DataFormatError, match="not UTF-8 text") as exc:
        load_beir(folder)
    assert_error(exc, "test.tsv", 3, None)
    qrels.write_bytes(b"\xef\xbb\xbf" + b"q1\td1\t1\n")  # a byte-order mark is still fine
    assert load_beir(folder).qrels == {"q1": {"d1": 1}}


def test_qrels_unknown_query(tmp_path):
    with pytest.raises(DataFormatError, match="'q9' is not in queries.jsonl") as exc:
        load_beir(write_beir(tmp_path, qrels=QRELS + "q9\td1\t1\n"))
    assert_error(exc, "test.tsv", 8, "query-id")


def test_qrels_unknown_document(tmp_path):
    with pytest.raises(DataFormatError, match="'d9' is not in corpus.jsonl") as exc:
        load_beir(write_beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td9\t1\n"))
    assert_error(exc, "test.tsv", 2, "corpus-id")


def test_qrels_conflicting_grades(tmp_path):
    with pytest.raises(DataFormatError, match="on line 1") as exc:
        load_beir(write_beir(tmp_path, qrels="q1\td1\t1\nq1\td1\t1\nq1\td1\t2\n"))
    assert_error(exc, "test.tsv", 3, "score")


def test_missing_split_lists_available_splits(tmp_path):
    folder = write_beir(tmp_path, split="train")
    (folder / "qrels" / "dev.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"test\.tsv not found.*\['dev', 'train'\]"):
        load_beir(folder, split="test")


def test_corpus_or_queries_file_without_lines_is_named(tmp_path):
    """Before, an empty corpus.jsonl was reported as the first qrels line's document missing from it."""
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl: no documents: the file is empty") as exc:
        load_beir(write_beir(tmp_path, corpus="\n\r\n"))
    assert exc.value.line is None and exc.value.field is None
    with pytest.raises(DataFormatError, match=r"queries\.jsonl: no queries: the file is empty"):
        folder = write_beir(tmp_path, corpus=jsonl(CORPUS), queries="")
        load_beir(folder)
    (folder / "queries.jsonl").write_text(jsonl(QUERIES))
    (folder / "corpus.test.jsonl").write_text("")  # a split's own passages may be none
    assert len(load_beir(folder).corpus) == 4


def test_missing_corpus_file(tmp_path):
    folder = write_beir(tmp_path)
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_beir(folder)


# ---------------------------------------------------------------- rows_from_qrels


def test_rows_from_qrels_without_candidates(tmp_path):
    rows = rows_from_qrels(load_beir(write_beir(tmp_path)))
    assert rows.features == ROW_FEATURES
    assert rows.to_list() == [
        {
            "query_id": "q1",
            "query": "what thins blood",
            "doc_ids": ["d1", "d3"],
            "labels": [2.0, 0.0],
            "teacher_scores": [],
            "label_source": ["qrels", "qrels"],
        },
        {
            "query_id": "q2",
            "query": "fever medicine",
            "doc_ids": ["2", "d4"],
            "labels": [1.0, 1.0],
            "teacher_scores": [],
            "label_source": ["qrels", "qrels"],
        },
    ]  # q3 has only a grade-0 judgment: no row


def test_rows_from_qrels_with_candidates(tmp_path):
    data = load_beir(write_beir(tmp_path))
    candidates = {
        "q1": [("d4", 0.25), ("d1", 0.75), ("2", 0.5), ("d4", 0.0)],  # d3 (judged 0) is not a candidate
        "q2": [("d1", 0.125), ("d4", 0.5), ("2", 1.0), ("d3", 0.0)],
    }
    rows = rows_from_qrels(data, candidates, candidate_source="bm25")
    assert rows.to_list() == [
        {
            "query_id": "q1",
            "query": "what thins blood",
            "doc_ids": ["d1", "d4", "2"],
            "labels": [2.0, 0.0, 0.0],
            "teacher_scores": [0.75, 0.25, 0.5],
            "label_source": ["qrels", "bm25", "bm25"],
        },
        {
            "query_id": "q2",
            "query": "fever medicine",
            "doc_ids": ["2", "d4", "d1", "d3"],
            "labels": [1.0, 1.0, 0.0, 0.0],
            "teacher_scores": [1.0, 0.5, 0.125, 0.0],
            "label_source": ["qrels", "qrels", "bm25", "bm25"],
        },
    ]


def test_judged_negative_among_candidates_keeps_qrels_source(tmp_path):
    data = load_beir(write_beir(tmp_path))
    rows = rows_from_qrels(data, {"q1": [("d1", 1.0), ("d3", 0.5)], "q2": [("2", 1.0), ("d4", 1.0)]})
    assert rows[0]["doc_ids"] == ["d1", "d3"]
    assert rows[0]["label_source"] == ["qrels", "qrels"]
    assert rows[0]["teacher_scores"] == [1.0, 0.5]


def test_rows_from_qrels_positive_without_score(tmp_path):
    data = load_beir(write_beir(tmp_path))
    with pytest.raises(ValueError, match="query 'q2'.*\\['d4'\\]"):
        rows_from_qrels(data, {"q1": [("d1", 1.0)], "q2": [("2", 1.0)]})


def test_rows_from_qrels_candidate_not_in_corpus(tmp_path):
    data = load_beir(write_beir(tmp_path))
    with pytest.raises(ValueError, match="not in the corpus"):
        rows_from_qrels(data, {"q1": [("d1", 1.0), ("zzz", 0.1)], "q2": [("2", 1.0), ("d4", 1.0)]})


# ---------------------------------------------------------------- real data


def test_scifact_test_split(scifact_dir):
    start = time.perf_counter()
    data = load_beir(scifact_dir, split="test")
    elapsed = time.perf_counter() - start
    assert data.name == "scifact"
    assert len(data.corpus) == 5183
    assert len(data.queries) == 300
    assert len(data.qrels) == 300
    assert sum(len(j) for j in data.qrels.values()) == 339
    assert {g for j in data.qrels.values() for g in j.values()} == {1}
    assert elapsed < 5.0  # about 0.1 s; loose bound for a busy machine
    rows = rows_from_qrels(data)
    assert len(rows) == 300
    assert sum(len(ids) for ids in rows["doc_ids"]) == 339


def test_scifact_train_split_and_all_queries(scifact_dir):
    data = load_beir(scifact_dir, split="train", queries_for_split_only=False)
    assert len(data.queries) == 1109
    assert len(data.qrels) == 809
    assert sum(len(j) for j in data.qrels.values()) == 919


def test_nfcorpus_graded_qrels(nfcorpus_dir):
    data = load_beir(nfcorpus_dir, split="test")
    assert len(data.corpus) == 3633
    assert len(data.queries) == 323
    grades = [g for j in data.qrels.values() for g in j.values()]
    assert len(grades) == 12334
    assert all(type(g) is int for g in grades)
    assert grades.count(2) == 576 and grades.count(1) == 11758
    rows = rows_from_qrels(data)
    assert {label for labels in rows["labels"] for label in labels} == {1.0, 2.0}


def test_passages_of_one_split_join_that_splits_corpus_only(tmp_path):
    """corpus.<split>.jsonl (synthetic passages written for training queries, say) is searched by its split alone."""
    folder = write_beir(tmp_path)
    (folder / "qrels" / "train.tsv").write_text("q1\tsyn1\t3\nq1\td1\t1\n")
    (folder / "corpus.train.jsonl").write_text(jsonl([{"_id": "syn1", "title": "Made", "text": "up passage."}]))
    train, test = load_beir(folder, split="train"), load_beir(folder)
    assert train.corpus["syn1"] == "Made up passage." and train.qrels == {"q1": {"syn1": 3, "d1": 1}}
    assert "syn1" not in test.corpus and set(test.corpus) == {"d1", "2", "d3", "d4"}
    (folder / "qrels" / "test.tsv").write_text("q1\tsyn1\t1\n")
    with pytest.raises(DataFormatError, match="'syn1' is not in corpus.jsonl$") as exc:  # the test split cannot see it
        load_beir(folder)
    assert_error(exc, "test.tsv", 1, "corpus-id")
    with pytest.raises(DataFormatError, match="is not in corpus.jsonl or corpus.train.jsonl"):
        (folder / "qrels" / "train.tsv").write_text("q1\tsyn9\t3\n")
        load_beir(folder, split="train")
    (folder / "corpus.train.jsonl").write_text(jsonl([{"_id": "syn1", "text": "x"}, {"_id": "d3", "text": "again"}]))
    with pytest.raises(DataFormatError, match="'d3' is in corpus.jsonl too") as exc:
        load_beir(folder, split="train")
    assert_error(exc, "corpus.train.jsonl", 2, "_id")


def test_documents_with_empty_title_and_text_are_kept(tmp_path):
    """BEIR's FiQA corpus.jsonl ships such lines (``{"_id": "7915", "title": "", "text": "", "metadata": {}}``)."""
    corpus = jsonl(CORPUS + [{"_id": 7915, "title": "", "text": "", "metadata": {}}, {"_id": "d6", "title": " "}])
    data = load_beir(write_beir(tmp_path, corpus=corpus))
    assert data.corpus["7915"] == "" and data.corpus["d6"] == ""
    assert len(data.corpus) == 6


def test_qrels_trailing_tab_is_ignored(tmp_path):
    data = load_beir(write_beir(tmp_path, qrels="query-id\tcorpus-id\tscore\t\r\nq1\td1\t2\t\nq2\t2\t1 \t\r\n"))
    assert data.qrels == {"q1": {"d1": 2}, "q2": {"2": 1}}


def test_jsonl_byte_order_mark_then_blank_first_line(tmp_path):
    folder = write_beir(tmp_path)
    (folder / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf\r\n" + jsonl(CORPUS).encode())
    (folder / "queries.jsonl").write_bytes(b"\xef\xbb\xbf\n" + jsonl(QUERIES).encode())
    data = load_beir(folder)
    assert len(data.corpus) == 4 and data.queries["q1"] == "what thins blood"
