"""Soft-label, list-wise and combined losses against values worked by hand (natural logs, plain ``math``).

Many cases use scores s = [2, 1, 0] against a target from [0, 1, 2]: both softmaxes share the normalizer
Z = e² + e + 1, so KL(softmax([0, 1, 2]) || softmax([2, 1, 0])) = Σ_k q_k (t_k − s_k) = (2e² − 2) / Z.
"""

import math
import warnings

import numpy as np
import pytest
import torch

from hf_robust_ir.losses import (
    LOSS_REGISTRY,
    GuideDistillationLoss,
    GuideMaskedLoss,
    InfoNCELoss,
    KLDistillationLoss,
    LabelRelaxationLoss,
    ListNetLoss,
    MarginMSELoss,
    WassersteinListwiseLoss,
    WeightedSumLoss,
    get_loss,
)

E = math.e
Z = E**2 + E + 1
NAN = float("nan")
REVERSED_KL = (2 * E**2 - 2) / Z  # KL(softmax([0, 1, 2]) || softmax([2, 1, 0]))


def softmax(values):
    exps = [math.exp(v) for v in values]
    total = sum(exps)
    return [x / total for x in exps]


def kl(target, pred):
    return sum(t * (math.log(t) - math.log(p)) for t, p in zip(target, pred))


def t(rows, dtype=torch.float):
    return torch.tensor(rows, dtype=dtype)


def full_mask(scores):
    return torch.ones_like(scores, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------------- KL distillation
KL_SCORES = [[2.0, 1.0, 0.0], [0.5, -1.0, 3.0], [1.0, 2.0, 3.0], [0.0, 1.0, 4.0]]
KL_TEACHER = [[0.0, 1.0, 2.0], [1.0, NAN, 0.0], [NAN, NAN, NAN], [NAN, 5.0, NAN]]  # rows 2 and 3: too few scores
KL_LABELS = [[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]]


def _kl_row1(teacher_temperature=1.0, student_temperature=1.0):
    """Row 1: candidate 1 has no teacher score, so both softmaxes are over candidates 0 and 2."""
    q = softmax([1.0 / teacher_temperature, 0.0])
    p = softmax([0.5 / student_temperature, 3.0 / student_temperature])
    return kl(q, p)


def test_kl_distillation_by_hand():
    loss = KLDistillationLoss()(t(KL_SCORES), t(KL_LABELS), full_mask(t(KL_SCORES)), t(KL_TEACHER))
    assert loss.item() == pytest.approx((REVERSED_KL + _kl_row1()) / 2, abs=1e-6)
    # rows without (enough) teacher scores are left out: the two first rows alone give the same value
    two_rows = KLDistillationLoss()(t(KL_SCORES[:2]), t(KL_LABELS[:2]), full_mask(t(KL_SCORES[:2])), t(KL_TEACHER[:2]))
    assert two_rows.item() == pytest.approx(loss.item(), abs=1e-7)


def test_kl_distillation_mask_and_temperatures():
    scores, teacher = t(KL_SCORES[:1]), t(KL_TEACHER[:1])
    mask = t([[True, True, False]], torch.bool)  # candidate 2 leaves both softmaxes
    value = KLDistillationLoss()(scores, t(KL_LABELS[:1]), mask, teacher).item()
    assert value == pytest.approx(kl(softmax([0.0, 1.0]), softmax([2.0, 1.0])), abs=1e-6)
    # τ_t = 2, τ_s = 0.5: q = softmax(t / 2), p = softmax(s / 0.5)
    loss = KLDistillationLoss(teacher_temperature=2.0, student_temperature=0.5)
    value = loss(scores, t(KL_LABELS[:1]), full_mask(scores), teacher).item()
    expected = kl(softmax([0.0, 0.5, 1.0]), softmax([4.0, 2.0, 0.0]))
    assert value == pytest.approx(expected, abs=1e-6)
    # Hinton's scaling multiplies by τ_t²
    scaled = KLDistillationLoss(teacher_temperature=2.0, student_temperature=0.5, scale_by_temperature=True)
    assert scaled(scores, t(KL_LABELS[:1]), full_mask(scores), teacher).item() == pytest.approx(4 * expected, abs=1e-5)


def test_kl_distillation_gradient_is_softmax_difference_over_student_temperature():
    scores = t(KL_SCORES).requires_grad_()
    loss = KLDistillationLoss(teacher_temperature=2.0, student_temperature=0.5)
    loss(scores, t(KL_LABELS), full_mask(scores), t(KL_TEACHER)).backward()
    # two rows qualify: row 0 over all candidates, row 1 over candidates 0 and 2
    p0, q0 = softmax([4.0, 2.0, 0.0]), softmax([0.0, 0.5, 1.0])
    p1, q1 = softmax([1.0, 6.0]), softmax([0.5, 0.0])
    expected = [
        [(p - q) / 0.5 / 2 for p, q in zip(p0, q0)],
        [(p1[0] - q1[0]) / 0.5 / 2, 0.0, (p1[1] - q1[1]) / 0.5 / 2],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
    ]
    torch.testing.assert_close(scores.grad, t(expected))


def test_teacher_score_of_minus_infinity_is_a_target_probability_of_zero():
    # teacher [3, 1, −inf] (e.g. log 0 of a teacher's log-probabilities): q = [e²/(e² + 1), 1/(e² + 1), 0]; the
    # term of candidate 2 is 0 · log(0 / p_2) = 0, so KL(q || p) = Σ_{k<2} q_k log(q_k / p_k), p = softmax([2, 1, 0])
    q0, q1 = E**2 / (E**2 + 1), 1 / (E**2 + 1)
    expected = q0 * math.log(q0 / (E**2 / Z)) + q1 * math.log(q1 / (E / Z))  # 0.16148
    assert expected == pytest.approx(0.16148, abs=1e-5)
    scores = t([[2.0, 1.0, 0.0]]).requires_grad_()
    teacher = t([[3.0, 1.0, -math.inf]])
    value = KLDistillationLoss()(scores, t([[1, 0, 0]]), full_mask(scores), teacher)
    assert value.item() == pytest.approx(expected, abs=1e-6)
    value.backward()  # ∂/∂s = p − q
    torch.testing.assert_close(scores.grad, t([[E**2 / Z - q0, E / Z - q1, 1 / Z]]))
    listnet = ListNetLoss(use_teacher=True)(scores, t([[1, 0, 0]]), full_mask(scores), teacher)
    assert listnet.item() == pytest.approx(expected, abs=1e-6)
    # a margin to a teacher score of −inf has no finite target: Margin-MSE leaves that candidate out, as it does a NaN.
    # Left: the negative 1, ((2 − 1) − (3 − 1))² = 1, with gradient 2 · (−1) = −2 on s_0 and +2 on s_1
    scores.grad = None
    margin_mse = MarginMSELoss()(scores, t([[1, 0, 0]]), full_mask(scores), teacher)
    assert margin_mse.item() == pytest.approx(1.0, abs=1e-6)
    margin_mse.backward()
    torch.testing.assert_close(scores.grad, t([[-2.0, 2.0, 0.0]]))


def test_kl_distillation_without_any_teacher_row():
    scores = t(KL_SCORES[2:]).requires_grad_()
    value = KLDistillationLoss()(scores, t(KL_LABELS[2:]), full_mask(scores), t(KL_TEACHER[2:]))
    assert value.item() == 0.0 and value.grad_fn is not None
    value.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))
    with pytest.raises(ValueError, match="teacher"):
        KLDistillationLoss()(scores, t(KL_LABELS[2:]), full_mask(scores))
    with pytest.raises(ValueError, match="temperatures"):
        KLDistillationLoss(teacher_temperature=0.0)


# ---------------------------------------------------------------------------------------------------- MarginMSE
MM_SCORES = [[2.0, 1.0, 0.0, 0.5], [1.0, 3.0, -1.0, 0.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]
MM_LABELS = [[1, 0, 0, 2], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
MM_TEACHER = [[5.0, 3.0, NAN, 4.0], [2.0, 6.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, NAN, NAN, NAN]]


def _margin_mse(scores=MM_SCORES, labels=MM_LABELS, teacher=MM_TEACHER, mask=None, **kwargs):
    scores = t(scores)
    mask = full_mask(scores) if mask is None else t(mask, torch.bool)
    return MarginMSELoss(**kwargs)(scores, t(labels), mask, t(teacher))


def test_margin_mse_by_hand():
    # row 0: positive = candidate 3 (label 2 beats label 1), negatives {1} (candidate 2 has no teacher score):
    #   ((0.5 − 1) − (4 − 3))² = 2.25
    # row 1: labels tie, the teacher picks candidate 1 (6 > 2); negatives {2, 3}:
    #   ((3 − (−1)) − (6 − 1))² = 1, ((3 − 0) − (6 − 0))² = 9, mean 5
    # row 2 has no positive, row 3 no negative with a teacher score: both left out
    assert _margin_mse().item() == pytest.approx((2.25 + 5.0) / 2, abs=1e-6)
    # candidate 3 of row 1 masked: only the error 1 is left
    mask = [[True] * 4, [True, True, True, False], [True] * 4, [True] * 4]
    assert _margin_mse(mask=mask).item() == pytest.approx((2.25 + 1.0) / 2, abs=1e-6)
    # masking the positive of row 0 makes candidate 0 (label 1) the positive: ((2 − 1) − (5 − 3))² = 1
    mask = [[True, True, True, False], [True] * 4, [True] * 4, [True] * 4]
    assert _margin_mse(mask=mask).item() == pytest.approx((1.0 + 5.0) / 2, abs=1e-6)


def test_margin_mse_student_scale_and_gradient():
    # σ = 2: row 0 (2·(0.5 − 1) − 1)² = 4; row 1 (2·4 − 5)² = 9 and (2·3 − 6)² = 0, mean 4.5
    assert _margin_mse(student_scale=2.0).item() == pytest.approx((4.0 + 4.5) / 2, abs=1e-6)
    scores = t(MM_SCORES[:1]).requires_grad_()
    MarginMSELoss()(scores, t(MM_LABELS[:1]), full_mask(scores), t(MM_TEACHER[:1])).backward()
    # d/ds_3 (s_3 − s_1 − 1)² = 2 · (−1.5) = −3, d/ds_1 = +3
    torch.testing.assert_close(scores.grad, t([[0.0, 3.0, 0.0, -3.0]]))
    none = _margin_mse(MM_SCORES[2:], MM_LABELS[2:], MM_TEACHER[2:])
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="student_scale"):
        MarginMSELoss(student_scale=0.0)


# ---------------------------------------------------------------------------------------------------- ListNet
def _listnet(scores, labels, mask=None, teacher=None, **kwargs):
    scores = t(scores)
    mask = full_mask(scores) if mask is None else t(mask, torch.bool)
    return ListNetLoss(**kwargs)(scores, t(labels), mask, None if teacher is None else t(teacher))


def test_listnet_by_hand():
    # row 0: T = softmax([0, 1, 2]), P = softmax([2, 1, 0]); row 1 (candidate 1 masked): T = softmax([3, 0]),
    # P = softmax([0.5, 3])
    row1 = kl(softmax([3.0, 0.0]), softmax([0.5, 3.0]))
    mask = [[True, True, True], [True, False, True]]
    value = _listnet([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0]], [[0, 1, 2], [3, 0, 0]], mask).item()
    assert value == pytest.approx((REVERSED_KL + row1) / 2, abs=1e-6)
    # target temperature 2: T = softmax(y / 2)
    value = _listnet([[2.0, 1.0, 0.0]], [[0, 1, 2]], target_temperature=2.0).item()
    assert value == pytest.approx(kl(softmax([0.0, 0.5, 1.0]), softmax([2.0, 1.0, 0.0])), abs=1e-6)
    # all labels equal: a uniform target, KL = −log 3 − mean(s) + log Z
    value = _listnet([[2.0, 1.0, 0.0]], [[0, 0, 0]]).item()
    assert value == pytest.approx(-math.log(3) - 1.0 + math.log(Z), abs=1e-6)
    # a row with a single candidate carries nothing and is left out of the mean
    mask = [[True, True, True], [False, True, False]]
    value = _listnet([[2.0, 1.0, 0.0], [5.0, 0.0, 1.0]], [[0, 1, 2], [0, 1, 0]], mask).item()
    assert value == pytest.approx(REVERSED_KL, abs=1e-6)


def test_listnet_gradient_is_prediction_minus_target():
    scores = t([[2.0, 1.0, 0.0]]).requires_grad_()
    ListNetLoss()(scores, t([[0, 1, 2]]), full_mask(scores)).backward()
    expected = [p - q for p, q in zip(softmax([2.0, 1.0, 0.0]), softmax([0.0, 1.0, 2.0]))]
    torch.testing.assert_close(scores.grad, t([expected]))


def test_listnet_with_teacher():
    scores, labels = [[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]], [[2, 0, 0], [0, 1, 2]]
    teacher = [[1.0, 0.0, NAN], [NAN, NAN, NAN]]
    # row 0 has two teacher scores: T = softmax([1, 0]), P = softmax([2, 1]) over candidates 0 and 1;
    # row 1 has none and keeps its labels
    row0 = kl(softmax([1.0, 0.0]), softmax([2.0, 1.0]))
    value = _listnet(scores, labels, teacher=teacher, use_teacher=True).item()
    assert value == pytest.approx((row0 + REVERSED_KL) / 2, abs=1e-6)
    # the teacher is ignored unless asked for, and use_teacher without a teacher falls back to the labels
    row0_labels = kl(softmax([2.0, 0.0, 0.0]), softmax([2.0, 1.0, 0.0]))
    assert _listnet(scores, labels, teacher=teacher).item() == pytest.approx((row0_labels + REVERSED_KL) / 2, abs=1e-6)
    assert _listnet(scores, labels, use_teacher=True).item() == pytest.approx((row0_labels + REVERSED_KL) / 2, abs=1e-6)


# ---------------------------------------------------------------------------------------------------- Wasserstein
def _wasserstein(scores, labels, mask=None, **kwargs):
    scores = torch.as_tensor(scores, dtype=torch.float)
    mask = full_mask(scores) if mask is None else t(mask, torch.bool)
    return WassersteinListwiseLoss(**kwargs)(scores, torch.as_tensor(labels, dtype=torch.float), mask)


def _reference_w2(pred, target, ddof=0):
    """The Fréchet distance from its C × C definition, in numpy with scipy's matrix square root."""
    from scipy.linalg import LinAlgWarning, sqrtm

    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    rows = pred.shape[0]
    mu_p, mu_t = pred.mean(0), target.mean(0)
    cov_p = (pred - mu_p).T @ (pred - mu_p) / (rows - ddof)
    cov_t = (target - mu_t).T @ (target - mu_t) / (rows - ddof)
    with warnings.catch_warnings():  # softmax rows sum to 1, so the covariances are singular by construction
        warnings.simplefilter("ignore", LinAlgWarning)
        root_p = np.real(sqrtm(cov_p))
        middle = np.real(sqrtm(root_p @ cov_t @ root_p))
    return float(np.sum((mu_p - mu_t) ** 2) + np.trace(cov_p + cov_t - 2 * middle))


def test_wasserstein_zero_when_prediction_equals_target():
    labels = [[3.0, 0.0, 1.0, 2.0], [0.0, 2.0, 1.0, 1.0], [1.0, 1.0, 0.0, 3.0]]
    mask = [[True, True, True, True], [True, True, False, True], [True, True, True, True]]
    scores = t(labels).requires_grad_()  # P = softmax(s) = softmax(y) = T
    value = WassersteinListwiseLoss()(scores, t(labels), t(mask, torch.bool))
    assert abs(value.item()) < 1e-9
    value.backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad.abs().max().item() < 1e-6  # P = T is the minimum


def test_wasserstein_single_query_is_squared_distance():
    # p = (e², e, 1) / Z, t = (1, e, e²) / Z: ||p − t||² = 2 (e² − 1)² / Z²
    value = _wasserstein([[2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0]]).item()
    assert value == pytest.approx(2 * (E**2 - 1) ** 2 / Z**2, abs=1e-6)
    # candidate 1 masked: p = (e², 0, 1) / (e² + 1), t = (1, 0, e²) / (e² + 1)
    value = _wasserstein([[2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0]], [[True, False, True]]).item()
    assert value == pytest.approx(2 * (E**2 - 1) ** 2 / (E**2 + 1) ** 2, abs=1e-6)
    # a row without any candidate is left out of the batch
    value = _wasserstein([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]], [[0, 1, 2], [1, 0, 0]], [[True] * 3, [False] * 3]).item()
    assert value == pytest.approx(2 * (E**2 - 1) ** 2 / Z**2, abs=1e-6)


def test_wasserstein_two_by_two_by_hand_and_against_scipy():
    # B = 2, C = 2: rows (a, 1 − a), (b, 1 − b) have μ = (m, 1 − m) with m = (a + b) / 2 and covariance
    # d² [[1, −1], [−1, 1]] with d = (a − b) / 2 (ddof 0), so the trace term is 2 (|d_P| − |d_T|)² and the mean
    # term 2 (m_P − m_T)²
    scores, labels = [[1.0, 0.0], [0.0, 0.5]], [[2.0, 0.0], [1.0, 1.0]]
    a, b = softmax(scores[0])[0], softmax(scores[1])[0]
    ta, tb = softmax(labels[0])[0], softmax(labels[1])[0]
    by_hand = 2 * ((a + b) / 2 - (ta + tb) / 2) ** 2 + 2 * (abs(a - b) / 2 - abs(ta - tb) / 2) ** 2
    pred, target = [softmax(row) for row in scores], [softmax(row) for row in labels]
    value = _wasserstein(scores, labels).item()
    assert value == pytest.approx(by_hand, abs=1e-6)
    assert value == pytest.approx(_reference_w2(pred, target), abs=1e-6)
    # the rows are samples, not pairs: swapping the target rows changes nothing
    assert _wasserstein(scores, labels[::-1]).item() == pytest.approx(by_hand, abs=1e-6)
    # ddof = 1 doubles the covariances (B / (B − 1) = 2) and so the trace term
    value = _wasserstein(scores, labels, ddof=1).item()
    assert value == pytest.approx(2 * ((a + b) / 2 - (ta + tb) / 2) ** 2 + 4 * (abs(a - b) / 2 - abs(ta - tb) / 2) ** 2)
    assert value == pytest.approx(_reference_w2(pred, target, ddof=1), abs=1e-6)
    # the target temperature divides the labels
    target_2 = [softmax([y / 2 for y in row]) for row in labels]
    assert _wasserstein(scores, labels, target_temperature=2.0).item() == pytest.approx(
        _reference_w2(pred, target_2), abs=1e-6
    )


def test_wasserstein_batch_against_scipy():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 4, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(0, 4, (6, 4), generator=generator).double()
    pred = [softmax(row) for row in scores.tolist()]
    target = [softmax(row) for row in labels.tolist()]
    assert _wasserstein(scores, labels).item() == pytest.approx(_reference_w2(pred, target), abs=1e-5)


def test_wasserstein_gradients_are_finite():
    generator = torch.Generator().manual_seed(1)
    cases = [
        (torch.randn(5, 7, generator=generator), torch.randint(0, 4, (5, 7), generator=generator).float()),
        (torch.zeros(4, 3), torch.zeros(4, 3)),  # identical uniform rows: every covariance is 0
        (torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 2.0]])),  # B = 1
        (torch.tensor([[50.0, -50.0], [-50.0, 50.0]]), torch.tensor([[3.0, 0.0], [0.0, 3.0]])),  # saturated softmax
    ]
    for scores, labels in cases:
        scores = scores.clone().requires_grad_()
        mask = full_mask(scores)
        mask[0, -1] = False
        value = WassersteinListwiseLoss()(scores, labels, mask)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(scores.grad).all()
        assert scores.grad[0, -1] == 0  # a masked-out candidate gets no gradient


def test_wasserstein_gradient_matches_finite_differences():
    # the value is checked against scipy above; here its analytic gradient against finite differences (float64)
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(4, 5, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 4, (4, 5), generator=generator).double()
    mask = full_mask(scores)
    mask[1, 2] = False
    loss = WassersteinListwiseLoss()
    assert loss(scores, labels, mask).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda s: loss(s, labels, mask), (scores,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda s: WassersteinListwiseLoss(ddof=1)(s, labels, mask), (scores,))


def test_wasserstein_arguments():
    with pytest.raises(ValueError, match="ddof"):
        WassersteinListwiseLoss(ddof=2)
    with pytest.raises(ValueError, match="target_temperature"):
        WassersteinListwiseLoss(target_temperature=-1.0)


# ---------------------------------------------------------------------------------------------------- weighted sum
SCORES = [[2.0, 1.0, 0.0], [0.5, -1.0, 3.0]]
LABELS = [[1, 0, 0], [0, 0, 2]]
TEACHER = [[0.0, 1.0, 2.0], [1.0, NAN, 0.0]]


def test_weighted_sum_is_the_weighted_sum_of_its_parts():
    loss = get_loss(
        "weighted_sum",
        losses=[
            {"name": "infonce", "weight": 1.0},
            {"name": "kl_distillation", "weight": 0.5, "kwargs": {"teacher_temperature": 2.0}},
        ],
    )
    scores = t(SCORES).requires_grad_()
    value = loss(scores, t(LABELS), full_mask(scores), t(TEACHER))
    # InfoNCE: −log softmax([2, 1, 0])_0 and −log softmax([0.5, −1, 3])_2
    infonce = (-math.log(softmax([2.0, 1.0, 0.0])[0]) - math.log(softmax([0.5, -1.0, 3.0])[2])) / 2
    distill = (kl(softmax([0.0, 0.5, 1.0]), softmax([2.0, 1.0, 0.0])) + _kl_row1(teacher_temperature=2.0)) / 2
    assert value.item() == pytest.approx(infonce + 0.5 * distill, abs=1e-6)
    value.backward()
    reference = t(SCORES).requires_grad_()
    parts = InfoNCELoss()(reference, t(LABELS), full_mask(reference)) + 0.5 * KLDistillationLoss(2.0)(
        reference, t(LABELS), full_mask(reference), t(TEACHER)
    )
    parts.backward()
    torch.testing.assert_close(scores.grad, reference.grad)
    # (loss, weight) pairs, names in pairs and bare losses build the same sum
    pairs = WeightedSumLoss([(InfoNCELoss(), 1.0), ("kl_distillation", 0.0), KLDistillationLoss(2.0)])
    pair_value = pairs(t(SCORES), t(LABELS), full_mask(t(SCORES)), t(TEACHER))
    assert pair_value.item() == pytest.approx(infonce + distill, abs=1e-6)
    assert pairs.weights == (1.0, 0.0, 1.0)


def test_weighted_sum_config_round_trip():
    loss = WeightedSumLoss(
        [{"name": "infonce"}, {"name": "wasserstein_listwise", "weight": 0.25, "kwargs": {"ddof": 1}}]
    )
    config = loss.config()
    assert config == {
        "name": "weighted_sum",
        "losses": [
            {"name": "infonce", "weight": 1.0},
            {"name": "wasserstein_listwise", "weight": 0.25, "target_temperature": 1.0, "ddof": 1},
        ],
    }
    rebuilt = get_loss(config["name"], **{key: value for key, value in config.items() if key != "name"})
    assert rebuilt.config() == config
    assert isinstance(rebuilt.losses[1], WassersteinListwiseLoss)
    nested = WeightedSumLoss([{"name": "weighted_sum", "weight": 2.0, "losses": config["losses"]}])
    assert WeightedSumLoss(nested.config()["losses"]).config() == nested.config()
    assert "2503.23239" in loss.citation and "oord" in loss.citation


def test_a_term_of_weight_zero_adds_nothing_even_when_it_is_infinite():
    from hf_robust_ir.losses import RetrievalLoss

    class Calls(RetrievalLoss):
        def __init__(self, value):
            super().__init__()
            self.value, self.calls = value, 0

        def forward(self, scores, labels, mask, teacher=None):
            self.calls += 1
            return scores.sum() * 0.0 + self.value

    for value in (float("inf"), float("nan")):
        silent = Calls(value)
        scores = t(SCORES).requires_grad_()
        total = WeightedSumLoss([(InfoNCELoss(), 1.0), (silent, 0.0)])(scores, t(LABELS), full_mask(scores))
        reference = t(SCORES).requires_grad_()
        alone = InfoNCELoss()(reference, t(LABELS), full_mask(reference))
        assert silent.calls == 1  # still computed
        assert total.item() == pytest.approx(alone.item(), abs=1e-6)
        total.backward(), alone.backward()
        torch.testing.assert_close(scores.grad, reference.grad)
    scores = t(SCORES).requires_grad_()
    nothing = WeightedSumLoss([(Calls(float("inf")), 0.0)])(scores, t(LABELS), full_mask(scores))
    nothing.backward()
    assert nothing.item() == 0.0 and not scores.grad.any()


def test_weighted_sum_errors():
    with pytest.raises(KeyError, match="registered losses"):
        WeightedSumLoss([{"name": "no-such-loss"}])
    for weight in (-1.0, float("nan"), float("inf"), "heavy"):
        with pytest.raises(ValueError, match="weight"):
            WeightedSumLoss([{"name": "infonce", "weight": weight}])
    with pytest.raises(ValueError, match="weight"):
        WeightedSumLoss([(InfoNCELoss(), -0.5)])
    with pytest.raises(ValueError, match="at least one"):
        WeightedSumLoss([])
    with pytest.raises(ValueError, match="name"):
        WeightedSumLoss([{"weight": 1.0}])
    with pytest.raises(ValueError, match="both"):
        WeightedSumLoss([{"name": "listnet", "kwargs": {"use_teacher": True}, "use_teacher": False}])
    with pytest.raises(TypeError):
        WeightedSumLoss([{"name": "infonce", "kwargs": {"no_such_argument": 1}}])
    with pytest.raises(TypeError):
        WeightedSumLoss({"name": "infonce"})
    with pytest.raises(TypeError):
        WeightedSumLoss([42])


def test_weighted_sum_forwards_guide_scores_only_where_needed():
    labels = t([[1, 0, 0, 0], [0, 2, 1, 0]])
    mask = t([[True, True, True, True], [True, True, True, False]], torch.bool)
    guide = t([[0.80, 0.85, 0.78, 0.10], [0.90, 0.50, 0.70, 0.95]])
    scores = t([[2.0, 1.0, 0.5, -1.0], [0.3, 1.5, 0.2, 0.0]])
    teacher = t([[1.0, 0.0, NAN, NAN], [NAN, 2.0, 1.0, NAN]])
    loss = WeightedSumLoss(
        [{"name": "guide_masked", "kwargs": {"margin": 0.05}}, {"name": "kl_distillation", "weight": 0.5}]
    )
    assert loss.needs_guide_scores
    value = loss(scores, labels, mask, teacher, guide_scores=guide)
    # guide_masked by hand (as in test_guided_loss): row 0 over {2.0, −1.0}, row 1 over {1.5, 0.2} with (2/3, 1/3)
    guided = (-math.log(softmax([2.0, -1.0])[0]) - (2 / 3) * math.log(softmax([1.5, 0.2])[0])) / 2
    guided -= (1 / 3) * math.log(softmax([1.5, 0.2])[1]) / 2
    distill = (kl(softmax([1.0, 0.0]), softmax([2.0, 1.0])) + kl(softmax([2.0, 1.0]), softmax([1.5, 0.2]))) / 2
    assert value.item() == pytest.approx(guided + 0.5 * distill, abs=1e-6)
    assert loss.stats() == {"guide_masked_per_query": 3 / 2}
    loss.reset_stats()
    assert loss.stats() == {}
    with pytest.raises(ValueError, match="guide_scores"):
        loss(scores, labels, mask, teacher)
    plain = WeightedSumLoss([{"name": "infonce"}])
    assert not plain.needs_guide_scores
    ignored = plain(scores, labels, mask, teacher, guide_scores=guide)
    assert ignored.item() == pytest.approx(InfoNCELoss()(scores, labels, mask).item())


def test_weighted_sum_stats_and_scheduled_attributes():
    scores, labels, mask = t(SCORES), t(LABELS), full_mask(t(SCORES))
    loss = WeightedSumLoss([GuideMaskedLoss(margin=0.0), {"name": "label_relaxation", "kwargs": {"alpha": 0.2}}])
    loss(scores, labels, mask, guide_scores=torch.zeros_like(scores))
    stats = loss.stats()
    assert stats["guide_masked_per_query"] == 0.0 and stats["plausible_set_size"] == 1.0
    twice = WeightedSumLoss([GuideMaskedLoss(margin=0.0), GuideMaskedLoss(margin=1.0)])
    twice(scores, labels, mask, guide_scores=torch.zeros_like(scores))
    assert twice.stats() == {"guide_masked0/guide_masked_per_query": 0.0, "guide_masked1/guide_masked_per_query": 2.0}
    assert WeightedSumLoss([{"name": "infonce"}]).stats() == {}
    # alpha of the single inner loss that has one is read and set through the sum
    assert loss.alpha == 0.2
    loss.alpha = 0.05
    assert isinstance(loss.losses[1], LabelRelaxationLoss) and loss.losses[1].alpha == 0.05
    ambiguous = WeightedSumLoss([{"name": "label_relaxation"}, {"name": "label_weakening"}])
    assert not hasattr(ambiguous, "alpha")
    assert not hasattr(WeightedSumLoss([{"name": "infonce"}]), "alpha")


# ------------------------------------------------------------------------------------------------ guide distillation
def test_guide_distillation_by_hand():
    # row 0: guide [0.1, 0.2, 0.3] at τ_g = 0.1 gives the target softmax([1, 2, 3]); row 1: candidate 2 masked, so
    # both softmaxes are over candidates 0 and 1; row 2: one candidate, no soft label, left out of the mean
    scores = t([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0], [1.0, 0.0, 0.0]])
    guide = t([[0.1, 0.2, 0.3], [0.05, 0.0, 9.0], [0.3, 0.2, 0.1]])
    labels = t([[1, 0, 0], [0, 1, 0], [1, 0, 0]])  # not read: the soft labels come from the guide alone
    mask = t([[True, True, True], [True, True, False], [True, False, False]], torch.bool)
    loss = GuideDistillationLoss(guide_temperature=0.1)
    value = loss(scores, labels, mask, guide_scores=guide)
    row0 = kl(softmax([1.0, 2.0, 3.0]), softmax([2.0, 1.0, 0.0]))  # = (2e² − 2) / Z
    assert row0 == pytest.approx(REVERSED_KL)
    row1 = kl(softmax([0.5, 0.0]), softmax([0.5, -1.0]))
    assert value.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    flipped = loss(scores, 1 - labels, mask, guide_scores=guide)
    assert flipped.item() == pytest.approx(value.item(), abs=1e-7)
    # the default temperature 0.05 is the bi-encoder's: guide cosines equal to the student's give 0
    cosines = t([[0.9, 0.2, -0.1]])
    zero = GuideDistillationLoss()(cosines / 0.05, t([[1, 0, 0]]), full_mask(cosines), guide_scores=cosines)
    assert zero.item() == pytest.approx(0.0, abs=1e-6)


def test_guide_distillation_gradient_and_errors():
    scores = t([[2.0, 1.0, 0.0], [0.0, 1.0, 4.0]]).requires_grad_()
    guide = t([[0.1, 0.2, 0.3], [0.3, 0.3, 0.0]])
    labels, mask = t([[1, 0, 0], [0, 1, 0]]), full_mask(scores)
    GuideDistillationLoss(guide_temperature=0.1)(scores, labels, mask, guide_scores=guide).backward()
    expected = [
        [(p - q) / 2 for p, q in zip(softmax([2.0, 1.0, 0.0]), softmax([1.0, 2.0, 3.0]))],
        [(p - q) / 2 for p, q in zip(softmax([0.0, 1.0, 4.0]), softmax([3.0, 3.0, 0.0]))],
    ]
    torch.testing.assert_close(scores.grad, t(expected))
    loss = GuideDistillationLoss()
    assert loss.needs_guide_scores and loss.config() == {"name": "guide_distillation", "guide_temperature": 0.05}
    assert LOSS_REGISTRY["guide_distillation"] is GuideDistillationLoss and loss.citation.startswith("@")
    with pytest.raises(ValueError, match="guide_scores"):
        loss(scores, labels, mask)
    with pytest.raises(ValueError, match="do not match"):
        loss(scores, labels, mask, guide_scores=guide[:, :2])
    with pytest.raises(ValueError, match="guide_temperature"):
        GuideDistillationLoss(guide_temperature=0.0)


def test_label_weakening_with_guide_soft_labels_is_the_sum_of_its_parts():
    scores = t([[2.0, 1.0, 0.5, -1.0], [0.3, 1.5, 0.2, 0.0]])
    labels = t([[1, 0, 0, 0], [1, 0, 0, 0]])
    mask = full_mask(scores)
    guide = t([[0.80, 0.70, 0.60, 0.10], [0.50, 0.80, 0.40, 0.30]])  # row 1: the guide ranks candidate 1 first
    weakening = {"margin": 0.0, "guide_margin": 0.05, "replace_margin": 0.2, "alpha": 0.0}
    loss = WeightedSumLoss(
        [
            {"name": "label_weakening", "kwargs": weakening},
            {"name": "guide_distillation", "weight": 0.5, "kwargs": {"guide_temperature": 0.1}},
        ]
    )
    assert loss.needs_guide_scores
    value = loss(scores, labels, mask, guide_scores=guide)
    # row 0: S = {0}; row 1: candidate 1 beats the label under both models, by 0.3 > 0.2 under the guide: S = {1}
    weak = (-math.log(softmax([2.0, 1.0, 0.5, -1.0])[0]) - math.log(softmax([0.3, 1.5, 0.2, 0.0])[1])) / 2
    soft = (
        kl(softmax([8.0, 7.0, 6.0, 1.0]), softmax([2.0, 1.0, 0.5, -1.0]))
        + kl(softmax([5.0, 8.0, 4.0, 3.0]), softmax([0.3, 1.5, 0.2, 0.0]))
    ) / 2
    assert value.item() == pytest.approx(weak + 0.5 * soft, abs=1e-6)
    assert loss.stats()["replaced_fraction"] == 0.5


# ---------------------------------------------------------------------------------------------------- registry
NEW_LOSSES = {
    "kl_distillation": KLDistillationLoss,
    "margin_mse": MarginMSELoss,
    "listnet": ListNetLoss,
    "wasserstein_listwise": WassersteinListwiseLoss,
    "weighted_sum": WeightedSumLoss,
}


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_registry_citation_and_config(name):
    assert LOSS_REGISTRY[name] is NEW_LOSSES[name]
    kwargs = {"losses": [{"name": "infonce"}]} if name == "weighted_sum" else {}
    loss = get_loss(name, **kwargs)
    assert loss.citation.strip().startswith("@")
    assert loss.config()["name"] == name


def test_large_gaps_and_single_candidates_stay_finite_and_masked_candidates_get_no_gradient():
    scores = t([[60.0, -60.0, 0.0, 9.0], [3.0, 1.0, 2.0, 0.0]]).requires_grad_()
    labels = t([[0, 1, 0, 0], [1, 0, 0, 0]])
    mask = t([[True, True, True, False], [True, False, False, False]], torch.bool)
    teacher = t([[0.0, 80.0, -80.0, 1.0], [2.0, NAN, NAN, NAN]])
    losses = [
        KLDistillationLoss(teacher_temperature=0.5),
        MarginMSELoss(),
        ListNetLoss(),
        ListNetLoss(use_teacher=True, target_temperature=0.1),
        WassersteinListwiseLoss(),
        WeightedSumLoss([{"name": "infonce"}, {"name": "kl_distillation"}, {"name": "wasserstein_listwise"}]),
    ]
    for loss in losses:
        scores.grad = None
        value = loss(scores, labels, mask, teacher)
        value.backward()
        assert torch.isfinite(value), loss.config()
        assert torch.isfinite(scores.grad).all(), loss.config()
        assert scores.grad[0, 3] == 0 and (scores.grad[1, 1:] == 0).all(), loss.config()


def test_needs_teacher():
    assert KLDistillationLoss.needs_teacher and MarginMSELoss.needs_teacher
    assert not getattr(ListNetLoss(), "needs_teacher", False)
    assert WeightedSumLoss([{"name": "infonce"}, {"name": "margin_mse"}]).needs_teacher
    assert not WeightedSumLoss([{"name": "infonce"}, {"name": "listnet"}]).needs_teacher


def test_configs_report_constructor_arguments():
    assert KLDistillationLoss(2.0, 0.5, True).config() == {
        "name": "kl_distillation",
        "teacher_temperature": 2.0,
        "student_temperature": 0.5,
        "scale_by_temperature": True,
    }
    assert MarginMSELoss(student_scale=20.0).config() == {"name": "margin_mse", "student_scale": 20.0}
    assert ListNetLoss(0.5, True).config() == {"name": "listnet", "target_temperature": 0.5, "use_teacher": True}
    assert WassersteinListwiseLoss().config() == {"name": "wasserstein_listwise", "target_temperature": 1.0, "ddof": 0}
