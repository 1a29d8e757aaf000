"""Label relaxation and label weakening against values worked by hand (natural logs).

Relaxation loss on the mass p_S of a set S: 0 if p_S >= 1 − α, else (1 − α) log((1 − α) / p_S) + α log(α / (1 − p_S)).
"""

import math

import pytest
import torch

from hf_robust_ir.losses import LOSS_REGISTRY, InfoNCELoss, LabelRelaxationLoss, LabelWeakeningLoss, get_loss

E = math.e
Z = E**2 + E + 1  # normalizer of scores [2, 1, 0]
P0, P1, P2 = E**2 / Z, E / Z, 1 / Z
ZM = E**2 + 1  # normalizer of [2, ·, 0] with candidate 1 masked
PM = E**2 / ZM


def relaxation(p_set: float, alpha: float) -> float:
    if p_set >= 1 - alpha:
        return 0.0
    return (1 - alpha) * math.log((1 - alpha) / p_set) + alpha * math.log(alpha / (1 - p_set))


def _loss(loss, scores, labels, mask=None, teacher=None):
    scores = torch.tensor(scores, dtype=torch.float)
    labels = torch.tensor(labels, dtype=torch.float)
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else torch.tensor(mask)
    return loss(scores, labels, mask, teacher).item()


# ---------------------------------------------------------------------------------------------- label relaxation
def test_relaxation_single_positive():
    # p0 = e²/Z = 0.6652 < 0.9: 0.9 log(0.9 / p0) + 0.1 log(0.1 / (1 − p0)) = 0.9·0.30236 + 0.1·(−1.2098) = 0.15115
    value = _loss(LabelRelaxationLoss(), [[2.0, 1.0, 0.0]], [[1, 0, 0]])
    assert value == pytest.approx(0.9 * math.log(0.9 / P0) + 0.1 * math.log(0.1 / (1 - P0)), abs=1e-6)
    assert value == pytest.approx(relaxation(P0, 0.1), abs=1e-6)


def test_relaxation_multi_positive_uses_the_mass_of_the_positive_set():
    # P = {0, 1}: p_P = (e² + e)/Z = 0.9100 >= 0.9 -> inside the credal set at α = 0.1
    assert _loss(LabelRelaxationLoss(alpha=0.1), [[2.0, 1.0, 0.0]], [[1, 1, 0]]) == 0.0
    # α = 0.05: 0.95 log(0.95 / 0.9100) + 0.05 log(0.05 / p2); grades do not matter
    expected = 0.95 * math.log(0.95 / (P0 + P1)) + 0.05 * math.log(0.05 / P2)
    assert _loss(LabelRelaxationLoss(alpha=0.05), [[2.0, 1.0, 0.0]], [[1, 1, 0]]) == pytest.approx(expected, abs=1e-6)
    assert _loss(LabelRelaxationLoss(alpha=0.05), [[2.0, 1.0, 0.0]], [[3, 1, 0]]) == pytest.approx(expected, abs=1e-6)


def test_relaxation_masked():
    # candidate 1 masked: p0 = e²/(e² + 1) = 0.8808 < 0.9
    value = _loss(LabelRelaxationLoss(), [[2.0, 1.0, 0.0]], [[1, 0, 0]], [[True, False, True]])
    assert value == pytest.approx(0.9 * math.log(0.9 / PM) + 0.1 * math.log(0.1 / (1 - PM)), abs=1e-6)
    # a masked "positive" is not a positive: the row has none and is left out
    assert _loss(LabelRelaxationLoss(), [[2.0, 1.0, 0.0]], [[0, 1, 0]], [[True, False, True]]) == 0.0


def test_relaxation_alpha_to_zero_is_cross_entropy():
    ce = math.log(Z) - 2
    assert _loss(LabelRelaxationLoss(alpha=0.0), [[2.0, 1.0, 0.0]], [[1, 0, 0]]) == pytest.approx(ce, abs=1e-6)
    assert _loss(LabelRelaxationLoss(alpha=1e-6), [[2.0, 1.0, 0.0]], [[1, 0, 0]]) == pytest.approx(ce, abs=1e-4)
    # α = 0 with several positives: −log(p0 + p1) (marginal likelihood, not the target-weighted InfoNCE)
    value = _loss(LabelRelaxationLoss(alpha=0.0), [[2.0, 1.0, 0.0]], [[1, 1, 0]])
    assert value == pytest.approx(-math.log(P0 + P1), abs=1e-6)


def test_relaxation_zero_loss_and_gradient_inside_the_credal_set():
    # p0 = e⁵/(e⁵ + 2) = 0.9867 >= 0.9
    scores = torch.tensor([[5.0, 0.0, 0.0]], requires_grad=True)
    value = LabelRelaxationLoss()(scores, torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(scores.grad, torch.zeros(1, 3))


def test_relaxation_set_holding_every_candidate_is_inside_at_any_alpha():
    # S = every masked-in candidate: p̂_S = 1, so the row is inside the credal set (loss 0), also for an α smaller than
    # float32's rounding of log p̂_S (about 1e-7: a cosine schedule to 0 passes 6e-8 at its last steps)
    scores = torch.tensor(
        [[0.5273054242, 4.0790672302, -1.7873555422, 1.8080898523, -3.9036977291]], requires_grad=True
    )
    mask = torch.ones(1, 5, dtype=torch.bool)
    for alpha in (6e-8, 1e-9, 0.1):
        value = LabelRelaxationLoss(alpha=alpha)(scores, torch.ones(1, 5), mask)
        assert value.item() == 0.0, alpha
    # with a masked-out candidate outside S the row still holds all the masked-in mass
    mask[0, 1] = False
    labels = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0]])
    assert LabelRelaxationLoss(alpha=6e-8)(scores, labels, mask).item() == 0.0


def test_relaxation_gradient_is_prediction_minus_projection():
    # outside the credal set ∂L/∂s = p̂ − p^r, p^r = ((1 − α) p̂_k / p̂_P on P, α p̂_k / (1 − p̂_P) elsewhere)
    scores = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    LabelRelaxationLoss(alpha=0.1)(
        scores, torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool)
    ).backward()
    rest = 1 - P0
    projection = [0.9, 0.1 * P1 / rest, 0.1 * P2 / rest]
    expected = torch.tensor([[P0 - projection[0], P1 - projection[1], P2 - projection[2]]])
    torch.testing.assert_close(scores.grad, expected)


def test_relaxation_batch_mean_leaves_out_rows_without_positive():
    value = _loss(
        LabelRelaxationLoss(), [[2.0, 1.0, 0.0], [5.0, 0.0, 0.0], [1.0, 2.0, 3.0]], [[1, 0, 0]] * 2 + [[0] * 3]
    )
    assert value == pytest.approx(relaxation(P0, 0.1) / 2, abs=1e-6)
    assert _loss(LabelRelaxationLoss(), [[1.0, 2.0]], [[0, 0]]) == 0.0


# ---------------------------------------------------------------------------------------------- label weakening
def weakening(**kwargs):
    kwargs.setdefault("alpha", 0.0)
    return LabelWeakeningLoss(**kwargs)


def test_candidate_outscoring_the_positive_by_the_margin_joins():
    # s = [1, 3, 0], positive 0: candidate 1 scores 3 > 1 + 1, so S = {0, 1}: −log((e + e³) / (e + e³ + 1))
    value = _loss(weakening(margin=1.0), [[1.0, 3.0, 0.0]], [[1, 0, 0]])
    assert value == pytest.approx(-math.log((E + E**3) / (E + E**3 + 1)), abs=1e-6)
    # 1.5 is not more than 1 above 1: S = P, −log(e / (e + e^1.5 + 1))
    value = _loss(weakening(margin=1.0), [[1.0, 1.5, 0.0]], [[1, 0, 0]])
    assert value == pytest.approx(-math.log(E / (E + E**1.5 + 1)), abs=1e-6)


def test_weakening_with_relaxation():
    # α = 0.01, S = {0, 1}: p_S = (e + e³)/(e + e³ + 1) = 0.9580 < 0.99
    p_set = (E + E**3) / (E + E**3 + 1)
    value = _loss(weakening(alpha=0.01), [[1.0, 3.0, 0.0]], [[1, 0, 0]])
    assert value == pytest.approx(0.99 * math.log(0.99 / p_set) + 0.01 * math.log(0.01 / (1 - p_set)), abs=1e-6)
    # α = 0.1: 0.9580 >= 0.9, inside the credal set of S (label relaxation alone would give a positive loss)
    assert _loss(weakening(alpha=0.1), [[1.0, 3.0, 0.0]], [[1, 0, 0]]) == 0.0
    assert _loss(LabelRelaxationLoss(alpha=0.1), [[1.0, 3.0, 0.0]], [[1, 0, 0]]) > 0.5


def test_max_added_bounds_the_added_candidates():
    # s = [0, 3, 4, 5, −1], positive 0: candidates 1, 2, 3 all score more than 0 + 1
    scores, labels = [[0.0, 3.0, 4.0, 5.0, -1.0]], [[1, 0, 0, 0, 0]]
    z = 1 + E**3 + E**4 + E**5 + E**-1
    # max_added = 1: the highest-scoring one, S = {0, 3}
    assert _loss(weakening(max_added=1), scores, labels) == pytest.approx(-math.log((1 + E**5) / z), abs=1e-6)
    # max_added = 2: S = {0, 3, 2}
    assert _loss(weakening(max_added=2), scores, labels) == pytest.approx(-math.log((1 + E**4 + E**5) / z), abs=1e-6)
    # no bound: S = {0, 1, 2, 3}
    assert _loss(weakening(max_added=None), scores, labels) == pytest.approx(-math.log((z - E**-1) / z), abs=1e-6)
    # max_added = 0: label relaxation
    assert _loss(weakening(max_added=0), scores, labels) == pytest.approx(-math.log(1 / z), abs=1e-6)


def test_masked_candidates_never_join():
    # candidate 1 scores highest but is masked; candidate 2 (3 > 0 + 1) joins: −log((1 + e³) / (1 + e³ + e⁻¹))
    value = _loss(weakening(max_added=1), [[0.0, 5.0, 3.0, -1.0]], [[1, 0, 0, 0]], [[True, False, True, True]])
    assert value == pytest.approx(-math.log((1 + E**3) / (1 + E**3 + E**-1)), abs=1e-6)
    # with every candidate above the positive masked, nothing joins
    value = _loss(weakening(max_added=None), [[0.0, 5.0, 3.0, -1.0]], [[1, 0, 0, 0]], [[True, False, False, True]])
    assert value == pytest.approx(-math.log(1 / (1 + E**-1)), abs=1e-6)


def test_margin_rule_compares_with_the_best_labeled_positive():
    # positives 0 (s=2) and 1 (s=0); candidate 2 (3.5 > 2 + 1) joins, candidate 3 (2.5) does not
    value = _loss(weakening(max_added=2), [[2.0, 0.0, 3.5, 2.5]], [[1, 1, 0, 0]])
    z = E**2 + 1 + E**3.5 + E**2.5
    assert value == pytest.approx(-math.log((E**2 + 1 + E**3.5) / z), abs=1e-6)


def test_topk_prob_rule():
    # s = [0, 3, 0, −1]: the top candidate 1 has p = e³ / (e³ + 2 + e⁻¹) = 0.8945 >= 0.5 and joins
    scores, labels = [[0.0, 3.0, 0.0, -1.0]], [[1, 0, 0, 0]]
    z = E**3 + 2 + E**-1
    assert _loss(weakening(rule="topk_prob"), scores, labels) == pytest.approx(-math.log((1 + E**3) / z), abs=1e-6)
    # not confident enough at min_prob = 0.95
    value = _loss(weakening(rule="topk_prob", min_prob=0.95), scores, labels)
    assert value == pytest.approx(-math.log(1 / z), abs=1e-6)
    # the model's top candidate is the labeled positive: nothing joins
    value = _loss(weakening(rule="topk_prob"), [[3.0, 0.0, 0.0, -1.0]], labels)
    assert value == pytest.approx(-math.log(E**3 / z), abs=1e-6)
    # top 2 with p >= 0.2: candidates 1 (p = e²/z2 = 0.468) and 2 (p = e^1.9/z2 = 0.424) qualify, max_added keeps 1
    scores2 = [[0.0, 2.0, 1.9, -5.0]]
    z2 = 1 + E**2 + E**1.9 + E**-5
    value = _loss(weakening(rule="topk_prob", top_m=2, min_prob=0.2, max_added=1), scores2, labels)
    assert value == pytest.approx(-math.log((1 + E**2) / z2), abs=1e-6)
    value = _loss(weakening(rule="topk_prob", top_m=2, min_prob=0.2, max_added=2), scores2, labels)
    assert value == pytest.approx(-math.log((1 + E**2 + E**1.9) / z2), abs=1e-6)


def test_rule_disabled_is_label_relaxation():
    torch.manual_seed(0)
    scores = torch.randn(4, 6) * 3
    labels = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 2, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]])
    mask = torch.rand(4, 6) > 0.2
    mask[:, :2] = True
    mask[3, 5] = True
    for alpha in (0.0, 0.1, 0.3):
        off = LabelWeakeningLoss(alpha=alpha, margin=-10.0, confidence_enabled=False)(scores, labels, mask)
        torch.testing.assert_close(off, LabelRelaxationLoss(alpha=alpha)(scores, labels, mask))
    # α = 0, rule off, one positive per query: cross-entropy
    one = torch.zeros(4, 6)
    one[:, 0] = 1
    off = LabelWeakeningLoss(alpha=0.0, confidence_enabled=False)(scores, one, mask)
    torch.testing.assert_close(off, InfoNCELoss()(scores, one, mask))


def test_selection_is_detached():
    # S = {0, 1} chosen from the scores; the gradient is that of −log(p0 + p1) with S fixed: p̂ − p̂·1[S]/p̂_S
    scores = torch.tensor([[1.0, 3.0, 0.0]], requires_grad=True)
    weakening()(scores, torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool)).backward()
    manual_scores = torch.tensor([[1.0, 3.0, 0.0]], requires_grad=True)
    (torch.logsumexp(manual_scores, -1) - torch.logsumexp(manual_scores[:, :2], -1)).sum().backward()
    torch.testing.assert_close(scores.grad, manual_scores.grad)
    z = E + E**3 + 1
    p = [E / z, E**3 / z, 1 / z]
    p_set = p[0] + p[1]
    expected = torch.tensor([[p[0] - p[0] / p_set, p[1] - p[1] / p_set, p[2]]])
    torch.testing.assert_close(scores.grad, expected)


def test_rows_without_positive_add_nothing_and_teacher_is_ignored():
    loss = weakening(margin=0.0)
    assert _loss(loss, [[5.0, 0.0]], [[0, 0]]) == 0.0
    assert loss.stats() == {}
    teacher = torch.tensor([[float("nan"), 7.0, 0.0]])
    with_teacher = _loss(weakening(), [[1.0, 3.0, 0.0]], [[1, 0, 0]], teacher=teacher)
    assert with_teacher == pytest.approx(_loss(weakening(), [[1.0, 3.0, 0.0]], [[1, 0, 0]]), abs=1e-7)


def test_statistics():
    loss = LabelWeakeningLoss(alpha=0.1, margin=1.0)
    scores = torch.tensor([[1.0, 3.0, 0.0], [3.0, 1.0, 0.0], [0.0, 9.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.ones(3, 3, dtype=torch.bool)
    loss(scores, labels, mask)
    # row 0: S = {0, 1}, outranked, p_S = 0.958 >= 0.9 (inside); row 1: S = {0}, p0 = 0.844 (outside);
    # row 2 has no positive and is not counted
    expected = {"plausible_set_size": 1.5, "added_per_query": 0.5, "outranked_fraction": 0.5, "credal_fraction": 0.5}
    assert loss.stats() == pytest.approx(expected)
    # a second call is averaged in: row 1 alone (S = {0}, not outranked, outside)
    loss(scores[1:2], labels[1:2], mask[1:2])
    assert loss.stats() == pytest.approx(
        {"plausible_set_size": 4 / 3, "added_per_query": 1 / 3, "outranked_fraction": 1 / 3, "credal_fraction": 1 / 3}
    )
    loss.reset_stats()
    assert loss.stats() == {}
    # evaluation (no gradient) is not counted
    with torch.no_grad():
        loss(scores, labels, mask)
    assert loss.stats() == {}
    # with the rule off, an outranked positive is still reported, nothing is added
    loss.confidence_enabled = False
    loss(scores[:1], labels[:1], mask[:1])
    assert loss.stats() == pytest.approx(
        {"plausible_set_size": 1.0, "added_per_query": 0.0, "outranked_fraction": 1.0, "credal_fraction": 0.0}
    )


def test_registry_and_config():
    assert LOSS_REGISTRY["label_relaxation"] is LabelRelaxationLoss
    assert LOSS_REGISTRY["label_weakening"] is LabelWeakeningLoss
    assert get_loss("label_relaxation").config() == {"name": "label_relaxation", "alpha": 0.1}
    assert get_loss("label_weakening", rule="topk_prob", warmup_steps=100).config() == {
        "name": "label_weakening",
        "alpha": 0.1,
        "rule": "topk_prob",
        "margin": 1.0,
        "top_m": 1,
        "min_prob": 0.5,
        "max_added": 1,
        "warmup_steps": 100,
        "confidence_enabled": True,
        "guide_margin": None,
        "replace_margin": None,
        "taylor_order": None,
    }
    assert "Lienen" in LabelRelaxationLoss.citation and "2512.13237" in LabelWeakeningLoss.citation
    with pytest.raises(ValueError, match="rule"):
        LabelWeakeningLoss(rule="vibes")
    with pytest.raises(ValueError, match="alpha"):
        LabelRelaxationLoss(alpha=1.0)


def test_guide_agreement_requires_the_guide_to_rank_the_candidate_above_the_label_too():
    # student s = [1, 3, 2.5, 0], positive 0, margin 0: candidates 1 and 2 outrank the label for the student.
    # guide g = [0.5, 0.4, 0.7, 0.9]: the guide ranks 2 and 3 above the label, not 1. Agreement: only 2 joins.
    loss = weakening(alpha=0.0, margin=0.0, max_added=None, guide_margin=0.0)
    assert loss.needs_guide_scores and loss.config()["guide_margin"] == 0.0
    scores = torch.tensor([[1.0, 3.0, 2.5, 0.0]])
    labels, mask = torch.tensor([[1.0, 0, 0, 0]]), torch.ones(1, 4, dtype=torch.bool)
    guide = torch.tensor([[0.5, 0.4, 0.7, 0.9]])
    z = E + E**3 + E**2.5 + 1
    assert loss(scores, labels, mask, guide_scores=guide).item() == pytest.approx(-math.log((E + E**2.5) / z), abs=1e-6)
    # a guide margin of 0.25 cosine: 0.7 is not above 0.5 + 0.25, nothing joins: plain −log p_0
    strict = weakening(alpha=0.0, margin=0.0, max_added=None, guide_margin=0.25)
    assert strict(scores, labels, mask, guide_scores=guide).item() == pytest.approx(-math.log(E / z), abs=1e-6)
    # without guide scores the loss refuses to guess; without guide_margin it needs none
    with pytest.raises(ValueError, match="guide_scores"):
        loss(scores, labels, mask)
    assert not weakening().needs_guide_scores


def test_replace_margin_drops_the_label_when_the_guide_disagrees_by_more_than_it():
    # Student scores (already divided by the temperature) [1, 2, 0]: label 0, candidate 1 outranks it (margin 0).
    # Row 0: guide [0.5, 0.7, 0.1], gap 0.2 > replace_margin 0.1: S = {1}, loss −log p_1.
    # Row 1: guide [0.5, 0.58, 0.1], gap 0.08 passes guide_margin 0.05 but not 0.1: S = {0, 1}, loss −log(p_0 + p_1).
    loss = weakening(alpha=0.0, margin=0.0, guide_margin=0.05, replace_margin=0.1)
    assert loss.config()["replace_margin"] == 0.1 and loss.needs_guide_scores
    scores = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]])
    labels, mask = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]), torch.ones(2, 3, dtype=torch.bool)
    guide = torch.tensor([[0.5, 0.7, 0.1], [0.5, 0.58, 0.1]])
    log_z = math.log(E + E**2 + 1)  # 2.40760
    replaced, weakened = log_z - 2.0, log_z - math.log(E + E**2)  # 0.40760, 0.09434
    assert replaced == pytest.approx(0.40760, abs=1e-5) and weakened == pytest.approx(0.09434, abs=1e-5)
    loss.reset_stats()
    assert loss(scores, labels, mask, guide_scores=guide).item() == pytest.approx((replaced + weakened) / 2, abs=1e-6)
    assert loss.stats()["replaced_fraction"] == pytest.approx(0.5)
    plain = weakening(alpha=0.0, margin=0.0, guide_margin=0.05)  # no replace_margin: both rows weakened, none replaced
    assert plain(scores, labels, mask, guide_scores=guide).item() == pytest.approx(weakened, abs=1e-6)
    assert plain.stats()["added_per_query"] == 1.0 and "replaced_fraction" not in plain.stats()
    with pytest.raises(ValueError, match="needs guide_margin"):
        weakening(replace_margin=0.1)
    with pytest.raises(ValueError, match=">= guide_margin"):
        weakening(guide_margin=0.2, replace_margin=0.1)


def test_taylor_order_puts_taylor_cross_entropy_on_the_mass_of_the_set():
    # s = [1, 3, 0], positive 0, candidate 1 joins: p_S = (e + e³)/(e + e³ + 1) = 0.95804, 1 − p_S = 0.04196;
    # order 2: 0.04196 + 0.04196² / 2 = 0.04284
    rest = 1 - (E + E**3) / (E + E**3 + 1)
    taylor = weakening(alpha=0.0, taylor_order=2)
    assert _loss(taylor, [[1.0, 3.0, 0.0]], [[1, 0, 0]]) == pytest.approx(rest + rest**2 / 2, abs=1e-6)
    # no candidate joins ([2, 1, 0]): 1 − p0 = 0.33476; order 1: 0.33476; order 3: + 0.05603 + 0.01251 = 0.40330
    assert _loss(weakening(alpha=0.0, taylor_order=1), [[2.0, 1.0, 0.0]], [[1, 0, 0]]) == pytest.approx(
        1 - P0, abs=1e-6
    )
    expected = (1 - P0) + (1 - P0) ** 2 / 2 + (1 - P0) ** 3 / 3
    assert _loss(weakening(alpha=0.0, taylor_order=3), [[2.0, 1.0, 0.0]], [[1, 0, 0]]) == pytest.approx(
        expected, abs=1e-6
    )
    # bounded where −log p_S is not: a label the model scores 20 below the rest (rule off, so nothing joins) costs
    # at most 1 + 1/2; with the rule on, candidate 1 joins and p_S = 1/2: 1/2 + 1/8
    rule_off = weakening(alpha=0.0, taylor_order=2, confidence_enabled=False)
    assert _loss(rule_off, [[-20.0, 0.0, 0.0]], [[1, 0, 0]]) == pytest.approx(1.5, abs=1e-6)
    assert _loss(weakening(alpha=0.0, confidence_enabled=False), [[-20.0, 0.0, 0.0]], [[1, 0, 0]]) > 20
    assert _loss(taylor, [[-20.0, 0.0, 0.0]], [[1, 0, 0]]) == pytest.approx(0.625, abs=1e-6)
    # gradient of (1 − p) + (1 − p)²/2 with respect to s0, p = p0: −(1 + (1 − p)) · p(1 − p)
    scores = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    weakening(alpha=0.0, taylor_order=2)(
        scores, torch.tensor([[1.0, 0, 0]]), torch.ones(1, 3, dtype=torch.bool)
    ).backward()
    assert scores.grad[0, 0].item() == pytest.approx(-(2 - P0) * P0 * (1 - P0), abs=1e-6)
    assert taylor.config()["taylor_order"] == 2
    with pytest.raises(ValueError, match="alpha must be 0"):
        LabelWeakeningLoss(taylor_order=2)  # alpha defaults to 0.1
    with pytest.raises(ValueError, match="taylor_order must be a whole number >= 1"):
        LabelWeakeningLoss(alpha=0.0, taylor_order=0)
    taylor.alpha = 0.2  # as a schedule would set it
    with pytest.raises(ValueError, match="alpha must stay 0"):
        _loss(taylor, [[1.0, 3.0, 0.0]], [[1, 0, 0]])
