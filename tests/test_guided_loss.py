"""GuideMaskedLoss: the GISTEmbed mask worked by hand, the inner loss on the masked matrix, the trainer guide path."""

import math

import pytest
import torch
from conftest import TOPIC_CORPUS, topic_rows

from hf_robust_ir.losses import GuideMaskedLoss, InfoNCELoss, LabelWeakeningLoss, get_loss
from hf_robust_ir.modeling import BiEncoder
from hf_robust_ir.trainer import RetrievalTrainer, RetrievalTrainingArguments

LABELS = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[True, True, True, True], [True, True, True, False], [True, True, True, True]])
GUIDE = torch.tensor([[0.80, 0.85, 0.78, 0.10], [0.90, 0.50, 0.70, 0.95], [0.9, 0.9, 0.9, 0.9]])


def test_absolute_margin_mask_by_hand():
    loss = GuideMaskedLoss(margin=0.05)
    # row 0: positive 0.80, limit 0.75 -> 0.85 and 0.78 masked; row 1: best positive 0.70, limit 0.65 -> 0.90 masked
    # (0.95 was already masked); row 2: no positive, unchanged
    expected = torch.tensor([[True, False, False, True], [False, True, True, False], [True, True, True, True]])
    assert torch.equal(loss.guide_mask(GUIDE, LABELS, MASK), expected)
    assert loss.stats() == {"guide_masked_per_query": 3 / 2}


def test_relative_and_zero_margin():
    relative = GuideMaskedLoss(margin=0.1, margin_strategy="relative")  # row 0 limit 0.72, row 1 limit 0.63
    expected = torch.tensor([[True, False, False, True], [False, True, True, False], [True, True, True, True]])
    assert torch.equal(relative.guide_mask(GUIDE, LABELS, MASK), expected)
    strict = GuideMaskedLoss(margin=0.0)  # only candidates strictly above the best positive
    expected = torch.tensor([[True, False, True, True], [False, True, True, False], [True, True, True, True]])
    assert torch.equal(strict.guide_mask(GUIDE, LABELS, MASK), expected)
    with pytest.raises(ValueError, match="margin_strategy"):
        GuideMaskedLoss(margin_strategy="percent")


def test_score_threshold_mask_by_hand():
    loss = GuideMaskedLoss(score_threshold=0.8)
    # row 0: 0.85 > 0.8 masked (the positive's 0.80 does not enter); row 1: 0.90 masked, the positives 0.50 and 0.70
    # never are, 0.95 was already masked; row 2 has no positive and is masked too: 0.9 > 0.8 everywhere
    expected = torch.tensor([[True, False, True, True], [False, True, True, False], [False, False, False, False]])
    assert torch.equal(loss.guide_mask(GUIDE, LABELS, MASK), expected)
    assert loss.stats() == {"guide_masked_per_query": (1 + 1 + 4) / 3}
    at_threshold = GuideMaskedLoss(score_threshold=0.85)  # strict: 0.85 stays, 0.90 and 0.9 go
    expected = torch.tensor([[True, True, True, True], [False, True, True, False], [False, False, False, False]])
    assert torch.equal(at_threshold.guide_mask(GUIDE, LABELS, MASK), expected)
    assert loss.config() == {"name": "guide_masked", "inner": {"name": "infonce"}, "margin": 0.0,
                             "margin_strategy": "absolute", "score_threshold": 0.8}  # fmt: skip
    assert "score_threshold" not in GuideMaskedLoss().config()
    with pytest.raises(ValueError, match="score_threshold"):
        GuideMaskedLoss(margin=0.1, score_threshold=0.8)


def test_forward_is_the_inner_loss_on_the_masked_matrix():
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.3, 1.5, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    loss = get_loss("guide_masked", inner="infonce", margin=0.05)
    value = loss(scores, LABELS, MASK, guide_scores=GUIDE)
    # by hand: row 0 softmax over {2.0, -1.0}; row 1 over {1.5, 0.2} with target (2/3, 1/3)
    row0 = -torch.log_softmax(torch.tensor([2.0, -1.0]), 0)[0]
    logp = torch.log_softmax(torch.tensor([1.5, 0.2]), 0)
    row1 = -(2 / 3 * logp[0] + 1 / 3 * logp[1])
    torch.testing.assert_close(value, (row0 + row1) / 2)
    value.backward()
    assert scores.grad[0, 1] == 0 and scores.grad[1, 0] == 0
    with pytest.raises(ValueError, match="guide_scores"):
        loss(scores, LABELS, MASK)


def test_config_citation_and_scheduled_attributes_of_the_inner_loss():
    loss = GuideMaskedLoss(inner=InfoNCELoss(), margin=0.1, margin_strategy="relative")
    assert loss.config() == {"name": "guide_masked", "inner": {"name": "infonce"}, "margin": 0.1,
                             "margin_strategy": "relative"}  # fmt: skip
    assert "2402.16829" in loss.citation
    assert not hasattr(loss, "alpha")
    weakened = GuideMaskedLoss(inner="label_weakening")
    assert isinstance(weakened.inner, LabelWeakeningLoss)
    weakened.alpha = 0.3
    assert weakened.inner.alpha == 0.3 and weakened.alpha == 0.3


class _Recording(GuideMaskedLoss):
    def forward(self, scores, labels, mask, teacher=None, guide_scores=None):
        self.seen = (scores.detach().clone(), labels.clone(), mask.clone(), guide_scores.clone())
        return super().forward(scores, labels, mask, teacher, guide_scores)


def test_trainer_passes_guide_scores_and_masks(tmp_path, no_dropout_model_path):
    args = RetrievalTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=0.0, save_strategy="no",
        report_to=[], group_size=3, use_cpu=True, disable_tqdm=True, guide_model=no_dropout_model_path, logging_steps=1,
    )  # fmt: skip
    model = BiEncoder.from_pretrained(no_dropout_model_path)
    loss = _Recording(margin=0.0)
    trainer = RetrievalTrainer(model, args, train_dataset=topic_rows(), corpus=TOPIC_CORPUS, loss=loss)
    assert all(not p.requires_grad for p in trainer.guide_model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    trainer.train()
    scores, labels, mask, guide = loss.seen
    assert guide.shape == scores.shape
    # the guide is the same weights in eval mode (no dropout here): its q·d is the model's score times τ
    torch.testing.assert_close(guide, scores * model.retrieval_config.temperature, atol=1e-4, rtol=1e-4)
    expected = loss.guide_mask(guide, labels, mask)
    best = torch.where(labels > 0, guide, torch.full_like(guide, -1e9)).amax(-1, keepdim=True)
    assert torch.equal(expected, mask & ((labels > 0) | (guide <= best)))
    assert trainer.guide_model.training is False
    logged = [h for h in trainer.state.log_history if "loss" in h]
    masked = int((mask & ~expected).sum())
    assert logged[0]["guide_masked_per_query"] == pytest.approx(masked / int((labels > 0).any(-1).sum()))


def test_trainer_needs_a_guide_for_a_guided_loss(tmp_path, no_dropout_model_path):
    args = RetrievalTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], loss="guide_masked")
    model = BiEncoder.from_pretrained(no_dropout_model_path)
    with pytest.raises(ValueError, match="guide model"):
        RetrievalTrainer(model, args, train_dataset=topic_rows(), corpus=TOPIC_CORPUS)
    with pytest.raises(ValueError, match="separate copy"):
        RetrievalTrainer(model, args, train_dataset=topic_rows(), corpus=TOPIC_CORPUS, guide_model=model)


def test_a_negative_margin_masks_only_candidates_far_above_the_positive_and_the_inner_weakening_gets_the_guide():
    # one row: label 0; guide [0.5, 0.8, 0.6, 0.1]; margin -0.2 masks candidate 1 only (0.8 > 0.5 + 0.2; 0.6 is not)
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    labels, mask = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.ones(1, 4, dtype=torch.bool)
    guide = torch.tensor([[0.5, 0.8, 0.6, 0.1]])
    plain = GuideMaskedLoss(margin=-0.2)
    # −log softmax over {1, 2, 0} at 1: log(e + e^2 + 1) − 1
    by_hand = math.log(math.e + math.e**2 + 1) - 1.0
    assert plain(scores, labels, mask, guide_scores=guide).item() == pytest.approx(by_hand, abs=1e-6)
    assert plain.stats()["guide_masked_per_query"] == 1.0
    # inner label weakening (α 0, student margin 0, guide agreement 0.05): among the compared candidates {0, 2, 3},
    # candidate 2 outranks the label for the student (2 > 1) and the guide (0.6 > 0.5 + 0.05): S = {0, 2},
    # loss −log((e + e^2) / (e + e^2 + 1)); it needs the guide scores, which the wrapper passes on
    inner = {"alpha": 0.0, "margin": 0.0, "guide_margin": 0.05}
    weakened = GuideMaskedLoss(inner="label_weakening", inner_kwargs=inner, margin=-0.2)
    expected = math.log(math.e + math.e**2 + 1) - math.log(math.e + math.e**2)
    assert weakened(scores, labels, mask, guide_scores=guide).item() == pytest.approx(expected, abs=1e-6)
    assert weakened.stats()["added_per_query"] == 1.0 and weakened.stats()["guide_masked_per_query"] == 1.0


def test_evaluation_passes_are_not_counted():
    # the statistics describe training passes (as label weakening's do): a pass without gradient leaves them alone
    scores = torch.zeros(3, 4)
    loss = GuideMaskedLoss(margin=0.05)
    with torch.no_grad():
        loss(scores, LABELS, MASK, guide_scores=GUIDE)
    assert loss.stats() == {}
    loss(scores.requires_grad_(), LABELS, MASK, guide_scores=GUIDE)
    assert loss.stats() == {"guide_masked_per_query": 3 / 2}  # as test_absolute_margin_mask_by_hand


def test_config_builds_the_same_loss_again_also_inside_a_weighted_sum():
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.3, 1.5, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]])
    loss = GuideMaskedLoss(inner="label_weakening", inner_kwargs={"margin": 0.0, "alpha": 0.2}, margin=0.05)
    config = loss.config()
    assert config["inner"]["name"] == "label_weakening" and config["inner"]["alpha"] == 0.2
    rebuilt = get_loss(config.pop("name"), **config)
    assert isinstance(rebuilt.inner, LabelWeakeningLoss) and rebuilt.config() == loss.config()
    torch.testing.assert_close(
        rebuilt(scores, LABELS, MASK, guide_scores=GUIDE), loss(scores, LABELS, MASK, guide_scores=GUIDE)
    )
    combined = get_loss("weighted_sum", losses=[loss, (get_loss("kl_distillation"), 0.5)])
    again = get_loss("weighted_sum", losses=combined.config()["losses"])
    assert again.config() == combined.config()
    teacher = torch.tensor([[3.0, 1.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(
        again(scores, LABELS, MASK, teacher, guide_scores=GUIDE),
        combined(scores, LABELS, MASK, teacher, guide_scores=GUIDE),
    )


def test_inner_of_a_wrong_type_is_refused_at_construction():
    with pytest.raises(TypeError, match="inner: expected"):
        GuideMaskedLoss(inner=3)
    with pytest.raises(ValueError, match="needs a 'name'"):
        GuideMaskedLoss(inner={"alpha": 0.1})
    with pytest.raises(ValueError, match="not to a built loss"):
        GuideMaskedLoss(inner=InfoNCELoss(), inner_kwargs={"temperature": 0.1})
    with pytest.raises(ValueError, match=r"\['alpha'\] given both"):
        GuideMaskedLoss(inner={"name": "label_weakening", "alpha": 0.1}, inner_kwargs={"alpha": 0.2})
