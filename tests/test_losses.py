"""Each loss in codekd.losses against an independent computation: hand-worked numbers or Python loops."""

import math

import pytest
import torch

from codekd import losses

torch.set_num_threads(1)

F64 = torch.float64


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _dot(x: list[float], y: list[float]) -> float:
    return sum(a * b for a, b in zip(x, y, strict=True))


def _unit(x: list[float]) -> list[float]:
    norm = math.sqrt(_dot(x, x))
    return [v / norm for v in x] if norm > 0 else [0.0] * len(x)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


# ---------------------------------------------------------------- vanilla KD / FT


def test_soft_cross_entropy_by_hand() -> None:
    z_s, z_t, temp = [1.0, 2.0], [0.5, -0.5], 2.0
    e_t = [math.exp(0.25), math.exp(-0.25)]
    p_t = [e / sum(e_t) for e in e_t]
    log_norm = math.log(math.exp(0.5) + math.exp(1.0))
    expected = -(p_t[0] * (0.5 - log_norm) + p_t[1] * (1.0 - log_norm))
    got = losses.soft_cross_entropy(torch.tensor([z_s], dtype=F64), torch.tensor([z_t], dtype=F64), temp)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_soft_cross_entropy_is_batch_mean() -> None:
    s, t = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    rows = [losses.soft_cross_entropy(s[i : i + 1], t[i : i + 1], 3.0) for i in range(3)]
    assert losses.soft_cross_entropy(s, t, 3.0).item() == pytest.approx(sum(rows).item() / 3, rel=1e-12)


def test_hard_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]], dtype=F64)
    expected = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    assert losses.hard_cross_entropy(logits, torch.tensor([1, 0])).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_kd_loss_mixing() -> None:
    s, t, y = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64), torch.tensor([0, 2, 1, 1])
    soft = losses.soft_cross_entropy(s, t, 5.0).item()
    hard = losses.hard_cross_entropy(s, y).item()
    assert losses.kd_loss(s, t, None, 5.0).item() == pytest.approx(soft, rel=1e-12)
    assert losses.kd_loss(s, t, None, 5.0, t_squared=True).item() == pytest.approx(25 * soft, rel=1e-12)
    mixed = losses.kd_loss(s, t, y, 5.0, alpha=0.3, t_squared=True).item()
    assert mixed == pytest.approx(0.3 * 25 * soft + 0.7 * hard, rel=1e-12)
    assert losses.kd_loss(s, t, y, 5.0, alpha=0.0).item() == pytest.approx(hard, rel=1e-12)


# ---------------------------------------------------------------- DIST


def _pearson_rows(x: list[list[float]], y: list[list[float]]) -> float:
    total = 0.0
    for a, b in zip(x, y, strict=True):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        ca, cb = [v - ma for v in a], [v - mb for v in b]
        total += _dot(ca, cb) / math.sqrt(_dot(ca, ca) * _dot(cb, cb))
    return total / len(x)


def test_dist_against_pearson_loop() -> None:
    torch.manual_seed(0)
    s, t, temp = torch.randn(5, 4, dtype=F64), torch.randn(5, 4, dtype=F64), 2.0
    p_s = [_softmax([v / temp for v in row]) for row in s.tolist()]
    p_t = [_softmax([v / temp for v in row]) for row in t.tolist()]
    inter = 1 - _pearson_rows(p_s, p_t)
    intra = 1 - _pearson_rows(
        [list(c) for c in zip(*p_s, strict=True)], [list(c) for c in zip(*p_t, strict=True)]
    )
    got = losses.dist(s, t, temp, beta=2.0, gamma=0.5).item()
    assert got == pytest.approx(2.0 * inter + 0.5 * intra, rel=1e-10)


def test_dist_binary_inter_class_term_is_constant() -> None:
    torch.manual_seed(1)
    s = torch.randn(6, 2, dtype=F64, requires_grad=True)
    t = torch.randn(6, 2, dtype=F64)
    p_s, p_t = torch.softmax(s / 3.0, -1), torch.softmax(t / 3.0, -1)
    same_sign = ((p_s[:, 0] - p_s[:, 1]) * (p_t[:, 0] - p_t[:, 1]) > 0).to(F64)
    inter = losses.dist(s, t, 3.0, beta=1.0, gamma=0.0)
    assert inter.item() == pytest.approx(1 - (2 * same_sign - 1).mean().item(), abs=1e-12)
    inter.backward()
    assert s.grad.abs().max().item() < 1e-12


def test_dist_zero_for_identical_logits() -> None:
    z = torch.randn(4, 3, dtype=F64)
    assert losses.dist(z, z.clone(), 10.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- PKD


def test_pkd_features_against_loop() -> None:
    torch.manual_seed(2)
    s, t = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 3, 4, dtype=F64)
    total = 0.0
    for b in range(2):
        for layer in range(3):
            us, ut = _unit(s[b, layer].tolist()), _unit(t[b, layer].tolist())
            total += sum((x - y) ** 2 for x, y in zip(us, ut, strict=True))
    assert losses.pkd_features(s, t).item() == pytest.approx(total / (2 * 3 * 4), rel=1e-12)
    assert losses.pkd_features(s, 3.0 * s).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- CKD


def _loop_terms(seq: list[list[float]], window: int, valid: list[bool] | None) -> tuple[list, list]:
    """Distances and angles of one sequence of vectors, each with a keep flag, in a fixed order.

    Windowed when window < len(seq): neighbours n-W..n+W, an out-of-range one being a zero vector (cosine 0)
    whose difference vector is also zeroed (the study masks the difference, so the angle is 0).
    """
    n_pos = len(seq)
    zero = [0.0] * len(seq[0])
    dists, angles = [], []
    for n in range(n_pos):
        neighbours = range(n - window, n + window + 1) if window < n_pos else range(n_pos)
        slots = []
        for m in neighbours:
            in_range = 0 <= m < n_pos
            other = seq[m] if in_range else zero
            diff = [a - b for a, b in zip(seq[n], other, strict=True)] if in_range else zero
            keep = in_range and (valid is None or (valid[n] and valid[m]))
            slots.append((_unit(other), _unit(diff), keep))
        anchor = _unit(seq[n])
        for other, _, keep in slots:
            dists.append((1 - _dot(anchor, other), keep or valid is None))
        for _, d1, k1 in slots:
            for _, d2, k2 in slots:
                angles.append((_dot(d1, d2), (k1 and k2) or valid is None))
    return dists, angles


def _loop_mse(pairs: list[tuple[list, list]]) -> float:
    """dist MSE + angle MSE over kept terms of (student, teacher) term lists."""
    total = 0.0
    for kind in (0, 1):
        squares = [
            (a[0] - b[0]) ** 2
            for s_terms, t_terms in pairs
            for a, b in zip(s_terms[kind], t_terms[kind], strict=True)
            if a[1]
        ]
        total += sum(squares) / len(squares)
    return total


def _loop_ckd(
    s: torch.Tensor, t: torch.Tensor, window: int, gamma: float, mask: list[list[int]] | None
) -> float:
    n_batch, n_layers, n_tok, _ = s.shape
    s_l, t_l = s.tolist(), t.tolist()
    word, layer = [], []
    for b in range(n_batch):
        valid = None if mask is None else [bool(v) for v in mask[b]]
        for li in range(n_layers):
            word.append((_loop_terms(s_l[b][li], window, valid), _loop_terms(t_l[b][li], window, valid)))
        for n in range(n_tok):
            token_valid = None if mask is None else [bool(mask[b][n])] * n_layers
            s_seq = [s_l[b][li][n] for li in range(n_layers)]
            t_seq = [t_l[b][li][n] for li in range(n_layers)]
            layer.append((_loop_terms(s_seq, window, token_valid), _loop_terms(t_seq, window, token_valid)))
    return _loop_mse(word) + gamma * _loop_mse(layer)


@pytest.mark.parametrize(("n_layers", "n_tok", "window"), [(3, 7, 2), (2, 3, 4), (4, 5, 3)])
def test_ckd_relations_matches_loop(n_layers: int, n_tok: int, window: int) -> None:
    torch.manual_seed(3)
    s = torch.randn(2, n_layers, n_tok, 3, dtype=F64)
    t = torch.randn(2, n_layers, n_tok, 5, dtype=F64)  # different widths: relations are cosines
    got = losses.ckd_relations(s, t, window, gamma=0.7).item()
    assert got == pytest.approx(_loop_ckd(s, t, window, 0.7, None), rel=1e-10)


@pytest.mark.parametrize(("n_layers", "n_tok", "window"), [(3, 7, 2), (2, 3, 4), (4, 5, 3)])
def test_ckd_relations_masked_matches_loop(n_layers: int, n_tok: int, window: int) -> None:
    torch.manual_seed(4)
    s = torch.randn(2, n_layers, n_tok, 3, dtype=F64)
    t = torch.randn(2, n_layers, n_tok, 4, dtype=F64)
    mask = [[1] * n_tok, [1] * (n_tok - 2) + [0, 0]]
    got = losses.ckd_relations(s, t, window, gamma=1.5, mask=torch.tensor(mask)).item()
    assert got == pytest.approx(_loop_ckd(s, t, window, 1.5, mask), rel=1e-10)


def test_ckd_masked_ignores_pad_content() -> None:
    torch.manual_seed(5)
    s, t = torch.randn(2, 3, 7, 3, dtype=F64), torch.randn(2, 3, 7, 3, dtype=F64)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    s2, t2 = s.clone(), t.clone()
    s2[1, :, 4:] = torch.randn(3, 3, 3, dtype=F64)
    t2[1, :, 4:] = 0.0
    a = losses.ckd_relations(s, t, 2, 1.0, mask)
    assert a.item() == pytest.approx(losses.ckd_relations(s2, t2, 2, 1.0, mask).item(), rel=1e-12)


def test_ckd_all_ones_mask() -> None:
    torch.manual_seed(6)
    # All pairs (N <= W and L <= W): no out-of-range slot exists, so an all-ones mask changes nothing.
    s, t = torch.randn(2, 3, 4, 3, dtype=F64), torch.randn(2, 3, 4, 5, dtype=F64)
    ones = torch.ones(2, 4)
    assert losses.ckd_relations(s, t, 4, 1.0, ones).item() == pytest.approx(
        losses.ckd_relations(s, t, 4, 1.0).item(), rel=1e-12
    )
    # Windowed: the mask also drops out-of-range slots, which the study keeps (distance 1, angle 0).
    s, t = torch.randn(2, 3, 7, 3, dtype=F64), torch.randn(2, 3, 7, 5, dtype=F64)
    ones = torch.ones(2, 7)
    assert losses.ckd_relations(s, t, 2, 1.0, ones).item() != pytest.approx(
        losses.ckd_relations(s, t, 2, 1.0).item(), rel=1e-6
    )


def test_ckd_zero_when_equal_and_scale_invariant() -> None:
    a = torch.randn(2, 3, 7, 4, dtype=F64)
    assert losses.ckd_relations(a, a.clone(), 2, 10.0).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.ckd_relations(a, 2.5 * a, 2, 10.0).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- DKD


def _loop_dkd(
    s: torch.Tensor, t: torch.Tensor, y: list[int], temp: float, alpha: float, beta: float
) -> float:
    total = 0.0
    for zs, zt, label in zip(s.tolist(), t.tolist(), y, strict=True):
        p_s, p_t = _softmax([v / temp for v in zs]), _softmax([v / temp for v in zt])
        tckd = _kl([p_t[label], 1 - p_t[label]], [p_s[label], 1 - p_s[label]])
        rest_s = [p / (1 - p_s[label]) for k, p in enumerate(p_s) if k != label]
        rest_t = [p / (1 - p_t[label]) for k, p in enumerate(p_t) if k != label]
        total += temp**2 * (alpha * tckd + beta * _kl(rest_t, rest_s))
    return total / len(y)


def test_dkd_against_paper_formulas() -> None:
    torch.manual_seed(7)
    s, t, y = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64), [0, 3, 4, 3]
    got = losses.dkd(s, t, torch.tensor(y), 4.0, alpha=1.0, beta=8.0).item()
    assert got == pytest.approx(_loop_dkd(s, t, y, 4.0, 1.0, 8.0), rel=1e-10)
    got = losses.dkd(s, t, torch.tensor(y), 1.0, alpha=0.5, beta=2.0).item()
    assert got == pytest.approx(_loop_dkd(s, t, y, 1.0, 0.5, 2.0), rel=1e-10)


def test_dkd_binary_and_zero() -> None:
    s, t = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
    y = torch.tensor([0, 1, 1])
    assert losses.dkd(s, t, y, 2.0, 1.0, 8.0).item() == pytest.approx(
        _loop_dkd(s, t, [0, 1, 1], 2.0, 1.0, 0.0)
    )
    assert losses.dkd(s, s.clone(), y, 2.0).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- MiniLM attention / TinyBERT hidden


def _random_attn(*shape: int) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape, dtype=F64), dim=-1)


def _loop_attention(s: torch.Tensor, t: torch.Tensor, mask: list[list[int]] | None) -> float:
    s_l, t_l = s.tolist(), t.tolist()
    rows = []
    for b in range(s.shape[0]):
        for q in range(s.shape[2]):
            if mask is None or mask[b][q]:
                kls = [_kl(t_l[b][h][q], s_l[b][h][q]) for h in range(s.shape[1])]
                rows.append(sum(kls) / len(kls))
    return sum(rows) / len(rows)


def test_attention_relation_against_loop() -> None:
    torch.manual_seed(8)
    s, t = _random_attn(2, 3, 4, 4), _random_attn(2, 3, 4, 4)
    assert losses.attention_relation(s, t).item() == pytest.approx(_loop_attention(s, t, None), rel=1e-10)
    mask = [[1, 1, 1, 0], [1, 1, 0, 0]]
    got = losses.attention_relation(s, t, torch.tensor(mask)).item()
    assert got == pytest.approx(_loop_attention(s, t, mask), rel=1e-10)
    assert losses.attention_relation(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_relation_different_head_counts() -> None:
    torch.manual_seed(9)
    s, t = _random_attn(2, 2, 4, 4), _random_attn(2, 6, 4, 4)
    expected = _loop_attention(s.mean(1, keepdim=True), t.mean(1, keepdim=True), None)
    assert losses.attention_relation(s, t).item() == pytest.approx(expected, rel=1e-10)


def test_attention_relation_zero_probabilities_give_finite_gradient() -> None:
    logits = torch.randn(1, 1, 3, 3, dtype=F64)
    logits[..., 2] = -torch.inf  # a masked pad key: zero probability on both sides
    s_logits = logits.clone().requires_grad_()
    loss = losses.attention_relation(torch.softmax(s_logits, -1), torch.softmax(logits.flip(2), -1))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s_logits.grad).all()


def test_hidden_mse_masked_mean() -> None:
    torch.manual_seed(10)
    s, t = torch.randn(2, 3, 4, 5, dtype=F64), torch.randn(2, 3, 4, 5, dtype=F64)
    mask = [[1, 1, 1, 1], [1, 0, 0, 0]]
    squares = [
        (s[b, li, n, h] - t[b, li, n, h]).item() ** 2
        for b in range(2)
        for li in range(3)
        for n in range(4)
        for h in range(5)
        if mask[b][n]
    ]
    got = losses.hidden_mse(s, t, torch.tensor(mask)).item()
    assert got == pytest.approx(sum(squares) / len(squares), rel=1e-12)
    assert losses.hidden_mse(s, t, torch.ones(2, 4)).item() == pytest.approx(losses.hidden_mse(s, t).item())
    assert losses.hidden_mse(s, t).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-12)


# ---------------------------------------------------------------- gradients


def _calls(s: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every loss on student s and teacher t, both of shape (2, 3, 5, 4)."""
    y = torch.tensor([1, 3])
    logits_s, logits_t = s[:, 0, 0], t[:, 0, 0]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return {
        "soft_ce": losses.soft_cross_entropy(logits_s, logits_t, 2.0),
        "kd": losses.kd_loss(logits_s, logits_t, y, 2.0, alpha=0.5, t_squared=True),
        "dist": losses.dist(logits_s, logits_t, 2.0, 1.0, 1.0),
        "pkd": losses.pkd_features(s[:, :, 0], t[:, :, 0]),
        "ckd": losses.ckd_relations(s, t, 1, 1.0),
        "ckd_masked": losses.ckd_relations(s, t, 1, 1.0, mask),
        "dkd": losses.dkd(logits_s, logits_t, y, 2.0),
        "attention": losses.attention_relation(
            torch.softmax(s, -1)[:, :, :4], torch.softmax(t, -1)[:, :, :4]
        ),
        "hidden": losses.hidden_mse(s, t, mask),
    }


@pytest.mark.parametrize("name", list(_calls(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4))))
def test_gradient_reaches_student_only(name: str) -> None:
    torch.manual_seed(11)
    s = torch.randn(2, 3, 5, 4, dtype=F64, requires_grad=True)
    t = torch.randn(2, 3, 5, 4, dtype=F64, requires_grad=True)
    _calls(s, t.detach())[name].backward()
    assert s.grad is not None and s.grad.abs().sum().item() > 0
    assert torch.isfinite(s.grad).all()
    assert t.grad is None
