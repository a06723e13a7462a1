"""The papers' terms behind options (issue 14): DKD's warm-up (and the loop's epoch hook, resume included),
MiniLM's per-example reduction, TinyBERT's attention loss; each against a direct computation."""

from pathlib import Path

import pytest
import torch
from torch import Tensor

from codekd import losses
from codekd.methods import get_method
from codekd.methods.dkd import DecoupledKD
from codekd.models import custom_spec
from codekd.models.adapters import ModelShape, Outputs
from codekd.pipeline import distill
from codekd.train import TrainConfig

torch.set_num_threads(1)
STUDENT = ModelShape("transformer", 2, 8, 8)
GRU = ModelShape("gru", 2, 4, 8)
TEACHER = ModelShape("transformer", 4, 12, 12)
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])


def _attention(heads: int, mask: Tensor) -> Tensor:
    scores = torch.randn(len(mask), heads, mask.shape[1], mask.shape[1])
    return scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1)


def _outputs(shape: ModelShape, heads: int) -> Outputs:
    return Outputs(logits=torch.randn(3, 4), mask=MASK,
                   hidden_states=tuple(torch.randn(3, 5, shape.feature_size) for _ in range(shape.num_layers + 1)),
                   attentions=tuple(_attention(heads, MASK) for _ in range(shape.num_layers)))


LABELS = torch.tensor([0, 3, 1])


# ----------------------------------------------------------------------------------------- DKD warm-up


def test_dkd_warmup_is_mdistillers_linear_ramp() -> None:
    torch.manual_seed(0)
    s, t = _outputs(STUDENT, 2), _outputs(TEACHER, 2)
    plain = get_method("dkd")(STUDENT, TEACHER)(s, t, LABELS)["dkd"]
    ramped = get_method("dkd")(STUDENT, TEACHER, warmup_epochs=4)
    seen = []
    for epoch in (1, 2, 4, 7):
        ramped.set_epoch(epoch)
        seen.append(ramped(s, t, LABELS)["dkd"].item())
    assert seen == pytest.approx([plain.item() * f for f in (0.25, 0.5, 1.0, 1.0)], rel=1e-6)


def test_set_epoch_reaches_combo_parts() -> None:
    combo = get_method("combo")(STUDENT, TEACHER, parts=[{"method": "dkd", "warmup_epochs": 2}, {"method": "kd"}])
    combo.set_epoch(3)
    assert [part.epoch for part in combo.parts] == [3, 3]


def test_the_loop_tells_the_method_its_epoch_also_after_resume(small_exception, small_vocab, tiny_teacher,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               killed_after_first_checkpoint) -> None:
    epochs: list[int] = []
    real_forward = DecoupledKD.forward
    monkeypatch.setattr(DecoupledKD, "forward", lambda self, *a: epochs.append(self.epoch) or real_forward(self, *a))
    args = ("exception", small_exception, custom_spec("gru", 400, 16, 1), small_vocab, "dkd", tmp_path / "r",
            TrainConfig(epochs=2, lr=1e-3, batch_size=32, seed=1))
    with killed_after_first_checkpoint():
        distill(*args, teacher=tiny_teacher, max_length=32, hparams={"warmup_epochs": 2.0})
    assert epochs == [1, 1, 1]  # 96 functions, batch 32
    epochs.clear()
    distill(*args, teacher=tiny_teacher, max_length=32, hparams={"warmup_epochs": 2.0}, resume=True)
    assert epochs == [2, 2, 2]


# ------------------------------------------------------------------------------------ MiniLM reduction


def test_minilm_example_reduction_is_the_mean_of_per_example_means() -> None:
    torch.manual_seed(0)
    s, t = _attention(2, MASK), _attention(2, MASK)
    per_row = (t * (t.clamp_min(1e-30).log() - s.log())).nan_to_num().sum(-1).mean(1)  # (B, N), KL per query
    by_hand = sum(per_row[b, : int(MASK[b].sum())].mean() for b in range(3)) / 3
    assert losses.attention_relation(s, t, MASK, "example").item() == pytest.approx(by_hand.item(), rel=1e-6)
    token = per_row[MASK.bool()].mean()
    assert losses.attention_relation(s, t, MASK).item() == pytest.approx(token.item(), rel=1e-6)
    assert abs(by_hand - token) > 1e-3  # the two reductions really differ with padding


def test_minilm_method_reduction_option() -> None:
    torch.manual_seed(0)
    s, t = _outputs(STUDENT, 2), _outputs(ModelShape("transformer", 4, 12, 12), 2)
    method = get_method("minilm")(STUDENT, TEACHER, reduction="example")
    expected = losses.attention_relation(s.attentions[-1], t.attentions[-1], MASK, "example")
    torch.testing.assert_close(method(s, t, LABELS)["attention"], expected)
    with pytest.raises(ValueError, match="reduction='batch': expected token or example"):
        get_method("minilm")(STUDENT, TEACHER, reduction="batch")


# ------------------------------------------------------------------------------- TinyBERT attention term


def test_tinybert_attention_term_against_direct_mse() -> None:
    torch.manual_seed(0)
    s, t = _outputs(STUDENT, 2), _outputs(TEACHER, 2)
    method = get_method("tinybert")(STUDENT, TEACHER, attention_weight=2.0)
    assert "attentions" in method.teacher_needs and "attentions" in method.student_needs
    out = method(s, t, LABELS)
    pairs = [(s.attentions[0], t.attentions[1]), (s.attentions[1], t.attentions[3])]  # layers 1↔2, 2↔4
    terms, count = 0.0, 0
    for a_s, a_t in pairs:
        for b in range(3):
            n = int(MASK[b].sum())
            terms += ((a_s[b, :, :n, :n] - a_t[b, :, :n, :n]) ** 2).sum().item()
            count += 2 * n * n
    assert out["attention"].item() == pytest.approx(terms / count, rel=1e-6)
    without = get_method("tinybert")(STUDENT, TEACHER)
    without.projection.load_state_dict(method.projection.state_dict())
    assert out["loss"].item() == pytest.approx(without(s, t, LABELS)["loss"].item() + 2 * terms / count, rel=1e-6)
    assert "attentions" not in without.teacher_needs


def test_tinybert_attention_term_needs_a_transformer_student() -> None:
    with pytest.raises(ValueError, match="needs a transformer student"):
        get_method("tinybert")(GRU, TEACHER, attention_weight=1.0)
