"""CKD's word and layer relations (Park, Kim and Yang, EMNLP 2021, as the study's ``ckd/loss.py`` computes
them), built for speed: cosine distances and angles from a float64 band of products instead of (…, N, K, H)
difference vectors, the batch taken in chunks whose gradients are computed at once. :func:`relation_loss`
is :func:`codekd.losses.ckd_relations`, which documents the loss; tests/test_ckd_fast.py checks every part
against the direct form, in value and in gradient.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


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


def _gram_grad(upstream: Tensor, x: Tensor) -> Tensor:
    """The gradient of x @ xᵀ with respect to x, given the upstream one: (g + gᵀ) @ x, one matmul where
    autograd's takes two."""
    return (upstream + upstream.transpose(-1, -2)) @ x


class _Gram(torch.autograd.Function):
    """x @ xᵀ for a batch of small matrices x (…, N, H), with the backward of :func:`_gram_grad`."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x @ x.transpose(-1, -2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, upstream: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _gram_grad(upstream, x)


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
        grad = _gram_grad(same, y)
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

    Computed from products in dtype ``wide`` (float64; see :func:`_target` for the teacher's), not
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


Relations = tuple[Tensor, Tensor, Tensor]  # distances, angle diagonals, angle upper triangles (`_relations`)


def _relation_loss(student: Tensor, target: Relations, window: int, pair: Tensor | None,
                   counts: tuple[Tensor | int, Tensor | int]) -> Tensor:
    """dist_loss + angle_loss between the student's relations over the second-last axis and the teacher's
    ``target`` (:func:`_target`, or cached ones through :func:`_masked`): each the sum of its squared differences
    over the kept slots ``pair`` (:func:`_relation_pairs`) divided by its count in ``counts``
    (:func:`_relation_counts`; the whole batch's, when this is one chunk of it). The angle loss sums each
    symmetric K×K block as its diagonal plus twice its upper triangle. The student's products are float64, for
    an exact gradient."""
    d_s, diag_s, up_s = _relations(student, window, pair)
    d_t, diag_t, up_t = target
    if pair is not None:
        d_s = torch.where(pair, d_s, 0)
    angles = F.mse_loss(diag_s, diag_t, reduction="sum") + 2 * F.mse_loss(up_s, up_t, reduction="sum")
    return F.mse_loss(d_s, d_t, reduction="sum") / counts[0] + angles / counts[1]


@torch.no_grad()  # the teacher's relations are targets: no graph is kept for them
def _target(teacher: Tensor, window: int, pair: Tensor | None, dtype: torch.dtype | None = None) -> Relations:
    """The teacher's relations over the second-last axis, zero outside the kept slots ``pair``. In its own dtype
    (fp32 unless it is float64), or ``dtype``: a cached teacher's states are fp16, whose rounding of a difference
    vector exceeds fp32's cancellation in ‖a‖² + ‖b‖² − 2⟨a, b⟩ unless ‖a − b‖ < 1e-4·‖a‖."""
    d, diag, up = _relations(teacher, window, pair, dtype or teacher.dtype)
    return (d, diag, up) if pair is None else (torch.where(pair, d, 0), diag, up)


def _masked(target: Relations, pair: Tensor) -> Relations:
    """Relations computed over a teacher's own real tokens (:func:`teacher_relations`), zeroed outside the
    batch's kept slots ``pair``: what :func:`_target` gives on that batch."""
    d, diag, up = target
    k = d.shape[-1]
    first, second = torch.triu_indices(k, k, 1, device=pair.device)
    both = _take(pair, first) & _take(pair, second)
    return torch.where(pair, d, 0), torch.where(pair, diag, 0), torch.where(both, up, 0)


def _split(rows: Tensor, layers: int, k: int) -> Relations:
    """(…, layers·(2K + K(K−1)/2)) rows of :func:`teacher_relations` as (…, layers, K) distances and diagonals
    and (…, layers, K(K−1)/2) upper triangles."""
    return rows.unflatten(-1, (layers, -1)).split([k, k, k * (k - 1) // 2], -1)


def _windowed(window: int, hidden: Tensor, mask: Tensor, rows: Tensor | None = None,
              ) -> tuple[Tensor, Tensor, Tensor | None]:
    """States (…, N, H), their mask (…, N) and per-token rows (…, N, F) in the windowed layout of
    :func:`teacher_relations`: a sequence of N ≤ W positions padded to W + 1 with masked positions."""
    extra = window + 1 - hidden.shape[-2]
    if extra <= 0:
        return hidden, mask, rows
    return (F.pad(hidden, (0, 0, 0, extra)), F.pad(mask, (0, extra)),
            None if rows is None else F.pad(rows, (0, 0, 0, extra)))


def teacher_relations(hidden: Tensor, window: int, mask: Tensor) -> Tensor:
    """A teacher's side of :func:`relation_loss`, computed once for a teacher cache: per token (B, N, F), its
    word relations at each of the L layers of ``hidden`` (B, L, N, H) and its layer relations, over the real
    tokens of ``mask`` (B, N), in the windowed layout (2W+1 slots) even for short sequences (padded here with
    masked positions, which no kept term touches). :func:`relation_loss` masks them with a batch's common
    positions, which gives the relations :func:`_target` computes from the states of that batch. F is
    L·(2K + K(K−1)/2) for the words (K = 2W + 1) plus the same with K = L (or 2W + 1 when L > W) for the layers.
    Taken in chunks of the batch of about ``CHUNK_ELEMENTS`` K-space values, to bound the memory."""
    b, layers, n = hidden.shape[:3]
    hidden, valid = _windowed(window, hidden.float(), mask.bool())[:2]
    width, k = hidden.shape[2], 2 * window + 1
    chunk = max(1, CHUNK_ELEMENTS // (layers * width * k * k))
    rows = []
    for start in range(0, b, chunk):
        part, real = hidden[start:start + chunk], valid[start:start + chunk]
        shape = torch.Size((part.shape[0], width, layers))
        word = _relation_pairs(part.shape[:3], window, real[:, None, :], hidden.device)
        layer = _relation_pairs(shape, window, real[:, :, None].expand(shape), hidden.device)
        wr = torch.cat(_target(part, window, word, torch.float32), -1).transpose(1, 2).flatten(2)
        ltr = torch.cat(_target(part.transpose(1, 2), window, layer, torch.float32), -1).flatten(2)
        rows.append(torch.cat([wr, ltr], -1)[:, :n])
    return torch.cat(rows)


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


CHUNK_ELEMENTS = 2**21  # per chunk of CKD's batch, about: L·N·K² summed over its examples (best of 2^19..2^22 here)


def relation_loss(student_hidden: Tensor, teacher_hidden: Tensor | None, window: int, gamma: float,
                  mask: Tensor | None, cached: Tensor | None = None) -> Tensor:
    """WR + γ·LTR of :func:`codekd.losses.ckd_relations` (which casts to fp32 and documents it), against the
    teacher's states or, with a ``mask``, its ``cached`` relations (:func:`teacher_relations`, (B, ≥N, F))."""
    if cached is not None:
        if mask is None:
            raise ValueError("cached teacher relations need the mask of real tokens (they leave pads out)")
        student_hidden, mask, cached = _windowed(window, student_hidden, mask, cached[:, : student_hidden.shape[2]])
    b, layers, n = student_hidden.shape[:3]
    valid = None if mask is None else mask.bool()
    word = _relation_pairs(student_hidden.shape[:3], window, None if valid is None else valid[:, None, :],
                           student_hidden.device)
    layer_shape = torch.Size((b, n, layers))
    layer = _relation_pairs(layer_shape, window, None if valid is None else valid[:, :, None].expand(layer_shape),
                            student_hidden.device)
    word_counts = _relation_counts(student_hidden.shape[:3], window, word)
    layer_counts = _relation_counts(layer_shape, window, layer)
    k_word, k_layer = _slots(n, window), _slots(layers, window)
    word_width = layers * (2 * k_word + k_word * (k_word - 1) // 2)  # the cached rows' word relations

    def targets(rows: slice) -> tuple[Relations, Relations]:
        if cached is None:
            teacher = teacher_hidden[rows]
            return (_target(teacher, window, None if word is None else word[rows]),
                    _target(teacher.transpose(1, 2), window, None if layer is None else layer[rows]))
        part = cached[rows].float()
        wr_rows, ltr_rows = part[..., :word_width], part[..., word_width:]
        wr = tuple(t.transpose(1, 2) for t in _split(wr_rows, layers, k_word))
        return _masked(wr, word[rows]), _masked(_split(ltr_rows, layers, k_layer), layer[rows])

    def loss_of(student: Tensor, rows: slice) -> Tensor:
        wr_t, ltr_t = targets(rows)
        wr = _relation_loss(student, wr_t, window, None if word is None else word[rows], word_counts)
        ltr = _relation_loss(student.transpose(1, 2), ltr_t, window, None if layer is None else layer[rows],
                             layer_counts)
        return wr + gamma * ltr

    # chunks keep a CPU's caches warm; an accelerator runs the whole batch at once (fewer, larger kernels)
    chunk = max(1, round(CHUNK_ELEMENTS / (layers * n * k_word * k_word))) if student_hidden.device.type == "cpu" else b
    return _Chunked.apply(student_hidden, loss_of, chunk, torch.is_grad_enabled())
