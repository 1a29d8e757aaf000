"""InfoNCE against values worked by hand (natural logs)."""

import math

import pytest
import torch

from hf_robust_ir.losses import LOSS_REGISTRY, InfoNCELoss, get_loss

E = math.e
Z = E**2 + E + 1  # softmax normalizer of scores [2, 1, 0]


def _loss(scores, labels, mask=None):
    scores = torch.tensor(scores, dtype=torch.float)
    labels = torch.tensor(labels, dtype=torch.float)
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else torch.tensor(mask)
    return InfoNCELoss()(scores, labels, mask).item()


def test_single_positive_is_cross_entropy():
    # -log(e^2 / (e^2 + e + 1)) = log(1 + e^-1 + e^-2) = 0.4076059644
    assert _loss([[2.0, 1.0, 0.0]], [[1, 0, 0]]) == pytest.approx(math.log(1 + E**-1 + E**-2), abs=1e-6)
    assert _loss([[2.0, 1.0, 0.0]], [[1, 0, 0]]) == pytest.approx(0.4076059644, abs=1e-6)


def test_two_positives_share_the_target_mass():
    # target (1/2, 1/2, 0): -(1/2)(2 - log Z) - (1/2)(1 - log Z) = log Z - 1.5 = 0.9076059644
    assert _loss([[2.0, 1.0, 0.0]], [[1, 1, 0]]) == pytest.approx(math.log(Z) - 1.5, abs=1e-6)


def test_graded_positives_share_mass_by_grade():
    # grades (2, 1, 0) -> target (2/3, 1/3, 0): log Z - (2/3)*2 - (1/3)*1
    assert _loss([[2.0, 1.0, 0.0]], [[2, 1, 0]]) == pytest.approx(math.log(Z) - 5 / 3, abs=1e-6)


def test_masked_candidate_leaves_the_softmax():
    # candidate 1 masked: -log(e^2 / (e^2 + 1)) = log(e^2 + 1) - 2 = 0.1269280110
    assert _loss([[2.0, 1.0, 0.0]], [[1, 0, 0]], [[True, False, True]]) == pytest.approx(0.1269280110, abs=1e-6)


def test_rows_without_positive_are_left_out_of_the_mean():
    with_empty_row = _loss([[2.0, 1.0, 0.0], [5.0, -3.0, 0.0]], [[1, 0, 0], [0, 0, 0]])
    assert with_empty_row == pytest.approx(0.4076059644, abs=1e-6)
    assert _loss([[1.0, 2.0]], [[0, 0]]) == 0.0


def test_gradient_is_softmax_minus_target():
    scores = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    InfoNCELoss()(scores, torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool)).backward()
    expected = torch.tensor([[E**2 / Z - 1, E / Z, 1 / Z]])
    torch.testing.assert_close(scores.grad, expected)


def test_registry_and_config():
    assert LOSS_REGISTRY["infonce"] is InfoNCELoss
    loss = get_loss("infonce")
    assert loss.config() == {"name": "infonce"}
    assert "Oord" in loss.citation or "oord" in loss.citation
    with pytest.raises(KeyError, match="registered losses"):
        get_loss("no-such-loss")


def test_batch_without_positives_gives_zero_whatever_the_masked_scores():
    # no row has a positive: the loss is 0 with zero gradient, also when a masked-out score is -inf and when the
    # scores are so large that their sum overflows (0 · ∞ would be NaN)
    for scores, mask in (([[1.0, float("-inf")]], [[True, False]]), ([[3e38, 3e38]], [[True, True]])):
        scores = torch.tensor(scores, requires_grad=True)
        value = InfoNCELoss()(scores, torch.zeros(1, 2), torch.tensor(mask))
        value.backward()
        assert value.item() == 0.0
        assert (scores.grad == 0).all()


@pytest.mark.parametrize("name", sorted(LOSS_REGISTRY))
def test_labels_or_mask_of_another_shape_than_the_scores_are_refused(name):
    # labels[B] holding the index of each query's positive (as in-batch losses elsewhere take them) would broadcast
    # over the [B, B] scores of an in-batch-only batch and silently train on a wrong target
    loss = get_loss(name, **({"losses": [{"name": "infonce"}]} if name == "weighted_sum" else {}))
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0]])
    teacher = guide = torch.zeros(3, 3)
    extra = {"guide_scores": guide} if getattr(loss, "needs_guide_scores", False) else {}
    with pytest.raises(ValueError, match=r"labels \(3,\) do not match scores \(3, 3\)"):
        loss(scores, torch.arange(3), torch.ones(3, 3, dtype=torch.bool), teacher, **extra)
    with pytest.raises(ValueError, match=r"mask \(3,\) do not match scores \(3, 3\)"):
        loss(scores, torch.eye(3), torch.ones(3, dtype=torch.bool), teacher, **extra)
