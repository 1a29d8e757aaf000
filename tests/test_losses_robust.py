"""Robust losses against values worked by hand (natural logs).

Unless said otherwise a query has scores s = [2, 1, 0], so p = (e², e, 1) / Z with Z = e² + e + 1 and
log p_k = s_k − log Z.
With candidate 1 masked out, p = (e², 1) / (e² + 1) over candidates 0 and 2.
"""

import math

import numpy as np
import pytest
import torch

from hf_robust_ir.losses import (
    LOSS_REGISTRY,
    FocalLoss,
    GCELoss,
    HardBootstrappingLoss,
    InfoNCELoss,
    LabelSmoothingLoss,
    MAELoss,
    NCERCELoss,
    PolyLoss,
    RINCELoss,
    SCELoss,
    SoftBootstrappingLoss,
    TaylorCELoss,
    get_loss,
)

E = math.e
Z = E**2 + E + 1
LOG_Z = math.log(Z)
P0, P1, P2 = E**2 / Z, E / Z, 1 / Z
CE = LOG_Z - 2  # −log p0 = 0.4076059644
ZM = E**2 + 1  # normalizer with candidate 1 masked
PM = E**2 / ZM  # p0 with candidate 1 masked

SCORES = [[2.0, 1.0, 0.0]]
ONE = [[1, 0, 0]]
TWO = [[1, 1, 0]]
MASKED = [[True, False, True]]


def _loss(loss, scores=SCORES, labels=ONE, mask=None, teacher=None):
    scores = torch.tensor(scores, dtype=torch.float)
    labels = torch.tensor(labels, dtype=torch.float)
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else torch.tensor(mask)
    return _call(loss, scores, labels, mask, teacher).item()


def _call(loss, scores, labels, mask, teacher=None):
    """The loss; a guided loss gets a guide that scores every candidate alike (it masks nothing)."""
    if getattr(loss, "needs_guide_scores", False):
        return loss(scores, labels, mask, teacher, guide_scores=torch.zeros_like(scores.detach()))
    return loss(scores, labels, mask, teacher)


def test_label_smoothing():
    # target (0.9 + 0.1/3, 0.1/3, 0.1/3): −Σ t_k (s_k − log Z) = log Z − (0.9333·2 + 0.0333·1) = log Z − 1.9
    assert _loss(LabelSmoothingLoss()) == pytest.approx(LOG_Z - 1.9, abs=1e-6)
    # two positives: target (0.45 + 1/30, 0.45 + 1/30, 1/30): log Z − (0.48333·2 + 0.48333·1) = log Z − 1.45
    assert _loss(LabelSmoothingLoss(), labels=TWO) == pytest.approx(LOG_Z - 1.45, abs=1e-6)
    # candidate 1 masked, K = 2: target (0.95, ·, 0.05): log(e² + 1) − 0.95·2
    assert _loss(LabelSmoothingLoss(), mask=MASKED) == pytest.approx(math.log(ZM) - 1.9, abs=1e-6)
    # ε = 0 is InfoNCE
    assert _loss(LabelSmoothingLoss(epsilon=0.0), labels=TWO) == pytest.approx(_loss(InfoNCELoss(), labels=TWO))


def test_mae():
    # 2 (1 − p0) = 2 (e + 1) / Z = 0.6695179
    assert _loss(MAELoss()) == pytest.approx(2 * (E + 1) / Z, abs=1e-6)
    # two positives: 2 (1 − (p0 + p1) / 2) = 2 − p0 − p1
    assert _loss(MAELoss(), labels=TWO) == pytest.approx(2 - P0 - P1, abs=1e-6)
    # masked: 2 (1 − e² / (e² + 1)) = 2 / (e² + 1)
    assert _loss(MAELoss(), mask=MASKED) == pytest.approx(2 / ZM, abs=1e-6)


def test_gce():
    # (1 − p0^0.7) / 0.7
    assert _loss(GCELoss()) == pytest.approx((1 - P0**0.7) / 0.7, abs=1e-6)
    # two positives: ½ (1 − p0^0.7) / 0.7 + ½ (1 − p1^0.7) / 0.7
    expected = 0.5 * (1 - P0**0.7) / 0.7 + 0.5 * (1 - P1**0.7) / 0.7
    assert _loss(GCELoss(), labels=TWO) == pytest.approx(expected, abs=1e-6)
    assert _loss(GCELoss(), mask=MASKED) == pytest.approx((1 - PM**0.7) / 0.7, abs=1e-6)


def test_gce_limits():
    # q → 0: (1 − p^q) / q → −log p; q = 1: 1 − p = MAE / 2
    assert _loss(GCELoss(q=1e-3)) == pytest.approx(CE, abs=2e-3)
    assert _loss(GCELoss(q=1.0)) == pytest.approx(_loss(MAELoss()) / 2, abs=1e-6)
    with pytest.raises(ValueError):
        GCELoss(q=0.0)


def test_sce():
    # α·CE − β·A·(1 − p0) with α = 0.1, β = 1, A = −4: 0.1 (log Z − 2) + 4 (1 − p0)
    assert _loss(SCELoss()) == pytest.approx(0.1 * CE + 4 * (1 - P0), abs=1e-6)
    # two positives: 0.1 (log Z − 1.5) + 4 (1 − (p0 + p1) / 2)
    assert _loss(SCELoss(), labels=TWO) == pytest.approx(0.1 * (LOG_Z - 1.5) + 4 * (1 - (P0 + P1) / 2), abs=1e-6)
    # masked: 0.1 (log(e² + 1) − 2) + 4 (1 − e² / (e² + 1))
    assert _loss(SCELoss(), mask=MASKED) == pytest.approx(0.1 * (math.log(ZM) - 2) + 4 * (1 - PM), abs=1e-6)
    # α = 1, β = 0 is InfoNCE
    assert _loss(SCELoss(alpha=1.0, beta=0.0)) == pytest.approx(CE, abs=1e-6)


def test_nce_rce():
    # NCE = −log p0 / −(log p0 + log p1 + log p2) = (log Z − 2) / (3 log Z − 3); RCE = 4 (1 − p0)
    nce = CE / (3 * LOG_Z - 3)
    assert _loss(NCERCELoss()) == pytest.approx(nce + 4 * (1 - P0), abs=1e-6)
    # two positives: NCE = ½ (log Z − 2 + log Z − 1) / (3 log Z − 3); RCE = 4 (1 − (p0 + p1) / 2)
    nce_two = (LOG_Z - 1.5) / (3 * LOG_Z - 3)
    assert _loss(NCERCELoss(), labels=TWO) == pytest.approx(nce_two + 4 * (1 - (P0 + P1) / 2), abs=1e-6)
    # masked: log p = (2 − log(e² + 1), −log(e² + 1)): NCE = (log ZM − 2) / (2 log ZM − 2)
    nce_masked = (math.log(ZM) - 2) / (2 * math.log(ZM) - 2)
    assert _loss(NCERCELoss(), mask=MASKED) == pytest.approx(nce_masked + 4 * (1 - PM), abs=1e-6)
    # NCE alone is at most 1 (normalized)
    assert _loss(NCERCELoss(beta=0.0), scores=[[-3.0, 1.0, 2.0]]) <= 1.0


def test_focal():
    # −(1 − p0)² log p0
    assert _loss(FocalLoss()) == pytest.approx((1 - P0) ** 2 * CE, abs=1e-6)
    # two positives: ½ (1 − p0)² (log Z − 2) + ½ (1 − p1)² (log Z − 1)
    expected = 0.5 * (1 - P0) ** 2 * CE + 0.5 * (1 - P1) ** 2 * (LOG_Z - 1)
    assert _loss(FocalLoss(), labels=TWO) == pytest.approx(expected, abs=1e-6)
    assert _loss(FocalLoss(), mask=MASKED) == pytest.approx((1 - PM) ** 2 * (math.log(ZM) - 2), abs=1e-6)
    # γ = 0 is InfoNCE
    assert _loss(FocalLoss(gamma=0.0), labels=TWO) == pytest.approx(_loss(InfoNCELoss(), labels=TWO), abs=1e-6)


def test_soft_bootstrapping():
    # 0.95 (log Z − 2) + 0.05 H(p), H(p) = −Σ p_k (s_k − log Z) = log Z − (2 p0 + p1)
    entropy = LOG_Z - (2 * P0 + P1)
    assert _loss(SoftBootstrappingLoss()) == pytest.approx(0.95 * CE + 0.05 * entropy, abs=1e-6)
    # two positives: 0.95 (log Z − 1.5) + 0.05 H(p)
    assert _loss(SoftBootstrappingLoss(), labels=TWO) == pytest.approx(0.95 * (LOG_Z - 1.5) + 0.05 * entropy)
    # masked: H = log(e² + 1) − 2 p0'
    entropy_masked = math.log(ZM) - 2 * PM
    expected = 0.95 * (math.log(ZM) - 2) + 0.05 * entropy_masked
    assert _loss(SoftBootstrappingLoss(), mask=MASKED) == pytest.approx(expected, abs=1e-6)


def test_hard_bootstrapping():
    # label on candidate 1, model's top is candidate 0: 0.8 (log Z − 1) + 0.2 (log Z − 2) = log Z − 1.2
    assert _loss(HardBootstrappingLoss(), labels=[[0, 1, 0]]) == pytest.approx(LOG_Z - 1.2, abs=1e-6)
    # label on the top candidate: plain cross-entropy
    assert _loss(HardBootstrappingLoss()) == pytest.approx(CE, abs=1e-6)
    # top candidate masked out: candidate 1 scores 5 but is masked, so the top is candidate 0 (score 2)
    # label on candidate 2: p over {0, 2} = (e², 1) / (e² + 1): 0.8 (log ZM − 0) + 0.2 (log ZM − 2)
    value = _loss(HardBootstrappingLoss(), scores=[[2.0, 5.0, 0.0]], labels=[[0, 0, 1]], mask=MASKED)
    assert value == pytest.approx(math.log(ZM) - 0.4, abs=1e-6)
    # two positives [0, 1, 1]: 0.8·½ (log Z − 1 + log Z − 0) + 0.2 (log Z − 2) = log Z − 0.8
    assert _loss(HardBootstrappingLoss(), labels=[[0, 1, 1]]) == pytest.approx(LOG_Z - 0.8, abs=1e-6)


def test_taylor_ce():
    # order 2: (1 − p0) + (1 − p0)² / 2
    assert _loss(TaylorCELoss()) == pytest.approx((1 - P0) + (1 - P0) ** 2 / 2, abs=1e-6)
    # two positives: ½ Σ over p0, p1
    expected = 0.5 * ((1 - P0) + (1 - P0) ** 2 / 2) + 0.5 * ((1 - P1) + (1 - P1) ** 2 / 2)
    assert _loss(TaylorCELoss(), labels=TWO) == pytest.approx(expected, abs=1e-6)
    assert _loss(TaylorCELoss(), mask=MASKED) == pytest.approx((1 - PM) + (1 - PM) ** 2 / 2, abs=1e-6)
    # order 1 is MAE / 2; a long series is cross-entropy (the rest Σ_{j>50} 0.335^j / j is < 1e-20)
    assert _loss(TaylorCELoss(order=1)) == pytest.approx(_loss(MAELoss()) / 2, abs=1e-6)
    assert _loss(TaylorCELoss(order=50)) == pytest.approx(CE, abs=1e-5)
    # a whole number written as a float (YAML's 2.0) is that order; a fraction, a flag or 0 is refused
    assert TaylorCELoss(order=2.0).order == 2 and _loss(TaylorCELoss(order=2.0)) == _loss(TaylorCELoss())
    for bad in (2.5, 0, True):
        with pytest.raises(ValueError, match="order must be a whole number >= 1"):
            TaylorCELoss(order=bad)


def test_poly():
    # −log p0 + 1·(1 − p0)
    assert _loss(PolyLoss()) == pytest.approx(CE + (1 - P0), abs=1e-6)
    # two positives: log Z − 1.5 + (1 − (p0 + p1) / 2)
    assert _loss(PolyLoss(), labels=TWO) == pytest.approx(LOG_Z - 1.5 + 1 - (P0 + P1) / 2, abs=1e-6)
    assert _loss(PolyLoss(), mask=MASKED) == pytest.approx(math.log(ZM) - 2 + 1 - PM, abs=1e-6)
    # ε = 0 is InfoNCE
    assert _loss(PolyLoss(epsilon=0.0), labels=TWO) == pytest.approx(_loss(InfoNCELoss(), labels=TWO), abs=1e-6)


def test_rince():
    # q = 0.5, λ = 0.01: −e^{0.5·2} / 0.5 + (0.01 Z)^0.5 / 0.5 = −2e + 2 √(0.01 Z) = −4.7700
    assert _loss(RINCELoss()) == pytest.approx(-2 * E + 2 * math.sqrt(0.01 * Z), abs=1e-5)
    # two positives: −(½ e^1 + ½ e^0.5) / 0.5 + 2 √(0.01 Z)
    expected = -(E + math.exp(0.5)) + 2 * math.sqrt(0.01 * Z)
    assert _loss(RINCELoss(), labels=TWO) == pytest.approx(expected, abs=1e-5)
    # masked: the denominator sums e^2 + e^0 only
    assert _loss(RINCELoss(), mask=MASKED) == pytest.approx(-2 * E + 2 * math.sqrt(0.01 * ZM), abs=1e-5)
    # q = 1: −e^{s_pos} + λ Σ_j e^{s_j}
    assert _loss(RINCELoss(q=1.0, lam=0.5)) == pytest.approx(-(E**2) + 0.5 * Z, abs=1e-5)


def test_rince_small_q_is_infonce_plus_log_lambda():
    # (−e^{q s0} + (λZ)^q) / q = −s0 + log(λZ) + O(q), i.e. CE + log λ
    assert _loss(RINCELoss(q=1e-3, lam=0.01)) == pytest.approx(CE + math.log(0.01), abs=2e-3)


# losses that learn from teacher scores or from graded lists (tests/test_losses_distillation.py) follow another
# contract: they need a teacher (or the guide's scores), or a list of equal grades is still a (uniform) target
SOFT_LABEL_LOSSES = {
    "kl_distillation",
    "guide_distillation",
    "margin_mse",
    "listnet",
    "wasserstein_listwise",
    "weighted_sum",
}
HARD_LABEL_LOSSES = sorted(set(LOSS_REGISTRY) - SOFT_LABEL_LOSSES)


def test_rows_without_positive_and_teacher_are_ignored():
    teacher = torch.tensor([[float("nan"), 3.0, 1.0], [0.0, float("nan"), 1.0]])
    scores, labels = [[2.0, 1.0, 0.0], [5.0, -3.0, 0.0]], [[1, 0, 0], [0, 0, 0]]
    for name in HARD_LABEL_LOSSES:
        cls = LOSS_REGISTRY[name]
        alone = _loss(cls(), scores=SCORES, labels=ONE)
        assert _loss(cls(), scores, labels, teacher=teacher) == pytest.approx(alone, abs=1e-6), name
        assert _loss(cls(), labels=[[0, 0, 0]]) == 0.0, name


def test_masked_candidates_get_no_gradient_and_values_stay_finite():
    # large score gaps (p of the positive underflows in float32) and a query with a single candidate
    scores = torch.tensor([[60.0, -60.0, 0.0, 9.0], [3.0, 1.0, 2.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    for name in HARD_LABEL_LOSSES:
        scores.grad = None
        value = _call(get_loss(name), scores, labels, mask)
        value.backward()
        assert torch.isfinite(value), name
        assert torch.isfinite(scores.grad).all(), name
        assert scores.grad[0, 3] == 0 and (scores.grad[1, 1:] == 0).all(), name


def test_gce_gradient_matches_formula():
    # d/ds_k (1 − p0^q)/q = −p0^q (1[k=0] − p_k)
    scores = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    GCELoss(q=0.7)(scores, torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool)).backward()
    expected = torch.tensor([[-(P0**0.7) * (1 - P0), P0**0.7 * P1, P0**0.7 * P2]])
    torch.testing.assert_close(scores.grad, expected)


EXPECTED_CONFIGS = {
    "label_smoothing": {"epsilon": 0.1},
    "mae": {},
    "gce": {"q": 0.7},
    "sce": {"alpha": 0.1, "beta": 1.0, "log_zero": -4.0},
    "nce_rce": {"alpha": 1.0, "beta": 1.0, "log_zero": -4.0},
    "focal": {"gamma": 2.0},
    "bootstrap_soft": {"beta": 0.95},
    "bootstrap_hard": {"beta": 0.8},
    "taylor_ce": {"order": 2},
    "poly": {"epsilon": 1.0},
    "rince": {"q": 0.5, "lam": 0.01},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIGS))
def test_registry_config_and_citation(name):
    loss = get_loss(name)
    assert isinstance(loss, LOSS_REGISTRY[name])
    assert loss.config() == {"name": name, **EXPECTED_CONFIGS[name]}
    assert loss.citation.startswith("@") and "year=" in loss.citation
    assert loss.__doc__ and "L" in loss.__doc__


def test_knobs_reach_config():
    assert get_loss("gce", q=0.3).config() == {"name": "gce", "q": 0.3}
    assert get_loss("rince", q=0.2, lam=0.5).config() == {"name": "rince", "q": 0.2, "lam": 0.5}


def test_rince_gradient_is_finite_where_a_non_target_score_overflows():
    # q = 1, λ = 1: row 0 gives −e^1 + (e^1 + e^0) = 1, with gradient (−e + e, e^0) = (0, 1); row 1 has no positive
    # and is left out (gradient 0), though e^{q·100} overflows float32
    scores = torch.tensor([[1.0, 0.0], [100.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    value = RINCELoss(q=1.0, lam=1.0)(scores, labels, torch.ones(2, 2, dtype=torch.bool))
    value.backward()
    assert value.item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(scores.grad, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    # a negative at 90 (e^90 overflows, λ e^90 = e^85.4 does not): d/ds_neg = λ e^90, d/ds_pos = −e + λ e
    scores = torch.tensor([[1.0, 90.0]], requires_grad=True)
    RINCELoss(q=1.0, lam=0.01)(scores, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)).backward()
    torch.testing.assert_close(scores.grad, torch.tensor([[-0.99 * E, 0.01 * math.exp(90.0)]]))


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (SCELoss, {"alpha": -0.1}),
        (SCELoss, {"beta": -1.0}),
        (SCELoss, {"log_zero": 4.0}),
        (NCERCELoss, {"alpha": -1.0}),
        (NCERCELoss, {"beta": -1.0}),
        (NCERCELoss, {"log_zero": 0.0}),
        (PolyLoss, {"epsilon": -1.5}),
    ],
)
def test_out_of_range_knobs_are_refused(cls, kwargs):
    # a negative weight or a log 0 clamped to A >= 0 turns a term into a reward for the wrong candidates; Poly-1
    # needs ε >= −1 (the coefficient 1 + ε of (1 − p_y) must not be negative), or it is minimized below p_y = 1
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_whole_number_settings_of_label_weakening_accept_yaml_floats_and_refuse_fractions():
    from hf_robust_ir.losses import LabelWeakeningLoss

    loss = LabelWeakeningLoss(alpha=0.0, taylor_order=2.0, top_m=3.0, max_added=1.0, warmup_steps=10.0)
    assert (loss.taylor_order, loss.top_m, loss.max_added, loss.warmup_steps) == (2, 3, 1, 10)
    assert all(type(v) is int for v in (loss.taylor_order, loss.top_m, loss.max_added, loss.warmup_steps))
    for setting, bad in (("taylor_order", 0), ("top_m", 1.5), ("max_added", -1), ("warmup_steps", 2.5)):
        with pytest.raises(ValueError, match=f"{setting} must be a whole number"):
            LabelWeakeningLoss(alpha=0.0, **{setting: bad})


def test_whole_number_settings_accept_numpy_integers():
    # a sweep over np.arange(1, 4) gives np.int64 values: 3 is a whole number, whatever its type
    import numpy as np

    from hf_robust_ir.losses import LabelWeakeningLoss

    taylor = TaylorCELoss(order=np.int64(3))
    assert taylor.order == 3 and type(taylor.order) is int
    # order 3 at p_y = e²/Z: (1 − p) + (1 − p)²/2 + (1 − p)³/3 with 1 − p = (e + 1)/Z = 0.33476
    rest = (E + 1) / Z
    value = taylor(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool))
    assert value.item() == pytest.approx(rest + rest**2 / 2 + rest**3 / 3, abs=1e-6)
    loss = LabelWeakeningLoss(top_m=np.int32(2), max_added=np.int64(0), warmup_steps=np.int64(5))
    assert (loss.top_m, loss.max_added, loss.warmup_steps) == (2, 0, 5)
    with pytest.raises(ValueError, match="order must be a whole number"):
        TaylorCELoss(order=np.int64(0))
    with pytest.raises(ValueError, match="order must be a whole number"):
        TaylorCELoss(order=True)


@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("kl_distillation", "scale_by_temperature"),
        ("listnet", "use_teacher"),
        ("label_weakening", "confidence_enabled"),
    ],
)
def test_switches_take_true_or_false_not_a_string(name, setting):
    """A quoted recipe value "false" read as true through bool()."""
    from hf_robust_ir.losses import get_loss

    with pytest.raises(ValueError, match=f"{setting} must be true or false, got 'false'"):
        get_loss(name, **{setting: "false"})
    assert get_loss(name, **{setting: np.bool_(False)}).config()[setting] is False
