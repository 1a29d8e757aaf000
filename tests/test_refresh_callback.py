"""ANCE-style refresh: the collator gets negatives mined and scored by the current model; the trainer wires it."""

from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch

from hf_robust_ir.callbacks import HardNegativeRefreshCallback
from hf_robust_ir.data.collator import RetrievalCollator
from hf_robust_ir.data.schema import RetrievalCorpus
from hf_robust_ir.mining import mine_hard_negatives
from hf_robust_ir.modeling import BiEncoder
from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

CORPUS = {f"d{i}": f"passage {i} about topic {i % 4} with words {' '.join(['w'] * (i % 5))}" for i in range(20)}
ROWS = [
    {"query_id": f"q{t}", "query": f"topic {t}", "doc_ids": [f"d{t}", f"d{t + 8}"], "labels": [1.0, 0.0]}
    for t in range(4)
]


def _model(path):
    return BiEncoder.from_pretrained(path, query_max_length=16, document_max_length=16)


def test_refresh_mines_with_the_current_model_and_the_collator_uses_it(tiny_model_path):
    model = _model(tiny_model_path)
    rows = datasets.Dataset.from_list(ROWS)
    collator = RetrievalCollator.for_model(model, CORPUS, group_size=3)
    callback = HardNegativeRefreshCallback(rows, CORPUS, collator, every_steps=2, num_negatives=2, range_max=5)
    overrides = callback.refresh(model)
    expected = mine_hard_negatives(
        model,
        RetrievalCorpus(CORPUS, {r["query_id"]: r["query"] for r in ROWS}, {f"q{t}": {f"d{t}": 1} for t in range(4)}),
        num_negatives=2,
        range_max=5,
        show_progress_bar=False,
    )
    for row in expected:
        got = overrides[row["query_id"]]
        assert got["doc_ids"] == row["doc_ids"] and got["labels"] == row["labels"]
        np.testing.assert_allclose(got["teacher_scores"], row["teacher_scores"], atol=1e-5)
        assert got["doc_ids"][0] == f"d{row['query_id'][1:]}"  # the labeled positive is kept first
    batch = collator([ROWS[0], ROWS[1]])
    sampled = set(batch["doc_ids"])
    assert sampled <= set(overrides["q0"]["doc_ids"]) | set(overrides["q1"]["doc_ids"])
    assert not torch.isnan(batch["teacher"][0][batch["mask"][0]]).all()  # the new teacher scores reach the matrix
    with pytest.raises(ValueError, match="every_steps"):
        HardNegativeRefreshCallback(rows, CORPUS, collator, every_steps=0)


def _args(tmp_path, **overrides):
    """Refresh every 2 steps, 2 negatives from the top 5; batches of 2 queries with 2 documents each."""
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=5,
        group_size=2,
        refresh_steps=2,
        refresh_num_negatives=2,
        refresh_range_max=5,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        model_card=False,
    )
    return RetrievalTrainingArguments(**{**settings, **overrides})


def test_trainer_refreshes_every_k_steps(tiny_model_path, tmp_path):
    model = _model(tiny_model_path)
    trainer = RetrievalTrainer(model, _args(tmp_path), train_dataset=datasets.Dataset.from_list(ROWS), corpus=CORPUS)
    calls = []
    real = trainer.hard_negative_refresh.refresh
    trainer.hard_negative_refresh.refresh = lambda m: (calls.append(trainer.state.global_step), real(m))[1]
    trainer.train()
    assert calls == [2, 4]  # after steps 2 and 4; not after the last step
    assert set(trainer.data_collator.row_overrides) == {"q0", "q1", "q2", "q3"}
    assert all(len(v["doc_ids"]) == 3 for v in trainer.data_collator.row_overrides.values())


def test_resume_trains_on_the_refreshed_candidates_of_the_checkpoint(tiny_model_path, tmp_path):
    rows = datasets.Dataset.from_list(ROWS)

    def args(**overrides):
        return _args(tmp_path, learning_rate=1e-3, max_steps=6, seed=3, **overrides)

    full = _model(tiny_model_path)
    RetrievalTrainer(full, args(save_strategy="steps", save_steps=3), train_dataset=rows, corpus=CORPUS).train()
    checkpoint = tmp_path / "checkpoint-3"  # after the refresh at step 2, before the one at step 4
    assert (checkpoint / "hard_negative_refresh.json").is_file()

    resumed = _model(tiny_model_path)
    trainer = RetrievalTrainer(resumed, args(), train_dataset=rows, corpus=CORPUS)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)
    assert trainer.hard_negative_refresh.refreshes == 2  # the one restored from the checkpoint and the one at step 4


def test_rows_of_the_same_query_keep_all_their_positives(tiny_model_path):
    model = _model(tiny_model_path)
    # q0 appears twice, with positive d0 in one row and d4 in the other
    rows = datasets.Dataset.from_list(
        [
            {"query_id": "q0", "query": "topic 0", "doc_ids": ["d0", "d8"], "labels": [1.0, 0.0]},
            {"query_id": "q0", "query": "topic 0", "doc_ids": ["d4", "d9"], "labels": [1.0, 0.0]},
            *ROWS[1:],
        ]
    )
    collator = RetrievalCollator.for_model(model, CORPUS, group_size=3)
    callback = HardNegativeRefreshCallback(rows, CORPUS, collator, every_steps=1, num_negatives=4, range_max=19)
    q0 = callback.refresh(model)["q0"]
    labels = dict(zip(q0["doc_ids"], q0["labels"]))
    assert labels["d0"] == 1.0 and labels["d4"] == 1.0
    assert sum(label > 0 for label in q0["labels"]) == 2 and len(q0["doc_ids"]) == 6  # 2 positives + 4 negatives


def test_documents_the_rows_exclude_are_never_mined_again_and_stay_excluded(tiny_model_path):
    model = _model(tiny_model_path)
    collator = RetrievalCollator.for_model(model, CORPUS, group_size=3)
    second = {**ROWS[0], "doc_ids": ["d4"], "labels": [1.0]}  # q0's second row: positive d4
    plain = HardNegativeRefreshCallback(
        datasets.Dataset.from_list([ROWS[0], second, *ROWS[1:]]), CORPUS, collator, 1, 4
    )
    mined = plain.refresh(model)["q0"]["doc_ids"][2:4]  # the current model's two hardest negatives of q0
    # each of q0's rows excludes one of them (relabeling dropped them as false negatives); the second row also
    # excludes its own positive d4, which stays a positive
    rows = [
        {**ROWS[0], "excluded_doc_ids": [mined[0]]},
        {**second, "excluded_doc_ids": [mined[1], "d4"]},
        *ROWS[1:],
    ]
    callback = HardNegativeRefreshCallback(datasets.Dataset.from_list(rows), CORPUS, collator, 1, 4)
    overrides = callback.refresh(model)
    q0 = overrides["q0"]
    assert q0["doc_ids"][:2] == ["d0", "d4"] and len(q0["doc_ids"]) == 6  # two positives, four new negatives
    assert not set(mined) & set(q0["doc_ids"])
    assert q0["excluded_doc_ids"] == mined
    assert overrides["q1"]["excluded_doc_ids"] == []
    # the refreshed list keeps them out of q0's softmax when another query brings them into the batch
    batch = collator([rows[0], {"query_id": "q9", "query": "other", "doc_ids": [mined[0]], "labels": [1.0]}])
    assert mined[0] in batch["doc_ids"]
    assert not batch["mask"][0][batch["doc_ids"].index(mined[0])] and batch["mask"][1].all()


def test_every_process_that_saves_checkpoints_writes_the_refreshed_candidates(tiny_model_path, tmp_path):
    """With ``save_on_each_node`` the first process of every node writes its node's checkpoint: the candidates must be
    in it too, or that node resumes on the stale ones."""
    collator = RetrievalCollator.for_model(_model(tiny_model_path), CORPUS, group_size=3)
    callback = HardNegativeRefreshCallback(datasets.Dataset.from_list(ROWS), CORPUS, collator, every_steps=2)
    collator.set_row_overrides({"q0": {"doc_ids": ["d0", "d4"], "labels": [1.0, 0.0], "teacher_scores": [0.5, 0.1]}})
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    node_one = SimpleNamespace(output_dir=str(tmp_path), should_save=True)  # local process 0 of the second node
    callback.on_save(node_one, SimpleNamespace(global_step=2, is_world_process_zero=False), None)
    assert (checkpoint / "hard_negative_refresh.json").is_file()
    (checkpoint / "hard_negative_refresh.json").unlink()
    other = SimpleNamespace(output_dir=str(tmp_path), should_save=False)
    callback.on_save(other, SimpleNamespace(global_step=2, is_world_process_zero=False), None)
    assert not (checkpoint / "hard_negative_refresh.json").exists()


def test_a_refresh_trains_from_the_next_step_even_on_a_batch_built_ahead(tiny_model_path, tmp_path):
    """The data loader builds batch k + 1 before the refresh after step k; it is built again with the refreshed
    candidates, so a run resumed from the checkpoint of a mid-epoch refresh step ends with the same weights."""
    # original negatives d{t+1} (another topic): the refreshed lists differ from the original ones
    rows = datasets.Dataset.from_list(
        [{**row, "doc_ids": [row["doc_ids"][0], f"d{int(row['query_id'][1:]) + 1}"]} for row in ROWS]
    )

    def args(**overrides):  # 4 rows, batches of 1: the refresh at step 2 is mid-epoch
        return _args(tmp_path, learning_rate=1e-3, max_steps=6, seed=3, per_device_train_batch_size=1, **overrides)

    full = _model(tiny_model_path)
    trainer = RetrievalTrainer(full, args(save_strategy="steps", save_steps=2), train_dataset=rows, corpus=CORPUS)
    trained_on = []
    original = trainer.compute_loss

    def recording(model, inputs, **kwargs):
        collator = trainer.data_collator
        trained_on.append((collator.overrides_version, inputs["doc_ids"], dict(collator.row_overrides)))
        return original(model, inputs, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    # steps 3-6 train on the candidates of the refresh before them (at steps 2 and 4)
    assert [version for version, _, _ in trained_on] == [0, 0, 1, 1, 2, 2]
    for _, doc_ids, overrides in trained_on[2:]:
        assert set(doc_ids) <= set(overrides[_query_of(doc_ids, rows)]["doc_ids"])

    resumed = _model(tiny_model_path)
    trainer = RetrievalTrainer(resumed, args(), train_dataset=rows, corpus=CORPUS)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)


def _query_of(doc_ids, rows):
    """The query whose positive (its first candidate) opens ``doc_ids``."""
    return next(row["query_id"] for row in rows if row["doc_ids"][0] == doc_ids[0])


def test_overrides_without_teacher_scores_do_not_keep_the_rows_own(tiny_model_path):
    """An override replaces the candidates: the row's teacher scores (for its old candidates) must not stay."""
    model = _model(tiny_model_path)
    rows = [{**ROWS[0], "teacher_scores": [0.9, 0.1], "label_source": ["qrels", "mined"]}]
    collator = RetrievalCollator.for_model(model, CORPUS, group_size=2)
    collator.set_row_overrides({"q0": {"doc_ids": ["d0", "d5"], "labels": [1.0, 0.0]}})
    batch = collator(rows)
    assert batch["doc_ids"] == ["d0", "d5"] and torch.isnan(batch["teacher"]).all()
    with pytest.raises(ValueError, match="the override of query 'q0' needs doc_ids and labels"):
        collator.set_row_overrides({"q0": {"doc_ids": ["d0"]}})


def test_refresh_is_refused_for_a_reranker(tmp_path, tiny_model_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_robust_ir.modeling import CrossEncoder

    head = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    reranker = CrossEncoder(head, AutoTokenizer.from_pretrained(tiny_model_path))
    with pytest.raises(ValueError, match="refresh_steps mines new negatives with the model being trained"):
        RetrievalTrainer(reranker, _args(tmp_path), train_dataset=datasets.Dataset.from_list(ROWS), corpus=CORPUS)


def test_mining_settings_that_cannot_work_are_refused_before_training(tiny_model_path):
    """A refresh first mines after every_steps training steps: settings it would refuse then are refused at once."""
    collator = RetrievalCollator.for_model(_model(tiny_model_path), CORPUS, group_size=3)
    rows = datasets.Dataset.from_list(ROWS)
    with pytest.raises(ValueError, match=r"num_negatives=8 does not fit in the rank window \[0, 5\)"):
        HardNegativeRefreshCallback(rows, CORPUS, collator, every_steps=2, num_negatives=8, range_max=5)
    with pytest.raises(ValueError, match="need 0 <= range_min < range_max, got range_min=5, range_max=5"):
        HardNegativeRefreshCallback(rows, CORPUS, collator, every_steps=2, num_negatives=1, range_min=5, range_max=5)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        HardNegativeRefreshCallback(rows, CORPUS, collator, every_steps=2, batch_size=0)


def test_refresh_teacher_scores_the_new_candidates(tiny_model_path, no_dropout_model_path, tmp_path, caplog):
    """With refresh_teacher, a refresh's teacher scores are the teacher's, not the trained model's; without it, a
    distillation loss is warned that it now learns from the trained model's own scores."""
    from hf_robust_ir.scoring import score_candidates

    rows = datasets.Dataset.from_list([{**row, "teacher_scores": [0.9, 0.1]} for row in ROWS])
    kl = {"loss": "kl_distillation"}
    with caplog.at_level("WARNING", logger="hf_robust_ir.trainer"):
        RetrievalTrainer(_model(tiny_model_path), _args(tmp_path, **kl), train_dataset=rows, corpus=CORPUS)
    assert "replaces them with the scores of the model being trained" in caplog.text
    caplog.clear()
    args = _args(tmp_path, refresh_teacher=no_dropout_model_path, **kl)
    with caplog.at_level("WARNING", logger="hf_robust_ir.trainer"):
        trainer = RetrievalTrainer(_model(tiny_model_path), args, train_dataset=rows, corpus=CORPUS)
    assert "replaces them" not in caplog.text
    overrides = trainer.hard_negative_refresh.refresh(trainer.model)
    teacher = BiEncoder.from_pretrained(no_dropout_model_path)
    for query_id, override in overrides.items():
        query = {row["query_id"]: row["query"] for row in ROWS}[query_id]
        [expected] = score_candidates(teacher, [query], [[CORPUS[d] for d in override["doc_ids"]]])
        np.testing.assert_allclose(override["teacher_scores"], expected, atol=1e-5)
