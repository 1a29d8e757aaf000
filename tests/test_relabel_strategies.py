"""Relabeling strategies: the exact row each strategy writes, provenance, NO_VERDICT, the threshold, apply_strategy."""

import datasets
import pytest

from hf_robust_ir.data.schema import ROW_FEATURES
from hf_robust_ir.relabel.base import NO_VERDICT, Judgment, Verdict
from hf_robust_ir.relabel.strategies import (
    STRATEGIES,
    apply_strategy,
    arhn_f,
    arhn_r,
    arhn_rf,
    get_strategy,
    hn_remove,
    remove,
    rlhn,
    threshold,
)

R, N, X = "relevant", "not_relevant", "no_verdict"


def _row(marks, sources=("qrels", "qrels", "mined", "mined", "mined"), teacher=(0.9, 0.5, 0.8, 0.7, 0.1)):
    return {
        "query_id": "q1",
        "query": "what is x",
        "doc_ids": ["p1", "n0", "n1", "n2", "n3"],
        "labels": [2.0, 0.0, 0.0, 0.0, 0.0],
        "teacher_scores": list(teacher),
        "label_source": list(sources),
        "judgments": marks,
    }


def test_rlhn_promotes_flagged_negatives_only():
    out = rlhn(_row([None, R, X, N, R]), judge="ce")
    assert out == {
        "doc_ids": ["p1", "n0", "n1", "n2", "n3"],
        "labels": [2.0, 1.0, 0.0, 0.0, 1.0],
        "teacher_scores": [0.9, 0.5, 0.8, 0.7, 0.1],
        "label_source": ["qrels", "relabeled:ce", "mined", "mined", "relabeled:ce"],
        "keep": True,
    }


def test_hn_remove_drops_flagged_negatives_with_their_teacher_scores_and_excludes_them():
    out = hn_remove(_row([None, R, X, N, R]), judge="ce")
    assert out == {
        "doc_ids": ["p1", "n1", "n2"],
        "labels": [2.0, 0.0, 0.0],
        "teacher_scores": [0.9, 0.8, 0.7],
        "label_source": ["qrels", "mined", "mined"],
        "excluded_doc_ids": ["n0", "n3"],
        "keep": True,
    }


def test_a_second_relabeling_adds_to_the_rows_exclusions_once():
    row = {**_row([None, R, N, N, R]), "excluded_doc_ids": ["n9", "n3"]}
    assert hn_remove(row, judge="ce")["excluded_doc_ids"] == ["n9", "n3", "n0"]
    # a strategy that drops nothing leaves the column alone (apply_strategy passes it through)
    assert "excluded_doc_ids" not in rlhn(row, judge="ce") and "excluded_doc_ids" not in remove(row)


def test_remove_drops_the_query_when_anything_is_flagged():
    assert remove(_row([None, N, X, N, R]))["keep"] is False
    kept = remove(_row([None, N, X, N, N]))
    assert kept["keep"] is True and kept["labels"] == [2.0, 0.0, 0.0, 0.0, 0.0]


def test_no_verdict_and_unjudged_never_change_anything():
    row = _row([X, X, None, X, X])
    for strategy in STRATEGIES.values():
        out = strategy(row, judge="ce", max_flagged=0)
        assert out["keep"] is True, strategy.name
        assert out["doc_ids"] == row["doc_ids"] and out["labels"] == row["labels"], strategy.name
        assert out["label_source"] == row["label_source"], strategy.name


def test_positives_are_never_changed_even_when_marked():
    row = _row(["relevant", N, N, N, N])
    row["judgments"][0] = R
    for strategy in (rlhn, hn_remove, remove):
        out = strategy(row)
        assert out["keep"] is True and out["doc_ids"][0] == "p1" and out["labels"][0] == 2.0
    assert arhn_rf(_row(["F", N, N, N, N]))["doc_ids"][0] == "p1"


def test_a_positive_listed_again_as_a_negative_is_never_flagged():
    """Row [p1 (2), n0, p1 (0), n2, n3]: p1 is a positive (the highest label wins, as in the collator), so its 0 copy
    is no negative: whatever its mark, no strategy flags, promotes, removes or drops the query for it."""
    row = _row([None, N, R, N, N])
    row["doc_ids"] = ["p1", "n0", "p1", "n2", "n3"]
    unchanged = {k: row[k] for k in ("doc_ids", "labels", "teacher_scores", "label_source")}
    for strategy, mark in [(rlhn, R), (hn_remove, R), (remove, R), (threshold, R), (arhn_r, "R"), (arhn_f, "F"),
                           (arhn_rf, "R"), (arhn_rf, "F")]:  # fmt: skip
        row["judgments"] = [None, N, mark, N, N]
        assert strategy.flagged(row) == [], strategy.name
        excluded = {"excluded_doc_ids": []} if strategy.drop else {}  # nothing dropped: nothing excluded
        assert strategy(row, judge="ce", max_flagged=0) == {**unchanged, **excluded, "keep": True}, strategy.name
    row["judgments"] = [None, R, R, N, N]  # n0 is still a negative: flagged and relabeled, the copy of p1 is not
    assert rlhn.flagged(row) == [1]
    assert rlhn(row, judge="ce")["labels"] == [2.0, 1.0, 0.0, 0.0, 0.0]
    assert hn_remove(row, judge="ce")["doc_ids"] == ["p1", "p1", "n2", "n3"]


def test_threshold_alone_and_composed():
    row = _row([None, R, R, R, N])
    assert threshold(row, max_flagged=3)["keep"] is True
    assert threshold(row, max_flagged=2)["keep"] is False
    assert threshold(row, max_flagged=3)["labels"] == row["labels"]
    assert rlhn(row, max_flagged=2)["keep"] is False
    assert rlhn(row, max_flagged=3)["labels"] == [2.0, 1.0, 1.0, 1.0, 0.0]
    assert hn_remove(row, max_flagged=None)["doc_ids"] == ["p1", "n3"]


def test_missing_label_source_defaults_to_qrels_and_mined():
    row = _row([None, R, N, N, N], sources=())
    assert rlhn(row, judge="j")["label_source"] == ["qrels", "relabeled:j", "mined", "mined", "mined"]


def test_arhn_strategies():
    row = _row([None, "R", "F", None, "F"], teacher=())
    r = arhn_r(row, judge="llm")
    assert r["doc_ids"] == ["p1", "n0", "n1", "n2", "n3"]
    assert r["labels"] == [2.0, 1.0, 0.0, 0.0, 0.0]
    assert r["label_source"] == ["qrels", "relabeled:llm", "mined", "mined", "mined"]
    assert r["teacher_scores"] == []
    f = arhn_f(row, judge="llm")
    assert f == {
        "doc_ids": ["p1", "n0", "n2"],
        "labels": [2.0, 0.0, 0.0],
        "teacher_scores": [],
        "label_source": ["qrels", "qrels", "mined"],
        "excluded_doc_ids": ["n1", "n3"],
        "keep": True,
    }
    rf = arhn_rf(row, judge="llm")
    assert rf["doc_ids"] == ["p1", "n0", "n2"] and rf["labels"] == [2.0, 1.0, 0.0]
    assert rf["excluded_doc_ids"] == ["n1", "n3"]
    assert rf["label_source"] == ["qrels", "relabeled:llm", "mined"]
    assert arhn_rf(row, max_flagged=2)["keep"] is False


def test_get_strategy_rejects_unknown_names():
    assert get_strategy("rlhn") is rlhn
    with pytest.raises(ValueError, match="unknown relabeling strategy"):
        get_strategy("relabel_everything")


def _dataset():
    rows = [
        {k: v for k, v in _row([]).items() if k != "judgments"},
        {
            "query_id": "q2",
            "query": "another",
            "doc_ids": ["p2", "m0", "m1"],
            "labels": [1.0, 0.0, 0.0],
            "teacher_scores": [],
            "label_source": ["qrels", "mined", "mined"],
        },
    ]
    return datasets.Dataset.from_list(rows, features=ROW_FEATURES)


def test_apply_strategy_over_a_dataset():
    ds = _dataset()
    judgments = [
        [None, Judgment(Verdict.RELEVANT, 0.9), NO_VERDICT, Judgment(Verdict.NOT_RELEVANT), None],
        [None, Judgment(Verdict.RELEVANT), Judgment(Verdict.RELEVANT)],
    ]
    out = apply_strategy(ds, judgments, "rlhn", judge="ce")
    assert out.column_names == ds.column_names
    assert out.features == ds.features
    assert out[0]["labels"] == [2.0, 1.0, 0.0, 0.0, 0.0]
    assert out[1]["label_source"] == ["qrels", "relabeled:ce", "relabeled:ce"]
    assert len(apply_strategy(ds, judgments, "rlhn", max_flagged=1)) == 1
    removed = apply_strategy(ds, judgments, "remove")
    assert len(removed) == 0
    dropped = apply_strategy(ds, judgments, "hn_remove")
    assert dropped["doc_ids"] == [["p1", "n1", "n2", "n3"], ["p2"]]
    assert dropped["excluded_doc_ids"] == [["n0"], ["m0", "m1"]]
    assert dropped.column_names == ds.column_names + ["excluded_doc_ids"]


def test_judgments_as_dicts_with_verdict_members_are_read_by_value():
    """``dataclasses.asdict(judgment)`` keeps the Verdict member: it reads as its value, not ``"Verdict.RELEVANT"``."""
    import dataclasses

    flagged = dataclasses.asdict(Judgment(Verdict.RELEVANT, 0.9))
    judgments = [[None, flagged, None, None, None], [None, None, None]]
    out = apply_strategy(_dataset(), judgments, "rlhn", judge="ce")
    assert out[0]["labels"] == [2.0, 1.0, 0.0, 0.0, 0.0]
    assert out[0]["label_source"] == ["qrels", "relabeled:ce", "mined", "mined", "mined"]


def test_threshold_without_max_flagged_is_refused():
    """``threshold`` acts only through ``max_flagged``: without it every row would pass unchanged, silently."""
    judgments = [[None, "relevant", "relevant", "relevant", None], [None, "relevant", None]]
    with pytest.raises(ValueError, match="threshold.*max_flagged"):
        apply_strategy(_dataset(), judgments, "threshold")
    assert apply_strategy(_dataset(), judgments, "threshold", max_flagged=2)["query_id"] == ["q2"]


@pytest.mark.parametrize(
    ("field", "values"), [("label_source", ["qrels", "mined"]), ("teacher_scores", [0.9]), ("labels", [2.0, 0.0])]
)
def test_a_row_whose_lists_do_not_match_its_doc_ids_is_refused_by_name(field, values):
    row = _row([None, R, N, N, N])
    row[field] = values
    with pytest.raises(ValueError, match=f"query 'q1': {len(values)} {field} values for 5 candidates"):
        rlhn(row, judge="ce")


def test_no_rows_give_no_rows_with_the_canonical_columns():
    empty = datasets.Dataset.from_dict({"query_id": [], "query": [], "doc_ids": [], "labels": []})
    for name in ("rlhn", "hn_remove", "remove", "arhn_rf"):
        out = apply_strategy(empty, [], name, max_flagged=8)
        assert len(out) == 0, name
        columns = ["query_id", "query", "doc_ids", "labels", "teacher_scores", "label_source"]
        assert out.column_names == columns + (["excluded_doc_ids"] if name in ("hn_remove", "arhn_rf") else []), name
