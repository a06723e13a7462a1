"""Run directories work without codekd: plain transformers loads them (the BiGRU through its copied modeling
file), their pipeline predicts what `codekd predict` does, and each carries a model card."""

import json
import os
import subprocess
import sys

import pytest

from codekd.data import load_split
from codekd.models import custom_spec
from codekd.pipeline import distill
from codekd.predict import Predictor
from codekd.train import TrainConfig

STUDENTS = {"roberta": custom_spec("roberta", 400, 16, 2, 2, 32), "gru": custom_spec("gru", 400, 16, 2)}
MAX_LENGTH = 32  # far below most test functions, so truncation and the __HOLE__ window both matter

PLAIN_TRANSFORMERS = r"""
import json, sys
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

run_dir, inputs = sys.argv[1], json.load(open(sys.argv[2]))
try:
    pipeline("text-classification", model=run_dir)
    refused = None
except ValueError as e:
    refused = str(e)
clf = pipeline("text-classification", model=run_dir, trust_remote_code=True)
model = AutoModelForSequenceClassification.from_pretrained(run_dir, trust_remote_code=True)
tok = AutoTokenizer.from_pretrained(run_dir)
print("\nRESULT", json.dumps({"labels": [r["label"] for r in clf(inputs, batch_size=1)], "class": type(model).__name__,
                  "refused": refused, "max_length": tok.model_max_length, "side": tok.truncation_side,
                  "collapsed": tok("a \n\t  b")["input_ids"] == tok("a b")["input_ids"],
                  "codekd_imported": any(m.split(".")[0] == "codekd" for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def student_dirs(small_exception, small_vocab, tiny_teacher, tmp_path_factory):
    """A RoBERTa and a BiGRU student distilled at 32 tokens with focus truncation."""
    root = tmp_path_factory.mktemp("rundir")
    for kind, spec in STUDENTS.items():
        distill("exception", small_exception, spec, small_vocab, "kd", root / kind,
                TrainConfig(epochs=1, lr=3e-3, batch_size=16), teacher=tiny_teacher, max_length=MAX_LENGTH,
                truncation="focus")
    return {kind: root / kind for kind in STUDENTS}


@pytest.fixture(scope="module", params=list(STUDENTS))
def run_dir(request, student_dirs):
    return student_dirs[request.param]


@pytest.mark.parametrize("kind", [*STUDENTS, "teacher"])
def test_pipeline_equals_codekd_predict_without_codekd(kind, student_dirs, tiny_teacher, small_exception, tmp_path):
    run_dir = tiny_teacher if kind == "teacher" else student_dirs[kind]  # the teacher: head truncation, 64 tokens
    codes = [ex.code for ex in load_split("exception", small_exception, "test", whitespace="keep")]
    predictor = Predictor.from_pretrained(run_dir)
    length = predictor.spec.max_length
    assert sum(len(predictor.tokenizer(c)["input_ids"]) > length for c in codes) > len(codes) // 2
    expected = [r["label"] for r in predictor(codes)]
    (tmp_path / "inputs.json").write_text(json.dumps(codes))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(run_dir), str(tmp_path / "inputs.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    # without the flag, transformers asks "Do you wish to run the custom code? [y/N]" on stdout (no newline)
    # before it refuses a directory with auto_map (the BiGRU); the result is the line marked RESULT
    got = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert got["labels"] == expected
    assert not got["codekd_imported"]
    assert "trust_remote_code" in got["refused"]  # without the flag: transformers' own one-line refusal
    assert got["max_length"] == length and got["side"] == "right" and got["collapsed"]
    kind = "BiGRU" if (run_dir / "modeling_bigru.py").exists() else "Roberta"
    assert got["class"] == f"{kind}ForSequenceClassification"


def test_model_card_has_the_runs_figures_in_model_index(run_dir):
    from huggingface_hub import ModelCard

    metrics = json.loads((run_dir / "metrics.json").read_text())
    card = ModelCard.load(run_dir / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {k: round(v, 6) for k, v in metrics["model"].items() if k != "n"}
    assert card.data.eval_results[0].dataset_type == "exception"
    text = card.text
    assert f"{metrics['parameters']:,}" in text and f"{100 * metrics['retention']:.1f} %" in text
    assert "**Method:** `kd`" in text and "**Teacher:**" in text and "licence:" in text


def test_onnx_export_of_a_run_dir_carries_labels_and_no_pytorch_pointers(run_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra (pip install codekd[deploy])")
    from codekd.data import get_task
    from codekd.export import export_model

    source = json.loads((run_dir / "config.json").read_text())
    assert "custom_pipelines" in source and ("auto_map" in source) == (run_dir / "modeling_bigru.py").exists()
    export_model(run_dir, tmp_path / "onnx")
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(20)] == list(get_task("exception").labels)
    assert config["codekd_input"] == source["codekd_input"] and not {"auto_map", "custom_pipelines"} & set(config)
    card = (tmp_path / "onnx" / "README.md").read_text()
    assert "**Method:** `kd`" in card and "## ONNX export" in card and "`config.json` holds the labels" in card
