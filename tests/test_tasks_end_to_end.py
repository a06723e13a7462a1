"""The CLI contract end to end on all three tasks, in their original layouts (small slices of
../shared/data), and every method with both student kinds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codekd.data import load_splits
from codekd.models import custom_spec
from codekd.pipeline import distill, evaluate_model, make_vocab, train_teacher
from codekd.train import TrainConfig

FAST = TrainConfig(epochs=1, lr=1e-3, batch_size=16)


def _slice_jsonl(src: Path, dst: Path, n: dict[str, int]) -> Path:
    dst.mkdir()
    for name, k in n.items():
        lines = (src / name).read_text().splitlines(keepends=True)[:k]
        (dst / name).write_text("".join(lines))
    return dst


def _slice_bigclonebench(src: Path, dst: Path, n: int) -> Path:
    """The first pairs of each split and exactly the functions they use, in CodeXGLUE's layout."""
    dst.mkdir()
    used = set()
    for split in ("train", "valid", "test"):
        lines = (src / f"{split}.txt").read_text().splitlines(keepends=True)[:n]
        (dst / f"{split}.txt").write_text("".join(lines))
        used |= {i for line in lines for i in line.split("\t")[:2]}
    funcs = [line for line in (src / "data.jsonl").read_text().splitlines(keepends=True)
             if json.loads(line)["idx"] in used]
    (dst / "data.jsonl").write_text("".join(funcs))
    return dst


@pytest.fixture(scope="module")
def task_dirs(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return {
        "defect": _slice_jsonl(shared_data / "defect", root / "defect",
                               {"train.jsonl": 64, "valid.jsonl": 32, "test.jsonl": 32}),
        "clone": _slice_bigclonebench(shared_data / "clone", root / "clone", 48),
        "exception": _slice_jsonl(shared_data / "exception", root / "exception",
                                  {"train.jsonl": 64, "dev.jsonl": 32, "test.jsonl": 32}),
    }


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "codekd", *map(str, args)], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())})


@pytest.mark.parametrize("task", ["defect", "clone", "exception"])
def test_cli_contract_on_real_slices(task, task_dirs, tiny_encoder, tmp_path):
    data = task_dirs[task]
    splits = load_splits(task, data)
    assert min(len(v) for v in splits.values()) >= 32
    make_vocab(task, data, 400, tmp_path / "vocab", max_length=64)
    train_teacher(task, data, str(tiny_encoder), tmp_path / "teacher", FAST, max_length=64)
    for method in ("ft", "kd"):
        distill(task, data, custom_spec("gru", 400, 16, 2), tmp_path / "vocab", method, tmp_path / method, FAST,
                teacher=tmp_path / "teacher", max_length=64)
    res = _cli("evaluate", "--task", task, "--data", data, "--model", tmp_path / "kd", "--split", "valid",
               "--out", tmp_path / "eval.json")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    headline = {"defect": "accuracy", "clone": "f1", "exception": "accuracy"}[task]
    assert metrics["n"] == len(splits["valid"]) and 0 <= metrics[headline] <= 1
    assert evaluate_model(task, data, tmp_path / "kd", "valid", tmp_path / "e2.json")["metrics"] == metrics


def test_cli_distill_end_to_end(small_exception, small_vocab, tiny_teacher, tmp_path):
    res = _cli("distill", "--task", "exception", "--data", small_exception, "--teacher", tiny_teacher,
               "--student", "roberta-0.6m", "--vocab", small_vocab, "--method", "pkd", "--beta", "5",
               "--epochs", "1", "--max-length", "64", "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    assert "retention" in res.stdout
    run = (tmp_path / "run" / "run.yaml").read_text()
    assert "beta: 5.0" in run and "roberta-0.6m" in run


METHODS = ["ft", "kd", "dist", "pkd", "ckd", "dkd", "minilm", "tinybert"]


@pytest.mark.parametrize("kind", ["roberta", "gru"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_with_both_student_kinds(method, kind, small_exception, small_vocab, tiny_teacher, tmp_path):
    spec = custom_spec("roberta", 400, 16, 2, 2, 32) if kind == "roberta" else custom_spec("gru", 400, 16, 2)
    args = ("exception", small_exception, spec, small_vocab, method, tmp_path / "r", FAST)
    if method == "minilm" and kind == "gru":
        with pytest.raises(ValueError, match="methods for a GRU student"):
            distill(*args, teacher=tiny_teacher, max_length=64)
        return
    m = distill(*args, teacher=tiny_teacher, max_length=64)
    assert m["model"]["n"] == 32 and m["history"][0]["train_loss"] == m["history"][0]["train_loss"]  # not NaN


def test_cli_config_file_with_custom_student(small_exception, small_vocab, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"task: exception\ndata: {small_exception}\nvocab: {small_vocab}\nmethod: ft\nepochs: 3\n"
                      "max_length: 64\nstudent: {kind: gru, hidden_size: 16, num_layers: 2}\n")
    res = _cli("distill", "--config", config, "--epochs", "1", "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    saved = (tmp_path / "run" / "run.yaml").read_text()
    assert "epochs: 1" in saved and "kind: gru" in saved and "hidden_size: 16" in saved
