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
import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

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


def _neighbours(n: int, window: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Indices (N, K) of each anchor's neighbours and whether each is inside [0, N).

    As in the study: when ``window < n`` each anchor has K = 2W+1 neighbours n−W..n+W (self included;
    out-of-range ones are clamped here and flagged False); otherwise every position is a neighbour (K = N).
    """
    if window < n:
        index = torch.arange(n, device=device)[:, None] + torch.arange(-window, window + 1, device=device)
        return index.clamp(0, n - 1), (index >= 0) & (index < n)
    return torch.arange(n, device=device).expand(n, n), torch.ones(n, n, dtype=torch.bool, device=device)


def _slots(n: int, window: int) -> int:
    """K, the neighbour slots per anchor of :func:`_neighbours`."""
    return 2 * window + 1 if window < n else n


def _take(x: Tensor, index: Tensor) -> Tensor:
    """``x[..., index]`` for an (…, M) ``index`` broadcast over x's leading axes, by ``torch.gather``: its
    backward is one scatter-add, where advanced indexing's is an index_put and per-offset slices' a
    full-size copy each (10× slower here)."""
    return torch.gather(x, -1, index.expand(*x.shape[:-1], index.shape[-1]))


def _shear(x: Tensor, offsets: Tensor, rows: int) -> Tensor:
    """(…, rows, M): row n holds ``x.flatten(-2)[..., n·x.shape[-1] + offsets]``, entries at fixed offsets
    from the start of x's row n, which may reach into the rows after it."""
    starts = torch.arange(rows, device=x.device)[:, None] * x.shape[-1]
    return _take(x.flatten(-2), (starts + offsets).flatten()).unflatten(-1, (rows, offsets.numel()))


class _Gram(torch.autograd.Function):
    """x @ xᵀ for a batch of small matrices x (…, N, H), with a one-matmul backward ((g + gᵀ) @ x, where
    autograd's takes two)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x @ x.transpose(-1, -2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, upstream: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return (upstream + upstream.transpose(-1, -2)) @ x


class _BlockProducts(torch.autograd.Function):
    """(T, C, 2C) from blocks y (T, C, H): each block's products with itself and with the next block (zero
    for the last). The sequences' blocks lie end to end, so each product is one batched matmul of contiguous
    blocks; a sequence's last (padding) block meets the next sequence's first, and the caller drops those.
    The backward is three batched matmuls written into one gradient, where autograd's zero-fills and adds
    a full-size gradient per slice of y."""

    @staticmethod
    def forward(ctx, y: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(y)
        following = F.pad(y[:-1] @ y[1:].transpose(-1, -2), (0, 0, 0, 0, 0, 1))
        return torch.cat([y @ y.transpose(-1, -2), following], -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, upstream: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        c = y.shape[-2]
        same, following = upstream[..., :c], upstream[:-1, :, c:]
        grad = (same + same.transpose(-1, -2)) @ y
        grad[:-1].baddbmm_(following, y[1:])
        grad[1:].baddbmm_(following.transpose(-1, -2), y[:-1])
        return grad


def _band(a: Tensor, width: int, wide: torch.dtype) -> Tensor:
    """(…, N, 2·width+1) in dtype ``wide``: ⟨a_m, a_m+e⟩ for e = −width..width (column width + e), 0 outside [0, N).

    From blocks of C = width positions: each block's products with itself and with the next block, two
    (C, C) batched matmuls, then row r's entries r..r+width read off by viewing the flat block as rows of
    2C+1 (the relative-position shift of Transformer-XL); the entries behind come from those by one gather.
    No gather or per-offset slice of ``a`` itself: the backward of each of those costs a full-size copy."""
    n, c = a.shape[-2], max(width, 1)
    blocks = -(-n // c)
    x = torch.empty(*a.shape[:-2], (blocks + 1) * c, a.shape[-1], dtype=wide, device=a.device)
    x[..., n:, :] = 0
    x[..., :n, :] = a
    g = _BlockProducts.apply(x.view(-1, c, a.shape[-1])).unflatten(0, (*a.shape[:-2], blocks + 1))[..., :-1, :, :]
    flat = F.pad(g.flatten(-2), (0, c))  # C·2C + C entries: C rows of 2C + 1, row r starting at g[r, r]
    ahead = flat.unflatten(-1, (c, 2 * c + 1))[..., : width + 1].flatten(-3, -2)[..., :n, :]  # e = 0..width
    # ⟨a_m, a_m−e⟩ = ⟨a_m−e, a_m⟩: column e of row m − e, for column j = width − e; `width` zero rows on top
    j = torch.arange(width, device=a.device)
    behind = _shear(F.pad(ahead, (0, 0, width, 0)), j * (width + 1) + width - j, n)
    return torch.cat([behind, ahead], -1)


def _relations(a: Tensor, window: int, keep: Tensor | None = None, wide: torch.dtype = torch.float64,
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine distances (…, N, K) and angles over the second-last axis of a (…, N, H), for the neighbour slots
    of :func:`_neighbours`; the angles as their diagonal (…, N, K) and upper triangle (…, N, K(K−1)/2, in
    ``torch.triu_indices`` order), as each anchor's K×K block is symmetric.

    This is the study's ``cos_dist`` and ``cos_angle``: d(n, m) = 1 − ⟨â_n, â_m⟩ and
    a(n; m1, m2) = ⟨normalize(a_n − a_m1), normalize(a_n − a_m2)⟩ (``F.normalize``: a vector is divided by
    max(‖·‖, 1e-12), so a zero vector stays zero). An out-of-range neighbour has its product or difference
    vector zeroed, so it gives distance 1 and angle 0; so does a slot where the broadcast boolean ``keep``
    (…, N, K) is False (the loss then leaves its terms out).

    Computed from products in dtype ``wide`` (float64; see :func:`_relation_loss` for the teacher's), not
    from (…, N, K, H) difference vectors: with x = a_n − a_i and y = a_n − a_j,
    ⟨x, y⟩ = (‖x‖² + ‖y‖² − ‖a_i − a_j‖²) / 2, and two neighbours of one anchor are at most 2W apart, so one
    band of products ⟨a_m, a_m+e⟩, e = −2W..2W (:func:`_band`), gives every distance and angle. With
    r = 1/‖x‖ (0 for a zero slot) the angle is r_i·r_j·(‖x_i‖² + ‖x_j‖² − ‖a_i − a_j‖²) / 2, so no K×K tensor
    needs a mask. A difference whose squared length is below 1e-12 of ‖a_n‖² + ‖a_i‖² (1e-6 in fp32, above
    its rounding there; the anchor itself, a duplicate vector) is zero, as ``F.normalize`` makes an exact
    zero, with a zero gradient. The direct form's gradient there is 1/eps = 1e12 times the upstream one,
    added and subtracted again: exact in exact arithmetic, but in fp32 its rounding error is as large as the
    whole gradient
    (tests/test_ckd_fast.py).
    """
    n = a.shape[-2]
    in_range = _neighbours(n, window, a.device)[1]
    k = _slots(n, window)
    first, second = torch.triu_indices(k, k, 1, device=a.device)
    if window < n:
        width = 2 * window
        band = _band(a, width, wide)  # column 2W + e: ⟨a_m, a_m+e⟩
        sq_norm = band[..., width]
        shifted = F.pad(sq_norm, (width, width)).unfold(-1, 2 * width + 1, 1)  # ‖a_m+e‖², 0 outside
        squared = sq_norm[..., None] + shifted - 2 * band  # ‖a_m − a_m+e‖²
        rows = F.pad(squared.to(a.dtype), (0, 0, window, window))  # row n + s: slot s's neighbour n + s − W
        # slots s < t: ‖a_(n+s−W) − a_(n+t−W)‖² is column 2W + (t − s) of row n + s
        pairs = _shear(rows, first * (rows.shape[-1] - 1) + second + width, n)
        dots, norms_i, anchor = (t[..., window : window + k] for t in (band, shifted, squared))
    else:
        exact = torch.empty(a.shape, dtype=wide, device=a.device).copy_(a)  # one copy, laid out for the matmul
        dots = _Gram.apply(exact)
        sq_norm = dots.diagonal(dim1=-2, dim2=-1)
        norms_i = sq_norm[..., None, :].expand_as(dots)
        anchor = sq_norm[..., :, None] + norms_i - 2 * dots
        pairs = anchor.to(a.dtype)[..., None, first, second]
    cosine = dots / (sq_norm.clamp_min(1e-24).sqrt()[..., :, None] * norms_i.clamp_min(1e-24).sqrt())
    distances = 1 - torch.where(in_range, cosine, 0)
    tiny = 1e-12 if wide == torch.float64 else 1e-6
    zero = ~in_range | (anchor <= tiny * (sq_norm[..., :, None] + norms_i))
    if keep is not None:
        zero = zero | ~keep
    safe = torch.where(zero, 1, anchor.to(a.dtype))  # 1 where zero: no infinite gradient through the sqrt
    squared_length, half_inverse = torch.where(zero, 0, safe), torch.where(zero, 0, safe.rsqrt() * 0.5**0.5)
    q_i, q_j, h_i, h_j = (_take(x, i) for x in (squared_length, half_inverse) for i in (first, second))
    upper = h_i * h_j * (q_i + q_j - pairs)
    return distances.to(a.dtype), (~zero).to(a.dtype), upper


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Mean of ``values`` over the entries where the broadcast boolean ``weights`` is True; 0 when there are
    none (an all-padding batch), with zero gradients."""
    weights = weights.expand_as(values)
    return torch.where(weights, values, 0).sum() / weights.sum().clamp_min(1)


def _relation_pairs(shape: torch.Size, window: int, valid: Tensor | None, device: torch.device) -> Tensor | None:
    """The kept (…, N, K) neighbour slots of relations over the last axis of ``shape`` (…, N): a slot is kept
    when its neighbour is in range and both it and the anchor are valid. None without ``valid`` (all kept)."""
    if valid is None:
        return None
    index, in_range = _neighbours(shape[-1], window, device)
    return in_range & valid[..., :, None] & valid[..., index]


def _relation_counts(shape: torch.Size, window: int, pair: Tensor | None) -> tuple[Tensor | int, Tensor | int]:
    """How many distance terms and angle terms relations over the last axis of ``shape`` (…, N) average over:
    the kept slots, and per anchor the square of its kept slots (at least 1 each, for an all-padding batch)."""
    k = _slots(shape[-1], window)
    if pair is None:
        return math.prod(shape) * k, math.prod(shape) * k * k
    kept = pair.expand(*shape, k).sum(-1)
    return kept.sum().clamp_min(1), (kept**2).sum().clamp_min(1)


def _relation_loss(student: Tensor, teacher: Tensor, window: int, pair: Tensor | None,
                   counts: tuple[Tensor | int, Tensor | int]) -> Tensor:
    """dist_loss + angle_loss between student and teacher relations over the second-last axis: each the sum of
    its squared differences over the kept slots ``pair`` (:func:`_relation_pairs`) divided by its count in
    ``counts`` (:func:`_relation_counts`; the whole batch's, when this is one chunk of it). The angle loss
    sums each symmetric K×K block as its diagonal plus twice its upper triangle.

    The student's products are float64, for an exact gradient. The teacher's, a target without gradient, are
    in its own dtype (fp32 unless it is float64): a cached teacher's states are fp16, whose rounding of a
    difference vector exceeds fp32's cancellation in ‖a‖² + ‖b‖² − 2⟨a, b⟩ unless ‖a − b‖ < 1e-4·‖a‖."""
    d_s, diag_s, up_s = _relations(student, window, pair)
    with torch.no_grad():  # the teacher's relations are targets: no graph is kept for them
        d_t, diag_t, up_t = _relations(teacher, window, pair, teacher.dtype)
    squared = (d_s - d_t) ** 2
    if pair is not None:
        squared = torch.where(pair, squared, 0)
    angle_sum = ((diag_s - diag_t) ** 2).sum() + 2 * ((up_s - up_t) ** 2).sum()
    return squared.sum() / counts[0] + angle_sum / counts[1]


class _Chunked(torch.autograd.Function):
    """A loss that is a sum over the examples of a batch, computed on chunks of ``chunk`` examples, each
    chunk's gradient taken at once. Its intermediates then stay in the CPU's cache and none of them is kept
    for the backward pass, which only scales the stored gradient (CKD's K-space tensors are ~50 floats
    per hidden value; a whole batch's do not fit in cache)."""

    @staticmethod
    def forward(ctx, x: Tensor, loss_of: Callable[[Tensor, slice], Tensor], chunk: int,  # type: ignore[override]
                grad_mode: bool) -> Tensor:
        total, grads = x.new_zeros(()), []
        for start in range(0, x.shape[0], chunk):
            rows = slice(start, start + chunk)
            part = x[rows].detach().requires_grad_(ctx.needs_input_grad[0] and grad_mode)
            with torch.enable_grad():
                value = loss_of(part, rows)
            if part.requires_grad:
                grads.append(torch.autograd.grad(value, part)[0])
            total += value.detach()
        ctx.save_for_backward(torch.cat(grads) if grads else None)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, upstream: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return None if grad is None else grad * upstream, None, None, None


CHUNK_ELEMENTS = 2**20  # per chunk of CKD's batch: L·N·K² summed over its examples (~4 MB of fp32 per tensor)


@fp32
def ckd_relations(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    window: int,
    gamma: float,
    mask: Tensor | None = None,
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

    Memory: (B, L, N, 2W+1, 2W+1) angles per side; the teacher's side is computed without autograd (it is
    a target: pass it detached, as every loss here expects).

    ``mask=None`` reproduces the study exactly: padding tokens and the zeroed out-of-range window slots
    all enter both losses. With a (B, N) ``mask`` (1 real, 0 pad) every term that involves a pad token, as
    anchor or as neighbour, is dropped, and so are out-of-range window slots (they are padding too); each
    of the four losses is then the mean over the remaining terms of the whole batch. In LTR a pad token's
    whole layer-relation block is dropped, while its out-of-range layer slots are dropped as in WR.
    Hence an all-ones mask equals ``mask=None`` only when no window slot falls out of range (N ≤ W and
    L ≤ W); otherwise it differs by the excluded out-of-range slots.
    """
    b, layers, n = student_hidden.shape[:3]
    valid = None if mask is None else mask.bool()
    word = _relation_pairs(student_hidden.shape[:3], window, None if valid is None else valid[:, None, :],
                           student_hidden.device)
    layer_shape = torch.Size((b, n, layers))
    layer = _relation_pairs(layer_shape, window, None if valid is None else valid[:, :, None].expand(layer_shape),
                            student_hidden.device)
    word_counts = _relation_counts(student_hidden.shape[:3], window, word)
    layer_counts = _relation_counts(layer_shape, window, layer)

    def loss_of(student: Tensor, rows: slice) -> Tensor:
        teacher = teacher_hidden[rows]
        wr = _relation_loss(student, teacher, window, None if word is None else word[rows], word_counts)
        ltr = _relation_loss(student.transpose(1, 2), teacher.transpose(1, 2), window,
                             None if layer is None else layer[rows], layer_counts)
        return wr + gamma * ltr

    k = _slots(n, window)
    chunk = max(1, CHUNK_ELEMENTS // (layers * n * k * k))
    return _Chunked.apply(student_hidden, loss_of, chunk, torch.is_grad_enabled())


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
