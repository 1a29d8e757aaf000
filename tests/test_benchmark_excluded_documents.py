"""benchmarks/excluded_documents.py: the counts of excluded documents reaching a batch or a re-mining, by hand."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module

CORPUS = {f"d{i}": f"passage {i} on subject {'abcdefghij'[i]} with words {i * 7}" for i in range(10)}


@pytest.fixture()
def excluded_documents():
    with benchmark_module("excluded_documents") as module:
        yield module


def injected_rows():
    """Four rows as the injection leaves them; ``noise`` marks a moved positive (the oracle's flags).

    q0: d0 positive, d1 moved, d2 mined  -> keeps d0, d2; excludes d1 (q1's positive)
    q1: d1 positive, d3 mined            -> unchanged
    q2: d4 positive, d2 moved, d5 mined  -> keeps d4, d5; excludes d2 (q0's negative)
    q3: d6 positive, d7 and d8 moved     -> keeps d6; excludes d7, d8 (no other row lists them)
    """
    import datasets

    from hf_robust_ir.data.schema import ROW_FEATURES

    def row(qid, docs, labels, sources):
        return {
            "query_id": qid,
            "query": f"question about {qid}",
            "doc_ids": docs,
            "labels": labels,
            "teacher_scores": [],
            "label_source": sources,
        }

    rows = [
        row("q0", ["d0", "d1", "d2"], [1.0, 0.0, 0.0], ["qrels", "noise", "mined"]),
        row("q1", ["d1", "d3"], [1.0, 0.0], ["qrels", "mined"]),
        row("q2", ["d4", "d2", "d5"], [1.0, 0.0, 0.0], ["qrels", "noise", "mined"]),
        row("q3", ["d6", "d7", "d8"], [1.0, 0.0, 0.0], ["qrels", "noise", "noise"]),
    ]
    return datasets.Dataset.from_list(rows, features=ROW_FEATURES)


def test_the_oracle_hn_remove_drops_and_excludes_exactly_the_moved_positives(excluded_documents):
    rows = excluded_documents.oracle_hn_remove(injected_rows())
    assert list(rows["doc_ids"]) == [["d0", "d2"], ["d1", "d3"], ["d4", "d5"], ["d6"]]
    assert list(rows["excluded_doc_ids"]) == [["d1"], [], ["d2"], ["d7", "d8"]]
    assert excluded_documents.rows_summary(rows) == {
        "queries": 4,
        "queries_with_excluded": 3,
        "excluded_documents": 4,
        "positives_left": 4,
        "negatives_left": 3,
    }


def test_in_batch_pairs_counted_and_masked(excluded_documents, tiny_model_path):
    from transformers import AutoTokenizer

    rows = excluded_documents.oracle_hn_remove(injected_rows())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    # one batch of all four queries, every candidate sampled (group size 8): the batch holds d0 d1 d2 d3 d4 d5 d6
    counts = excluded_documents.count_in_batch(
        rows, tokenizer, CORPUS, batch_size=4, group_size=8, epochs=2, seed=0, max_length=32
    )
    assert counts["verified"] is True
    assert [epoch["pairs"] for epoch in counts["per_epoch"]] == [2, 2]
    epoch = counts["per_epoch"][0]
    # (q0, d1) arrives as q1's positive, (q2, d2) as q0's negative; q3's d7 and d8 never reach the batch
    assert epoch["arrived_as"] == {"another_querys_positive": 1, "another_querys_negative": 1}
    assert epoch["queries_affected"] == 2 and epoch["excluded_documents_reaching_a_batch"] == 2
    assert epoch["batches"] == 1 and epoch["batches_affected"] == 1
    # before: 7 documents, one positive each -> 4 x 6 negatives; now q0 and q2 lose one each
    assert epoch["negative_entries_before"] == 24 and epoch["negative_entries_now"] == 22
    assert epoch["share_of_negative_entries_before"] == pytest.approx(2 / 24, abs=1e-5)
    assert epoch["share_of_queries_affected"] == 0.5
    assert epoch["share_of_queries_with_excluded_affected"] == pytest.approx(0.6667, abs=1e-4)
    assert epoch["mask_true_now"] == epoch["nonzero_label_now"] == epoch["not_a_negative_before"] == 0

    # one query per batch: no other query brings anything, so nothing reaches a batch
    alone = excluded_documents.count_in_batch(
        rows, tokenizer, CORPUS, batch_size=1, group_size=8, epochs=1, seed=0, max_length=32
    )
    assert alone["per_epoch"][0]["batches"] == 4 and alone["per_epoch"][0]["pairs"] == 0


def test_epoch_batches_cover_every_row_once_and_reshuffle(excluded_documents):
    first = excluded_documents.epoch_batches(10, 4, seed=0, epoch=0)
    assert [len(batch) for batch in first] == [4, 4, 2]
    assert sorted(i for batch in first for i in batch) == list(range(10))
    assert first == excluded_documents.epoch_batches(10, 4, seed=0, epoch=0)
    assert first != excluded_documents.epoch_batches(10, 4, seed=0, epoch=1)


def test_remining_brings_every_excluded_document_back_without_excluded(excluded_documents, tiny_model_path):
    from hf_robust_ir.modeling import BiEncoder

    rows = excluded_documents.oracle_hn_remove(injected_rows())
    model = BiEncoder.from_pretrained(tiny_model_path, query_max_length=32, document_max_length=32).eval()
    # a window as deep as the corpus: every non-positive is mined, whatever the random model ranks first
    counts = excluded_documents.count_remined(model, rows, CORPUS, num_negatives=10, range_min=0, range_max=10)
    assert counts["queries"] == 4 and counts["excluded_documents"] == 4
    without, with_ = counts["without_excluded"], counts["with_excluded"]
    # 4 queries x 9 non-positives; d1 (q0), d2 (q2), d7 and d8 (q3) among them
    assert without["mined_negatives"] == 36
    assert without["excluded_among_negatives"] == 4 and without["queries_affected"] == 3
    assert without["share_of_excluded_documents"] == 1.0
    assert with_["mined_negatives"] == 32 and with_["excluded_among_negatives"] == 0
    assert counts["verified"] is True


def test_the_command_writes_its_counts(excluded_documents, tiny_model_path, tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = {f"c{i}": f"text {i} about theme {i % 4} and item {i * 3}" for i in range(24)}
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in docs.items())
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": f"theme {i % 4} question {i}"}) + "\n" for i in range(6))
    )
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\tc{(i + 4 * k) % 24}\t1" for i in range(6) for k in range(4)]
    (folder / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n")
    out = tmp_path / "excluded.json"
    code = excluded_documents.main(
        [
            "--model", tiny_model_path, "--data_dir", str(tmp_path), "--dataset", "beir", "--profile", "full",
            "--mining_range_min", "0", "--mining_range_max", "12", "--negative_pool", "4", "--batch_size", "3",
            "--refresh_num_negatives", "4", "--refresh_range_max", "12", "--epochs", "2", "--max_length", "32",
            "--encode_max_length", "32", "--no-bf16", "--no_progress", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["verified"] is True and report["data"]["train_queries"] == 6
    assert set(report["orders"]) == {"random", "teacher_score"}
    for entry in report["orders"].values():
        # half of each query's 4 positives moved, all listed among the negatives, all excluded by the oracle
        assert entry["rows"]["excluded_documents"] == 12 and entry["rows"]["positives_left"] == 12
        assert len(entry["in_batch"]["per_epoch"]) == 2
        assert entry["remining"]["with_excluded"]["excluded_among_negatives"] == 0
    assert report["settings"]["profile"] == "full" and "excluded_documents.py" in report["command"]
