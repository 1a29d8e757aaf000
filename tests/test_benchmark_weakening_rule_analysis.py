"""benchmarks/weakening_rule_analysis.py: the replacement rule judged per listed negative against the clean qrels."""

from conftest import benchmark_module, canonical_row


def test_candidate_table_counts_precision_and_recall_by_hand():
    qrels = {"q1": {"a": 1, "t": 1}, "q2": {"b": 1}, "q3": {"u": 1}}
    rows = [
        # clean label a (0.5); negatives t (relevant, gap +0.15) and x (gap -0.2)
        canonical_row("q1", ["a", "t", "x"], [1.0, 0.0, 0.0], teacher=[0.5, 0.65, 0.3]),
        # wrong label w (0.4); negatives b (the true positive, gap +0.3) and y (gap +0.05)
        canonical_row("q2", ["w", "b", "y"], [1.0, 0.0, 0.0], teacher=[0.4, 0.7, 0.45]),
        # no labeled positive: left out
        canonical_row("q3", ["u"], [0.0], teacher=[0.9]),
    ]
    with benchmark_module("weakening_rule_analysis") as analysis:
        table = analysis.candidate_table(rows, qrels)
    assert table["pairs"] == 4 and table["relevant_pairs"] == 2
    fires = table["fires_above"]
    assert fires["0.0"] == {"fired": 3, "precision": round(2 / 3, 4), "recall": 1.0}  # t, b and y
    assert fires["0.1"] == {"fired": 2, "precision": 1.0, "recall": 1.0}  # t and b
    assert fires["0.2"] == {"fired": 1, "precision": 1.0, "recall": 0.5}  # b only
    assert fires["-0.05"]["fired"] == 3  # x's gap -0.2 stays below every threshold


def test_beyond_row_table_ranks_the_true_positive_and_judges_a_pool_drawn_from_the_corpus():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    clean_rows = [canonical_row(q, [d], [1.0]) for q, d in (("q1", "a"), ("q2", "b"), ("q3", "c"))]
    noisy_rows = [
        canonical_row("q1", ["a"], [1.0], teacher=[0.5]),  # not swapped
        canonical_row("q2", ["w"], [1.0], teacher=[0.4]),  # swapped: b is second among the unlabeled
        canonical_row("q3", ["v"], [1.0], teacher=[0.6]),  # swapped: c was not retrieved
    ]
    candidates = {
        "q1": [("x", 0.7), ("a", 0.5), ("y", 0.45)],
        "q2": [("y", 0.8), ("b", 0.7), ("w", 0.4), ("z", 0.3)],
        "q3": [("v", 0.6), ("e", 0.5)],
    }
    with benchmark_module("weakening_rule_analysis") as analysis:
        table = analysis.beyond_row_table(noisy_rows, clean_rows, candidates, qrels)
    assert table["swapped_queries"] == 2 and table["unswapped_queries"] == 1
    assert table["true_positive_rank"] == {"1": 0, "2": 1, "3": 1, "5": 1, "10": 1, "20": 1, "beyond": 1}
    pool = table["pool_rule"]
    # top 1 above the label: x (q1, not relevant) and y (q2, not relevant); q3's e is under its label
    assert pool["1"]["0.0"] == {"fired": 2, "precision": 0.0, "swapped_recovered": 0.0, "unswapped_fired": 1.0}
    # top 3 above the label: x, then y and b for q2 (b relevant); y of q1 is 0.05 under its label
    assert pool["3"]["0.0"] == {
        "fired": 3,
        "precision": round(1 / 3, 4),
        "swapped_recovered": 0.5,
        "unswapped_fired": 1.0,
    }
    # more than 0.2 above: only q2's y (+0.4) and b (+0.3); x is 0.2 above, not more
    assert pool["3"]["0.2"] == {"fired": 2, "precision": 0.5, "swapped_recovered": 0.5, "unswapped_fired": 0.0}


def test_rescore_replaces_every_score_with_the_judges_and_sorts_the_candidates():
    import numpy as np

    vectors = {"q": [1.0, 0.0], "a": [0.2, 0.0], "b": [0.9, 0.0], "c": [0.5, 0.0]}

    class Judge:
        def encode_queries(self, texts, bf16=False):
            return np.array([vectors[t] for t in texts])

        encode_documents = encode_queries

    rows = [canonical_row("q1", ["a", "b"], [1.0, 0.0], teacher=[0.8, 0.1])]
    candidates = {"q1": [("a", 0.8), ("c", 0.7), ("b", 0.1)]}
    with benchmark_module("weakening_rule_analysis") as analysis:
        rescored, ranked = analysis.rescore(Judge(), rows, candidates, {"q1": "q"}, {d: d for d in "abc"}, False)
    assert rescored[0]["teacher_scores"] == [0.2, 0.9] and rows[0]["teacher_scores"] == [0.8, 0.1]
    assert ranked == {"q1": [("b", 0.9), ("c", 0.5), ("a", 0.2)]}


def test_cross_fitted_judges_score_every_row_on_a_slice_of_scifact(tiny_model_path, scifact_dir, tmp_path):
    import json

    out = tmp_path / "analysis.json"
    argv = ["--out", str(out), "--judge", "cross_fitted", "--model", tiny_model_path, "--data_dir",
            str(scifact_dir.parent), "--max_train_queries", "16", "--max_corpus", "40", "--max_length", "32",
            "--no-bf16"]  # fmt: skip
    with benchmark_module("weakening_rule_analysis") as analysis:
        assert analysis.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["judge"]["cross_fitted"]["loss"]["name"] == "label_weakening" and report["judge"]["folds"] == 2
    beyond = report["beyond_row"]
    assert beyond["swapped_queries"] + beyond["unswapped_queries"] == 16
    assert report["groups"]["clean rows"]["queries"] == 16


def test_the_hybrid_judge_scores_every_row_on_a_slice_of_scifact(tiny_model_path, scifact_dir, tmp_path):
    import json

    out = tmp_path / "analysis.json"
    argv = ["--out", str(out), "--judge", "hybrid", "--lexical_weight", "0.5", "--model", tiny_model_path,
            "--data_dir", str(scifact_dir.parent), "--max_train_queries", "16", "--max_corpus", "40",
            "--max_length", "32", "--no-bf16"]  # fmt: skip
    with benchmark_module("weakening_rule_analysis") as analysis:
        assert analysis.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["judge"] == {"hybrid": "the base model + BM25", "lexical_weight": 0.5}
    assert report["groups"]["clean rows"]["queries"] == 16
    beyond = report["beyond_row"]
    assert beyond["swapped_queries"] + beyond["unswapped_queries"] == 16


def test_true_positive_preferred_counts_swapped_queries_whose_clean_label_the_judge_scores_higher():
    clean = [
        canonical_row("q1", ["t1", "n1"], [1.0, 0.0], teacher=[0.9, 0.2]),
        canonical_row("q2", ["t2", "n2"], [1.0, 0.0], teacher=[0.5, 0.4]),
        canonical_row("q3", ["t3", "n3"], [1.0, 0.0], teacher=[0.7, 0.1]),
    ]
    noisy = [
        canonical_row("q1", ["w1", "t1"], [1.0, 0.0], teacher=[0.6, 0.9]),  # swapped; true 0.9 > wrong 0.6
        canonical_row("q2", ["w2", "t2"], [1.0, 0.0], teacher=[0.8, 0.5]),  # swapped; true 0.5 < wrong 0.8
        canonical_row("q3", ["t3", "n3"], [1.0, 0.0], teacher=[0.7, 0.1]),  # not swapped
    ]
    with benchmark_module("weakening_rule_analysis") as analysis:
        counts = analysis.true_positive_preferred(noisy, clean)
    assert counts == {"swapped_queries": 2, "true_positive_scored_higher": 1}
