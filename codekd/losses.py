"""Distillation losses as pure functions of tensors.

Each function reproduces the formula that the study "An Empirical Study of Knowledge Distillation for Code
Understanding Tasks" (Wang et al., arXiv 2508.15423; code: BackOnTruck/kd-empirical) uses, and cites the
paper that introduced the method. Where the study departs from the original paper (no T², no label term,
padding included), the study's version is the one implemented and the docstring says so; optional masks are
this package's fix and are off by default, so the defaults reproduce the study.

Conventions: logits are (B, C); ``labels`` are class indices (B,); masks are (B, N) with 1 for a real token
and 0 for padding. Every loss returns a scalar tensor. Pass ``teacher.detach()`` (or compute the teacher
under ``torch.no_grad()``) so that no gradient reaches the teacher.

Numerics: every loss computes in fp32 (fp64 inputs stay fp64), whatever the input dtype and under any
autocast, so that normalisation eps, clamp floors and logs mean the same in fp16/bf16 training as in fp32
(``F.normalize``'s eps of 1e-12 is 0 in fp16). A mask with no real token gives a zero loss (and zero
gradients), never NaN.
"""

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from codekd import relations

Loss = TypeVar("Loss", bound=Callable[..., Tensor])
PROBABILITY_FLOOR = 1e-8  # attention_relation's floor on student probabilities, the same in every dtype


def _wide(value: object) -> object:
    """A half-precision (fp16/bf16) floating tensor as fp32; anything else unchanged."""
    if isinstance(value, Tensor) and value.is_floating_point() and value.element_size() < 4:
        return value.float()
    return value


def fp32(loss: Loss) -> Loss:
    """Decorator: run ``loss`` on fp32 copies of its half-precision tensor arguments with autocast off."""

    @functools.wraps(loss)
    def wrapper(*args: object, **kwargs: object) -> Tensor:
        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return loss(*map(_wide, args), **{k: _wide(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


@fp32
def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Vanilla KD as the study codes it: CE(z_s / T, softmax(z_t / T)), averaged over the batch.

    Hinton et al., "Distilling the Knowledge in a Neural Network" (NIPS 2014 DL workshop). The study's
    ``kd-ft`` script uses ``CrossEntropyLoss`` with probability targets, i.e.
    -Σ_k p_t,k log softmax(z_s / T)_k, with **no** T² factor (see :func:`kd_loss` for the T² form).
    """
    return F.cross_entropy(student_logits / temperature, F.softmax(teacher_logits / temperature, dim=-1))


@fp32
def hard_cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Plain cross-entropy with the gold labels, averaged over the batch: the fine-tuning (FT) baseline.

    Examples labelled -100 (unlabelled transfer examples, `codekd.data.unlabelled`) are left out of the
    mean; a batch without any labelled example gives 0 (with a gradient of 0), not NaN."""
    labelled = labels >= 0
    if not bool(labelled.any()):
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits[labelled], labels[labelled])


@fp32
def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    temperature: float,
    alpha: float = 1.0,
    t_squared: bool = False,
) -> Tensor:
    """α·(T² if ``t_squared`` else 1)·soft CE + (1 − α)·CE(z_s, y) (Hinton et al., 2014).

    Hinton et al. scale the soft term by T² so that its gradients keep their size as T changes; the
    study's vanilla KD has neither the T² nor the label term (α = 1, ``t_squared=False``), while its PKD
    and CKD use α·T²·soft CE (``t_squared=True``). With α = 1 the label term is skipped, so ``labels``
    may be None.
    """
    soft = soft_cross_entropy(student_logits, teacher_logits, temperature)
    if t_squared:
        soft = soft * temperature**2
    if alpha == 1:
        return soft
    return alpha * soft + (1 - alpha) * hard_cross_entropy(student_logits, labels)


def _pearson(x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Mean over rows of the row-wise Pearson correlation, as ``nn.CosineSimilarity(eps)`` of the
    row-centred matrices: the study's ``p_corr`` (eps 1e-8)."""
    return F.cosine_similarity(
        x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True), dim=1, eps=eps
    ).mean()


@fp32
def dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    beta: float,
    gamma: float,
    eps: float = 1e-8,
) -> Tensor:
    """DIST as the study codes it.

    Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

    With p = softmax(z / T) of shape (B, C) and ρ the mean row-wise Pearson correlation,
    L = β·(1 − ρ(p_s, p_t)) + γ·(1 − ρ(p_sᵀ, p_tᵀ)): the inter-class term correlates each sample's class
    distribution, the intra-class term each class's column across the batch. Unlike the paper there is no
    T² factor and no label term.

    On binary tasks (C = 2) each centred row is [d, −d], so the inter-class correlation is exactly ±1 (or 0
    when d = 0): a constant that gives no gradient. Only the intra-class term trains the student there.

    ``eps`` is ``nn.CosineSimilarity``'s floor on the norms of the centred rows (the study's and the DIST
    authors' 1e-8). A correlation's gradient grows as 1/σ of the centred row: when the student's
    probabilities are (nearly) equal along a row or column, as at initialisation or for all-equal logits,
    the gradient reaches 1/eps scale. A larger ``eps`` (1e-4) bounds it, at the cost of a loss that
    departs from the correlation for rows whose spread is below it.
    """
    p_s = F.softmax(student_logits / temperature, dim=-1)
    p_t = F.softmax(teacher_logits / temperature, dim=-1)
    return beta * (1 - _pearson(p_s, p_t, eps)) + gamma * (1 - _pearson(p_s.T, p_t.T, eps))


@fp32
def pkd_features(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """PKD feature loss (Sun et al., "Patient Knowledge Distillation for BERT Model Compression", EMNLP 2019).

    Inputs are (B, L, H) [CLS] vectors of the matched layers, the teacher's already projected to the
    student's width. Both are L2-normalised over H, then compared by MSE averaged over B·L·H, as the study
    does (``nn.MSELoss`` of ``F.normalize(·, dim=2)``).
    """
    return F.mse_loss(F.normalize(student_features, dim=-1), F.normalize(teacher_features, dim=-1))


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Mean of ``values`` over the entries where the broadcast boolean ``weights`` is True; 0 when there are
    none (an all-padding batch), with zero gradients."""
    weights = weights.expand_as(values)
    return torch.where(weights, values, 0).sum() / weights.sum().clamp_min(1)



@fp32
def ckd_relations(
    student_hidden: Tensor,
    teacher_hidden: Tensor | None,
    window: int,
    gamma: float,
    mask: Tensor | None = None,
    cached: Tensor | None = None,
) -> Tensor:
    """CKD relation loss WR + γ·LTR, as the study's ``ckd/loss.py`` computes it.

    Contextual Knowledge Distillation: Park, Kim and Yang, "Distilling Linguistic Context for Language Model
    Compression", EMNLP 2021 (arXiv 2109.08359). Inputs are (B, L, N, H) hidden states of matched layers;
    the widths may differ (Hs ≠ Ht) because every relation is a cosine, so no projection is needed.

    - WR (word relation): over the token axis N of each layer, cosine distances d(n, m) to the neighbours
      m = n−W..n+W (self included) and angles a(n; m1, m2) with the vertex at the anchor, i.e. a
      (2W+1)×(2W+1) block per anchor; both compared by MSE (mean). Out-of-range neighbours are zeroed,
      giving distance 1 and angle 0 on both sides. When N ≤ W all pairs are used (N×N and N×N×N).
    - LTR (layer-transforming relation): the same two losses on the transposed (B, N, L, H) tensors, i.e.
      over the layer axis for each token (all pairs when L ≤ W).

    Cost: on a CPU the batch is taken in chunks of about ``CHUNK_ELEMENTS`` / (L·N·K²) examples, and each
    chunk's gradient is taken at once (:class:`_Chunked`), so a chunk's (…, N, K(K−1)/2) angle tensors stay in
    the CPU's cache and none is kept for the backward pass; on an accelerator the batch is one chunk. The
    teacher's side is computed without autograd (it is a target: pass it detached, as every loss here
    expects).

    ``mask=None`` reproduces the study exactly: padding tokens and the zeroed out-of-range window slots
    all enter both losses. With a (B, N) ``mask`` (1 real, 0 pad) every term that involves a pad token, as
    anchor or as neighbour, is dropped, and so are out-of-range window slots (they are padding too); each
    of the four losses is then the mean over the remaining terms of the whole batch. In LTR a pad token's
    whole layer-relation block is dropped, while its out-of-range layer slots are dropped as in WR.
    Hence an all-ones mask equals ``mask=None`` only when no window slot falls out of range (N ≤ W and
    L ≤ W); otherwise it differs by the excluded out-of-range slots.

    With a mask, ``cached`` may replace ``teacher_hidden``: the teacher's relations computed once over its
    own real tokens (:func:`codekd.relations.teacher_relations`, what a teacher cache stores for CKD), then
    masked with the batch's positions here; the loss is the one from the teacher's states.
    """
    return relations.relation_loss(student_hidden, teacher_hidden, window, gamma, mask, cached)


@fp32
def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> Tensor:
    """Decoupled KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022): α·TCKD + β·NCKD.

    With p = softmax(z / T): TCKD = KL([p_y, 1 − p_y]_t ‖ [p_y, 1 − p_y]_s), the binary target-vs-rest
    distribution; NCKD = KL(p̂_t ‖ p̂_s) where p̂ is p over the non-target classes renormalised to sum to 1.
    Each is scaled by T² and averaged over the batch, as in the authors' reference code (mdistiller).
    With C = 2, NCKD is 0 (one non-target class).
    """
    target = F.one_hot(labels, student_logits.shape[-1]).bool()

    def binary_and_rest(logits: Tensor) -> tuple[Tensor, Tensor]:
        scaled = logits / temperature
        rest = scaled[~target].view(scaled.shape[0], -1)
        log_all = torch.logsumexp(scaled, dim=-1)
        log_binary = torch.stack([scaled[target] - log_all, torch.logsumexp(rest, dim=-1) - log_all], dim=-1)
        return log_binary, F.log_softmax(rest, dim=-1)

    binary_s, rest_s = binary_and_rest(student_logits)
    binary_t, rest_t = binary_and_rest(teacher_logits)
    tckd = F.kl_div(binary_s, binary_t, reduction="batchmean", log_target=True)
    nckd = F.kl_div(rest_s, rest_t, reduction="batchmean", log_target=True)
    return temperature**2 * (alpha * tckd + beta * nckd)


@fp32
def attention_relation(student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None,
                       reduction: str = "token") -> Tensor:
    """MiniLM attention transfer: KL(teacher ‖ student) of attention distributions.

    Wang et al., "MiniLM: Deep Self-Attention Distillation" (NeurIPS 2020) and "MiniLMv2: Multi-Head
    Self-Attention Relation Distillation" (Findings of ACL 2021). Inputs are (B, heads, N, N) row
    distributions (each query row sums to 1; self-attention relations work the same way). The KL of each
    query row is averaged over heads, then over query rows and batch. If the head counts differ, each
    side's heads are averaged first (the mean of row distributions is still a distribution) and the KL
    is taken between those means. With a (B, N) ``mask`` only real query rows are averaged; pad key
    columns are expected to carry no probability already (the model's attention mask does that), and a
    zero teacher probability adds nothing.

    The student's probabilities are floored at ``PROBABILITY_FLOOR`` (1e-8) before the log, whatever the
    dtype: fp16 maps flush probabilities below 6e-8 to 0, and a dtype-dependent floor (fp16's smallest
    normal, 6e-5, or fp32's, 1e-38) made the same maps' loss differ by 15-140 % between fp16 and fp32.
    With this floor they agree within 0.2 % (tests/test_numerics.py); a student probability below 1e-8
    where the teacher has mass costs at most −log 1e-8 = 18.4 per unit of teacher probability.

    ``reduction``: ``"token"`` averages the real query rows of the whole batch (one mean over tokens);
    ``"example"`` averages each example's real rows, then the examples that have any (MiniLM's per-example
    loss: long and short inputs weigh the same).
    """
    if student_attn.shape[1] != teacher_attn.shape[1]:
        student_attn = student_attn.mean(1, keepdim=True)
        teacher_attn = teacher_attn.mean(1, keepdim=True)
    log_student = student_attn.clamp_min(PROBABILITY_FLOOR).log()
    rows = (torch.xlogy(teacher_attn, teacher_attn) - teacher_attn * log_student).sum(-1).mean(1)  # (B, N)
    return _reduce_rows(rows, mask, reduction)


@fp32
def value_relation(student_values: Tensor, teacher_values: Tensor, mask: Tensor | None = None,
                   reduction: str = "token") -> Tensor:
    """MiniLM's value-relation transfer (Wang et al., "MiniLM: Deep Self-Attention Distillation for
    Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020, §3.1 eq. 7-8): per head a, the
    relation VR = softmax(V_a V_aᵀ / √d_k) of the last layer's (B, heads, N, d_k) value vectors, then
    KL(VR_t ‖ VR_s) as in `attention_relation` (averaged over heads and real query rows; head counts that
    differ are averaged first; d_k may differ, the relations are N × N). With a (B, N) ``mask``, pad keys get
    no probability (their scores are set to the dtype's lowest value before the softmax, so a row without a
    real key stays finite) and pad query rows are not averaged."""
    return attention_relation(_self_relation(student_values, mask), _self_relation(teacher_values, mask), mask,
                              reduction)


def _self_relation(values: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(V Vᵀ / √d_k) over the keys of (B, heads, N, d_k) vectors, pad keys excluded: (B, heads, N, N)."""
    scores = values @ values.transpose(-1, -2) / values.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(-1)


def _reduce_rows(rows: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """Mean of per-token values (B, N) over real tokens: of the whole batch (``token``) or per example, then
    over the examples with a real token (``example``)."""
    valid = torch.ones_like(rows, dtype=torch.bool) if mask is None else mask.bool()
    if reduction == "token":
        return _masked_mean(rows, valid)
    if reduction == "example":
        per_example = torch.where(valid, rows, 0).sum(1) / valid.sum(1).clamp_min(1)
        return _masked_mean(per_example, valid.any(1))
    raise ValueError(f"reduction={reduction!r}: expected token or example")


@fp32
def attention_mse(student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None) -> Tensor:
    """TinyBERT's attention loss (Jiao et al., Findings of EMNLP 2020, eq. 8): MSE between (B, L, heads, N, N)
    attention maps of matched layers, averaged over heads, layers and the (query, key) pairs whose two tokens
    are real under the (B, N) ``mask``.

    The paper and its code (huawei-noah/Pretrained-Language-Model, ``TinyBERT/task_distill.py``) compare the
    pre-softmax scores, with masked scores (≤ −100) set to 0; Hugging Face models expose only the
    probabilities, so those are compared here (as TextBrewer's ``att_mse_loss`` does on HF attentions).
    Different head counts are averaged over heads first, as in :func:`attention_relation`.
    """
    if student_attn.shape[2] != teacher_attn.shape[2]:
        student_attn = student_attn.mean(2, keepdim=True)
        teacher_attn = teacher_attn.mean(2, keepdim=True)
    squared = (student_attn - teacher_attn) ** 2
    if mask is None:
        return squared.mean()
    valid = mask.bool()
    return _masked_mean(squared, (valid[:, :, None] & valid[:, None, :])[:, None, None])


@fp32
def hidden_mse(
    student_hidden: Tensor, teacher_hidden_projected: Tensor, mask: Tensor | None = None
) -> Tensor:
    """TinyBERT hidden-state loss (Jiao et al., "TinyBERT: Distilling BERT for Natural Language
    Understanding", Findings of EMNLP 2020): MSE between (B, L, N, H) hidden states of matched layers.

    The caller projects one side to the other's width first. With a (B, N) ``mask`` the mean runs over
    real tokens only (all layers and features of each), so padding does not enter the loss.
    """
    squared = (student_hidden - teacher_hidden_projected) ** 2
    if mask is None:
        return squared.mean()
    return _masked_mean(squared, mask.bool()[:, None, :, None])
