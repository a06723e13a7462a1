"""`--study-compat` (issue 14): a tiny CPU run equals, step for step, a plain loop written here after the study's
code (BackOnTruck/kd-empirical, STUDY.md §4-5): teacher in train mode where the study has it, every input padded
to max_length with the tokenizer, the BiGRU run over the pads and pooled at the last position, no clipping."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from codekd import train as train_mod
from codekd.compat import study_settings
from codekd.data import get_task, load_split
from codekd.models import build_student, custom_spec
from codekd.pipeline import distill
from codekd.train import TrainConfig

SEED, LR, BATCH, MAX_LEN = 5, 1e-3, 8, 32
STUDENTS = {"gru": custom_spec("gru", 400, 16, 2), "roberta": custom_spec("roberta", 400, 16, 2, 2, 32)}


def _p_corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The study's `p_corr` (dist/): mean row-wise Pearson correlation via `nn.CosineSimilarity(eps=1e-8)`."""
    return F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), dim=1, eps=1e-8).mean()


def _study_loss(method: str, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    if method == "dist":  # β = γ = 1, T = 10
        p_s, p_t = F.softmax(z_s / 10, dim=-1), F.softmax(z_t / 10, dim=-1)
        return (1 - _p_corr(p_s, p_t)) + (1 - _p_corr(p_s.T, p_t.T))
    # kd-ft: CrossEntropyLoss(z_s / T, softmax(z_t / T)), T = 10
    return -(F.softmax(z_t / 10, dim=-1) * F.log_softmax(z_s / 10, dim=-1)).sum(-1).mean()


def _study_logits(student, kind: str, ids: torch.Tensor) -> torch.Tensor:
    """The study's student forwards: RoBERTa with the padding mask; its BiGRU over every position, pooled as
    concat(out[:, -1, :H], out[:, 0, H:])."""
    if kind == "roberta":
        return student(input_ids=ids, attention_mask=ids.ne(1).long()).logits
    x = student.embeddings(ids)
    for gru in student.layers:
        x, _ = gru(x)
    h = student.config.hidden_size
    return student.classifier(torch.cat([x[:, -1, :h], x[:, 0, h:]], dim=-1))


def _study_run(method: str, kind: str, data: Path, vocab: Path, teacher_dir: Path) -> list[float]:
    """One epoch of the study's loop on `data`'s training split; the loss of every step."""
    task = get_task("exception")
    examples = load_split(task, data, "train")  # codes with whitespace collapsed, as the study's ' '.join(split())
    tok_s, tok_t = AutoTokenizer.from_pretrained(vocab), AutoTokenizer.from_pretrained(teacher_dir)
    codes = [ex.code for ex in examples]
    ids_s = tok_s(codes, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt").input_ids
    enc_t = tok_t(codes, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    labels = torch.tensor([ex.label for ex in examples])
    set_seed(SEED)
    student = build_student(replace(STUDENTS[kind], vocab_size=len(tok_s)), len(task.labels),
                            max_positions=MAX_LEN + 2)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    teacher.train(method == "dist" or kind == "gru")  # the study's re-assembled teachers keep dropout on
    set_seed(SEED)
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, eps=1e-8, weight_decay=0.0)
    steps = -(-len(labels) // BATCH)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED * 1000 + 1)).tolist()
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    student.train()
    losses = []
    for batch in torch.utils.data.DataLoader(range(len(labels)), batch_sampler=batches):
        with torch.no_grad():
            z_t = teacher(input_ids=enc_t.input_ids[batch], attention_mask=enc_t.attention_mask[batch]).logits
        loss = _study_loss(method, _study_logits(student, kind, ids_s[batch]), z_t)
        loss.backward()  # no clipping: the study's clip_grad_norm_ gets an exhausted generator
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(("method", "kind"), [("dist", "gru"), ("kd", "roberta"), ("kd", "gru")])
def test_study_compat_equals_the_studys_loop_step_for_step(small_exception, small_vocab, tiny_teacher,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           method: str, kind: str) -> None:
    seen: list[tuple[float, bool]] = []
    real = train_mod.Trainee.forward
    teacher_modes: list[bool] = []

    def spy(self, batch, targets, weights):
        out = real(self, batch, targets, weights)
        seen.append(out["loss"].item())
        assert batch["student"]["input_ids"].shape[1] == MAX_LEN and batch["teacher0"]["input_ids"].shape[1] == 64
        return out

    real_teacher = train_mod._teacher_outputs

    def teacher_spy(teachers, *a, **k):
        teacher_modes.append(teachers[0].training)
        return real_teacher(teachers, *a, **k)

    monkeypatch.setattr(train_mod.Trainee, "forward", spy)
    monkeypatch.setattr(train_mod, "_teacher_outputs", teacher_spy)
    m = distill("exception", small_exception, STUDENTS[kind], small_vocab, method, tmp_path / "run",
                TrainConfig(epochs=1, lr=LR, batch_size=BATCH, seed=SEED, study_compat=True),
                teacher=tiny_teacher, max_length=MAX_LEN)
    assert m["history"][0]["epoch"] == 1 and len(seen) == 12
    assert set(teacher_modes) == {method == "dist" or kind == "gru"}
    expected = _study_run(method, kind, small_exception, small_vocab, tiny_teacher)
    assert seen == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_study_settings_per_method_and_student() -> None:
    assert study_settings("kd", "roberta")[0]["teacher_dropout"] is False
    assert study_settings("kd", "gru")[0]["teacher_dropout"] is True
    for method in ("dist", "pkd", "ckd"):
        assert study_settings(method, "roberta")[0]["teacher_dropout"] is True
    assert study_settings("dkd", "gru")[0]["teacher_dropout"] is False  # not a study method: eval teacher
    train, hparams = study_settings("ckd", "roberta")
    assert train == {"teacher_dropout": True, "pad_to_max_length": True, "bucket": False, "gru_over_pads": False,
                     "max_grad_norm": 0.0, "teacher_precision": "fp32"}
    assert hparams == {"study_padding": True} and study_settings("pkd", "gru")[1] == {}
    assert study_settings("pkd", "gru")[0]["gru_over_pads"] is True


def test_gru_over_pads_refused_for_a_roberta_student(small_exception, small_vocab, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--gru-over-pads needs a BiGRU student"):
        distill("exception", small_exception, STUDENTS["roberta"], small_vocab, "ft", tmp_path / "r",
                TrainConfig(gru_over_pads=True), max_length=MAX_LEN)
    assert not (tmp_path / "r.partial").exists()
