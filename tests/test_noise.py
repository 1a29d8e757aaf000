"""Label-noise generators: exact pools, counts, determinism, nesting, change records that replay to the noisy rows."""

from __future__ import annotations

import argparse
import json
import math

import datasets
import pytest
from test_mining import VectorEncoder

from hf_robust_ir.data.schema import ROW_FEATURES, RetrievalCorpus
from hf_robust_ir.evaluation import DocumentIndex
from hf_robust_ir.noise import (
    CHANGE_FIELDS,
    FalseNegativeInjection,
    SemanticSwapNoise,
    UniformSwapNoise,
    noise_count,
    retrieve_candidates,
    select_queries,
)


def make_rows(spec: dict[str, list[tuple]]) -> datasets.Dataset:
    """Rows from ``{query_id: [(doc_id, label, teacher_score, source), ...]}``; teacher None -> no teacher scores."""
    columns: dict[str, list] = {name: [] for name in ROW_FEATURES}
    for qid, candidates in spec.items():
        columns["query_id"].append(qid)
        columns["query"].append(f"text of {qid}")
        columns["doc_ids"].append([c[0] for c in candidates])
        columns["labels"].append([float(c[1]) for c in candidates])
        columns["teacher_scores"].append([] if candidates[0][2] is None else [c[2] for c in candidates])
        columns["label_source"].append([c[3] for c in candidates])
    return datasets.Dataset.from_dict(columns, features=ROW_FEATURES)


def replay(clean: datasets.Dataset, changes: list[dict]) -> list[dict]:
    """The clean rows with the change records applied: what the noisy rows must be, field by field."""
    rows = {row["query_id"]: dict(row) for row in clean.to_list()}
    removed: dict[str, list[int]] = {}
    for change in changes:
        row = rows[change["query_id"]]
        j = change["position"]
        assert row["doc_ids"][j] == change["doc_id"] and row["labels"][j] == change["label"]
        if change["new_doc_id"] is not None:
            row["doc_ids"][j] = change["new_doc_id"]
        row["labels"][j] = change["new_label"]
        row["label_source"][j] = "noise"
        for position in change["removed_negative_positions"]:
            assert row["labels"][position] == 0
            removed.setdefault(change["query_id"], []).append(position)
    for qid, positions in removed.items():
        for j in sorted(positions, reverse=True):
            for name in ("doc_ids", "labels", "label_source"):
                del rows[qid][name][j]
    return [{k: v for k, v in row.items() if k != "teacher_scores"} for row in rows.values()]


def without_teacher(rows: datasets.Dataset) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "teacher_scores"} for row in rows.to_list()]


# --------------------------------------------------------------------------------------------------------------------
# a tiny corpus whose every score is known (VectorEncoder: query "1 0" scores document "x y" as x)
#
# q1 = "1 0": a .95, *p1 .90, (j1 .85), b .80, c .70, d .60, *p2 .50, e .40, f .30, g .20, p3 .10
# q2 = "0 1": f .90, g .80, *p3 .70, p2 .50, p1 .10, the rest 0
# (* = positive in the row; j1 is judged relevant to q1 in the qrels but missing from q1's row)

VECTORS = {
    "a": "0.95 0",
    "p1": "0.9 0.1",
    "j1": "0.85 0",
    "b": "0.8 0",
    "c": "0.7 0",
    "d": "0.6 0",
    "p2": "0.5 0.5",
    "e": "0.4 0",
    "f": "0.3 0.9",
    "g": "0.2 0.8",
    "p3": "0.1 0.7",
}


@pytest.fixture
def toy() -> RetrievalCorpus:
    return RetrievalCorpus(
        corpus=dict(VECTORS),
        queries={"q1": "1 0", "q2": "0 1"},
        qrels={"q1": {"p1": 1, "p2": 2, "j1": 1}, "q2": {"p3": 1}},
        name="toy",
    )


@pytest.fixture
def toy_rows() -> datasets.Dataset:
    # b's teacher score (0.75) comes from another teacher than the swap model (which scores b 0.80)
    rows = make_rows(
        {
            "q1": [("p1", 1, 0.9, "qrels"), ("p2", 2, 0.5, "qrels"), ("b", 0, 0.75, "mined"), ("e", 0, 0.4, "mined")],
            "q2": [("p3", 1, 0.7, "qrels"), ("f", 0, 0.9, "mined")],
        }
    )
    return rows.map(lambda row: {"query": {"q1": "1 0", "q2": "0 1"}[row["query_id"]]})


def test_semantic_swap_draws_from_the_top_k_non_relevant_candidates(toy, toy_rows):
    result = SemanticSwapNoise(VectorEncoder(), rate=1.0, top_k=3, skip_top=1, seed=0).apply(toy_rows, toy)
    q1 = [c for c in result.changes if c["query_id"] == "q1"]
    q2 = [c for c in result.changes if c["query_id"] == "q2"]
    # q1's non-relevant ranks: a 0, b 1, c 2 (p1, p2 and the judged j1 are skipped); skip_top=1 leaves b and c for
    # its two positives, without replacement
    assert {(c["new_doc_id"], c["rank"]) for c in q1} == {("b", 1), ("c", 2)}
    assert {c["new_doc_id"]: c["score"] for c in q1} == pytest.approx({"b": 0.8, "c": 0.7})
    assert [(c["position"], c["doc_id"], c["label"], c["new_label"]) for c in q1] == [(0, "p1", 1, 1), (1, "p2", 2, 2)]
    # q2's non-relevant ranks: f 0, g 1, p2 2 (another query's positive is fine here)
    assert len(q2) == 1 and (q2[0]["new_doc_id"], q2[0]["rank"]) in {("g", 1), ("p2", 2)}

    rows = {row["query_id"]: row for row in result.rows}
    new = {c["position"]: c["new_doc_id"] for c in q1}
    # b was a negative of q1: it is removed from the negatives; it keeps the row's teacher score (0.75), c gets the
    # swap model's score
    assert rows["q1"]["doc_ids"] == [new[0], new[1], "e"]
    assert rows["q1"]["labels"] == [1.0, 2.0, 0.0]
    assert rows["q1"]["label_source"] == ["noise", "noise", "mined"]
    assert rows["q1"]["teacher_scores"] == pytest.approx([{"b": 0.75, "c": 0.7}[new[p]] for p in (0, 1)] + [0.4])
    assert [c["removed_negative_positions"] for c in q1] == [[2] if c["new_doc_id"] == "b" else [] for c in q1]
    assert rows["q2"]["doc_ids"][1] == "f" and rows["q2"]["labels"] == [1.0, 0.0]
    assert rows["q2"]["teacher_scores"][0] == pytest.approx(q2[0]["score"])
    assert replay(toy_rows, result.changes) == without_teacher(result.rows)
    assert all(set(c) == set(CHANGE_FIELDS) and c["kind"] == "semantic_swap" for c in result.changes)


def test_semantic_swap_never_draws_a_judged_positive(toy, toy_rows):
    # with only the corpus (no qrels), j1 counts as non-relevant: q1's non-relevant ranks are a 0, j1 1, b 2
    without_qrels = SemanticSwapNoise(VectorEncoder(), rate=1.0, top_k=3, skip_top=1).apply(toy_rows, toy.corpus)
    assert {c["new_doc_id"] for c in without_qrels.changes if c["query_id"] == "q1"} == {"j1", "b"}
    for seed in range(10):
        result = SemanticSwapNoise(VectorEncoder(), rate=1.0, top_k=4, seed=seed).apply(toy_rows, toy)
        for change in result.changes:
            judged = {d for d, grade in toy.qrels[change["query_id"]].items() if grade > 0}
            assert change["new_doc_id"] not in judged
            assert change["rank"] < 4


def test_semantic_swap_removes_every_copy_of_a_negative_it_swaps_in(toy):
    # q2's only non-relevant passage in reach (top_k=1) is f, listed twice among its negatives: both copies leave the
    # row, so f is not both its label and a negative
    rows = make_rows(
        {"q2": [("p3", 1, 0.7, "qrels"), ("f", 0, 0.9, "mined"), ("g", 0, 0.8, "mined"), ("f", 0, 0.9, "x")]}
    ).map(lambda row: {"query": "0 1"})
    result = SemanticSwapNoise(VectorEncoder(), rate=1.0, top_k=1, seed=0).apply(rows, toy)
    [change] = result.changes
    assert (change["new_doc_id"], change["removed_negative_positions"]) == ("f", [1, 3])
    [row] = result.rows
    assert (row["doc_ids"], row["labels"], row["teacher_scores"]) == (["f", "g"], [1.0, 0.0], pytest.approx([0.9, 0.8]))
    assert result.summary()["removed_negatives"] == 2
    assert replay(rows, result.changes) == without_teacher(result.rows)


def test_candidates_index_and_model_give_the_same_noise(toy, toy_rows):
    by_model = SemanticSwapNoise(VectorEncoder(), rate=1.0, top_k=3, seed=3).apply(toy_rows, toy)

    encoder = VectorEncoder()
    index = DocumentIndex.from_corpus(encoder, toy.corpus, show_progress_bar=False)
    calls = len(encoder.document_calls)
    by_index = SemanticSwapNoise(encoder, rate=1.0, top_k=3, seed=3, index=index).apply(toy_rows, toy)
    assert len(encoder.document_calls) == calls  # the corpus was not encoded again

    candidates = retrieve_candidates(encoder, toy.queries, index=index, top_k=6)
    by_candidates = SemanticSwapNoise(candidates, rate=1.0, top_k=3, seed=3).apply(toy_rows, toy)
    for result in (by_index, by_candidates):
        assert result.changes == by_model.changes
        assert result.rows.to_list() == by_model.rows.to_list()


# --------------------------------------------------------------------------------------------------------------------
# selection over more queries, with precomputed candidates


def many_rows(n: int = 20, teacher: bool = True) -> datasets.Dataset:
    spec = {}
    for i in range(n):
        scores = (0.9, 0.8, 0.5, 0.4) if teacher else (None,) * 4
        positives = [(f"p{i}", 1, scores[0], "qrels")] + ([(f"p{i}b", 2, scores[1], "qrels")] if i % 3 == 0 else [])
        spec[f"q{i:02d}"] = positives + [("d0", 0, scores[2], "mined"), ("d1", 0, scores[3], "mined")]
    return make_rows(spec)


def many_candidates(n: int = 20) -> dict[str, list[tuple[str, float]]]:
    # each query retrieves its own positives first, then d0 .. d9
    return {
        f"q{i:02d}": [(f"p{i}", 0.99)]
        + ([(f"p{i}b", 0.98)] if i % 3 == 0 else [])
        + [(f"d{k}", 0.9 - k / 100) for k in range(10)]
        for i in range(n)
    }


CORPUS_IDS = [f"p{i}" for i in range(20)] + [f"p{i}b" for i in range(0, 20, 3)] + [f"d{k}" for k in range(30)]


@pytest.mark.parametrize("rate, expected", [(0.0, 0), (0.05, 1), (0.25, 5), (0.525, 11), (0.5, 10), (1.0, 20)])
def test_the_number_of_noisy_queries_is_the_rounded_rate(rate, expected):
    rows = many_rows()
    for noise in (SemanticSwapNoise(many_candidates(), rate, top_k=5), UniformSwapNoise(CORPUS_IDS, rate)):
        result = noise.apply(rows)
        assert len(result.changed_queries) == expected == len(result.selected_queries)
        positives = sum(
            sum(label > 0 for label in row["labels"]) for row in rows if row["query_id"] in result.selected_queries
        )
        assert len(result.changes) == positives  # every positive of a noisy query is replaced
        assert replay(rows, result.changes) == without_teacher(result.rows)


@pytest.mark.parametrize("rate, n, expected", [(0.5, 5, 3), (0.25, 10, 3), (0.7, 10, 7), (0.1, 3, 0), (1.0, 7, 7)])
def test_noise_count_rounds_half_up(rate, n, expected):
    assert noise_count(rate, n) == expected


def test_same_seed_same_noise_other_seed_other_queries():
    rows = many_rows()
    first = SemanticSwapNoise(many_candidates(), 0.4, top_k=5, seed=7).apply(rows)
    again = SemanticSwapNoise(many_candidates(), 0.4, top_k=5, seed=7).apply(rows)
    assert first.changes == again.changes and first.rows.to_list() == again.rows.to_list()
    other = SemanticSwapNoise(many_candidates(), 0.4, top_k=5, seed=8).apply(rows)
    assert set(other.changed_queries) != set(first.changed_queries)
    # row order does not matter
    shuffled = SemanticSwapNoise(many_candidates(), 0.4, top_k=5, seed=7).apply(rows.shuffle(seed=0))
    key = lambda c: (c["query_id"], c["position"])  # noqa: E731
    assert sorted(shuffled.changes, key=key) == sorted(first.changes, key=key)


def test_noise_levels_are_nested_and_semantic_and_uniform_pick_the_same_queries():
    rows = many_rows()
    levels = {}
    for rate in (0.2, 0.5, 0.8):
        semantic = SemanticSwapNoise(many_candidates(), rate, top_k=5, seed=1).apply(rows)
        uniform = UniformSwapNoise(CORPUS_IDS, rate, seed=1).apply(rows)
        assert semantic.changed_queries == uniform.changed_queries
        levels[rate] = semantic.changes
    assert select_queries([f"q{i:02d}" for i in range(20)], 0.5, 1)[:4] == select_queries(
        [f"q{i:02d}" for i in range(20)], 0.2, 1
    )
    # a lower level's changes (same queries, same replacements) are part of every higher level's
    assert all(change in levels[0.5] for change in levels[0.2])
    assert all(change in levels[0.8] for change in levels[0.5])
    assert len(levels[0.2]) < len(levels[0.5]) < len(levels[0.8])


def test_uniform_swap_draws_from_the_corpus_without_the_query_positives():
    rows = many_rows()
    corpus = {doc_id: "text" for doc_id in CORPUS_IDS}
    qrels = {f"q{i:02d}": {f"p{i}": 1, f"d{i}": 1} for i in range(20)}  # d<i> judged relevant, not in the row
    data = RetrievalCorpus(corpus=corpus, queries={}, qrels=qrels)
    for seed in range(5):
        result = UniformSwapNoise(CORPUS_IDS, 1.0, seed=seed).apply(rows, data)
        assert len(result.changed_queries) == 20
        drawn: dict[str, list[str]] = {}
        for change in result.changes:
            qid, i = change["query_id"], int(change["query_id"][1:])
            assert change["new_doc_id"] in corpus
            assert change["new_doc_id"] not in {f"p{i}", f"p{i}b", f"d{i}"}
            assert change["rank"] is None and change["score"] is None
            drawn.setdefault(qid, []).append(change["new_doc_id"])
        assert all(len(set(docs)) == len(docs) for docs in drawn.values())  # without replacement
        assert replay(rows, result.changes) == without_teacher(result.rows)
        # teacher scores stay aligned: a document already in the row keeps its score there, a new one gets NaN
        for clean, row in zip(rows, result.rows):
            clean_score = dict(zip(clean["doc_ids"], clean["teacher_scores"]))
            assert len(row["teacher_scores"]) == len(row["doc_ids"])
            for doc_id, score, source in zip(row["doc_ids"], row["teacher_scores"], row["label_source"]):
                if doc_id in clean_score:
                    assert score == pytest.approx(clean_score[doc_id])
                else:
                    assert source == "noise" and math.isnan(score)


def test_rows_without_teacher_scores_stay_without():
    rows = many_rows(teacher=False)
    for noise in (SemanticSwapNoise(many_candidates(), 1.0, top_k=5), UniformSwapNoise(CORPUS_IDS, 1.0)):
        assert all(row["teacher_scores"] == [] for row in noise.apply(rows).rows)


def test_a_small_pool_keeps_the_remaining_positives():
    rows = many_rows(3)  # q00 has 2 positives
    candidates = {"q00": [("p0", 0.99), ("d0", 0.5)], "q01": [], "q02": [("d3", 0.1)]}
    result = SemanticSwapNoise(candidates, 1.0, top_k=5).apply(rows)
    assert result.shortfall_queries == ["q00", "q01"]
    assert [(c["query_id"], c["doc_id"], c["new_doc_id"]) for c in result.changes] == [
        ("q00", "p0", "d0"),
        ("q02", "p2", "d3"),
    ]
    assert result.rows[0]["doc_ids"] == ["d0", "p0b", "d1"]  # d0 left the negatives; p0b stays a positive


def test_rate_zero_changes_nothing():
    rows = many_rows()
    for noise in (
        SemanticSwapNoise(many_candidates(), 0.0),
        UniformSwapNoise(CORPUS_IDS, 0.0),
        FalseNegativeInjection(0.0),
    ):
        result = noise.apply(rows)
        assert result.changes == [] and result.rows.to_list() == rows.to_list()


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), True, "0.4", None])
def test_invalid_rate_is_a_clear_error(rate):
    for make in (
        lambda: SemanticSwapNoise({}, rate),
        lambda: UniformSwapNoise(["d"], rate),
        lambda: FalseNegativeInjection(rate),
    ):
        with pytest.raises(ValueError, match="rate must be a number in \\[0, 1\\]"):
            make()


def test_other_argument_checks():
    with pytest.raises(ValueError, match="skip_top"):
        SemanticSwapNoise({}, 0.5, top_k=3, skip_top=3)
    with pytest.raises(ValueError, match="top_k"):
        SemanticSwapNoise({}, 0.5, top_k=0)
    with pytest.raises(TypeError, match="encoder"):
        SemanticSwapNoise(["not", "candidates"], 0.5)
    with pytest.raises(ValueError, match="min_positives"):
        FalseNegativeInjection(0.5, min_positives=1)
    with pytest.raises(ValueError, match="seed"):
        UniformSwapNoise(["d"], 0.5, seed=-1)
    with pytest.raises(ValueError, match="needs the corpus"):
        SemanticSwapNoise(VectorEncoder(), 0.5).apply(many_rows())
    duplicated = datasets.concatenate_datasets([many_rows(2), many_rows(1)])
    with pytest.raises(ValueError, match="one row per query"):
        UniformSwapNoise(CORPUS_IDS, 0.5).apply(duplicated)


@pytest.mark.parametrize(
    "field, values, problem",
    [
        ("teacher_scores", [[0.9, 0.5, 0.4], [0.9]], "1 values for 3 doc_ids"),
        ("label_source", [["qrels"] * 3, ["qrels", "mined"]], "2 values for 3 doc_ids"),
        ("labels", [[1.0, 0.0, 0.0], [1.0, 1.0]], "2 values for 3 doc_ids"),
    ],
)
def test_rows_whose_lists_do_not_match_their_doc_ids_are_refused_naming_row_and_field(field, values, problem):
    columns = {
        "query_id": ["q1", "q2"],
        "query": ["one", "two"],
        "doc_ids": [["p1", "n1", "n2"], ["p2", "p3", "n3"]],
        "labels": [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]],
        "teacher_scores": [[], []],
        "label_source": [[], []],
    }
    rows = datasets.Dataset.from_dict({**columns, field: values}, features=ROW_FEATURES)
    for noise in (UniformSwapNoise(["n1", "n2", "n3", "d"], 1.0), FalseNegativeInjection(1.0)):
        with pytest.raises(ValueError, match=f"rows, line 2, field '{field}': {problem}"):
            noise.apply(rows)


# --------------------------------------------------------------------------------------------------------------------
# false negatives


@pytest.fixture
def multi_positive_rows() -> datasets.Dataset:
    def positives(qid: str, n: int) -> list[tuple]:
        return [(f"{qid}p{k}", 1 + k % 2, 0.9 - k / 10, "qrels") for k in range(n)]

    # qa has 1 positive (never eligible), qb 2, qc 3, qd 4: P = 9 positives in eligible queries, 6 movable
    return make_rows(
        {qid: positives(qid, n) + [("x", 0, 0.1, "mined")] for qid, n in [("qa", 1), ("qb", 2), ("qc", 3), ("qd", 4)]}
    )


@pytest.mark.parametrize(
    "rate, min_positives, expected",
    [
        (0.5, 2, 5),  # 0.5 * 9 = 4.5, rounded half up
        (0.3, 2, 3),  # 2.7 -> 3
        (1.0, 2, 6),  # asks for 9, but each of the 3 queries keeps one positive
        (0.5, 3, 4),  # qc, qd: 0.5 * 7 = 3.5 -> 4
        (0.1, 2, 1),  # 0.9 -> 1
    ],
)
def test_false_negative_injection_moves_the_expected_number(multi_positive_rows, rate, min_positives, expected):
    result = FalseNegativeInjection(rate, min_positives=min_positives, seed=2).apply(multi_positive_rows)
    assert len(result.changes) == expected
    eligible = {"qb", "qc", "qd"} if min_positives == 2 else {"qc", "qd"}
    assert result.eligible_queries == len(eligible)
    assert {c["query_id"] for c in result.changes} <= eligible
    clean = {row["query_id"]: row for row in multi_positive_rows}
    for row in result.rows:
        before = clean[row["query_id"]]
        assert row["doc_ids"] == before["doc_ids"] and row["teacher_scores"] == before["teacher_scores"]
        assert sum(label > 0 for label in row["labels"]) >= 1
        if row["query_id"] not in eligible:
            assert row == before
    if rate == 1.0:
        assert all(sum(label > 0 for label in row["labels"]) == 1 for row in result.rows)
    for change in result.changes:
        row = result.rows[[r["query_id"] for r in result.rows].index(change["query_id"])]
        assert change["kind"] == "false_negative" and change["new_doc_id"] is None and change["label"] > 0
        assert row["labels"][change["position"]] == 0.0 == change["new_label"]
        assert row["label_source"][change["position"]] == "noise"
        assert row["doc_ids"][change["position"]] == change["doc_id"]
    assert replay(multi_positive_rows, result.changes) == without_teacher(result.rows)


def test_false_negative_injection_is_deterministic_and_nested(multi_positive_rows):
    moved = {}
    for rate in (0.2, 0.4, 0.7):
        result = FalseNegativeInjection(rate, seed=5).apply(multi_positive_rows)
        again = FalseNegativeInjection(rate, seed=5).apply(multi_positive_rows)
        assert result.changes == again.changes
        moved[rate] = {(c["query_id"], c["doc_id"]) for c in result.changes}
    assert moved[0.2] < moved[0.4] < moved[0.7]


@pytest.mark.parametrize(
    "rate, expected",
    [
        # teacher scores are 0.9 - k/10 for positive k: every query's p0 first, then p1 (qb keeps its last one)
        (0.3, {"qbp0", "qcp0", "qdp0"}),  # 2.7 -> 3: the best-scored positive of each eligible query
        (0.5, {"qbp0", "qcp0", "qdp0", "qcp1", "qdp1"}),  # 4.5 -> 5
        (1.0, {"qbp0", "qcp0", "qdp0", "qcp1", "qdp1", "qdp2"}),  # each query keeps its lowest-scored positive
    ],
)
def test_false_negative_injection_by_teacher_score_moves_the_best_scored_positives(multi_positive_rows, rate, expected):
    for seed in (0, 1, 2):
        result = FalseNegativeInjection(rate, seed=seed, order="teacher_score").apply(multi_positive_rows)
        assert {c["doc_id"] for c in result.changes} == expected
        assert result.config["order"] == "teacher_score"


def test_false_negative_injection_by_teacher_score_breaks_ties_by_seed_and_nests(multi_positive_rows):
    # rate 0.1 moves one positive: one of the three top-ranked ones (qbp0, qcp0, qdp0), which one drawn by the seed
    picked = {
        FalseNegativeInjection(0.1, seed=seed, order="teacher_score").apply(multi_positive_rows).changes[0]["doc_id"]
        for seed in range(12)
    }
    assert picked == {"qbp0", "qcp0", "qdp0"}
    moved = []
    for rate in (0.1, 0.3, 0.5, 1.0):
        result = FalseNegativeInjection(rate, seed=4, order="teacher_score").apply(multi_positive_rows)
        moved.append({c["doc_id"] for c in result.changes})
    assert moved[0] < moved[1] < moved[2] < moved[3]


def test_false_negative_injection_by_teacher_score_needs_scores(multi_positive_rows):
    rows = multi_positive_rows.to_list()
    rows[2]["teacher_scores"][1] = float("nan")  # qc's second positive
    broken = datasets.Dataset.from_list(rows, features=multi_positive_rows.features)
    with pytest.raises(ValueError, match="query 'qc' has no teacher score for its positive at position 1"):
        FalseNegativeInjection(0.5, order="teacher_score").apply(broken)
    FalseNegativeInjection(0.5).apply(broken)  # the random order does not read them
    with pytest.raises(ValueError, match="order must be one of"):
        FalseNegativeInjection(0.5, order="hardest")


# --------------------------------------------------------------------------------------------------------------------
# command line


def run_noise(argv: list[str], capsys) -> dict:
    from hf_robust_ir.cli import main

    assert main(["noise", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_quiet_silences_the_bars_of_datasets_too(tmp_path, capsys):
    from test_evaluation import write_beir_folder

    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir", split="train")
    argv = ["noise", "--data", str(tmp_path / "beir"), "--kind", "uniform_swap", "--rate", "1"]
    assert main([*argv, "--output", str(tmp_path / "loud")]) == 0
    assert "Saving the dataset" in capsys.readouterr().err  # datasets draws its bar when saving the rows
    assert main([*argv, "--output", str(tmp_path / "quiet"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Saving the dataset" not in err and "Creating json" not in err
    assert datasets.is_progress_bar_enabled()  # restored for whatever runs next in the process


def test_noise_command_semantic_swap_writes_rows_and_changes(tmp_path, tiny_model_path, capsys):
    from test_evaluation import write_beir_folder

    write_beir_folder(tmp_path / "beir", split="train")  # q1 -> d1, q2 -> d2 (grade 2), q3 -> d4 (d3 judged 0)
    out = tmp_path / "noisy"
    argv = ["--data", str(tmp_path / "beir"), "--kind", "semantic_swap", "--rate", "1", "--seed", "0", "--quiet"]
    argv += ["--model", tiny_model_path, "--top_k", "2", "--max_length", "32", "--output", str(out)]
    summary = run_noise(argv, capsys)
    assert summary["queries"] == 3 and summary["changed_queries"] == 3 and summary["changes"] == 3
    assert summary["kind"] == "semantic_swap" and summary["top_k"] == 2

    rows = datasets.load_from_disk(str(out))
    assert rows.features == ROW_FEATURES and len(rows) == 3
    changes = [json.loads(line) for line in (out / "changes.jsonl").read_text().splitlines()]
    assert len(changes) == 3 and len((out / "rows.jsonl").read_text().splitlines()) == 3
    positives = {"q1": "d1", "q2": "d2", "q3": "d4"}
    for change, row in zip(changes, rows):
        assert change["query_id"] == row["query_id"] and change["doc_id"] == positives[row["query_id"]]
        assert change["new_doc_id"] != change["doc_id"] and change["rank"] in (0, 1)  # top_k=2: ranks 0 and 1
        assert row["doc_ids"][0] == change["new_doc_id"] and row["label_source"][0] == "noise"
    assert json.loads((out / "hf_robust_ir_data.json").read_text())["noise"]["kind"] == "semantic_swap"


def test_noise_command_uniform_and_false_negative_on_prepared_rows(tmp_path, capsys):
    from test_evaluation import write_beir_folder

    from hf_robust_ir.data import load_beir, rows_from_qrels

    write_beir_folder(tmp_path / "beir", split="train")
    rows_from_qrels(load_beir(tmp_path / "beir", split="train")).save_to_disk(str(tmp_path / "clean"))
    base = ["--data", str(tmp_path / "beir"), "--rows", str(tmp_path / "clean"), "--rate", "0.5"]
    summary = run_noise(base + ["--kind", "uniform_swap", "--output", str(tmp_path / "uniform")], capsys)
    assert summary["changed_queries"] == 2 == summary["changes"]  # 0.5 * 3 = 1.5 -> 2
    summary = run_noise(base + ["--kind", "false_negative", "--output", str(tmp_path / "fn")], capsys)
    assert summary["eligible_queries"] == 0 and summary["changes"] == 0  # every query has a single positive
    assert (tmp_path / "fn" / "changes.jsonl").read_text() == ""

    from hf_robust_ir.commands import noise as noise_command

    parser = argparse.ArgumentParser()
    noise_command.add_arguments(parser)
    missing_model = ["--data", str(tmp_path / "beir"), "--kind", "semantic_swap", "--rate", "0.5", "--output", "x"]
    assert noise_command.run(parser.parse_args(missing_model)) == 2
    bad_rate = ["--data", str(tmp_path / "beir"), "--kind", "uniform_swap", "--rate", "2", "--output", "x"]
    assert noise_command.run(parser.parse_args(bad_rate)) == 2
    assert "rate must be" in capsys.readouterr().err


def test_noise_command_bad_input_is_one_line_naming_it(tmp_path, capsys):
    from test_evaluation import write_beir_folder

    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir", split="train")
    base = [
        "--data",
        str(tmp_path / "beir"),
        "--kind",
        "uniform_swap",
        "--rate",
        "0.5",
        "--output",
        str(tmp_path / "x"),
    ]
    assert main(["noise", *base, "--split", "dev"]) == 2
    assert "dev.tsv" in capsys.readouterr().err
    assert main(["noise", *base, "--rows", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"query_id": "q1", "query": "q", "doc_ids": ["d1", "d2"], "labels": [1, None]}) + "\n")
    assert main(["noise", *base, "--rows", str(rows)]) == 2
    err = capsys.readouterr().err
    assert f"{rows}, line 1, field 'labels': labels must be numbers" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_noise_command_refuses_rows_over_another_corpus(tmp_path, capsys):
    from test_evaluation import write_beir_folder

    from hf_robust_ir.cli import main
    from hf_robust_ir.data.hf_formats import content_id

    write_beir_folder(tmp_path / "beir", split="train")
    rows = tmp_path / "pairs.jsonl"  # sentence-transformers pairs: their documents are texts, not ids of the corpus
    rows.write_text(json.dumps({"query": "what is a", "positive": "doc a text", "negative": "doc b text"}) + "\n")
    argv = ["--data", str(tmp_path / "beir"), "--kind", "uniform_swap", "--rate", "1", "--rows", str(rows)]
    assert main(["noise", *argv, "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: {rows}: documents not in the corpus of {tmp_path / 'beir'}, e.g. {content_id('doc a text')!r}" in err
    )
    assert "Traceback" not in err and not (tmp_path / "x").exists()


def test_noise_command_false_negative_by_teacher_score(tmp_path, capsys):
    from test_evaluation import write_beir_folder

    from hf_robust_ir.data import load_beir, rows_from_qrels

    write_beir_folder(tmp_path / "beir", split="train")
    # q1 gets three positives; the rows from qrels carry no teacher scores, a mined file would
    with open(tmp_path / "beir" / "qrels" / "train.tsv", "a") as f:
        f.write("q1\td5\t1\nq1\td6\t1\n")
    rows = rows_from_qrels(load_beir(tmp_path / "beir", split="train"))
    rows.save_to_disk(str(tmp_path / "unscored"))
    base = ["--data", str(tmp_path / "beir"), "--kind", "false_negative", "--rate", "0.34", "--order", "teacher_score"]
    from hf_robust_ir.cli import main

    assert main(["noise", *base, "--rows", str(tmp_path / "unscored"), "--output", str(tmp_path / "x")]) == 2
    assert "query 'q1' has no teacher score" in capsys.readouterr().err

    scored = rows.to_list()
    q1 = next(row for row in scored if row["query_id"] == "q1")
    q1["teacher_scores"] = [{"d1": 0.2, "d5": 0.7, "d6": 0.4}[doc] for doc in q1["doc_ids"]]
    datasets.Dataset.from_list(scored, features=rows.features).save_to_disk(str(tmp_path / "scored"))
    summary = run_noise(base + ["--rows", str(tmp_path / "scored"), "--output", str(tmp_path / "fn")], capsys)
    assert summary["changes"] == 1  # 0.34 * 3 = 1.02 -> 1
    (change,) = [json.loads(line) for line in (tmp_path / "fn" / "changes.jsonl").read_text().splitlines()]
    assert change["query_id"] == "q1" and change["doc_id"] == "d5"  # the best-scored positive
    assert json.loads((tmp_path / "fn" / "hf_robust_ir_data.json").read_text())["noise"]["order"] == "teacher_score"


def test_noise_command_refuses_a_cross_encoder_and_no_rows(tmp_path, capsys):
    from test_evaluation import save_tiny_reranker, write_beir_folder

    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir", split="train")
    (tmp_path / "beir" / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td3\t0\n")
    reranker = save_tiny_reranker(tmp_path / "reranker")
    capsys.readouterr()  # the save's progress bar
    base = ["noise", "--data", str(tmp_path / "beir"), "--rate", "0.5", "--quiet"]
    semantic = [*base, "--kind", "semantic_swap", "--model", reranker, "--output", str(tmp_path / "a")]
    assert main(semantic) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: --model") and "cross-encoder" in captured.err
    # no rows: save_to_disk would write a folder that load_from_disk cannot read
    assert main([*base, "--kind", "uniform_swap", "--split", "dev", "--output", str(tmp_path / "b")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and "no training rows" in captured.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_noise_command_refuses_a_token_limit_below_one_before_any_work(tmp_path, tiny_model_path, capsys, value):
    """--max_length 0 was read as no limit at all (a text longer than the model's positions then fails mid-run); -1
    ended in a tokenizer traceback."""
    from test_evaluation import write_beir_folder

    from hf_robust_ir.cli import main

    write_beir_folder(tmp_path / "beir", split="train")
    argv = ["noise", "--data", str(tmp_path / "beir"), "--kind", "semantic_swap", "--rate", "1", "--quiet"]
    argv += ["--model", tiny_model_path, "--output", str(tmp_path / "x"), "--max_length", value]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: --max_length must be >= 1, got {value}\n"
    assert not (tmp_path / "x").exists()
