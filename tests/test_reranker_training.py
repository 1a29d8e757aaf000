"""Reranker training: per-query pair groups, the exact group matrices, and RetrievalTrainer on a CrossEncoder."""

import math

import datasets
import pytest
import torch
from conftest import canonical_row, tiny_bert_config
from transformers import AutoTokenizer, BertForSequenceClassification

from hf_robust_ir.data.reranker_collator import RerankerCollator
from hf_robust_ir.data.schema import ROW_FEATURES
from hf_robust_ir.losses import InfoNCELoss
from hf_robust_ir.modeling import CrossEncoder
from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments, group_pair_scores

CORPUS = {f"d{i}": f"passage {i} about topic {i % 3}" for i in range(12)}


def _row(qid, doc_ids, labels, teacher=()):
    return canonical_row(qid, doc_ids, labels, teacher, query=f"query {qid}")


@pytest.fixture(scope="module")
def reranker_path(tmp_path_factory, tiny_model_path):
    path = tmp_path_factory.mktemp("tiny-reranker")
    torch.manual_seed(5)
    config = tiny_bert_config(
        num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2
    )
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(path)
    return str(path)


def test_groups_pairs_and_matrices(reranker_path):
    tokenizer = AutoTokenizer.from_pretrained(reranker_path)
    rows = [
        _row("q1", ["d1", "d2", "d3", "d4"], [1, 0, 0, 0], teacher=[4.0, 3.0, 2.0, 1.0]),
        _row("q2", ["d5", "d5"], [2, 2]),  # a short group, and a document listed twice
    ]
    batch = RerankerCollator(tokenizer, CORPUS, group_size=3, max_length=32)(rows)
    group1, group2 = batch["doc_ids"]
    assert group1[0] == "d1" and len(group1) == 3 and set(group1[1:]) <= {"d2", "d3", "d4"}
    assert group2 == ["d5"]
    assert batch["labels"].tolist() == [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    assert batch["mask"].tolist() == [[True, True, True], [True, False, False]]
    teacher_of = {"d1": 4.0, "d2": 3.0, "d3": 2.0, "d4": 1.0}
    assert batch["teacher"][0].tolist() == [teacher_of[d] for d in group1]
    assert all(math.isnan(x) for x in batch["teacher"][1].tolist())
    assert batch["pair_rows"].tolist() == [0, 0, 0, 1]
    assert batch["pair_cols"].tolist() == [0, 1, 2, 0]
    first = tokenizer.decode(batch["pairs"]["input_ids"][3], skip_special_tokens=True)
    assert first.startswith("query q2") and "passage 5" in first


def test_a_document_listed_twice_takes_its_largest_label_and_teacher_score(reranker_path):
    """As in the bi-encoder's target matrix: listed as a negative and again as a positive, it is a positive."""
    tokenizer = AutoTokenizer.from_pretrained(reranker_path)
    rows = [_row("q1", ["d1", "d2", "d1"], [0, 0, 1], teacher=[float("nan"), 1.0, 3.0])]
    batch = RerankerCollator(tokenizer, CORPUS, group_size=3, max_length=32)(rows)
    assert batch["doc_ids"] == [["d1", "d2"]]  # the positive first, scored once
    assert batch["labels"].tolist() == [[1.0, 0.0]] and batch["teacher"].tolist() == [[3.0, 1.0]]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"labels": [1, 0]}, "field 'labels': 2 values for 3 doc_ids"),
        ({"teacher_scores": [0.5]}, "field 'teacher_scores': 1 values for 3 doc_ids"),
        ({"doc_ids": [], "labels": []}, "field 'doc_ids': no doc ids"),
    ],
)
def test_rows_whose_lists_do_not_match_their_doc_ids_are_a_clear_error(reranker_path, change, message):
    """As for the bi-encoder's collator: a short list would be cut silently by the pairing with doc ids."""
    from hf_robust_ir.data.schema import DataFormatError

    collator = RerankerCollator(AutoTokenizer.from_pretrained(reranker_path), CORPUS, group_size=3, max_length=32)
    row = {**_row("q1", ["d1", "d2", "d3"], [1, 0, 0]), **change}
    with pytest.raises(DataFormatError, match=f"training row of query 'q1', {message}"):
        collator([row, _row("q2", ["d4"], [1])])


def test_trainer_loss_is_the_contract_loss_over_group_scores(tmp_path, reranker_path):
    model = CrossEncoder.from_pretrained(reranker_path)
    rows = [_row("q1", ["d1", "d2", "d3"], [1, 0, 0]), _row("q2", ["d4", "d5"], [1, 0])]
    args = RetrievalTrainingArguments(output_dir=str(tmp_path), group_size=3, report_to=[], use_cpu=True)
    trainer = RetrievalTrainer(model, args, train_dataset=None, corpus=CORPUS)
    assert isinstance(trainer.data_collator, RerankerCollator)
    batch = trainer.data_collator(rows)
    loss = trainer.compute_loss(model, batch)

    logits = model(**batch["pairs"]).detach()
    manual = torch.zeros(2, 3)
    manual[0] = logits[:3] / model.temperature
    manual[1, :2] = logits[3:] / model.temperature
    expected = InfoNCELoss()(manual, batch["labels"], batch["mask"])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    # by hand for the first row: -log softmax(manual[0])[0]
    row0 = -torch.log_softmax(manual[0], 0)[0]
    row1 = -torch.log_softmax(manual[1, :2], 0)[0]
    assert loss.item() == pytest.approx(((row0 + row1) / 2).item(), abs=1e-6)


def test_group_pair_scores_places_scores():
    placed = group_pair_scores(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]), (2, 2))
    assert placed.tolist() == [[1.0, 2.0], [3.0, 0.0]]


def test_training_a_reranker_learns_and_saves(tmp_path, reranker_path):
    rows = [_row(f"q{i}", [f"d{i}", f"d{(i + 4) % 12}", f"d{(i + 8) % 12}"], [1, 0, 0]) for i in range(8)]
    dataset = datasets.Dataset.from_list(rows, features=ROW_FEATURES)
    model = CrossEncoder.from_pretrained(reranker_path)
    args = RetrievalTrainingArguments(
        output_dir=str(tmp_path),
        group_size=3,
        per_device_train_batch_size=4,
        learning_rate=2e-3,
        max_steps=16,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = RetrievalTrainer(model, args, train_dataset=dataset, corpus=CORPUS)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-4:]) < sum(losses[:4])
    trainer.save_model(str(tmp_path / "final"))
    loaded = CrossEncoder.from_pretrained(tmp_path / "final")
    pairs = [(rows[0]["query"], CORPUS["d0"]), (rows[0]["query"], CORPUS["d4"])]
    torch.testing.assert_close(torch.tensor(loaded.predict(pairs)), torch.tensor(model.predict(pairs)))


def test_gradient_checkpointing_trains_a_reranker_to_the_same_weights(tmp_path, reranker_path):
    rows = [_row(f"q{i}", [f"d{i}", f"d{(i + 4) % 12}", f"d{(i + 8) % 12}"], [1, 0, 0]) for i in range(8)]
    dataset = datasets.Dataset.from_list(rows, features=ROW_FEATURES)
    trained = {}
    for checkpointing in (False, True):
        model = CrossEncoder.from_pretrained(reranker_path)
        args = RetrievalTrainingArguments(
            output_dir=str(tmp_path / str(checkpointing)), group_size=3, per_device_train_batch_size=4,
            learning_rate=2e-3, max_steps=2, report_to=[], use_cpu=True, save_strategy="no", seed=3,
            gradient_checkpointing=checkpointing,
        )  # fmt: skip
        RetrievalTrainer(model, args, train_dataset=dataset, corpus=CORPUS).train()
        assert model.model.is_activation_checkpointing == checkpointing
        trained[checkpointing] = model.state_dict()
    for name, value in trained[False].items():
        torch.testing.assert_close(trained[True][name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_a_guided_loss_with_a_reranker_is_refused_when_the_trainer_is_built(tmp_path, reranker_path, tiny_model_path):
    from hf_robust_ir.modeling import BiEncoder

    rows = datasets.Dataset.from_list([_row("q1", ["d1", "d2"], [1, 0])], features=ROW_FEATURES)
    args = RetrievalTrainingArguments(
        output_dir=str(tmp_path), group_size=2, report_to=[], use_cpu=True, loss="guide_masked"
    )
    with pytest.raises(ValueError, match="guide-model masking is for bi-encoders"):
        RetrievalTrainer(
            CrossEncoder.from_pretrained(reranker_path), args, train_dataset=rows, corpus=CORPUS,
            guide_model=BiEncoder.from_pretrained(tiny_model_path),
        )  # fmt: skip
