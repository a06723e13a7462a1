"""The training options (HF TrainingArguments names): scheduler shapes, early stopping, the metric that
picks the best epoch, weight decay groups, log.csv rows, TensorBoard events, `teacher --config`,
refused options leaving nothing on disk, exact resume with the log, `--version` and `Path` arguments."""

import copy
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from codekd import device as device_mod
from codekd import train as train_mod
from codekd.cli import app
from codekd.models import build_student, custom_spec
from codekd.pipeline import distill, train_teacher
from codekd.study_config import load_study
from codekd.train import TrainConfig
from codekd.trainlog import LOG_FILE, TENSORBOARD_DIR

GRU = custom_spec("gru", 400, 16, 1)
STEPS = 6  # 96 training examples in batches of 16


def _log(run: Path) -> list[dict[str, str]]:
    with (run / LOG_FILE).open() as f:
        return list(csv.DictReader(f))


def _ft(data, vocab, out, **options):
    cfg = TrainConfig(**{"epochs": 2, "lr": 1e-3, "batch_size": 16, "logging_steps": 1, **options})
    return distill("exception", data, GRU, vocab, "ft", out, cfg, max_length=64)


def _expected_lr(kind: str, step: int, warmup: int, total: int) -> float:
    """The learning-rate factor after `step` optimizer steps, written out from the schedules' definitions."""
    if kind != "constant" and step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    return {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "constant": 1.0,
            "constant_with_warmup": 1.0}[kind]


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_scheduler_shapes(kind, small_exception, small_vocab, tmp_path):
    _ft(small_exception, small_vocab, tmp_path / "r", lr_scheduler_type=kind, warmup_ratio=0.25)
    rows = [r for r in _log(tmp_path / "r") if r["loss"]]
    assert [int(r["step"]) for r in rows] == list(range(1, 2 * STEPS + 1))
    for r in rows:
        expected = 1e-3 * _expected_lr(kind, int(r["step"]), warmup=3, total=2 * STEPS)
        assert float(r["learning_rate"]) == pytest.approx(expected, abs=1e-12)


def test_log_rows_and_tensorboard_events(small_exception, small_vocab, tmp_path):
    m = _ft(small_exception, small_vocab, tmp_path / "r", logging_steps=2, report_to="tensorboard")
    rows = _log(tmp_path / "r")
    train_rows, eval_rows = [r for r in rows if r["loss"]], [r for r in rows if r["train_loss"]]
    assert [int(r["step"]) for r in train_rows] == [2, 4, 6, 8, 10, 12]
    assert [(int(r["step"]), r["epoch"]) for r in eval_rows] == [(6, "1"), (12, "2")]
    for epoch, record in enumerate(m["history"]):  # equal batches: the rows' mean is the epoch's mean loss
        losses = [float(r["loss"]) for r in train_rows[3 * epoch:3 * epoch + 3]]
        assert sum(losses) / 3 == pytest.approx(record["train_loss"], rel=1e-6)
        assert float(eval_rows[epoch]["eval_accuracy"]) == pytest.approx(record["valid"]["accuracy"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "r" / TENSORBOARD_DIR))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]
    assert [e.value for e in events.Scalars("eval/accuracy")] == pytest.approx(
        [h["valid"]["accuracy"] for h in m["history"]])


def _scripted_validation(monkeypatch, scores: list[dict[str, float]]) -> list[dict]:
    """Validation returns `scores` epoch by epoch; each call keeps a copy of the student's weights."""
    weights = []

    def fake(model, data, task, *args, **kwargs):
        weights.append(copy.deepcopy(model.state_dict()))
        return {"n": 32.0, **scores[len(weights) - 1]}, {"class": 0, "share": 0.5}

    monkeypatch.setattr(train_mod, "validate", fake)
    return weights


def test_early_stopping_stops_and_keeps_the_best(small_exception, small_vocab, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    accuracy = [0.5, 0.7, 0.6, 0.65, 0.9]
    weights = _scripted_validation(monkeypatch, [{"accuracy": a, "macro_f1": 0.0, "top3_accuracy": 0.0}
                                                 for a in accuracy])
    m = _ft(small_exception, small_vocab, tmp_path / "r", epochs=5, early_stopping_patience=2)
    assert len(m["history"]) == 4 and m["best_epoch"] == 2 and m["stopped_early"]
    best = AutoModelForSequenceClassification.from_pretrained(tmp_path / "r").state_dict()
    assert all(torch.equal(best[k], weights[1][k]) for k in weights[1])
    assert not all(torch.equal(best[k], weights[3][k]) for k in weights[3])


def test_metric_for_best_model(small_exception, small_vocab, tmp_path, monkeypatch):
    scores = [{"accuracy": 0.5, "macro_f1": 0.1, "top3_accuracy": 0.0}, {"accuracy": 0.4, "macro_f1": 0.3,
                                                                          "top3_accuracy": 0.0}]
    _scripted_validation(monkeypatch, scores)
    assert _ft(small_exception, small_vocab, tmp_path / "a")["best_epoch"] == 1  # the headline: accuracy
    _scripted_validation(monkeypatch, scores)
    assert _ft(small_exception, small_vocab, tmp_path / "b", metric_for_best_model="eval_macro_f1")["best_epoch"] == 2


def test_weight_decay_spares_biases_and_norms():
    student = build_student(custom_spec("roberta", 400, 16, 2, 2, 32), 20, max_positions=66)
    groups = train_mod._optimizer(student, TrainConfig(weight_decay=0.1)).param_groups
    names = {id(p): n for n, p in student.named_parameters()}
    decayed = [names[id(p)] for p in groups[0]["params"]]
    spared = [names[id(p)] for p in groups[1]["params"]]
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.1, 0.0)
    assert decayed and all("bias" not in n and "LayerNorm" not in n for n in decayed)
    assert any(n.endswith("LayerNorm.weight") for n in spared) and all(
        n.endswith("bias") or "LayerNorm" in n for n in spared)
    assert len(decayed) + len(spared) == len(list(student.parameters()))
    assert len(train_mod._optimizer(student, TrainConfig()).param_groups) == 1


REFUSED = {"teacher_precision": "bf16", "lr_scheduler_type": "wavy", "report_to": "wandb",
           "metric_for_best_model": "auc", "warmup_ratio": 1.5, "early_stopping_patience": -1}


@pytest.mark.parametrize("option", list(REFUSED))
def test_refused_option_leaves_nothing(option, small_exception, small_vocab, tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(device_mod, "bf16_supported", lambda device=None: False)
    with pytest.raises(ValueError, match=f"--{option.replace('_', '-')}"):
        distill("exception", small_exception, GRU, small_vocab, "kd", tmp_path / "r",
                TrainConfig(epochs=1, **{option: REFUSED[option]}), teacher=tiny_teacher, max_length=64)
    assert list(tmp_path.iterdir()) == []


def test_resume_is_exact_with_the_log(small_exception, small_vocab, tmp_path, killed_after_first_checkpoint):
    options = {"lr_scheduler_type": "cosine", "weight_decay": 0.01, "logging_steps": 4, "report_to": "tensorboard"}
    whole = _ft(small_exception, small_vocab, tmp_path / "whole", **options)
    with killed_after_first_checkpoint():
        _ft(small_exception, small_vocab, tmp_path / "killed", **options)
    with (tmp_path / "killed.partial" / LOG_FILE).open("a") as f:
        f.write("13,1.5,9.9,0.1,,,,\n")  # a row of an unfinished epoch: resuming drops it
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=16, **options)
    resumed = distill("exception", small_exception, GRU, small_vocab, "ft", tmp_path / "killed", cfg, max_length=64,
                      resume=True)
    assert resumed["model"] == whole["model"]
    assert (tmp_path / "killed" / LOG_FILE).read_text() == (tmp_path / "whole" / LOG_FILE).read_text()


def test_cli_training_options_and_teacher_config(small_exception, small_vocab, tiny_encoder, tmp_path):
    config = tmp_path / "teacher.yaml"
    config.write_text(yaml.safe_dump({"task": "exception", "data": str(small_exception), "model": str(tiny_encoder),
                                      "epochs": 1, "max_length": 64, "batch_size": 16, "weight_decay": 0.01}))
    res = CliRunner().invoke(app, ["teacher", "--config", str(config), "--out", str(tmp_path / "t"),
                                   "--lr-scheduler", "cosine", "--warmup-ratio", "0.2", "--logging-steps", "3"])
    assert res.exit_code == 0, (res.output, res.exception)
    train = yaml.safe_load((tmp_path / "t" / "run.yaml").read_text())["train"]
    assert (train["lr"], train["weight_decay"], train["lr_scheduler_type"], train["warmup_ratio"],
            train["logging_steps"]) == (2e-5, 0.01, "cosine", 0.2, 3)
    res = CliRunner().invoke(app, [
        "distill", "--task", "exception", "--data", str(small_exception), "--teacher", str(tmp_path / "t"),
        "--student", "{kind: gru, hidden_size: 16, num_layers: 1}", "--vocab", str(small_vocab), "--method", "kd",
        "--out", str(tmp_path / "s"), "--epochs", "2", "--max-length", "64", "--lr-scheduler-type", "constant",
        "--early-stopping-patience", "1", "--metric-for-best-model", "macro_f1", "--report-to", "tensorboard"])
    assert res.exit_code == 0, (res.output, res.exception)
    train = yaml.safe_load((tmp_path / "s" / "run.yaml").read_text())["train"]
    assert (train["lr_scheduler_type"], train["early_stopping_patience"], train["metric_for_best_model"]) == \
        ("constant", 1, "macro_f1")
    assert any((tmp_path / "s" / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    config.write_text("task: exception\nlearning_rate: 0.1\n")
    res = CliRunner().invoke(app, ["teacher", "--config", str(config)])
    assert "unknown option(s) learning_rate" in res.output


def test_study_file_takes_and_checks_training_options(tmp_path):
    def study(train):
        (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "data": {"exception": "demo"},
                                                         "students": ["gru-1.5m"], "methods": ["ft"], "seeds": [1],
                                                         "train": train}))
        return load_study(tmp_path / "s.yaml")

    (cell,) = study({"lr_scheduler_type": "cosine", "early_stopping_patience": 2}).student_cells()
    assert TrainConfig(**cell.config["train"]).lr_scheduler_type == "cosine"
    with pytest.raises(ValueError, match="s.yaml: train: --lr-scheduler-type 'wavy'"):
        study({"lr_scheduler_type": "wavy"})


def test_version_and_path_arguments(small_exception, tiny_encoder, tmp_path):
    import codekd

    res = subprocess.run([sys.executable, "-m", "codekd", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"codekd {codekd.__version__}"
    m = train_teacher(Path("exception"), Path(small_exception), Path(tiny_encoder), tmp_path / "t",
                      TrainConfig(epochs=1, batch_size=16), max_length=64)
    assert yaml.safe_load((tmp_path / "t" / "run.yaml").read_text())["config"]["model"] == str(tiny_encoder)
    assert m["task"] == "exception"
