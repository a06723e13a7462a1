"""CKD's relations from shifted slices and squared distances equal the direct computation (the study's
cos_dist / cos_angle, with explicit (…, N, K, H) difference vectors), in value and in gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from codekd import losses, relations


def direct_relations(a: torch.Tensor, window: int, exact_zero: bool = False):
    """The former implementation, as the study's code builds it. With ``exact_zero`` a zero difference
    vector (the anchor itself, a duplicate) gets a zero gradient: its value is the constant 0, so that is
    its exact gradient, which the plain form only reaches after adding and subtracting 1e12-sized terms."""
    index, in_range = relations._neighbours(a.shape[-2], window, a.device)
    keep = in_range[..., None].to(a.dtype)
    unit = F.normalize(a, dim=-1)
    distances = 1 - (unit[..., :, None, :] * unit[..., index, :] * keep).sum(-1)
    raw = (a[..., :, None, :] - a[..., index, :]) * keep
    diffs = F.normalize(raw, dim=-1)
    if exact_zero:
        diffs = torch.where(raw.detach().norm(dim=-1, keepdim=True) == 0, 0, diffs)
    return distances, torch.einsum("...nwh,...nzh->...nwz", diffs, diffs)


def full(relations):
    """(distances, angles (…, N, K, K)) from `_relations`' distances, angle diagonal and upper triangle."""
    distances, diagonal, upper = relations
    k = diagonal.shape[-1]
    first, second = torch.triu_indices(k, k, 1)
    angles = diagonal.new_zeros(*diagonal.shape, k)
    angles[..., first, second] = upper
    return distances, angles + angles.transpose(-1, -2) + torch.diag_embed(diagonal)


def _grad(fn, x0: torch.Tensor, weights, dtype=torch.float64) -> torch.Tensor:
    x = x0.detach().to(dtype).requires_grad_(True)
    sum((out.double() * w).sum() for out, w in zip(fn(x), weights, strict=True)).backward()
    return x.grad.double()


CASES = [(30, 4), (6, 10), (12, 2), (5, 4), (3, 1)]  # windowed, all pairs (N ≤ W), N = W + 1, tiny


@pytest.mark.parametrize(("n", "window"), CASES)
def test_relations_equal_the_direct_ones(n: int, window: int) -> None:
    torch.manual_seed(0)
    a = torch.randn(2, 3, n, 8, dtype=torch.float64)
    a[0, 1, 1] = a[0, 1, 2]  # a duplicate vector: its difference is exactly zero, its angles 0
    a[1, 2, 0] = 0  # a zero vector (a cached pad)
    for got, want in zip(full(relations._relations(a, window)), direct_relations(a, window), strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "window"), CASES)
def test_gradients_equal_the_direct_ones(n: int, window: int) -> None:
    torch.manual_seed(1)
    x0 = torch.randn(2, 3, n, 8, dtype=torch.float64)
    x0[0, 1, 1] = x0[0, 1, 2]
    weights = [torch.randn_like(w) for w in direct_relations(x0, window)]
    want = _grad(lambda x: direct_relations(x, window, exact_zero=True), x0, weights)
    torch.testing.assert_close(_grad(lambda x: full(relations._relations(x, window)), x0, weights), want,
                               rtol=0, atol=1e-9)
    # without duplicates the plain direct form differs only by the rounding of its ±1e12 self-pair terms
    # (at a duplicate its gradient is 1e12-sized: F.normalize's 1/eps, where this one is 0)
    x1 = torch.randn_like(x0)
    plain = _grad(lambda x: direct_relations(x, window), x1, weights)
    assert (plain - _grad(lambda x: full(relations._relations(x, window)), x1, weights)).abs().max() < 1e-1


def test_fp32_gradient_is_the_exact_one() -> None:
    """In fp32 the gradient stays within fp32 rounding of the float64 one (the direct form's is off by as
    much as the gradient itself: the ±1e12 self-pair terms)."""
    torch.manual_seed(2)
    x0 = torch.randn(2, 3, 40, 16, dtype=torch.float64)
    weights = [torch.randn_like(w) for w in direct_relations(x0, 10)]
    exact = _grad(lambda x: direct_relations(x, 10, exact_zero=True), x0, weights)
    fast32 = _grad(lambda x: full(relations._relations(x, 10)), x0, weights, torch.float32)
    assert (fast32 - exact).abs().max() < 1e-4 * exact.abs().max()
    direct32 = _grad(lambda x: direct_relations(x, 10), x0, weights, torch.float32)
    assert (direct32 - exact).abs().max() > 1e-2 * exact.abs().max()


def test_ckd_loss_in_fp32_matches_the_direct_formula_in_float64() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(4, 3, 40, 16), torch.randn(4, 3, 40, 24)
    (ds, as_), (dt, at) = direct_relations(s.double(), 10), direct_relations(t.double(), 10)
    want = F.mse_loss(ds, dt) + F.mse_loss(as_, at)
    counts = relations._relation_counts(s.shape[:-1], 10, None)
    target = relations._target(t, 10, None)
    assert relations._relation_loss(s, target, 10, None, counts).item() == pytest.approx(want.item(), rel=1e-5)


def test_teacher_relations_keep_no_graph() -> None:
    """The teacher's side is a target: computed without autograd, so the loss's gradient is the student's only."""
    torch.manual_seed(4)
    s = torch.randn(2, 3, 12, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 12, 8, dtype=torch.float64, requires_grad=True)
    losses.ckd_relations(s, t, 2, 1.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize("masked", [False, True])
def test_chunks_give_the_whole_batch_value_and_gradient(monkeypatch, masked: bool) -> None:
    """The loss is taken chunk by chunk of the batch, each chunk's gradient at once: one chunk per example
    gives the value and the gradient of one chunk for the whole batch (the counts are the whole batch's)."""
    torch.manual_seed(5)
    s0, t = torch.randn(5, 3, 30, 8, dtype=torch.float64), torch.randn(5, 3, 30, 12, dtype=torch.float64)
    mask = (torch.arange(30) < torch.tensor([30, 22, 9, 30, 1])[:, None]).long() if masked else None
    results = []
    for elements in (1, 10**9):  # one example per chunk; the whole batch in one
        monkeypatch.setattr(relations, "CHUNK_ELEMENTS", elements)
        s = s0.clone().requires_grad_(True)
        loss = losses.ckd_relations(s, t, 4, 3.0, mask)
        (2.5 * loss).backward()
        results.append((loss.detach(), s.grad))
    (one, g_one), (whole, g_whole) = results
    torch.testing.assert_close(one, whole, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_one, g_whole, rtol=1e-10, atol=1e-14)
    assert g_one.abs().sum() > 0


def test_no_gradient_is_taken_without_autograd(monkeypatch) -> None:
    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    torch.manual_seed(6)
    s, t = torch.randn(3, 2, 14, 8), torch.randn(3, 2, 14, 8)
    with torch.no_grad():
        value = losses.ckd_relations(s.requires_grad_(True), t, 3, 1.0)
    assert not value.requires_grad and value.item() > 0 and not calls
    losses.ckd_relations(s, t, 3, 1.0).backward()
    assert calls and s.grad.abs().sum() > 0


def test_block_products_and_gram_backward_are_the_numerical_gradient() -> None:
    torch.manual_seed(7)
    y = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(relations._BlockProducts.apply, (y,))
    assert torch.autograd.gradcheck(relations._Gram.apply, (y,))


@pytest.mark.parametrize("n_student", [30, 7])
def test_cached_teacher_relations_give_the_loss_of_the_states(n_student: int) -> None:
    """A teacher cache's relations, computed once over each example's own real tokens (and a teacher longer
    than the student: positions are cut to the common ones), give the loss and gradient of the states; also
    when the batch is shorter than the window (all pairs from the states, the windowed layout from the cache)."""
    torch.manual_seed(9)
    b, layers, window = 4, 3, 10
    lengths_t = torch.tensor([34, 20, 7, 1])
    t = torch.randn(b, layers, 34, 12, dtype=torch.float64)
    t[:, :, 5] = t[:, :, 4]  # a duplicate vector: a zero difference on both paths
    mask_t = (torch.arange(34) < lengths_t[:, None]).long()
    mask_s = (torch.arange(n_student) < torch.tensor([n_student, 15, 7, 1])[:, None]).long()
    n = n_student
    mask = mask_s & mask_t[:, :n]
    rows = torch.cat([relations.teacher_relations(t[i:i + 1, :, :int(m)], window, mask_t[i:i + 1, :int(m)])
                      .squeeze(0) for i, m in enumerate(lengths_t)])  # one example at a time, as a cache stores them
    cached = torch.zeros(b, 34, rows.shape[-1])
    for i, start in enumerate(torch.cat([torch.zeros(1, dtype=torch.long), lengths_t.cumsum(0)[:-1]])):
        cached[i, :lengths_t[i]] = rows[start:start + lengths_t[i]]
    results = []
    for teacher, extra in ((t[:, :, :n], None), (None, cached)):
        s = torch.randn(b, layers, n, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        s.requires_grad_(True)
        loss = losses.ckd_relations(s, teacher, window, 2.0, mask, cached=extra)
        loss.backward()
        results.append((loss.detach(), s.grad))
    (live, g_live), (from_cache, g_cache) = results
    assert live > 0
    torch.testing.assert_close(from_cache, live, rtol=1e-6, atol=0)
    torch.testing.assert_close(g_cache, g_live, rtol=1e-5, atol=1e-9)


def test_cached_teacher_relations_need_a_mask() -> None:
    with pytest.raises(ValueError, match="mask"):
        losses.ckd_relations(torch.randn(1, 2, 12, 4), None, 3, 1.0, cached=torch.zeros(1, 12, 5))
