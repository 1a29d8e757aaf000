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
