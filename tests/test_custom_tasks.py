"""A user's own task, defined by a task file: a 3-class "code smell" task in JSONL distils end to end
(teacher → vocab → distill → evaluate → predict), run directories carry the task, study files take
task files, and every bad task file is one `file:line: what` line with exit status 2."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from codekd.cli import app
from codekd.data import get_task, load_split
from codekd.data.tasks import TaskFileError
from codekd.study_config import load_study

SMELLS = ("clean", "long-method", "god-class")
TASK_FILE = """\
# a user's code-smell task
name: smell
input: source
label: smell
labels: [clean, long-method, god-class]
metric: macro_f1
k: 2
"""


def _function(smell: str, i: int) -> str:
    if smell == "clean":
        return f"def f{i}(x):\n    return x + {i}\n"
    if smell == "long-method":
        return f"def f{i}(x):\n" + "".join(f"    x = x * {j} + {i}\n" for j in range(12)) + "    return x\n"
    return f"class Manager{i}:\n" + "".join(f"    def do_{j}(self):\n        self.v{j} = {i}\n" for j in range(6))


@pytest.fixture(scope="module")
def smell(tmp_path_factory):
    """The task file and a JSONL data directory (labels by name and by index, as users write them)."""
    root = tmp_path_factory.mktemp("smell")
    (root / "smell.yaml").write_text(TASK_FILE)
    rng = random.Random(0)
    for split, n in (("train", 48), ("valid", 24), ("test", 24)):
        rows = []
        for i in range(n):
            label = rng.randrange(3)
            rows.append({"source": _function(SMELLS[label], i), "smell": SMELLS[label] if i % 2 else label, "id": i})
        (root / "data").mkdir(exist_ok=True)
        (root / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.exception)
    return res


def test_task_file_defines_fields_labels_and_metric(smell):
    task = get_task(smell / "smell.yaml")
    assert (task.name, task.labels, task.inputs, task.label_field, task.headline) == \
        ("smell", SMELLS, ("source",), "smell", "macro_f1")
    assert task.metric_names() == ["accuracy", "macro_f1", "top2_accuracy"]
    examples = load_split(task, smell / "data", "train")
    assert len(examples) == 48 and {e.label for e in examples} == {0, 1, 2} and examples[1].code2 is None


def test_custom_task_distils_end_to_end(smell, tiny_encoder, tmp_path):
    task, data = smell / "smell.yaml", smell / "data"
    fast = ("--epochs", "1", "--max-length", "64", "--batch-size", "16")
    _run("vocab", "--task", task, "--data", data, "--size", "300", "--out", tmp_path / "vocab")
    _run("teacher", "--task", task, "--data", data, "--model", tiny_encoder, "--out", tmp_path / "teacher",
         "--lr", "1e-3", *fast)
    _run("distill", "--task", task, "--data", data, "--teacher", tmp_path / "teacher", "--vocab", tmp_path / "vocab",
         "--student", "{kind: gru, hidden_size: 16, num_layers: 1}", "--method", "kd", "--out", tmp_path / "kd",
         "--lr", "3e-3", *fast)
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert metrics["task"] == "smell" and metrics["headline"] == "macro_f1"
    assert set(metrics["model"]) == {"n", "accuracy", "macro_f1", "top2_accuracy"} and metrics["retention"] is not None
    run = yaml.safe_load((tmp_path / "kd" / "run.yaml").read_text())
    assert run["config"]["task_def"]["labels"] == list(SMELLS)

    moved = tmp_path / "elsewhere.yaml"  # evaluate and predict need no task file: the run directory has it
    task.rename(moved)
    try:
        _run("evaluate", "--data", data, "--model", tmp_path / "kd", "--out", tmp_path / "eval.json")
        _run("evaluate", "--task", "smell", "--data", data, "--model", tmp_path / "kd", "--out", tmp_path / "e2.json")
        res = _run("predict", "--model", tmp_path / "kd", "--input", data / "test.jsonl", "--top-k", "2")
    finally:
        moved.rename(task)
    evaluated = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert evaluated == metrics["model"] == json.loads((tmp_path / "e2.json").read_text())["metrics"]
    predictions = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(predictions) == 24 and all(p["label"] in SMELLS and len(p["probs"]) == 2 for p in predictions)
    refused = CliRunner().invoke(app, ["evaluate", "--task", "defect", "--data", str(data), "--model",
                                       str(tmp_path / "kd")])
    assert "trained for task 'smell', not 'defect'" in str(refused.exception)


def test_study_file_takes_a_task_file(smell, tmp_path):
    def study(task_text: str):
        (tmp_path / "smell.yaml").write_text(task_text)
        (tmp_path / "study.yaml").write_text(yaml.safe_dump({
            "name": "s", "out": str(tmp_path / "out"), "data": {str(tmp_path / "smell.yaml"): str(smell / "data")},
            "students": ["gru-1.5m"], "methods": ["ft"], "seeds": [1]}))
        return load_study(tmp_path / "study.yaml")

    s = study(TASK_FILE)
    (cell,) = s.student_cells()
    assert cell.name == "smell.gru-1.5m.ft.s1" and s.tasks["smell"] == get_task(smell / "smell.yaml")
    edited = study(TASK_FILE.replace("k: 2", "k: 1"))
    assert edited.student_cells()[0].key != cell.key  # an edited task file is a new cell


BAD = {
    "unknown key": ("name: t\ninput: code\nlabel: y\nlabels: [a, b]\ncolour: red\n", 5, "unknown key 'colour'"),
    "bad metric": ("name: t\ninput: code\nlabel: y\nlabels: [a, b]\nmetric: auc\n", 5, "metric 'auc': expected one"),
    "repeated label": ("name: t\ninput: code\nlabel: y\nlabels:\n  - a\n  - a\n", 4, "repeated name"),
    "missing labels": ("# comment\nname: t\ninput: code\nlabel: y\n", 2, "missing key 'labels'"),
    "bad YAML": ("name: t\ninput: [code\nlabel: y\n", 3, "bad YAML"),
    "not a name": ("name: t\ninput: code\nlabel: y\nlabels: [yes, no]\n", 4, "quote it"),
    "positive": ("name: t\ninput: code\nlabel: y\nlabels: [a, b, c]\nmetric: f1\n", 5, "needs `positive:`"),
    "top-k": ("name: t\ninput: code\nlabel: y\nlabels: [a, b]\nmetric: top_k_accuracy\n", 5, "k < the number"),
    "three inputs": ("name: t\ninput: [a, b, c]\nlabel: y\nlabels: [p, q]\n", 2, "two for a pair task"),
    "focus pair": ("name: t\ninput: [a, b]\nlabel: y\nlabels: [p, q]\nfocus: X\n", 5, "single-input tasks only"),
    "twice": ("name: t\nname: u\n", 2, "given twice"),
    "a list": ("- name\n", 1, "expected a mapping"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_task_file_names_file_and_line(case, tmp_path):
    text, line, what = BAD[case]
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(TaskFileError) as e:
        get_task(tmp_path / "t.yaml")
    assert str(e.value).startswith(f"{tmp_path / 't.yaml'}:{line}: ") and what in str(e.value)


def test_bad_task_file_on_the_command_line_is_one_line_exit_2(smell, tmp_path):
    (tmp_path / "t.yaml").write_text(BAD["bad metric"][0])
    for task in (tmp_path / "t.yaml", tmp_path / "missing.yaml", "summarize"):
        res = subprocess.run([sys.executable, "-m", "codekd", "vocab", "--task", str(task), "--data",
                              str(smell / "data"), "--size", "300", "--out", str(tmp_path / "v")],
                             capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                                  "PYTHONPATH": str(Path.cwd())})
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert str(task) in res.stderr and not (tmp_path / "v").exists()
