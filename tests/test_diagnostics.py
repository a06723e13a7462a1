"""Diagnostics (codekd.diagnostics): each one triggered, checked against an independent computation,
and recorded in metrics.json by a real run."""

import math

import pytest
import torch

from codekd.diagnostics import (
    collapse_diagnostic,
    majority_share,
    mean_entropy,
    method_diagnostics,
    soft_target_diagnostic,
)
from codekd.models import custom_spec
from codekd.pipeline import distill, read_metrics
from codekd.train import TrainConfig

TINY_ROBERTA = custom_spec("roberta", 400, 16, 2, 2, 32)


def test_method_diagnostics_binary_and_one_example():
    names = lambda *a: [d["name"] for d in method_diagnostics(*a)]  # noqa: E731
    assert names("dist", {"beta": 1.0, "gamma": 1.0}, 2, 16) == ["dist_binary"]
    assert names("dkd", {"beta": 8.0}, 2, 16) == ["dkd_binary"]
    assert names("dist", {"beta": 1.0, "gamma": 1.0}, 20, 1) == ["dist_one_example"]
    assert names("dist", {"beta": 1.0, "gamma": 1.0}, 2, 1) == ["dist_binary", "dist_one_example"]
    # nothing to say: a multi-class task, larger batches, or the constant term switched off
    assert names("dist", {"beta": 1.0, "gamma": 1.0}, 20, 16) == []
    assert names("dist", {"beta": 0.0, "gamma": 1.0}, 2, 16) == [] and names("dkd", {"beta": 0.0}, 2, 16) == []
    assert names("kd", {"temperature": 10.0}, 2, 1) == []


def test_the_constant_terms_are_constant():
    """What the binary and one-example records claim, on the losses themselves."""
    from codekd.losses import dist

    torch.manual_seed(0)  # float64: the zero gradients are exact up to 1e-12, where fp32 rounding reached 1e-6
    zt = torch.randn(8, 2, dtype=torch.float64)
    zs = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    inter = dist(zs, zt, temperature=4.0, beta=1.0, gamma=0.0)
    inter.backward()
    assert zs.grad.abs().max() < 1e-12  # binary: no gradient from the inter-class term
    zs1 = torch.randn(1, 20, dtype=torch.float64, requires_grad=True)
    intra = dist(zs1, torch.randn(1, 20, dtype=torch.float64), temperature=4.0, beta=0.0, gamma=1.0)
    intra.backward()
    assert zs1.grad.abs().max() < 1e-12  # one example: no gradient from the intra-class term
    both = torch.randn(8, 20, dtype=torch.float64, requires_grad=True)  # the check can fail: a real gradient
    dist(both, torch.randn(8, 20, dtype=torch.float64), temperature=4.0, beta=1.0, gamma=1.0).backward()
    assert both.grad.abs().max() > 1e-4


def test_soft_target_entropy_and_the_named_temperature():
    torch.manual_seed(0)
    logits = torch.randn(200, 20) * 3
    p = torch.softmax(logits.double() / 10, -1)
    assert mean_entropy(logits, 10.0) == pytest.approx(float(-(p * p.log()).sum(-1).mean()), rel=1e-9)
    d = soft_target_diagnostic(logits, 10.0)
    limit = 0.95 * math.log(20)
    assert d is not None and d["mean_entropy"] >= limit and d["limit"] == pytest.approx(limit)
    t = d["informative_below"]
    assert 0 < t < 10 and f"below T={t:.2f}" in d["message"]
    assert mean_entropy(logits, t * 0.99) < limit <= mean_entropy(logits, t * 1.01)
    assert soft_target_diagnostic(logits, t * 0.9) is None  # informative there: no record
    flat = soft_target_diagnostic(torch.zeros(5, 4), 2.0)  # uniform at every temperature
    assert flat is not None and flat["informative_below"] is None


def test_collapse_from_history():
    assert majority_share(torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3]])) == (1, pytest.approx(2 / 3))
    hist = [{"epoch": 1, "majority": {"class": 1, "share": 0.96}}, {"epoch": 2, "majority": {"class": 0, "share": 0.5}},
            {"epoch": 3, "majority": {"class": 1, "share": 1.0}}]
    d = collapse_diagnostic(hist, ["a", "b"])
    assert d["epochs"] == [1, 3] and d["label"] == "b" and "b for 96%" in d["message"]
    assert collapse_diagnostic(hist[1:2], ["a", "b"]) is None


def test_a_run_records_its_diagnostics(small_exception, small_vocab, tiny_teacher, tmp_path, capsys):
    """DIST at batch 1 from a barely trained teacher at T=10, with a learning rate of 1e-12 (the student
    stays at its initialisation, which predicts one class for nearly every input)."""
    out = tmp_path / "run"
    m = distill("exception", small_exception, TINY_ROBERTA, small_vocab, "dist", out,
                TrainConfig(epochs=1, lr=1e-12, batch_size=1), teacher=tiny_teacher, max_length=64)
    names = [d["name"] for d in m["diagnostics"]]
    assert names == ["dist_one_example", "soft_targets_uniform", "collapsed"]
    assert read_metrics(out)["diagnostics"] == m["diagnostics"]
    printed = "".join(capsys.readouterr())
    for name in names:
        assert f"warning: {name}:" in printed
    share = m["history"][0]["majority"]["share"]
    assert share >= 0.95 and m["diagnostics"][2]["share"] == share
