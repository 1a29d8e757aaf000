"""benchmarks/mining_copies_of_positives.py on a toy BEIR folder whose corpus holds a copy of a positive: mining as it
was picks the copy as a negative, the library's mining does not."""

import json

from conftest import benchmark_module


def write_folder(folder):
    (folder / "qrels").mkdir(parents=True)
    corpus = {
        "p1": "label noise in dense retrieval",
        "copy": "label noise in dense retrieval",  # the exact text of q1's positive
        "n1": "a recipe for bread",
        "p2": "weak supervision for rankers",
    }
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in corpus.items()))
    queries = {"q1": "noisy labels", "q2": "weak labels"}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\nq2\tp2\t1\n")


def test_copies_of_a_positive_are_counted_and_no_longer_mined(tiny_model_path, tmp_path):
    write_folder(tmp_path / "toy")
    out = tmp_path / "copies.json"
    # three non-positives per query and three negatives: every one is taken whatever the scores
    argv = ["--model", tiny_model_path, "--data_dir", str(tmp_path), "--datasets", "toy", "--num_negatives", "3",
            "--range_max", "3", "--max_length", "16", "--no-bf16", "--out", str(out)]  # fmt: skip
    with benchmark_module("mining_copies_of_positives") as bench:
        assert bench.main(argv) == 0
        assert bench.copies_of_positives({"a": "x", "b": "x", "c": "y"}, {"q": ["a"], "r": ["c"]}) == {"q": {"b"}}
    counts = json.loads(out.read_text())["datasets"]["toy"]
    assert counts["training_queries"] == 2 and counts["queries_with_copies"] == 1 and counts["copies"] == 1
    assert counts["mined_copies_without_the_filter"] == 1
    assert counts["mined_copies_with_the_filter"] == 0
