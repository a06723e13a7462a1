"""`--study-compat` (issue 14): a tiny CPU run equals, step for step, a plain loop written here after the study's
code (BackOnTruck/kd-empirical, STUDY.md §4-5) for each of its methods (KD, DIST, PKD, CKD) and both student
kinds: teacher in train mode where the study has it, every input padded to max_length with the tokenizer, the
BiGRU run over the pads and pooled at the last position, PKD's trainable teacher-side projection, CKD's relations
over pads, no clipping."""

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


def _study_ckd(a: torch.Tensor, b: torch.Tensor, window: int = 10, gamma: float = 10.0) -> torch.Tensor:
    """The study's `ckd/loss.py` relations (STUDY.md §4.4) on (B, L, N, H) features, pads included: over the
    tokens of each layer (WR) and, transposed, over the layers of each token (LTR); neighbours n-W..n+W (self
    included), an out-of-range one zeroed (products and differences), all pairs when the axis is ≤ W long;
    distances 1 - cos, angles of the normalised differences, each compared by `F.mse_loss`."""
    def windowed(x: torch.Tensor, f) -> torch.Tensor:
        n = x.shape[-2]
        if window >= n:
            return f(x[:, :, :, None, :], x[:, :, None, :, :])
        index = torch.arange(n)[:, None] + torch.arange(-window, window + 1)[None, :]
        inside = ((index >= 0) & (index < n))[..., None]
        return f(x[:, :, :, None, :], x[:, :, index.clamp(0, n - 1), :]) * inside

    def distances(x: torch.Tensor) -> torch.Tensor:
        return 1 - windowed(F.normalize(x, dim=-1), torch.mul).sum(-1)

    def angles(x: torch.Tensor) -> torch.Tensor:
        d = F.normalize(windowed(x, torch.sub), dim=-1)
        return torch.einsum("blnwh,blnzh->blnwz", d, d)

    def relations(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(distances(x), distances(y)) + F.mse_loss(angles(x), angles(y))

    return relations(a, b) + gamma * relations(a.transpose(1, 2), b.transpose(1, 2))


def _soft_ce(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """`nn.CrossEntropyLoss()(z_s / T, softmax(z_t / T))`: probability targets, averaged over the batch."""
    return -(F.softmax(z_t / temperature, dim=-1) * F.log_softmax(z_s / temperature, dim=-1)).sum(-1).mean()


def _study_loss(method: str, kind: str, s: dict, t, labels: torch.Tensor, projections) -> torch.Tensor:
    """The study's loss of one batch from the student's outputs `s` and the teacher's HF outputs `t`."""
    z_s, z_t = s["logits"], t.logits
    if method == "dist":  # β = γ = 1, T = 10
        p_s, p_t = F.softmax(z_s / 10, dim=-1), F.softmax(z_t / 10, dim=-1)
        return (1 - _p_corr(p_s, p_t)) + (1 - _p_corr(p_s.T, p_t.T))
    if method == "kd":  # kd-ft: CE(z_s / T, softmax(z_t / T)), T = 10
        return _soft_ce(z_s, z_t, 10)
    # PKD (T = 10, β = 10) and CKD (T = 3, β = γ = 10), α = 1: α·T²·soft CE + (1 − α)·CE + β·features
    temperature = 10 if method == "pkd" else 3
    logit = _soft_ce(z_s, z_t, temperature) * temperature**2 + 0.0 * F.cross_entropy(z_s, labels)
    if method == "pkd":  # student layer 1 ↔ teacher layer 2 (i·L_t/L_s), the last pair (2 ↔ 4) dropped
        feat_s = torch.stack([s["first_token"][0]], dim=1)
        feat_t = torch.stack([projections[0](t.hidden_states[2][:, 0])], dim=1)
        return logit + 10 * F.mse_loss(F.normalize(feat_s, p=2, dim=2), F.normalize(feat_t, p=2, dim=2))
    # CKD: RoBERTa [embeddings, layer 1, 2] ↔ teacher [embeddings, 2, 4]; BiGRU layers 1, 2 ↔ teacher 2, 4
    teacher_states = [t.hidden_states[i] for i in ([0, 2, 4] if kind == "roberta" else [2, 4])]
    return logit + 10 * _study_ckd(torch.stack(s["hidden"], 1), torch.stack(teacher_states, 1))


def _study_forward(student, kind: str, ids: torch.Tensor) -> dict:
    """The study's student forwards: RoBERTa with the padding mask; its BiGRU over every position, pooled as
    concat(out[:, -1, :H], out[:, 0, H:]), the features being each layer's outputs and final states h_n."""
    if kind == "roberta":
        out = student(input_ids=ids, attention_mask=ids.ne(1).long(), output_hidden_states=True)
        return {"logits": out.logits, "hidden": list(out.hidden_states),
                "first_token": [h[:, 0] for h in out.hidden_states[1:]]}
    x, hidden, finals = student.embeddings(ids), [], []
    for gru in student.layers:
        x, h_n = gru(x)
        hidden.append(x)
        finals.append(torch.cat([h_n[0], h_n[1]], dim=-1))
    h = student.config.hidden_size
    return {"logits": student.classifier(torch.cat([x[:, -1, :h], x[:, 0, h:]], dim=-1)), "hidden": hidden,
            "first_token": finals}


def _study_run(method: str, kind: str, data: Path, vocab: Path, teacher_dir: Path, max_len: int) -> list[float]:
    """One epoch of the study's loop on `data`'s training split; the loss of every step."""
    task = get_task("exception")
    examples = load_split(task, data, "train")  # codes with whitespace collapsed, as the study's ' '.join(split())
    tok_s, tok_t = AutoTokenizer.from_pretrained(vocab), AutoTokenizer.from_pretrained(teacher_dir)
    codes = [ex.code for ex in examples]
    ids_s = tok_s(codes, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt").input_ids
    enc_t = tok_t(codes, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    labels = torch.tensor([ex.label for ex in examples])
    set_seed(SEED)
    student = build_student(replace(STUDENTS[kind], vocab_size=len(tok_s)), len(task.labels),
                            max_positions=max_len + 2)
    width = 2 * student.config.hidden_size if kind == "gru" else student.config.hidden_size
    projections = torch.nn.ModuleList([torch.nn.Linear(32, width)] if method == "pkd" else [])  # teacher → student
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    teacher.train(method != "kd" or kind == "gru")  # the study's re-assembled teachers keep dropout on
    set_seed(SEED)
    optimizer = torch.optim.AdamW([*student.parameters(), *projections.parameters()], lr=LR, eps=1e-8,
                                  weight_decay=0.0)
    steps = -(-len(labels) // BATCH)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED * 1000 + 1)).tolist()
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    student.train()
    losses = []
    for batch in torch.utils.data.DataLoader(range(len(labels)), batch_sampler=batches):
        with torch.no_grad():
            t = teacher(input_ids=enc_t.input_ids[batch], attention_mask=enc_t.attention_mask[batch],
                        output_hidden_states=True)
        loss = _study_loss(method, kind, _study_forward(student, kind, ids_s[batch]), t, labels[batch], projections)
        loss.backward()  # no clipping: the study's clip_grad_norm_ gets an exhausted generator
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(("method", "kind"), [("kd", "roberta"), ("kd", "gru"), ("dist", "roberta"), ("dist", "gru"),
                                             ("pkd", "roberta"), ("pkd", "gru"), ("ckd", "roberta"), ("ckd", "gru")])
def test_study_compat_equals_the_studys_loop_step_for_step(small_exception, small_vocab, tiny_teacher,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           method: str, kind: str) -> None:
    max_len = 64 if method == "ckd" else MAX_LEN  # the study's CKD needs the teacher's length (64 here)
    seen: list[float] = []
    real = train_mod.Trainee.forward
    teacher_modes: list[bool] = []

    def spy(self, batch, targets, weights):
        out = real(self, batch, targets, weights)
        seen.append(out["loss"].item())
        assert batch["student"]["input_ids"].shape[1] == max_len and batch["teacher0"]["input_ids"].shape[1] == 64
        return out

    real_teacher = train_mod._teacher_outputs

    def teacher_spy(teachers, *a, **k):
        teacher_modes.append(teachers[0].training)
        return real_teacher(teachers, *a, **k)

    monkeypatch.setattr(train_mod.Trainee, "forward", spy)
    monkeypatch.setattr(train_mod, "_teacher_outputs", teacher_spy)
    m = distill("exception", small_exception, STUDENTS[kind], small_vocab, method, tmp_path / "run",
                TrainConfig(epochs=1, lr=LR, batch_size=BATCH, seed=SEED, study_compat=True),
                teacher=tiny_teacher, max_length=max_len)
    assert m["history"][0]["epoch"] == 1 and len(seen) == 12
    assert set(teacher_modes) == {method != "kd" or kind == "gru"}
    expected = _study_run(method, kind, small_exception, small_vocab, tiny_teacher, max_len)
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
