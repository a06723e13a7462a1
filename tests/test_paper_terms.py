"""The papers' terms behind options (issue 14): DKD's warm-up (and the loop's epoch hook, resume included),
MiniLM's per-example reduction, TinyBERT's attention loss; each against a direct computation."""

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from codekd import losses
from codekd.methods import get_method
from codekd.methods.dkd import DecoupledKD
from codekd.models import build_student, custom_spec
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


# ------------------------------------------------------------------------------- MiniLM value relation


def _value_relation_by_hand(vs: Tensor, vt: Tensor, mask: Tensor, reduction: str) -> float:
    """MiniLM eq. 7-8 written out with Python floats: per example b, head a and real query i, the relation
    rows VR[i, j] = exp(v_i·v_j/√d_k) / Σ_real j' exp(v_i·v_j'/√d_k) over the real keys j of both sides,
    KL(VR_t ‖ VR_s) = Σ_j VR_t log(VR_t / VR_s), averaged over heads, then over queries (all real ones, or
    per example first)."""
    def rows(v: Tensor, b: int, a: int, real: list[int]) -> list[list[float]]:
        d = v.shape[-1]
        out = []
        for i in real:
            scores = [sum(v[b, a, i, k].item() * v[b, a, j, k].item() for k in range(d)) / math.sqrt(d) for j in real]
            top = max(scores)
            exps = [math.exp(x - top) for x in scores]
            out.append([e / sum(exps) for e in exps])
        return out

    per_example = []
    for b in range(len(mask)):
        real = [j for j in range(mask.shape[1]) if mask[b, j]]
        kl = [0.0] * len(real)
        for a in range(vs.shape[1]):
            rs, rt = rows(vs, b, a, real), rows(vt, b, a, real)
            for q in range(len(real)):
                kl[q] += sum(t * math.log(t / s) for s, t in zip(rs[q], rt[q], strict=True)) / vs.shape[1]
        per_example.append(kl)
    if reduction == "token":
        flat = [x for kl in per_example for x in kl]
        return sum(flat) / len(flat)
    return sum(sum(kl) / len(kl) for kl in per_example) / len(per_example)


@pytest.mark.parametrize("reduction", ["token", "example"])
def test_value_relation_against_the_formula_by_hand(reduction: str) -> None:
    """Student head size 3, teacher 5 (relations are N × N whatever d_k); pads hold large values that would
    change everything if they entered a relation."""
    torch.manual_seed(0)
    vs, vt = torch.randn(3, 2, 5, 3, dtype=torch.float64), 2 * torch.randn(3, 2, 5, 5, dtype=torch.float64)
    pads = ~MASK.bool()[:, None, :, None]
    vs, vt = vs.masked_fill(pads, 50.0), vt.masked_fill(pads, -50.0)
    got = losses.value_relation(vs, vt, MASK, reduction).item()
    assert got == pytest.approx(_value_relation_by_hand(vs, vt, MASK, reduction), rel=1e-9)
    assert losses.value_relation(vs, vs.clone(), MASK, reduction).item() == pytest.approx(0.0, abs=1e-12)


def test_value_relation_in_fp16_and_under_bf16_autocast_equals_fp32() -> None:
    torch.manual_seed(0)
    vs, vt = 3 * torch.randn(2, 4, 16, 8), 3 * torch.randn(2, 4, 16, 8)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    exact = losses.value_relation(vs, vt, mask)
    got = losses.value_relation(vs.half(), vt.half(), mask)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(exact.item(), rel=5e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert losses.value_relation(vs, vt, mask).item() == pytest.approx(exact.item(), rel=1e-6)


def test_value_relation_of_an_all_padding_batch_is_zero_with_zero_gradient() -> None:
    vs = torch.randn(2, 2, 6, 4, requires_grad=True)
    loss = losses.value_relation(vs, torch.randn(2, 2, 6, 4), torch.zeros(2, 6, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(vs.grad).all() and (vs.grad == 0).all()


def test_minilm_value_relation_option() -> None:
    torch.manual_seed(0)
    s, t = _outputs(STUDENT, 2), _outputs(TEACHER, 2)
    s.values, t.values = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 6)
    plain = get_method("minilm")(STUDENT, TEACHER)
    assert "values" not in plain.teacher_needs and "values" not in plain.student_needs  # default: as before
    method = get_method("minilm")(STUDENT, TEACHER, value_relation=0.5, reduction="example")
    assert "values" in method.teacher_needs and "values" in method.student_needs
    out = method(s, t, LABELS)
    assert out["value"].item() == pytest.approx(_value_relation_by_hand(s.values, t.values, MASK, "example"),
                                                rel=1e-5)
    base = get_method("minilm")(STUDENT, TEACHER, reduction="example")(s, t, LABELS)["loss"]
    assert out["loss"].item() == pytest.approx(base.item() + 0.5 * out["value"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="value_relation uses the last layers' value vectors"):
        get_method("minilm")(STUDENT, TEACHER, value_relation=1.0, teacher_layer=2)


def test_minilm_value_relation_distils_end_to_end_cached_and_live(small_exception, small_vocab, tiny_teacher,
                                                                   tmp_path: Path) -> None:
    """`distill --method minilm --value-relation` through the teacher cache (which then stores value vectors)
    and with the teacher live: the same training, value term included."""
    from codekd.pipeline import CacheOptions

    student = custom_spec("roberta", 400, 16, 2, 2, 32)
    args = ("exception", small_exception, student, small_vocab, "minilm")
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=32, seed=1, logging_steps=1)
    runs = {}
    for name, cache in (("cached", CacheOptions(root=tmp_path / "cache", dtype="fp32")),
                        ("live", CacheOptions(enabled=False))):
        runs[name] = distill(*args, tmp_path / name, cfg, teacher=tiny_teacher, max_length=32, cache=cache,
                             hparams={"value_relation": 50.0})
    assert any("values" in p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    cached, live = (runs[n]["history"][0]["train_loss"] for n in ("cached", "live"))
    assert math.isfinite(cached) and cached == pytest.approx(live, rel=1e-4)
    without = distill(*args, tmp_path / "without", cfg, teacher=tiny_teacher, max_length=32,
                      cache=CacheOptions(root=tmp_path / "cache", dtype="fp32"))["history"][0]["train_loss"]
    assert without != pytest.approx(cached, rel=1e-3)  # the value term is in the loss


def test_adapters_expose_the_last_layers_value_vectors() -> None:
    """`run(..., ["values"])` gives the last layer's value projection of its input (the previous layer's hidden
    states), split into heads; gradients reach the student's value projection through them."""
    from codekd.models.adapters import run

    torch.manual_seed(0)
    model = build_student(custom_spec("roberta", 60, 12, 2, 3, 24), num_labels=3, max_positions=16)
    model.eval()
    ids = torch.randint(5, 60, (2, 7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out = run(model, inputs, ["values", "hidden_states"])
    value = model.roberta.encoder.layer[-1].attention.self.value
    expected = value(out.hidden_states[-2]).view(2, 7, 3, 4).transpose(1, 2)
    torch.testing.assert_close(out.values, expected)
    out.values.sum().backward()
    assert value.weight.grad is not None and value.weight.grad.abs().sum() > 0
    gru = build_student(custom_spec("gru", 60, 8, 1), num_labels=3, max_positions=16)
    with pytest.raises(ValueError, match="no value vectors"):
        run(gru, inputs, ["values"])


def test_method_needs_follow_the_options() -> None:
    """`Method.needs(options)` is what an instance built with those options reads: the cache command and the
    claims' method families rely on it without building models."""
    for name, hparams in (("minilm", {}), ("minilm", {"value_relation": 0.5}), ("kd", {}), ("ckd", {}),
                          ("combo", {"parts": [{"method": "kd"}, {"method": "minilm", "value_relation": 1.0}]})):
        built = get_method(name)(STUDENT, TEACHER, **hparams)
        assert get_method(name).needs(hparams) == (tuple(built.teacher_needs), tuple(built.student_needs))
    assert "values" in get_method("minilm").needs({"value_relation": "1"})[0]  # a command-line string
    assert get_method("ft").needs() == ((), ("logits",))


def test_cache_command_takes_the_methods_options(small_exception, tiny_teacher, tmp_path, monkeypatch, capsys):
    """`codekd cache --method minilm --value-relation 1` caches the value vectors that distillation reads."""
    import sys

    from codekd.cli import main

    monkeypatch.setattr(sys, "argv", ["codekd", "cache", "--teacher", str(tiny_teacher), "--task", "exception",
                                      "--data", str(small_exception), "--method", "minilm", "--cache-dir",
                                      str(tmp_path), "--value-relation", "1"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    assert "values" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["codekd", "cache", "--teacher", str(tiny_teacher), "--task", "exception",
                                      "--data", str(small_exception), "--method", "kd", "--cache-dir",
                                      str(tmp_path / "other"), "--tempreture", "3"])  # a misspelt option
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2 and "unknown option(s) ['tempreture']" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
