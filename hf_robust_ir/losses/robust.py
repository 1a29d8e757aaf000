"""Noise-robust classification losses applied to each query's softmax over its candidates.

For one query, ``p = softmax(s)`` over the masked-in candidates (masked-out candidates never enter the softmax or any
sum) and ``q`` is the target distribution over its positives from :func:`positive_target` (one positive: one-hot;
several: the mass spread by grade). Each loss below is defined in its paper for a single label ``y`` as ``ℓ(p, y)``;
with several positives it is applied in the **target-weighted form**

    L = Σ_k q_k · ℓ(p, k)

(the expected loss under the target), which is how multi-positive InfoNCE extends cross-entropy, and which keeps the
properties the losses are chosen for (a bounded ``ℓ`` stays bounded, a symmetric one stays symmetric). Rows without
any positive are left out of the batch mean; a batch without positives gives 0.
"""

from __future__ import annotations

import math

import torch

from .base import (
    RetrievalLoss,
    check_batch,
    masked_log_softmax,
    mean_over_queries,
    positive_target,
    register_loss,
    whole_number,
)


class _CandidateSoftmax:
    """What every loss here needs of one batch: log p (0 where masked), p (0 where masked), q and the rows to keep."""

    def __init__(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor):
        check_batch(scores, labels, mask)
        self.mask = mask.bool()
        log_probs = masked_log_softmax(scores, self.mask)
        self.log_p = torch.where(self.mask, log_probs, torch.zeros_like(log_probs))
        self.p = torch.where(self.mask, log_probs.exp(), torch.zeros_like(log_probs))
        self.target, self.has_positive = positive_target(labels, self.mask)
        self.candidates = self.mask.sum(-1).clamp(min=1)

    def expected(self, per_candidate: torch.Tensor) -> torch.Tensor:
        """``Σ_k q_k · per_candidate_k`` for each row, skipping candidates outside the target."""
        zero = torch.zeros_like(per_candidate)
        return torch.where(self.target > 0, self.target * per_candidate, zero).sum(-1)

    def over_candidates(self, per_candidate: torch.Tensor) -> torch.Tensor:
        """``Σ_k per_candidate_k`` over the masked-in candidates of each row."""
        return torch.where(self.mask, per_candidate, torch.zeros_like(per_candidate)).sum(-1)

    def cross_entropy(self) -> torch.Tensor:
        """``−Σ_k q_k log p_k``: multi-positive InfoNCE per row."""
        return self.expected(-self.log_p)

    def mean(self, per_query: torch.Tensor) -> torch.Tensor:
        return mean_over_queries(per_query, self.has_positive)


@register_loss("label_smoothing")
class LabelSmoothingLoss(RetrievalLoss):
    """Label smoothing (Szegedy et al. 2016): cross-entropy against ``(1 − ε)·q + ε/K`` over the ``K`` masked-in
    candidates of the query, ``L = −Σ_k ((1 − ε) q_k + ε/K) log p_k``. ``ε = 0`` is InfoNCE."""

    citation = (
        "@inproceedings{szegedy2016rethinking, title={Rethinking the Inception Architecture for Computer Vision}, "
        "author={Szegedy, Christian and Vanhoucke, Vincent and Ioffe, Sergey and Shlens, Jon and Wojna, Zbigniew}, "
        "booktitle={CVPR}, year={2016}}"
    )

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        uniform = -sm.over_candidates(sm.log_p) / sm.candidates
        return sm.mean((1.0 - self.epsilon) * sm.cross_entropy() + self.epsilon * uniform)


@register_loss("mae")
class MAELoss(RetrievalLoss):
    """Mean absolute error (Ghosh et al. 2017): ``ℓ(p, y) = ||e_y − p||_1 = 2 (1 − p_y)``, so
    ``L = 2 (1 − Σ_k q_k p_k)``. Bounded and symmetric, hence noise-tolerant, but slow to fit."""

    citation = (
        "@inproceedings{ghosh2017robust, title={Robust Loss Functions under Label Noise for Deep Neural Networks}, "
        "author={Ghosh, Aritra and Kumar, Himanshu and Sastry, P. S.}, booktitle={AAAI}, year={2017}}"
    )

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        return sm.mean(2.0 * (1.0 - sm.expected(sm.p)))


@register_loss("gce")
class GCELoss(RetrievalLoss):
    """Generalized cross-entropy (Zhang & Sabuncu 2018): ``ℓ(p, y) = (1 − p_y^q) / q``, so
    ``L = Σ_k q_k (1 − p_k^q) / q``. ``q → 0`` gives cross-entropy, ``q = 1`` gives MAE / 2."""

    citation = (
        "@inproceedings{zhang2018generalized, title={Generalized Cross Entropy Loss for Training Deep Neural Networks "
        "with Noisy Labels}, author={Zhang, Zhilu and Sabuncu, Mert R.}, booktitle={NeurIPS}, year={2018}}"
    )

    def __init__(self, q: float = 0.7):
        super().__init__()
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {q}")
        self.q = q

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        # p^q as exp(q log p): finite gradient even where p underflows to 0
        return sm.mean(sm.expected((1.0 - torch.exp(self.q * sm.log_p)) / self.q))


def _check_active_passive(alpha: float, beta: float, log_zero: float) -> None:
    """Weights ``α, β >= 0`` and ``A = log_zero < 0`` (``A >= 0`` turns the reverse term into a reward for the
    wrong candidates)."""
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha {alpha} and beta {beta}")
    if not log_zero < 0:
        raise ValueError(f"log_zero (the clamped log 0) must be < 0, got {log_zero}")


@register_loss("sce")
class SCELoss(RetrievalLoss):
    """Symmetric cross-entropy (Wang et al. 2019): ``α·CE + β·RCE`` with the reverse cross-entropy
    ``RCE(p, y) = −Σ_j p_j log e_{y,j} = −A (1 − p_y)``, where ``log 0`` is clamped to ``A = log_zero``, so
    ``L = α·(−Σ_k q_k log p_k) − β·A·(1 − Σ_k q_k p_k)``. Defaults as in the paper's CIFAR-10 runs."""

    citation = (
        "@inproceedings{wang2019symmetric, title={Symmetric Cross Entropy for Robust Learning with Noisy Labels}, "
        "author={Wang, Yisen and Ma, Xingjun and Chen, Zaiyi and Luo, Yuan and Yi, Jinfeng and Bailey, James}, "
        "booktitle={ICCV}, year={2019}}"
    )

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, log_zero: float = -4.0):
        super().__init__()
        _check_active_passive(alpha, beta, log_zero)
        self.alpha, self.beta, self.log_zero = alpha, beta, log_zero

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        reverse = -self.log_zero * (1.0 - sm.expected(sm.p))
        return sm.mean(self.alpha * sm.cross_entropy() + self.beta * reverse)


@register_loss("nce_rce")
class NCERCELoss(RetrievalLoss):
    """Active-passive loss NCE+RCE (Ma et al. 2020): normalized cross-entropy
    ``NCE(p, y) = −log p_y / (−Σ_j log p_j)`` (``j`` over the masked-in candidates) plus the reverse cross-entropy
    ``RCE(p, y) = −A (1 − p_y)`` with ``log 0`` clamped to ``A = log_zero``:
    ``L = α·Σ_k q_k NCE(p, k) + β·Σ_k q_k RCE(p, k)``."""

    citation = (
        "@inproceedings{ma2020normalized, title={Normalized Loss Functions for Deep Learning with Noisy Labels}, "
        "author={Ma, Xingjun and Huang, Hanxun and Wang, Yisen and Romano, Simone and Erfani, Sarah and "
        "Bailey, James}, booktitle={ICML}, year={2020}}"
    )

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, log_zero: float = -4.0):
        super().__init__()
        _check_active_passive(alpha, beta, log_zero)
        self.alpha, self.beta, self.log_zero = alpha, beta, log_zero

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        # a query with one candidate has log p = 0 everywhere: 0 / 0, taken as 0
        normalizer = (-sm.over_candidates(sm.log_p)).clamp(min=torch.finfo(torch.float32).tiny)
        reverse = -self.log_zero * (1.0 - sm.expected(sm.p))
        return sm.mean(self.alpha * sm.cross_entropy() / normalizer + self.beta * reverse)


@register_loss("focal")
class FocalLoss(RetrievalLoss):
    """Focal loss (Lin et al. 2017): ``ℓ(p, y) = −(1 − p_y)^γ log p_y``, so ``L = −Σ_k q_k (1 − p_k)^γ log p_k``.
    ``γ = 0`` is cross-entropy."""

    citation = (
        "@inproceedings{lin2017focal, title={Focal Loss for Dense Object Detection}, author={Lin, Tsung-Yi and Goyal, "
        "Priya and Girshick, Ross and He, Kaiming and Doll{\\'a}r, Piotr}, booktitle={ICCV}, year={2017}}"
    )

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        # the clamp keeps the gradient of (1 - p)^γ finite at p = 1 when γ < 1
        modulating = (1.0 - sm.p).clamp(min=1e-12) ** self.gamma
        return sm.mean(sm.expected(-modulating * sm.log_p))


@register_loss("bootstrap_soft")
class SoftBootstrappingLoss(RetrievalLoss):
    """Soft bootstrapping (Reed et al. 2015): cross-entropy against a mix of the label and the model's own prediction,
    ``L = −Σ_k (β q_k + (1 − β) p_k) log p_k``. The gradient flows through both ``p``: the second term is the
    entropy of ``p``, i.e. minimum-entropy regularization, as in the paper."""

    citation = (
        "@inproceedings{reed2015training, title={Training Deep Neural Networks on Noisy Labels with Bootstrapping}, "
        "author={Reed, Scott and Lee, Honglak and Anguelov, Dragomir and Szegedy, Christian and Erhan, Dumitru and "
        "Rabinovich, Andrew}, booktitle={ICLR Workshop}, year={2015}}"
    )

    def __init__(self, beta: float = 0.95):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        entropy = -sm.over_candidates(sm.p * sm.log_p)
        return sm.mean(self.beta * sm.cross_entropy() + (1.0 - self.beta) * entropy)


@register_loss("bootstrap_hard")
class HardBootstrappingLoss(RetrievalLoss):
    """Hard bootstrapping (Reed et al. 2015): cross-entropy against a mix of the label and the model's top candidate
    ``z = e_{argmax p}`` (over the masked-in candidates), ``L = −Σ_k (β q_k + (1 − β) z_k) log p_k``."""

    citation = SoftBootstrappingLoss.citation

    def __init__(self, beta: float = 0.8):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        top = scores.detach().float().masked_fill(~sm.mask, float("-inf")).argmax(-1, keepdim=True)
        predicted = -sm.log_p.gather(-1, top).squeeze(-1)
        return sm.mean(self.beta * sm.cross_entropy() + (1.0 - self.beta) * predicted)


@register_loss("taylor_ce")
class TaylorCELoss(RetrievalLoss):
    """Taylor cross-entropy (Feng et al. 2020): the Taylor series of ``−log p_y`` around ``p_y = 1`` cut at ``order``,
    ``ℓ(p, y) = Σ_{j=1..t} (1 − p_y)^j / j``, so ``L = Σ_k q_k Σ_{j=1..t} (1 − p_k)^j / j``. ``t = 1`` is MAE / 2,
    ``t → ∞`` is cross-entropy."""

    citation = (
        "@inproceedings{feng2020can, title={Can Cross Entropy Loss Be Robust to Label Noise?}, author={Feng, Lei and "
        "Shu, Senlin and Lin, Zhuoyi and Lv, Fengmao and Li, Li and An, Bo}, booktitle={IJCAI}, year={2020}}"
    )

    def __init__(self, order: int = 2):
        super().__init__()
        self.order = whole_number(order, "order")  # 2.0 from a YAML file is 2

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        rest = 1.0 - sm.p
        series = sum(rest**j / j for j in range(1, self.order + 1))
        return sm.mean(sm.expected(series))


@register_loss("poly")
class PolyLoss(RetrievalLoss):
    """Poly-1 loss (Leng et al. 2022): cross-entropy plus ``ε`` times its first polynomial term,
    ``ℓ(p, y) = −log p_y + ε (1 − p_y)``, so ``L = −Σ_k q_k log p_k + ε (1 − Σ_k q_k p_k)``. ``ε = 0`` is InfoNCE;
    ``ε >= −1`` keeps the coefficient ``1 + ε`` of ``(1 − p_y)`` in the series non-negative, as in the paper."""

    citation = (
        "@inproceedings{leng2022polyloss, title={PolyLoss: A Polynomial Expansion Perspective of Classification Loss "
        "Functions}, author={Leng, Zhaoqi and Tan, Mingxing and Liu, Chenxi and Cubuk, Ekin Dogus and Shi, Xiaojie and "
        "Cheng, Shuyang and Anguelov, Dragomir}, booktitle={ICLR}, year={2022}}"
    )

    def __init__(self, epsilon: float = 1.0):
        super().__init__()
        if epsilon < -1.0:
            raise ValueError(f"epsilon must be >= -1, got {epsilon}")
        self.epsilon = epsilon

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        return sm.mean(sm.cross_entropy() + self.epsilon * (1.0 - sm.expected(sm.p)))


@register_loss("rince")
class RINCELoss(RetrievalLoss):
    """Robust InfoNCE (Chuang et al. 2022), on the raw scores rather than the softmax:

        ℓ(s, y) = −e^{q·s_y} / q + (λ · Σ_j e^{s_j})^q / q

    with ``Σ_j`` over all masked-in candidates (for one positive: ``e^{s_pos} + Σ_neg e^{s_neg}`` as in the paper).
    Several positives take the target-weighted form ``L = −Σ_k q_k e^{q·s_k} / q + (λ Σ_j e^{s_j})^q / q``: each
    positive's numerator is weighted by its target mass against one shared denominator, as in multi-positive InfoNCE.
    ``q → 0`` gives InfoNCE plus the constant ``log λ``; ``q = 1`` is a symmetric (noise-robust) loss. The loss can be
    negative, and unlike the softmax losses it depends on the scale of the scores, not only their differences
    (``e^{q·s}`` overflows float32 beyond ``q·s ≈ 88``). ``lam`` is λ (``lambda`` is a Python keyword).
    """

    citation = (
        "@inproceedings{chuang2022robust, title={Robust Contrastive Learning against Noisy Views}, author={Chuang, "
        "Ching-Yao and Hjelm, R Devon and Wang, Xin and Vineet, Vibhav and Joshi, Neel and Torralba, Antonio and "
        "Jegelka, Stefanie and Song, Yale}, booktitle={CVPR}, year={2022}}"
    )

    def __init__(self, q: float = 0.5, lam: float = 0.01):
        super().__init__()
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {q}")
        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        self.q, self.lam = q, lam

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        sm = _CandidateSoftmax(scores, labels, mask)
        scores = torch.where(sm.mask, scores.float(), torch.zeros_like(scores, dtype=torch.float))
        # e^{q·s} only where the target is: e^{q·s} of another candidate could overflow, and 0 · ∞ is a NaN gradient
        on_target = torch.where(sm.target > 0, scores, torch.zeros_like(scores))
        positive = sm.expected(torch.exp(self.q * on_target)) / self.q
        log_total = torch.logsumexp(scores.masked_fill(~sm.mask, float("-inf")), dim=-1)
        # (λ Σ e^s)^q computed as exp(q (log λ + logsumexp s)), which does not overflow for large scores
        log_total = torch.where(sm.has_positive, log_total, torch.zeros_like(log_total))
        negative = torch.exp(self.q * (math.log(self.lam) + log_total)) / self.q
        return sm.mean(negative - positive)
