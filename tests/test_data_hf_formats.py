"""Hugging Face dataset shapes (sentence-transformers, Tevatron, FlagEmbedding) -> canonical rows + corpus."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from conftest import DATA_DIR

from hf_robust_ir.data import (
    ROW_FEATURES,
    DataFormatError,
    TrainingData,
    content_id,
    detect_format,
    from_flagembedding,
    from_sentence_transformers,
    from_tevatron,
    load_training_data,
)

FLAG_SAMPLE = Path("msmarco-hardneg-sample") / "flagembedding_msmarco_example.jsonl"
C = content_id


def row(
    query: str, doc_ids: list[str], labels: list[float], teacher: list[float] | None = None, qid: str | None = None
):
    return {
        "query_id": qid or C(query),
        "query": query,
        "doc_ids": doc_ids,
        "labels": labels,
        "teacher_scores": teacher or [],
        "label_source": ["dataset"] * len(doc_ids),
    }


def write_jsonl(path: Path, objects: list[dict]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return path


def assert_error(exc: pytest.ExceptionInfo, source: str, line: int | None, field: str | None) -> None:
    message = str(exc.value)
    assert source in message
    assert exc.value.line == line
    assert exc.value.field == field
    if line is not None:
        assert f"line {line}" in message
    if field is not None:
        assert f"field '{field}'" in message


def test_content_id_is_stable_and_shared():
    assert content_id("hello") == "sha1:aaf4c61ddcc5e8a2"
    assert content_id("hello") == content_id("hello") != content_id("hello ")


# ---------------------------------------------------------------- sentence-transformers


def test_sentence_transformers_merges_rows_of_one_anchor():
    ds = datasets.Dataset.from_dict(
        {
            "anchor": ["q a", "q b", "q a"],
            "positive": ["p1", "p2", "p3"],
            "negative_1": ["n1", "p1", "n2"],
            "negative_2": ["n2", "n1", "p1"],
        }
    )
    data = from_sentence_transformers(ds)
    assert isinstance(data, TrainingData)
    assert data.rows.features == ROW_FEATURES
    assert data.rows.to_list() == [
        row("q a", [C("p1"), C("p3"), C("n1"), C("n2")], [1.0, 1.0, 0.0, 0.0]),
        row("q b", [C("p2"), C("p1"), C("n1")], [1.0, 0.0, 0.0]),  # p1: a positive of "q a", a negative here
    ]
    assert data.corpus == {C(t): t for t in ("p1", "n1", "n2", "p2", "p3")}


def test_sentence_transformers_positive_elsewhere_is_never_a_negative():
    ds = datasets.Dataset.from_dict({"anchor": ["q", "q"], "positive": ["p1", "p2"], "negative": ["p2", "n"]})
    data = from_sentence_transformers(ds)
    assert data.rows.to_list() == [row("q", [C("p1"), C("p2"), C("n")], [1.0, 1.0, 0.0])]


def test_sentence_transformers_columns_by_position():
    ds = datasets.Dataset.from_dict({"question": ["what"], "answer": ["this"], "wrong": ["that"]})
    assert detect_format(ds) == "sentence-transformers"
    data = load_training_data(ds)
    assert data.rows.to_list() == [row("what", [C("this"), C("that")], [1.0, 0.0])]


def test_sentence_transformers_pairs_without_negatives():
    ds = datasets.Dataset.from_dict({"query": ["a", "b"], "positive": ["x", "x"]})
    data = from_sentence_transformers(ds)
    assert data.rows.to_list() == [row("a", [C("x")], [1.0]), row("b", [C("x")], [1.0])]
    assert data.corpus == {C("x"): "x"}


def test_sentence_transformers_wrong_column_type():
    ds = datasets.Dataset.from_dict({"anchor": ["q1", "q2"], "positive": ["p", "p"], "negative": ["n", "n"]})
    ds = ds.add_column("negative_1", [0, 7])
    with pytest.raises(DataFormatError, match="must be a string, got int") as exc:
        from_sentence_transformers(ds, source="my.parquet")
    assert_error(exc, "my.parquet", 1, "negative_1")


def test_sentence_transformers_id_columns_are_not_read_as_negative_passages():
    ds = datasets.Dataset.from_dict({"query_id": ["q1"], "query": ["what"], "positive": ["this"], "negative": ["that"]})
    assert detect_format(ds) == "sentence-transformers"
    with pytest.raises(DataFormatError, match=r"an id column is not a passage.*remove_columns\(\['query_id'\]\)"):
        load_training_data(ds)
    data = load_training_data(ds.remove_columns(["query_id"]))
    assert data.rows.to_list() == [row("what", [C("this"), C("that")], [1.0, 0.0])]


def test_sentence_transformers_empty_text():
    ds = datasets.Dataset.from_dict({"anchor": ["q1", "q2"], "positive": ["p", " "]})
    with pytest.raises(DataFormatError, match="empty text") as exc:
        from_sentence_transformers(ds, source="st")
    assert_error(exc, "st", 2, "positive")


def test_sentence_transformers_needs_two_columns():
    ds = datasets.Dataset.from_dict({"anchor": ["q1"]})
    with pytest.raises(DataFormatError, match="columns found") as exc:
        from_sentence_transformers(ds, source="st")
    assert_error(exc, "st", None, "positive")


# ---------------------------------------------------------------- Tevatron


def tevatron_rows() -> list[dict]:
    return [
        {
            "query_id": "7",
            "query": "what is aspirin",
            "positive_passages": [{"docid": "d1", "title": "Aspirin", "text": "A drug."}],
            "negative_passages": [{"docid": "d2", "title": "", "text": "A tree."}, {"docid": "d3", "text": "A car."}],
        },
        {
            "query_id": "8",
            "query": "trees",
            "positive_passages": [{"docid": "d2", "title": "", "text": "A tree."}],
            "negative_passages": [{"docid": "d1", "title": "Aspirin", "text": "A drug."}],
        },
    ]


def test_tevatron_rows_and_corpus():
    data = from_tevatron(datasets.Dataset.from_list(tevatron_rows()))
    assert data.rows.to_list() == [
        row("what is aspirin", ["d1", "d2", "d3"], [1.0, 0.0, 0.0], qid="7"),
        row("trees", ["d2", "d1"], [1.0, 0.0], qid="8"),
    ]
    assert data.corpus == {"d1": "Aspirin A drug.", "d2": "A tree.", "d3": "A car."}


def test_tevatron_int_ids_and_no_negatives():
    ds = datasets.Dataset.from_list([{"query_id": 3, "query": "q", "positive_passages": [{"docid": 11, "text": "t"}]}])
    data = load_training_data(ds)
    assert data.rows.to_list() == [row("q", ["11"], [1.0], qid="3")]
    assert data.corpus == {"11": "t"}


def test_tevatron_same_docid_different_text():
    rows = tevatron_rows()
    rows[1]["negative_passages"] = [{"docid": "d3", "title": "", "text": "A different car."}]
    with pytest.raises(DataFormatError, match="'d3' has a different text than on line 1") as exc:
        from_tevatron(datasets.Dataset.from_list(rows), source="tev.jsonl")
    assert_error(exc, "tev.jsonl", 2, "negative_passages")


def test_tevatron_passage_without_text():
    rows = tevatron_rows()
    rows[1]["positive_passages"] = [{"docid": "d9", "title": "", "text": ""}]
    with pytest.raises(DataFormatError, match="item 0 \\(docid 'd9'\\) has no text") as exc:
        from_tevatron(datasets.Dataset.from_list(rows), source="tev")
    assert_error(exc, "tev", 2, "positive_passages")


def test_tevatron_passages_not_a_list():
    ds = datasets.Dataset.from_dict({"query_id": ["1"], "query": ["q"], "positive_passages": ["just text"]})
    with pytest.raises(DataFormatError, match="must be a list, got str") as exc:
        from_tevatron(ds, source="tev")
    assert_error(exc, "tev", 1, "positive_passages")


def test_tevatron_missing_column():
    ds = datasets.Dataset.from_dict({"query_id": ["1"], "positive_passages": [[{"docid": "d", "text": "t"}]]})
    with pytest.raises(DataFormatError, match="missing column") as exc:
        from_tevatron(ds, source="tev")
    assert_error(exc, "tev", None, "query")


def test_tevatron_query_id_with_two_texts():
    rows = tevatron_rows()
    rows[1]["query_id"] = "7"
    with pytest.raises(DataFormatError, match="query '7' has a different text") as exc:
        from_tevatron(datasets.Dataset.from_list(rows), source="tev")
    assert_error(exc, "tev", 2, "query")


def test_a_query_without_any_passage_is_refused_where_it_is_read(tmp_path):
    # a row with no candidates would fail only in the collator, named by query id (a hash for FlagEmbedding)
    empty_tevatron = {"query_id": "9", "query": "q9", "positive_passages": [], "negative_passages": None}
    path = write_jsonl(tmp_path / "tev.jsonl", [*tevatron_rows(), empty_tevatron])
    with pytest.raises(DataFormatError, match="query 'q9' has no passages: a training row needs at least one") as exc:
        load_training_data(path)
    assert_error(exc, str(path), 3, "positive_passages")
    flag = [{"query": "q1", "pos": ["a"], "neg": []}, {"query": "q2", "pos": [], "neg": []}]
    path = write_jsonl(tmp_path / "flag.jsonl", flag)
    with pytest.raises(DataFormatError, match="query 'q2' has no passages") as exc:
        load_training_data(path)
    assert_error(exc, str(path), 2, "pos")
    # a query whose passages are all on another of its rows is one row with those passages
    merged = [{"query": "q1", "pos": [], "neg": []}, {"query": "q1", "pos": ["a"], "neg": ["b"]}]
    rows = from_flagembedding(datasets.Dataset.from_list(merged)).rows.to_list()
    assert rows == [row("q1", [C("a"), C("b")], [1.0, 0.0])]


# ---------------------------------------------------------------- FlagEmbedding


def test_flagembedding_rows_with_scores():
    ds = datasets.Dataset.from_list(
        [
            {"query": "q1", "pos": ["a"], "neg": ["b", "c"], "pos_scores": [0.5], "neg_scores": [0.25, 0.0],
             "prompt": "Represent this", "type": "normal"},
            {"query": "q2", "pos": ["b", "d"], "neg": ["a"], "pos_scores": [1.0, 2.0], "neg_scores": [-1.0],
             "prompt": "Represent this", "type": "normal"},
        ]
    )  # fmt: skip
    data = from_flagembedding(ds)
    assert data.rows.to_list() == [
        row("q1", [C("a"), C("b"), C("c")], [1.0, 0.0, 0.0], [0.5, 0.25, 0.0]),
        row("q2", [C("b"), C("d"), C("a")], [1.0, 1.0, 0.0], [1.0, 2.0, -1.0]),
    ]
    assert data.corpus == {C(t): t for t in "abcd"}


def test_flagembedding_without_scores():
    ds = datasets.Dataset.from_dict({"query": ["q"], "pos": [["a"]], "neg": [["b"]]})
    assert from_flagembedding(ds).rows.to_list() == [row("q", [C("a"), C("b")], [1.0, 0.0])]


def test_flagembedding_pos_is_a_string():
    ds = datasets.Dataset.from_dict({"query": ["q"], "pos": ["a"], "neg": [["b"]]})
    with pytest.raises(DataFormatError, match="must be a list, got str") as exc:
        from_flagembedding(ds, source="flag.jsonl")
    assert_error(exc, "flag.jsonl", 1, "pos")


def test_flagembedding_query_not_a_string():
    ds = datasets.Dataset.from_dict({"query": [["q"]], "pos": [["a"]], "neg": [["b"]]})
    with pytest.raises(DataFormatError, match="query must be a string, got list") as exc:
        from_flagembedding(ds, source="flag")
    assert_error(exc, "flag", 1, "query")


def test_flagembedding_score_length_mismatch():
    ds = datasets.Dataset.from_dict(
        {
            "query": ["q1", "q2"],
            "pos": [["a"], ["b"]],
            "neg": [["c", "d"], ["e", "f"]],
            "pos_scores": [[1.0], [1.0]],
            "neg_scores": [[0.5, 0.1], [0.5]],
        }
    )
    with pytest.raises(DataFormatError, match="1 scores for 2 passages") as exc:
        from_flagembedding(ds, source="flag")
    assert_error(exc, "flag", 2, "neg_scores")


def test_flagembedding_scores_must_be_finite_or_nan():
    # an infinite teacher score would read as "none" in the bi-encoder's target matrix and as inf in a reranker's
    inf = float("inf")
    for pos_scores, neg_scores, field, shown in (([1.0], [0.5, -inf], "neg_scores", "-inf at position 1"),
                                                 ([inf], [0.5, 0.1], "pos_scores", "inf at position 0")):  # fmt: skip
        ds = datasets.Dataset.from_list(
            [
                {"query": "q1", "pos": ["a"], "neg": ["b", "c"], "pos_scores": [1.0], "neg_scores": [0.5, 0.1]},
                {"query": "q2", "pos": ["a"], "neg": ["b", "c"], "pos_scores": pos_scores, "neg_scores": neg_scores},
            ]
        )
        with pytest.raises(DataFormatError, match=rf"scores must be finite or NaN \(none\), got {shown}$") as exc:
            from_flagembedding(ds, source="flag")
        assert_error(exc, "flag", 2, field)
    nan = float("nan")
    ds = datasets.Dataset.from_dict(
        {"query": ["q"], "pos": [["a"]], "neg": [["b"]], "pos_scores": [[nan]], "neg_scores": [[0.25]]}
    )
    teacher = from_flagembedding(ds).rows[0]["teacher_scores"]  # NaN: no teacher score, as the collator reads it
    assert teacher[0] != teacher[0] and teacher[1] == 0.25


def test_flagembedding_empty_passage():
    ds = datasets.Dataset.from_dict({"query": ["q1"], "pos": [["a"]], "neg": [["c", ""]]})
    with pytest.raises(DataFormatError, match="empty text") as exc:
        from_flagembedding(ds, source="flag")
    assert_error(exc, "flag", 1, "neg")


def test_flagembedding_real_sample():
    path = DATA_DIR / FLAG_SAMPLE
    if not path.exists():
        pytest.skip(f"{path} not found")
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    data = load_training_data(path)
    assert len(data.rows) == 10
    for r, source in zip(data.rows, raw):
        assert r["query"] == source["query"]
        assert len(r["doc_ids"]) == 26
        assert r["labels"] == [1.0] + [0.0] * 25
        assert r["teacher_scores"] == pytest.approx(source["pos_scores"] + source["neg_scores"], rel=1e-6)
        assert [data.corpus[d] for d in r["doc_ids"]] == source["pos"] + source["neg"]


# ---------------------------------------------------------------- load_training_data


def test_load_jsonl_file_auto(tmp_path):
    path = write_jsonl(tmp_path / "st.jsonl", [{"anchor": "q", "positive": "p", "negative": "n"}])
    data = load_training_data(path)
    assert data.rows.to_list() == [row("q", [C("p"), C("n")], [1.0, 0.0])]


def test_load_parquet_and_saved_dataset(tmp_path):
    ds = datasets.Dataset.from_list(tevatron_rows())
    ds.to_parquet(str(tmp_path / "tev.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    expected = from_tevatron(ds).rows.to_list()
    assert load_training_data(tmp_path / "tev.parquet").rows.to_list() == expected
    assert load_training_data(str(tmp_path / "saved"), format="tevatron").rows.to_list() == expected


def test_load_beir_folder_uses_train_split(scifact_dir):
    data = load_training_data(scifact_dir)
    assert len(data.rows) == 809
    assert sum(len(ids) for ids in data.rows["doc_ids"]) == 919
    assert len(data.corpus) == 5183


def test_error_from_a_file_names_file_and_line(tmp_path):
    rows = [{"query": "q1", "pos": ["a"], "neg": ["b"]}, {"query": "", "pos": ["a"], "neg": ["b"]}]
    path = write_jsonl(tmp_path / "flag.jsonl", rows)
    with pytest.raises(DataFormatError, match="empty query") as exc:
        load_training_data(path)
    assert_error(exc, "flag.jsonl", 2, "query")


def test_malformed_jsonl_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"anchor": "q", "positive": "p"}\n{"anchor": "q2", "positive": \n')
    with pytest.raises(DataFormatError, match="malformed JSON") as exc:
        load_training_data(path)
    assert_error(exc, "bad.jsonl", 2, None)


def test_jsonl_file_with_mixed_column_types(tmp_path):
    rows = [{"query": "q1", "pos": ["a"], "neg": ["b"]}, {"query": "q2", "pos": "a", "neg": ["b"]}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    # depending on the datasets version, the file loads with a mixed (Json) column and the row check fails, or the
    # load fails and the file is scanned for the first value whose type differs: either way line 2, field 'pos'
    with pytest.raises(DataFormatError, match="must be a list, got str|a string here but a list on line 1") as exc:
        load_training_data(path)
    assert_error(exc, "mixed.jsonl", 2, "pos")


def test_unknown_shape_lists_columns():
    ds = datasets.Dataset.from_dict({"sentence": ["a"], "label": [1]})
    with pytest.raises(ValueError, match=r"columns found: \['sentence', 'label'\].*tevatron.*flagembedding"):
        load_training_data(ds)


def test_canonical_rows_need_a_corpus():
    ds = datasets.Dataset.from_dict({"query_id": ["q"], "query": ["q"], "doc_ids": [["d"]], "labels": [[1.0]]})
    with pytest.raises(ValueError, match="corpus"):
        load_training_data(ds)
    data = load_training_data(ds, corpus={"d": "text"})
    assert data.rows.features == ROW_FEATURES
    assert data.rows.to_list() == [row("q", ["d"], [1.0], qid="q")]


def test_canonical_rows_with_unknown_doc_id():
    ds = datasets.Dataset.from_dict({"query_id": ["q"], "query": ["q"], "doc_ids": [["d", "x"]], "labels": [[1, 0]]})
    with pytest.raises(DataFormatError, match="not in the corpus") as exc:
        load_training_data(ds, corpus={"d": "text"})
    assert_error(exc, "dataset", 1, "doc_ids")


def test_canonical_labels_must_be_numbers(tmp_path):
    good = {"query_id": "q1", "query": "q", "doc_ids": ["d", "e"], "labels": [1, 0]}
    for labels, shown in (([1, None], "None at position 1"), (["yes", 0], "'yes' at position 0")):
        path = write_jsonl(tmp_path / "rows.jsonl", [good, {**good, "query_id": "q2", "labels": labels}])
        with pytest.raises(DataFormatError, match=f"labels must be numbers, got {shown}") as exc:
            load_training_data(path, corpus={"d": "a", "e": "b"})
        assert_error(exc, str(path), 2, "labels")


def test_unknown_format_name():
    with pytest.raises(ValueError, match="unknown format"):
        load_training_data(datasets.Dataset.from_dict({"a": ["x"]}), format="msmarco")


def test_jsonl_scan_finds_first_type_change(tmp_path):
    from hf_robust_ir.data.hf_formats import _diagnose_json_lines

    rows = [{"query": "q1", "pos": ["a"]}, {"query": "q2", "pos": None}, {"query": "q3", "pos": "a"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert _diagnose_json_lines(path) == (3, "pos", "a string here but a list on line 1")


def test_canonical_null_teacher_scores_load_as_nan(tmp_path):
    # a NaN teacher score ("none", e.g. a uniform swap's new passage) is written to JSON lines as null
    clean = datasets.Dataset.from_dict(
        {"query_id": ["q"], "query": ["q"], "doc_ids": [["d", "e"]], "labels": [[1.0, 0.0]],
         "teacher_scores": [[float("nan"), 0.5]], "label_source": [["noise", "mined"]]},
        features=ROW_FEATURES,
    )  # fmt: skip
    clean.to_json(str(tmp_path / "rows.jsonl"), lines=True)
    teacher = load_training_data(tmp_path / "rows.jsonl", corpus={"d": "a", "e": "b"}).rows[0]["teacher_scores"]
    assert teacher[0] != teacher[0] and teacher[1] == 0.5  # NaN, the collator's "no teacher score"


def test_canonical_rows_need_a_candidate(tmp_path):
    good = {"query_id": "q1", "query": "q", "doc_ids": ["d"], "labels": [1]}
    path = write_jsonl(tmp_path / "rows.jsonl", [good, {**good, "query_id": "q2", "doc_ids": [], "labels": []}])
    with pytest.raises(DataFormatError, match="no doc ids: a training row needs at least one candidate") as exc:
        load_training_data(path, corpus={"d": "a"})
    assert_error(exc, str(path), 2, "doc_ids")


def test_canonical_doc_ids_must_be_strings(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl", [{"query_id": "q1", "query": "q", "doc_ids": [11, 12], "labels": [1, 0]}]
    )
    with pytest.raises(DataFormatError, match="doc ids must be strings, got 11 at position 0") as exc:
        load_training_data(path, corpus={"11": "a", "12": "b"})
    assert_error(exc, str(path), 1, "doc_ids")


def test_dataset_dict_contributes_the_requested_split(tmp_path):
    splits = datasets.DatasetDict(
        {name: datasets.Dataset.from_dict({"anchor": [f"q {name}"], "positive": ["p"]}) for name in ("train", "dev")}
    )
    assert load_training_data(splits).rows["query"] == ["q train"]
    assert load_training_data(splits, split="dev").rows["query"] == ["q dev"]
    splits.save_to_disk(str(tmp_path / "saved"))
    assert load_training_data(tmp_path / "saved", split="dev").rows["query"] == ["q dev"]
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train', 'dev'\]"):
        load_training_data(splits, split="test")
    only = datasets.DatasetDict({"validation": splits["dev"]})
    assert load_training_data(only).rows["query"] == ["q dev"]  # the only split


def test_canonical_labels_must_be_finite_and_teacher_scores_not_infinite():
    good = {"query_id": "q1", "query": "q", "doc_ids": ["d", "e"], "labels": [1.0, 0.0], "teacher_scores": [0.5, 0.1]}
    cases = (
        ("labels", [1.0, float("nan")], "labels must be finite, got nan at position 1"),
        ("labels", [float("inf"), 0.0], "labels must be finite, got inf at position 0"),
        (
            "teacher_scores",
            [0.5, float("-inf")],
            r"teacher_scores must be finite or NaN \(none\), got -inf at position 1",
        ),
    )
    for name, values, message in cases:
        ds = datasets.Dataset.from_list([good, {**good, "query_id": "q2", name: values}])
        with pytest.raises(DataFormatError, match=message) as exc:
            load_training_data(ds, corpus={"d": "a", "e": "b"})
        assert_error(exc, "dataset", 2, name)
    unknown_teacher = {**good, "teacher_scores": [float("nan"), 0.1]}  # NaN: no teacher score, as the collator reads it
    loaded = load_training_data(datasets.Dataset.from_list([unknown_teacher]), corpus={"d": "a", "e": "b"}).rows[0]
    assert loaded["labels"] == [1.0, 0.0] and loaded["teacher_scores"][1] == pytest.approx(0.1)
    assert loaded["teacher_scores"][0] != loaded["teacher_scores"][0]


def test_canonical_query_id_with_two_texts(tmp_path):
    first = {"query_id": "q1", "query": "what is a cell", "doc_ids": ["d"], "labels": [1]}
    other = {"query_id": "q2", "query": "what is a gene", "doc_ids": ["e"], "labels": [1]}
    path = write_jsonl(tmp_path / "rows.jsonl", [first, other, {**first, "query": "how do cells divide"}])
    with pytest.raises(DataFormatError, match="query 'q1' has a different text than on line 1") as exc:
        load_training_data(path, corpus={"d": "a", "e": "b"})
    assert_error(exc, str(path), 3, "query")
    path = write_jsonl(tmp_path / "rows.jsonl", [first, other, {**first, "doc_ids": ["e"]}])
    rows = load_training_data(path, corpus={"d": "a", "e": "b"}).rows  # the same query twice is kept as given
    assert rows["query_id"] == ["q1", "q2", "q1"] and rows["doc_ids"] == [["d"], ["e"], ["e"]]


def test_empty_jsonl_file_is_named_as_empty(tmp_path):
    for content in ("", "\n \r\n"):
        path = tmp_path / "rows.jsonl"
        path.write_text(content)
        with pytest.raises(DataFormatError, match=r"rows\.jsonl: the file holds no rows$") as exc:
            load_training_data(path)
        assert_error(exc, str(path), None, None)


def test_errors_name_the_file_line_when_the_jsonl_has_blank_lines(tmp_path):
    # the loader skips blank lines (a byte-order mark alone, spaces, "\r\n"), but an error names the line in the file
    first, second, third = tevatron_rows()[0], tevatron_rows()[1], tevatron_rows()[1]
    third = {**third, "query_id": "9", "positive_passages": [{"docid": "d2", "text": "Another tree."}]}
    path = tmp_path / "tev.jsonl"
    lines = ["\ufeff", json.dumps(first), "   ", json.dumps(second), "\r", "", json.dumps(third)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # d2 is first seen on line 2 (a negative of the first row), its other text on line 7 (the third row)
    with pytest.raises(DataFormatError, match="'d2' has a different text than on line 2$") as exc:
        load_training_data(path)
    assert_error(exc, str(path), 7, "positive_passages")
    st = tmp_path / "st.jsonl"
    st.write_text('\n{"anchor": "q1", "positive": "p1"}\n\n\n{"anchor": "q2", "positive": " "}\n')
    with pytest.raises(DataFormatError, match="empty text") as exc:
        load_training_data(st)
    assert_error(exc, str(st), 5, "positive")


def test_a_byte_order_mark_alone_on_the_first_line_is_a_blank_line_when_a_file_is_diagnosed(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'\xef\xbb\xbf\n{"anchor": "q", "positive": "p"}\n{"anchor": "q2", "positive": \n')
    with pytest.raises(DataFormatError, match="malformed JSON") as exc:
        load_training_data(path)
    assert_error(exc, str(path), 3, None)
    path.write_bytes(b"\xef\xbb\xbf\n\n")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl: the file holds no rows$") as exc:
        load_training_data(path)
    assert_error(exc, str(path), None, None)


def test_canonical_excluded_doc_ids_load_when_present_and_are_checked(tmp_path):
    from hf_robust_ir.data.schema import EXCLUDED_COLUMN, EXCLUDED_FEATURE

    first = {"query_id": "q1", "query": "q", "doc_ids": ["d"], "labels": [1], "excluded_doc_ids": ["e"]}
    second = {"query_id": "q2", "query": "r", "doc_ids": ["e"], "labels": [1]}  # null in the column: none
    path = write_jsonl(tmp_path / "rows.jsonl", [first, second])
    rows = load_training_data(path, corpus={"d": "a", "e": "b"}).rows
    assert rows.features == ROW_FEATURES | {EXCLUDED_COLUMN: EXCLUDED_FEATURE}
    assert rows[EXCLUDED_COLUMN] == [["e"], []]
    for excluded, message in ((["x"], r"ids not in the corpus: \['x'\]"), ([3], "doc ids must be strings, got 3")):
        path = write_jsonl(tmp_path / "rows.jsonl", [second, {**first, "excluded_doc_ids": excluded}])
        with pytest.raises(DataFormatError, match=message) as exc:
            load_training_data(path, corpus={"d": "a", "e": "b", "3": "c"})
        assert_error(exc, str(path), 2, EXCLUDED_COLUMN)
    # rows without the column load as before, without it
    assert load_training_data(datasets.Dataset.from_list([second]), corpus={"e": "b"}).rows.features == ROW_FEATURES
