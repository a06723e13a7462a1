"""Numerical safety of the losses and methods (issue 14): fp16/bf16 inputs and autocast, empty masks, refused
options, DIST's eps, and the training loop's stop on a non-finite loss."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from codekd import losses
from codekd import train as train_mod
from codekd.methods import get_method
from codekd.models import custom_spec
from codekd.models.adapters import ModelShape, Outputs
from codekd.pipeline import distill
from codekd.train import NonFiniteLossError, TrainConfig, normalized_weights

torch.set_num_threads(1)
STUDENT = ModelShape("transformer", 2, 8, 8)
TEACHER = ModelShape("transformer", 4, 12, 12)


def _sharp_attention(*shape: int, scale: float = 4.0) -> Tensor:
    """Peaked rows: many probabilities are below fp16's smallest normal (6.1e-5)."""
    return torch.softmax(torch.randn(*shape) * scale, dim=-1)


# ---------------------------------------------------------------------------------- fp16 / bf16 inputs


def test_ckd_relations_in_fp16_is_finite_and_equals_fp32() -> None:
    torch.manual_seed(0)
    hs, ht = torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 16)
    exact = losses.ckd_relations(hs, ht, 10, 10.0)
    half = hs.half().requires_grad_()
    got = losses.ckd_relations(half, ht.half(), 10, 10.0)
    got.backward()
    assert got.dtype == torch.float32 and torch.isfinite(half.grad).all()
    # fp16 rounding of the inputs (~5e-4 relative) is all that separates the two
    assert got.item() == pytest.approx(exact.item(), rel=2e-3)


@pytest.mark.parametrize("scale", [4.0, 8.0])
def test_attention_relation_in_fp16_equals_fp32(scale: float) -> None:
    """Peaked maps whose small probabilities fp16 flushes to 0 or keeps as subnormals (before the fix:
    18 % and 50 % off)."""
    torch.manual_seed(0)
    s, t = _sharp_attention(4, 4, 32, 32, scale=scale), _sharp_attention(4, 4, 32, 32, scale=scale)
    exact = losses.attention_relation(s, t)
    got = losses.attention_relation(s.half(), t.half())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(exact.item(), rel=5e-3)
    assert losses.attention_relation(s.double(), t.double()).item() == pytest.approx(exact.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["soft_cross_entropy", "dist", "pkd_features", "ckd_relations", "dkd",
                                  "attention_relation", "hidden_mse"])
def test_losses_compute_in_fp32_under_bf16_autocast(name: str) -> None:
    """Under autocast the matrix products inside a loss would run in bf16 (3 significant digits)."""
    torch.manual_seed(0)
    logits_s, logits_t, labels = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    hs, ht = torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 8)
    attn_s, attn_t = _sharp_attention(2, 2, 6, 6), _sharp_attention(2, 2, 6, 6)
    call = {"soft_cross_entropy": lambda: losses.soft_cross_entropy(logits_s, logits_t, 2.0),
            "dist": lambda: losses.dist(logits_s, logits_t, 2.0, 1.0, 1.0),
            "pkd_features": lambda: losses.pkd_features(hs[:, :, 0], ht[:, :, 0]),
            "ckd_relations": lambda: losses.ckd_relations(hs, ht, 10, 10.0),
            "dkd": lambda: losses.dkd(logits_s, logits_t, labels, 4.0),
            "attention_relation": lambda: losses.attention_relation(attn_s, attn_t),
            "hidden_mse": lambda: losses.hidden_mse(hs, ht)}[name]
    exact = call()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = call()
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(exact.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------- empty masks


def _zero_loss_and_gradient(loss: Tensor, leaf: Tensor) -> None:
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(leaf.grad).all() and (leaf.grad == 0).all()


def test_empty_masks_give_zero_losses() -> None:
    torch.manual_seed(0)
    empty = torch.zeros(2, 12, dtype=torch.long)
    hs = torch.randn(2, 3, 12, 8, requires_grad=True)
    _zero_loss_and_gradient(losses.ckd_relations(hs, torch.randn(2, 3, 12, 16), 10, 10.0, empty), hs)
    hs = torch.randn(2, 3, 12, 8, requires_grad=True)
    _zero_loss_and_gradient(losses.hidden_mse(hs, torch.randn(2, 3, 12, 8), empty), hs)
    attn = _sharp_attention(2, 2, 12, 12).requires_grad_()
    _zero_loss_and_gradient(losses.attention_relation(attn, _sharp_attention(2, 2, 12, 12), empty), attn)


def _outputs(shape: ModelShape, n: int, mask: Tensor) -> Outputs:
    layers = shape.num_layers + 1
    return Outputs(
        logits=torch.randn(2, 3, requires_grad=True), mask=mask,
        hidden_states=tuple(torch.randn(2, n, shape.feature_size, requires_grad=True) for _ in range(layers)),
        attentions=tuple(_sharp_attention(2, 2, n, n).requires_grad_() for _ in range(layers - 1)),
        first_token=tuple(torch.randn(2, shape.feature_size) for _ in range(layers)))


@pytest.mark.parametrize("name", ["ckd", "tinybert", "minilm"])
def test_token_methods_on_an_all_padding_batch_are_finite(name: str) -> None:
    torch.manual_seed(0)
    student = _outputs(STUDENT, 6, torch.zeros(2, 6, dtype=torch.long))
    teacher = _outputs(TEACHER, 7, torch.ones(2, 7, dtype=torch.long))
    out = get_method(name)(STUDENT, TEACHER)(student, teacher, torch.tensor([0, 1]))
    out["loss"].backward()
    assert all(math.isfinite(v.item()) for v in out.values())
    assert all(torch.isfinite(h.grad).all() for h in student.hidden_states if h.grad is not None)


# ------------------------------------------------------------------------------------- refused options


@pytest.mark.parametrize(("name", "options", "needle"), [
    ("kd", {"temperature": 0.0}, "temperature=0.0 must be a finite number > 0"),
    ("kd", {"temperature": -2.0}, "temperature=-2.0"),
    ("kd", {"temperature": "nan"}, "temperature=nan"),
    ("kd", {"alpha": 1.5}, "alpha=1.5 must be a number in [0, 1]"),
    ("dist", {"temperature": "inf"}, "temperature=inf"),
    ("dist", {"beta": -1.0}, "beta=-1.0 must be a finite number ≥ 0"),
    ("dist", {"eps": 0.0}, "eps=0.0"),
    ("dist", {"eps": "-1e-4"}, "eps=-0.0001"),
    ("pkd", {"alpha": -0.1}, "alpha=-0.1"),
    ("ckd", {"gamma": "nan"}, "gamma=nan"),
    ("ckd", {"window": 0}, "window=0"),
    ("dkd", {"ce_weight": "-inf"}, "ce_weight=-inf"),
    ("minilm", {"temperature": 0}, "temperature=0.0"),
    ("tinybert", {"hidden_weight": "inf"}, "hidden_weight=inf"),
    ("combo", {"parts": [{"method": "kd", "weight": float("nan")}]}, "weight nan must be a finite number"),
    ("combo", {"parts": [{"method": "kd", "temperature": 0}]}, "combo part 0: method 'kd': option temperature"),
])
def test_bad_option_values_are_refused(name: str, options: dict, needle: str) -> None:
    with pytest.raises(ValueError, match="^.*" + needle.replace("[", r"\[").replace("]", r"\]")):
        get_method(name)(STUDENT, TEACHER, **options)


def test_teacher_weights_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        normalized_weights([float("nan"), 1.0], 2)
    with pytest.raises(ValueError, match="finite"):
        normalized_weights([float("inf"), 1.0], 2)


def test_cli_refuses_temperature_zero_in_one_line(small_exception, small_vocab, tiny_teacher, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "codekd", "distill", "--task", "exception", "--data", str(small_exception),
         "--student", "gru-1.5m", "--vocab", str(small_vocab), "--method", "dist", "--teacher", str(tiny_teacher),
         "--temperature", "0", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                             "PYTHONPATH": str(Path.cwd())})
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "temperature=0.0 must be a finite number > 0" in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# ------------------------------------------------------------------------------------------ DIST eps


def _dist_gradient(eps: float) -> float:
    student = torch.zeros(8, 4, requires_grad=True)  # all-equal logits: the centred student rows are 0
    losses.dist(student, torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), 10.0, 1.0, 1.0, eps).backward()
    return student.grad.abs().max().item()


def test_dist_eps_default_is_the_study_value_and_a_larger_eps_bounds_the_gradient() -> None:
    s, t = torch.randn(8, 4), torch.randn(8, 4)
    assert get_method("dist").defaults["eps"] == 1e-8
    assert losses.dist(s, t, 10.0, 1.0, 1.0).item() == losses.dist(s, t, 10.0, 1.0, 1.0, 1e-8).item()
    assert _dist_gradient(1e-8) > 1e4  # the hazard: 1/σ of a zero spread
    assert _dist_gradient(1e-4) < 1e-2 * _dist_gradient(1e-8)


# ----------------------------------------------------------------------------- non-finite loss in training


def test_training_stops_on_a_non_finite_loss_and_resumes(small_exception, small_vocab, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 2's third step gets a NaN loss: the run stops naming the step and the loss parts, writes
    failure.json, keeps epoch 1's checkpoint, and --resume (the cause gone) finishes the run."""
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=16, seed=3)
    args = ("exception", small_exception, custom_spec("roberta", 400, 16, 2, 2, 32), small_vocab, "ft",
            tmp_path / "run", cfg)
    real, calls = train_mod.Trainee.forward, []
    steps_per_epoch = 6  # 96 training functions in batches of 16

    def poisoned(self, *a, **k):
        out = real(self, *a, **k)
        calls.append(1)
        if self.training and len(calls) == steps_per_epoch + 3:
            out = {key: value * float("nan") for key, value in out.items()}
        return out

    with monkeypatch.context() as m:
        m.setattr(train_mod.Trainee, "forward", poisoned)
        with pytest.raises(NonFiniteLossError, match=r"epoch 2, optimizer step 9: loss=nan, ce=nan"):
            distill(*args, max_length=64)
    work = tmp_path / "run.partial"
    assert json.loads((work / "failure.json").read_text().replace("NaN", "null")) == {
        "error": "non-finite loss", "epoch": 2, "step": 9, "losses": {"loss": None, "ce": None}}
    assert torch.load(work / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed = distill(*args, max_length=64, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
