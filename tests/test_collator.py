"""The collator's sampling and its target matrix, checked against matrices written out by hand."""

import math

import numpy as np
import pytest
import torch
from conftest import canonical_row
from transformers import AutoTokenizer

from hf_robust_ir.data.collator import PAD_KEY, RetrievalCollator, _stable_seed, build_targets, document_key

NAN = float("nan")
CORPUS = {f"d{i}": f"text of document {i}" for i in range(1, 8)}


def _row(qid, doc_ids, labels, teacher=()):
    return canonical_row(qid, doc_ids, labels, teacher)


# q1 has two positives (d1 grade 1, d4 grade 2); d4 also arrives as q2's negative.
# q2's positive d3 is nobody else's candidate; d2 is a negative of both q1 and q2 (a duplicate in the batch).
# q3 lists d6 twice.
ROWS = [
    _row("q1", ["d1", "d4", "d2"], [1, 2, 0]),
    _row("q2", ["d3", "d4", "d2"], [1, 0, 0], teacher=[0.9, 0.5, 0.1]),
    _row("q3", ["d5", "d6", "d6"], [1, 0, 0]),
]
# Expected relevance of every document for every query, from each query's own candidate list.
EXPECTED = {
    "q1": {"d1": 1, "d4": 2, "d2": 0, "d3": 0, "d5": 0, "d6": 0},
    "q2": {"d3": 1, "d4": 0, "d2": 0, "d1": 0, "d5": 0, "d6": 0},
    "q3": {"d5": 1, "d6": 0, "d1": 0, "d2": 0, "d3": 0, "d4": 0},
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def _collate(tokenizer, **kwargs):
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=3, positives_per_query=1, **kwargs)
    return collator, collator(ROWS)


def test_documents_appear_once_and_positives_are_never_negatives(tokenizer):
    collator, batch = _collate(tokenizer)
    doc_ids = batch["doc_ids"]
    assert len(doc_ids) == len(set(doc_ids))
    # every sampled document is in the batch: q1 samples one of its positives and d2, q2 all three, q3 d5 + d6
    assert {"d2", "d3", "d4", "d5", "d6"} <= set(doc_ids) <= {"d1", "d2", "d3", "d4", "d5", "d6"}
    expected = torch.tensor([[EXPECTED[q][d] for d in doc_ids] for q in ("q1", "q2", "q3")], dtype=torch.float)
    torch.testing.assert_close(batch["labels"], expected)
    assert batch["mask"].all()
    assert batch["document"]["input_ids"].shape[0] == len(doc_ids)
    assert batch["query"]["input_ids"].shape[0] == 3


def test_exact_target_matrices_for_a_fixed_column_order(tokenizer):
    # The same batch seen through build_targets with the column order written out:
    # columns d1, d2, d3, d4, d5, d6, d2 (a repeat), padding.
    _, batch = _collate(tokenizer)
    order = ["d1", "d2", "d3", "d4", "d5", "d6", "d2"]
    doc_keys = torch.tensor([document_key(d) for d in order] + [PAD_KEY])
    labels, mask, teacher = build_targets(
        batch["candidate_keys"], batch["candidate_labels"], batch["candidate_teacher"], doc_keys
    )
    torch.testing.assert_close(
        labels,
        torch.tensor(
            [
                [1, 0, 0, 2, 0, 0, 0, 0],
                [0, 0, 1, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 1, 0, 0, 0],
            ],
            dtype=torch.float,
        ),
    )
    row_mask = [True, True, True, True, True, True, False, False]  # the repeat and the padding are masked
    assert mask.tolist() == [row_mask] * 3
    torch.testing.assert_close(
        teacher,
        torch.tensor(
            [
                [NAN] * 8,
                [NAN, 0.1, 0.9, 0.5, NAN, NAN, 0.1, NAN],
                [NAN] * 8,
            ]
        ),
        equal_nan=True,
    )
    _, own_mask, _ = build_targets(
        batch["candidate_keys"], batch["candidate_labels"], batch["candidate_teacher"], doc_keys, False
    )
    assert own_mask.tolist() == [
        [True, True, False, True, False, False, False, False],
        [False, True, True, True, False, False, False, False],
        [False, False, False, False, True, True, False, False],
    ]


def test_without_in_batch_negatives_a_query_sees_only_its_own_candidates(tokenizer):
    _, batch = _collate(tokenizer, in_batch_negatives=False)
    for i in range(3):
        own = set(ROWS[i]["doc_ids"])
        assert {d for d, m in zip(batch["doc_ids"], batch["mask"][i].tolist()) if m} == own & set(batch["doc_ids"])


def test_teacher_matrix_is_nan_where_unknown(tokenizer):
    _, batch = _collate(tokenizer)
    for c, doc in enumerate(batch["doc_ids"]):
        expected = {"d3": 0.9, "d4": 0.5, "d2": 0.1}.get(doc)
        value = batch["teacher"][1, c].item()
        assert (math.isnan(value) and expected is None) or value == pytest.approx(expected)
        assert math.isnan(batch["teacher"][0, c].item())


def test_sampling_is_deterministic_per_seed_epoch_and_query(tokenizer):
    row = _row("q", [f"d{i}" for i in range(1, 8)], [1, 1, 0, 0, 0, 0, 0])
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=3, positives_per_query=1, seed=7)
    first = collator.sample(row)
    assert collator.sample(row) == first
    assert RetrievalCollator(tokenizer, CORPUS, group_size=3, seed=7).sample(row) == first
    assert row["labels"][first[0]] == 1 and all(row["labels"][j] == 0 for j in first[1:])
    assert len(set(first)) == 3
    samples = set()
    for epoch in range(8):
        collator.set_epoch(epoch)
        samples.add(tuple(collator.sample(row)))
    assert len(samples) > 1  # a new sample each epoch
    collator.set_epoch(3)
    again = collator.sample(row)
    collator.set_epoch(3)
    assert collator.sample(row) == again


def test_a_document_listed_twice_takes_one_slot_and_a_listed_positive_is_never_a_negative(tokenizer):
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=10, positives_per_query=2)
    # d2 is listed twice as a negative, d3 as a positive and again as a negative
    row = _row("q", ["d1", "d2", "d3", "d2", "d3", "d4"], [0, 0, 1, 0, 0, 0])
    sampled = collator.sample(row)
    assert [row["doc_ids"][j] for j in sampled[:1]] == ["d3"]
    assert sorted(row["doc_ids"][j] for j in sampled[1:]) == ["d1", "d2", "d4"]
    small = RetrievalCollator(tokenizer, CORPUS, group_size=3, positives_per_query=1)
    for epoch in range(6):  # two negative slots, never d3 and never d2 twice
        small.set_epoch(epoch)
        negatives = [row["doc_ids"][j] for j in small.sample(row)[1:]]
        assert len(set(negatives)) == 2 and "d3" not in negatives
    # a row without repeats draws what it drew before repeats were merged (positions of positives and negatives)
    plain = _row("q", [f"d{i}" for i in range(1, 8)], [1, 1, 0, 0, 0, 0, 0])
    for epoch in range(4):
        small.set_epoch(epoch)
        rng = np.random.default_rng(_stable_seed(small.seed, epoch, "q"))
        expected = [int(i) for i in rng.choice([0, 1], size=1, replace=False)]
        expected += [int(i) for i in rng.choice([2, 3, 4, 5, 6], size=2, replace=False)]
        assert small.sample(plain) == expected


def test_group_larger_than_list_takes_everything(tokenizer):
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=10, positives_per_query=2)
    row = _row("q", ["d1", "d2", "d3"], [1, 0, 0])
    assert sorted(collator.sample(row)) == [0, 1, 2]


def test_dynamic_padding_and_separate_max_lengths(tokenizer):
    corpus = {"a": "short", "b": " ".join(["long"] * 100)}
    rows = [_row("q", ["a", "b"], [1, 0])]
    rows[0]["query"] = " ".join(["word"] * 50)
    batch = RetrievalCollator(tokenizer, corpus, group_size=2, query_max_length=8, document_max_length=16)(rows)
    assert batch["query"]["input_ids"].shape == (1, 8)
    assert batch["document"]["input_ids"].shape == (2, 16)
    short = RetrievalCollator(tokenizer, {"a": "short", "b": "tiny"}, group_size=2)([_row("q", ["a", "b"], [1, 0])])
    assert short["document"]["input_ids"].shape[1] == 3  # [CLS] word [SEP]: padded to the longest, not to max


def test_prefixes_are_added(tokenizer):
    rows = [_row("q", ["d1"], [1])]
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=1, query_prefix="query: ", document_prefix="passage: ")
    batch = collator(rows)
    assert tokenizer.decode(batch["query"]["input_ids"][0], skip_special_tokens=True).startswith("query :")
    assert tokenizer.decode(batch["document"]["input_ids"][0], skip_special_tokens=True).startswith("passage :")


def test_unknown_document_id_is_a_clear_error(tokenizer):
    with pytest.raises(KeyError, match="not in the corpus"):
        RetrievalCollator(tokenizer, CORPUS, group_size=2)([_row("q", ["d1", "zzz"], [1, 0])])


def test_invalid_sizes(tokenizer):
    with pytest.raises(ValueError):
        RetrievalCollator(tokenizer, CORPUS, group_size=1, positives_per_query=2)


def test_rows_whose_lists_do_not_match_their_doc_ids_are_a_clear_error(tokenizer):
    from hf_robust_ir.data.schema import DataFormatError

    collator = RetrievalCollator(tokenizer, CORPUS, group_size=3)
    bad = [
        ({"labels": [1, 0]}, "field 'labels': 2 values for 3 doc_ids"),
        ({"labels": [1, 0, 0, 0]}, "field 'labels': 4 values for 3 doc_ids"),
        ({"labels": None}, "field 'labels': no values for 3 doc_ids"),
        ({"teacher_scores": [0.1]}, "field 'teacher_scores': 1 values for 3 doc_ids"),  # not broadcast
        ({"doc_ids": [], "labels": []}, "field 'doc_ids': no doc ids"),  # a whole batch of them had no documents
    ]
    for change, message in bad:
        with pytest.raises(DataFormatError, match=f"training row of query 'q1', {message}"):
            collator([{**ROWS[0], **change}, ROWS[1]])
        with pytest.raises(DataFormatError, match=f"training row of query 'q1', {message}"):
            collator([{**ROWS[0], **change}])
    # teacher scores as an array (rows formatted as numpy) are read like a list
    import numpy as np

    batch = collator([{**ROWS[1], "teacher_scores": np.array([0.9, 0.5, 0.1], dtype=np.float32)}])
    assert torch.equal(batch["teacher"], collator([ROWS[1]])["teacher"])


# Rows of one query, one per positive (as a triples file gives them): q1 has d1 and d3 relevant, on separate rows;
# q2's negative d3 is q1's second positive; q1's second row also lists d2 relevant, which its first calls negative.
TRIPLE_ROWS = [
    _row("q1", ["d1", "d2"], [1, 0], teacher=[0.8, 0.2]),
    _row("q1", ["d3", "d4", "d2"], [1, 0, 2]),
    _row("q2", ["d5", "d3"], [1, 0], teacher=[0.7, 0.6]),
]


def _triples_collator(tokenizer, rows=TRIPLE_ROWS):
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=2, positives_per_query=1)
    assert collator.set_query_candidates(rows) == 1  # q1 alone has several rows
    return collator


def document_key_tensor(batch):
    return torch.tensor([document_key(d) for d in batch["doc_ids"]])


def _labels_by_doc(batch):
    return [dict(zip(batch["doc_ids"], row)) for row in batch["labels"].tolist()]


def test_rows_of_one_query_in_one_batch_are_never_each_others_negatives(tokenizer):
    plain = RetrievalCollator(tokenizer, CORPUS, group_size=2, positives_per_query=1)
    before = _labels_by_doc(plain(TRIPLE_ROWS[:2]))
    assert before[0]["d3"] == 0  # without the pooled lists, row 2's positive is row 1's in-batch negative
    batch = _triples_collator(tokenizer)(TRIPLE_ROWS[:2])
    # row 1 samples d1 + d2, row 2 d3 (its positive) + d2 (labeled 2 there) or d4: both rows read q1's pooled list
    expected = {"d1": 1, "d2": 2, "d3": 1, "d4": 0}
    assert _labels_by_doc(batch) == [{d: expected[d] for d in batch["doc_ids"]}] * 2
    assert set(batch["doc_ids"]) >= {"d1", "d3"}
    assert batch["mask"].all()


def test_a_querys_other_row_labels_its_documents_even_when_that_row_is_not_in_the_batch(tokenizer):
    batch = _triples_collator(tokenizer)([TRIPLE_ROWS[0], TRIPLE_ROWS[2]])
    assert batch["doc_ids"] == ["d1", "d2", "d5", "d3"]
    # d3 arrives as q2's negative: it is q1's positive from q1's other row, and q2's negative
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(
        batch["teacher"], torch.tensor([[0.8, 0.2, NAN, NAN], [NAN, NAN, 0.7, 0.6]]), equal_nan=True
    )
    _, own_mask, _ = build_targets(
        batch["candidate_keys"],
        batch["candidate_labels"],
        batch["candidate_teacher"],
        document_key_tensor(batch),
        False,
    )
    # without in-batch negatives q1 sees what any of its rows lists, q2 only its own list
    assert own_mask.tolist() == [[True, True, False, True], [False, False, True, True]]


def test_a_refreshed_query_reads_its_refreshed_list_not_the_pooled_rows(tokenizer):
    collator = _triples_collator(tokenizer)
    collator.set_row_overrides({"q1": {"doc_ids": ["d1", "d6"], "labels": [1, 0]}})
    batch = collator([TRIPLE_ROWS[0], TRIPLE_ROWS[2]])
    assert batch["doc_ids"] == ["d1", "d6", "d5", "d3"]
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))


def test_queries_with_one_row_are_not_pooled_and_a_dataset_works_as_rows(tokenizer):
    import datasets

    from hf_robust_ir.data.schema import ROW_FEATURES

    collator = RetrievalCollator(tokenizer, CORPUS, group_size=2)
    assert collator.set_query_candidates(ROWS) == 0
    assert collator.query_candidates == {}
    dataset = datasets.Dataset.from_list(TRIPLE_ROWS, features=ROW_FEATURES)
    assert collator.set_query_candidates(dataset) == 1
    assert collator.query_candidates["q1"]["doc_ids"] == ["d1", "d2", "d3", "d4", "d2"]
    assert collator.query_candidates["q1"]["labels"] == [1, 0, 1, 0, 2]
    teacher = collator.query_candidates["q1"]["teacher_scores"]
    assert teacher[:2] == pytest.approx([0.8, 0.2]) and all(math.isnan(t) for t in teacher[2:])


# q1 excludes d4 (a false negative relabeling dropped from its list), which reaches the batch as q2's negative, and
# lists d5 as a negative that it also excludes; q2 excludes d1, which reaches the batch as q1's positive.
EXCLUDING_ROWS = [
    {**_row("q1", ["d1", "d2", "d5"], [1, 0, 0]), "excluded_doc_ids": ["d4", "d5"]},
    {**_row("q2", ["d3", "d4"], [1, 0]), "excluded_doc_ids": ["d1"]},
]


def test_a_document_its_row_excludes_is_never_sampled_nor_in_its_querys_softmax(tokenizer):
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=3, positives_per_query=1)
    for epoch in range(5):  # d5 is listed as q1's negative but excluded: never drawn, whatever the sample
        collator.set_epoch(epoch)
        assert [EXCLUDING_ROWS[0]["doc_ids"][j] for j in collator.sample(EXCLUDING_ROWS[0])] == ["d1", "d2"]
    batch = collator(EXCLUDING_ROWS)
    assert batch["doc_ids"] == ["d1", "d2", "d3", "d4"]
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    # d4 is no negative of q1, d1 none of q2; every other document is
    assert batch["mask"].tolist() == [[True, True, True, False], [False, True, True, True]]
    plain = collator([{k: v for k, v in row.items() if k != "excluded_doc_ids"} for row in EXCLUDING_ROWS])
    assert plain["mask"].all()  # without the column d4 would be one of q1's in-batch negatives


def test_exclusions_survive_the_target_matrix_rebuilt_over_gathered_documents(tokenizer):
    # as under DDP: the matrix built again from the candidate lists over another process's columns too
    batch = RetrievalCollator(tokenizer, CORPUS, group_size=3, positives_per_query=1)(EXCLUDING_ROWS)
    order = ["d4", "d6", "d1", "d5"]
    labels, mask, _ = build_targets(
        batch["candidate_keys"],
        batch["candidate_labels"],
        batch["candidate_teacher"],
        torch.tensor([document_key(d) for d in order]),
    )
    torch.testing.assert_close(labels, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert mask.tolist() == [[False, True, True, False], [True, True, False, True]]


def test_a_document_a_query_labels_relevant_stays_a_positive_though_excluded(tokenizer):
    rows = [{**_row("q1", ["d1", "d2"], [1, 0]), "excluded_doc_ids": ["d1", "d3"]}, _row("q2", ["d3"], [1])]
    batch = RetrievalCollator(tokenizer, CORPUS, group_size=2, positives_per_query=1)(rows)
    assert batch["doc_ids"] == ["d1", "d2", "d3"]
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]


def test_one_rows_exclusion_holds_for_every_row_of_its_query_unless_one_labels_it_relevant(tokenizer):
    rows = [
        {**_row("q1", ["d1", "d2"], [1, 0]), "excluded_doc_ids": ["d4", "d6"]},
        _row("q1", ["d3", "d6"], [1, 1]),
        _row("q2", ["d5", "d4"], [1, 0]),
    ]
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=2, positives_per_query=1)
    assert collator.set_query_candidates(rows) == 1
    assert collator.query_candidates["q1"]["doc_ids"] == ["d1", "d2", "d4", "d6", "d3", "d6"]
    batch = collator(rows[1:])  # the excluding row is not in the batch; q1's other row samples d3 or d6
    assert batch["doc_ids"][0] in ("d3", "d6") and batch["doc_ids"][1:] == ["d5", "d4"]
    # d4 is excluded by q1's first row; d6, excluded there too, is relevant by the second row and stays a positive
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]
    batch = collator(rows[:1] + rows[2:])
    assert batch["doc_ids"] == ["d1", "d2", "d5", "d4"]
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    assert batch["mask"].tolist() == [[True, True, True, False], [True, True, True, True]]


def test_a_refresh_override_carries_its_own_exclusions(tokenizer):
    collator = RetrievalCollator(tokenizer, CORPUS, group_size=2, positives_per_query=1)
    collator.set_row_overrides({"q1": {"doc_ids": ["d1", "d6"], "labels": [1, 0], "excluded_doc_ids": ["d4"]}})
    batch = collator([_row("q1", ["d1", "d2"], [1, 0]), _row("q2", ["d3", "d4"], [1, 0])])
    assert batch["doc_ids"] == ["d1", "d6", "d3", "d4"]
    assert batch["mask"].tolist() == [[True, True, True, False], [True, True, True, True]]
