"""Soft-label losses: distillation from teacher scores and list-wise training on graded labels.

- :class:`KLDistillationLoss`: KL divergence from the teacher's softmax to the student's over each query's candidates
  (Hinton et al. 2015; the soft labels of noisy self-training, NST, Jiang et al. 2023).
- :class:`GuideDistillationLoss`: the same KL divergence, from the softmax of a frozen guide model's scores computed
  in the training step (the guide of :class:`~hf_robust_ir.losses.GuideMaskedLoss` and of label weakening's guide
  agreement), so every candidate — in-batch ones too — gets a soft label without a scoring pass over the data.
- :class:`MarginMSELoss`: the student's positive-negative margin regressed on the teacher's (Hofstätter et al. 2020).
- :class:`ListNetLoss`: KL divergence from a softmax over graded labels (or teacher scores) to the student's softmax
  (ListNet, Cao et al. 2007; the simple alternative of SyCL, Esfandiarpoor et al. 2025).
- :class:`WassersteinListwiseLoss`: SyCL's squared 2-Wasserstein distance between Gaussians fitted over the batch to
  the rows of the student's and the target's softmax.

``teacher[B, C]`` holds teacher scores, ``NaN`` where query ``i`` has none for candidate ``c`` (typically the
in-batch documents of other queries). A score of ``−inf`` is a soft-label probability of 0 (Margin-MSE, which needs
a finite margin, leaves it out as it does a ``NaN``). The teacher is a target: it never gets a gradient. A loss that
needs a teacher (``needs_teacher = True``) raises ``ValueError`` when called with ``teacher=None``; rows without
(enough) teacher scores are left out of the batch mean, and a batch where no row qualifies gives a 0 that stays
connected to ``scores``.

To mix one of these losses with a hard-label loss, use :class:`~hf_robust_ir.losses.WeightedSumLoss`.
"""

from __future__ import annotations

import torch

from .base import (
    RetrievalLoss,
    check_batch,
    check_guide_scores,
    mean_over_queries,
    register_loss,
    true_or_false,
)

_HINTON_2015 = (
    "@article{hinton2015distilling, title={Distilling the Knowledge in a Neural Network}, author={Hinton, Geoffrey "
    "and Vinyals, Oriol and Dean, Jeff}, journal={arXiv:1503.02531}, year={2015}}"
)
_NST_2023 = (
    "@inproceedings{jiang2023noisy, title={Noisy Self-Training with Synthetic Queries for Dense Retrieval}, "
    "author={Jiang, Fan and Drummond, Tom and Cohn, Trevor}, booktitle={Findings of EMNLP}, year={2023}, "
    "note={arXiv:2311.15563}}"
)
_LISTNET_2007 = (
    "@inproceedings{cao2007learning, title={Learning to Rank: From Pairwise Approach to Listwise Approach}, "
    "author={Cao, Zhe and Qin, Tao and Liu, Tie-Yan and Tsai, Ming-Feng and Li, Hang}, booktitle={ICML}, year={2007}}"
)
_SYCL_2025 = (
    "@article{esfandiarpoor2025beyond, title={Beyond Contrastive Learning: Synthetic Data Enables List-wise Training "
    "with Multiple Levels of Relevance}, author={Esfandiarpoor, Reza and Zerveas, George and Zhang, Ruochen and "
    "Mgonzo, Macton and Eickhoff, Carsten and Bach, Stephen H.}, journal={arXiv:2503.23239}, year={2025}}"
)
_FID_BACKPROP_2020 = (
    "@article{mathiasen2020backpropagating, title={Backpropagating through Fr{\\'e}chet Inception Distance}, "
    "author={Mathiasen, Alexander and Hvilsh{\\o}j, Frederik}, journal={arXiv:2009.14075}, year={2020}}"
)


def _require_teacher(loss: RetrievalLoss, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
    if teacher is None:
        raise ValueError(f"{type(loss).__name__} needs teacher scores (a teacher_scores column in the data)")
    if teacher.shape != scores.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} does not match scores {tuple(scores.shape)}")
    return teacher.detach().float()


def _log_softmax_over(values: torch.Tensor, support: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Row-wise log-softmax of ``values`` (computed in ``dtype``) over the candidates in ``support``; 0 outside it.

    ``NaN``/``inf`` outside the support never reach the result, and rows with an empty support give 0 everywhere
    with a finite (zero) gradient, which :func:`torch.log_softmax` over an all ``-inf`` row would not.
    """
    values = torch.where(support, values.to(dtype), torch.zeros_like(values, dtype=dtype))
    empty = ~support.any(-1, keepdim=True)
    log_probs = torch.log_softmax(values.masked_fill(~(support | empty), float("-inf")), dim=-1)
    return torch.where(support, log_probs, torch.zeros_like(log_probs))


def _kl_over(log_target: torch.Tensor, log_pred: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """``Σ_k T_k (log T_k − log P_k)`` per row over ``support`` (both log-distributions are 0 outside it), with
    ``0 · log 0 = 0`` where ``T_k = 0`` (a target score of ``−inf``)."""
    target = torch.where(support, log_target.exp(), torch.zeros_like(log_target))
    terms = torch.where(target > 0, target * (log_target - log_pred), torch.zeros_like(log_pred))
    return terms.sum(-1)


def _soft_label_kl(target: torch.Tensor, scores: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``mean_i KL(softmax(target_i) || softmax(scores_i))`` over each row's ``known`` candidates, for the rows with
    at least two of them (a row with one carries no soft label); 0, still connected to ``scores``, when none has."""
    rows = known.sum(-1) >= 2
    support = known & rows.unsqueeze(-1)
    log_q = _log_softmax_over(target, support)
    log_p = _log_softmax_over(scores.float(), support)
    return mean_over_queries(_kl_over(log_q, log_p, support), rows)


@register_loss("kl_distillation")
class KLDistillationLoss(RetrievalLoss):
    """Soft-label distillation (Hinton et al. 2015), as used for the teacher's soft labels of noisy self-training
    (NST, Jiang et al. 2023, arXiv 2311.15563). For query ``i`` and its candidates ``K_i`` that are masked in *and*
    have a teacher score (not ``NaN``):

        q = softmax(t_i / τ_t),  p = softmax(s_i / τ_s)   over K_i
        L_i = KL(q || p) = Σ_{k∈K_i} q_k (log q_k − log p_k)
        L = mean_{i: |K_i| ≥ 2} L_i      (× τ_t² when scale_by_temperature)

    Rows with fewer than two such candidates carry no soft label and are left out of the mean. ``scores`` are already
    divided by the model's temperature, so ``student_temperature`` divides them once more (keep it at 1.0 unless the
    model's own temperature should be overridden for this term). ``scale_by_temperature`` multiplies by ``τ_t²``: with
    ``τ_t = τ_s = T`` this is Hinton et al.'s ``T²`` factor, which keeps the gradient's magnitude roughly independent
    of ``T`` when the loss is mixed with a hard-label loss. The gradient of ``L_i`` with respect to ``s_ik`` is
    ``(p_k − q_k) / τ_s``.
    """

    needs_teacher = True
    citation = _NST_2023 + "\n" + _HINTON_2015

    def __init__(
        self, teacher_temperature: float = 1.0, student_temperature: float = 1.0, scale_by_temperature: bool = False
    ):
        super().__init__()
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError(
                f"temperatures must be > 0, got teacher {teacher_temperature} and student {student_temperature}"
            )
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)
        self.scale_by_temperature = true_or_false(scale_by_temperature, "scale_by_temperature")

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        check_batch(scores, labels, mask)
        teacher = _require_teacher(self, scores, teacher)
        known = mask.bool() & ~torch.isnan(teacher)
        loss = _soft_label_kl(teacher / self.teacher_temperature, scores.float() / self.student_temperature, known)
        return loss * self.teacher_temperature**2 if self.scale_by_temperature else loss


@register_loss("guide_distillation")
class GuideDistillationLoss(RetrievalLoss):
    """Soft labels from the frozen guide model the trainer runs each step (``guide_scores``, ``needs_guide_scores``):
    for query ``i`` and its masked-in candidates ``K_i`` (its own documents and the in-batch ones),

        q = softmax(g_i / τ_g),  p = softmax(s_i)   over K_i
        L_i = KL(q || p) = Σ_{k∈K_i} q_k (log q_k − log p_k)
        L = mean_{i: |K_i| ≥ 2} L_i

    with ``g`` the guide's ``q·d`` (cosine for a dense guide; cosine plus the weighted, normalized BM25 score for a
    :class:`~hf_robust_ir.modeling.HybridGuide`) and ``s`` the student's scores, already divided by its temperature:
    ``guide_temperature`` equal to the student's (0.05 for the bi-encoder's default) compares the two on the same
    scale. Labels are not read, so a wrong label does not reach this term; mixed with a hard-label loss through
    :class:`~hf_robust_ir.losses.WeightedSumLoss` it pulls every row towards the guide's ranking (on SciFact with
    40 % wrong positives, InfoNCE plus this term with the base model + BM25 as guide gains 4.5 nDCG@10 points over
    InfoNCE; added to label weakening it costs a little: ``benchmarks/NOISE_ROBUSTNESS.md``, variant 13).
    Soft-label distillation after Hinton et al. (2015); the teacher here is the guide, as in GISTEmbed's guided
    negatives (Solatorio 2024), but as a target rather than a mask. The gradient with respect to ``s_ik`` is
    ``p_k − q_k``.
    """

    needs_guide_scores = True
    citation = _HINTON_2015

    def __init__(self, guide_temperature: float = 0.05):
        super().__init__()
        if not guide_temperature > 0:
            raise ValueError(f"guide_temperature must be > 0, got {guide_temperature}")
        self.guide_temperature = float(guide_temperature)

    def forward(self, scores, labels, mask, teacher=None, guide_scores=None) -> torch.Tensor:
        check_batch(scores, labels, mask)
        check_guide_scores(self, scores, guide_scores)
        return _soft_label_kl(guide_scores.detach().float() / self.guide_temperature, scores, mask.bool())


@register_loss("margin_mse")
class MarginMSELoss(RetrievalLoss):
    """Margin-MSE (Hofstätter et al. 2020, arXiv 2010.02666): the student's score margin between a positive and a
    negative is regressed on the teacher's. For query ``i``, among the masked-in candidates with a finite teacher
    score, the positive ``p`` is the labeled positive with the highest label (ties: the highest teacher score, then the
    first), ``N_i`` are the candidates with label 0, and

        L_i = mean_{n∈N_i} ((σ s_p − σ s_n) − (t_p − t_n))²
        L = mean_{i: p exists and N_i ≠ ∅} L_i

    Other labeled positives of the query take no part. The paper uses one negative per (query, positive) triple;
    with several negatives the squared errors are averaged per query, so each query weighs the same.

    ``scores`` arrive divided by the model temperature ``τ`` while teacher scores are in the teacher's own units:
    ``student_scale`` (``σ``) multiplies the scores back, so ``student_scale = τ`` compares margins in raw similarity
    units (e.g. cosine), and ``student_scale = 1`` compares the logits (as when the teacher's scores are logits).
    The loss is not invariant to the scale of either side, so the two should be on comparable scales.
    """

    needs_teacher = True
    citation = (
        "@article{hofstatter2020improving, title={Improving Efficient Neural Ranking Models with Cross-Architecture "
        'Knowledge Distillation}, author={Hofst{\\"a}tter, Sebastian and Althammer, Sophia and Schr{\\"o}der, '
        "Michael and Sertkan, Mete and Hanbury, Allan}, journal={arXiv:2010.02666}, year={2020}}"
    )

    def __init__(self, student_scale: float = 1.0):
        super().__init__()
        if student_scale <= 0:
            raise ValueError(f"student_scale must be > 0, got {student_scale}")
        self.student_scale = float(student_scale)

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        check_batch(scores, labels, mask)
        teacher = _require_teacher(self, scores, teacher)
        known = mask.bool() & torch.isfinite(teacher)  # an infinite teacher score gives no finite margin
        labels = labels.float()
        positives, negatives = known & (labels > 0), known & (labels <= 0)
        rows = positives.any(-1) & negatives.any(-1)
        with torch.no_grad():
            best_label = labels.masked_fill(~positives, float("-inf")).amax(-1, keepdim=True)
            top = positives & (labels == best_label)
            positive = teacher.masked_fill(~top, float("-inf")).argmax(-1, keepdim=True)
        zero = torch.zeros_like(teacher)
        teacher = torch.where(known, teacher, zero)
        student = torch.where(known, scores.float() * self.student_scale, zero)
        error = (student.gather(-1, positive) - student) - (teacher.gather(-1, positive) - teacher)
        squared = torch.where(negatives, error.square(), zero).sum(-1) / negatives.sum(-1).clamp(min=1)
        return mean_over_queries(squared, rows)


@register_loss("listnet")
class ListNetLoss(RetrievalLoss):
    """ListNet with top-one probabilities (Cao et al. 2007), on graded labels as in SyCL (Esfandiarpoor et al. 2025,
    arXiv 2503.23239, where it is the simple alternative to :class:`WassersteinListwiseLoss`). Over the masked-in
    candidates of query ``i``:

        T = softmax(y_i / τ),  P = softmax(s_i)
        L_i = KL(T || P) = Σ_k T_k (log T_k − log P_k)
        L = mean_{i: ≥ 2 candidates} L_i

    ``τ`` is ``target_temperature``: lower sharpens the target towards the highest grade. Label 0 candidates (hard
    and in-batch negatives) get the target mass ``e^0 / Z``, not 0. A row whose masked-in labels are all equal (e.g.
    no positive) has a uniform target: it is still computed and pushes the row's scores towards each other, so
    filter such rows from the data if that is not wanted. Rows with a single candidate carry no information (the
    loss is 0) and are left out of the mean.

    ``use_teacher=True``: rows with at least two masked-in candidates with a teacher score use
    ``T = softmax(t_i / τ)`` instead, with both ``T`` and ``P`` over those candidates only (candidates without a
    teacher score, typically other queries' documents, leave that row); the other rows, and every row when
    ``teacher`` is ``None``, use the labels.
    """

    citation = _LISTNET_2007 + "\n" + _SYCL_2025

    def __init__(self, target_temperature: float = 1.0, use_teacher: bool = False):
        super().__init__()
        if target_temperature <= 0:
            raise ValueError(f"target_temperature must be > 0, got {target_temperature}")
        self.target_temperature = float(target_temperature)
        self.use_teacher = true_or_false(use_teacher, "use_teacher")

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        check_batch(scores, labels, mask)
        mask = mask.bool()
        support, values = mask, labels.float()
        if self.use_teacher and teacher is not None:
            teacher = _require_teacher(self, scores, teacher)
            known = mask & ~torch.isnan(teacher)
            from_teacher = (known.sum(-1) >= 2).unsqueeze(-1)
            support = torch.where(from_teacher, known, mask)
            values = torch.where(from_teacher, teacher, values)
        rows = support.sum(-1) >= 2
        support = support & rows.unsqueeze(-1)
        log_target = _log_softmax_over(values / self.target_temperature, support)
        log_pred = _log_softmax_over(scores, support)
        return mean_over_queries(_kl_over(log_target, log_pred, support), rows)


@register_loss("wasserstein_listwise")
class WassersteinListwiseLoss(RetrievalLoss):
    """SyCL's list-wise loss (Esfandiarpoor et al. 2025, arXiv 2503.23239): the squared 2-Wasserstein (Fréchet)
    distance between two Gaussians fitted over the batch. Each row of ``P = softmax(s)`` and of
    ``T = softmax(y / τ)`` (``τ = target_temperature``), both over the masked-in candidates and 0 at masked-out ones,
    is a sample in ``R^C``; with ``μ`` the mean of the rows and ``Σ`` their covariance,

        L = ||μ_P − μ_T||² + Tr(Σ_P + Σ_T − 2 (Σ_P^{1/2} Σ_T Σ_P^{1/2})^{1/2})

    Rows without any masked-in candidate are left out (``B`` counts the rows kept). Unlike the per-query losses
    this compares the batch's distributions, not each query with its own target: rows are not paired, and a batch of
    one query (``B = 1``, covariances 0) gives ``||p − t||²``.

    Covariance: ``Σ = Xᵀ X / (B − ddof)`` with ``X`` the centered rows; ``ddof = 0`` (default) divides by ``B``, the
    maximum-likelihood fit; ``ddof = 1`` is the unbiased estimate that SyCL's released code uses.

    Matrix square roots: none is formed. With ``M = X_P X_Tᵀ / (B − ddof)`` (``B × B``), the non-zero eigenvalues of
    ``Σ_P^{1/2} Σ_T Σ_P^{1/2}`` are those of ``Σ_P Σ_T`` and of ``M Mᵀ``, so
    ``Tr((Σ_P^{1/2} Σ_T Σ_P^{1/2})^{1/2}) = Σ_j σ_j(M)``, the nuclear norm of ``M`` (the ``B × B`` reduction of
    Mathiasen & Hvilshøj 2020, arXiv 2009.14075, taken through singular values instead of eigenvalues). It is exact
    and costs ``O(B²C + B³)`` instead of ``O(C³)``. The singular values come from :func:`torch.linalg.svdvals`,
    whose gradient ``U Vᵀ`` is finite for repeated and zero singular values alike. The covariances here are always
    singular (each softmax row sums to 1, and there are at most ``B − 1`` independent centered rows), so the usual
    route, an eigendecomposition of ``Σ`` with ``√λ``, would meet repeated zero eigenvalues (where the gradient of
    :func:`torch.linalg.eigh` is not finite) and the infinite slope of ``√λ`` at 0 (which clamping only hides); the
    singular values avoid both, including at ``P = T``, where the loss and its gradient are 0. The softmaxes and
    everything after them are computed in float64 (float32 on MPS, which has no float64); the loss is returned in
    float32 (float64 for float64 scores). Rounding can leave it a little below 0 (about 1e-16).
    """

    citation = _SYCL_2025 + "\n" + _FID_BACKPROP_2020

    def __init__(self, target_temperature: float = 1.0, ddof: int = 0):
        super().__init__()
        if target_temperature <= 0:
            raise ValueError(f"target_temperature must be > 0, got {target_temperature}")
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof}")
        self.target_temperature = float(target_temperature)
        self.ddof = int(ddof)

    def forward(self, scores, labels, mask, teacher=None) -> torch.Tensor:
        check_batch(scores, labels, mask)
        mask = mask.bool()
        dtype = torch.float32 if scores.device.type == "mps" else torch.float64
        pred = torch.where(mask, _log_softmax_over(scores, mask, dtype).exp(), 0.0)
        target = torch.where(
            mask, _log_softmax_over(labels.to(dtype) / self.target_temperature, mask, dtype).exp(), 0.0
        )
        # rows are weighted 1 (kept) or 0 (no candidate) rather than indexed, which would need a device sync
        keep = mask.any(-1).to(dtype).unsqueeze(-1)
        count = keep.sum()
        mean_pred = (keep * pred).sum(0) / count.clamp(min=1)
        mean_target = (keep * target).sum(0) / count.clamp(min=1)
        centered_pred, centered_target = keep * (pred - mean_pred), keep * (target - mean_target)
        denominator = (count - self.ddof).clamp(min=1)
        cross = torch.linalg.svdvals(centered_pred @ centered_target.T).sum()
        trace = (centered_pred.square().sum() + centered_target.square().sum() - 2.0 * cross) / denominator
        return ((mean_pred - mean_target).square().sum() + trace).to(torch.promote_types(scores.dtype, torch.float32))
