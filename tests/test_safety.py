"""Issue 15, execution and outputs: planted checkpoints and model directories cannot run code, study names
cannot escape the study directory, outputs are never overwritten without --force, disk errors and
concurrent runs give one line."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest
import torch

GRU_CLI = "{kind: gru, hidden_size: 16, num_layers: 2}"


def codekd_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `codekd ARGS` in this process as the console script does; its exit status and stderr."""
    from codekd.cli import main

    monkeypatch.setattr(sys, "argv", ["codekd", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code or 0, capsys.readouterr().err


class _Payload:
    """Unpickling this creates `marker`: what a planted file could do with `torch.load(weights_only=False)`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_checkpoint_is_refused_without_running_it(small_exception, small_vocab, tmp_path, monkeypatch,
                                                          capsys):
    marker = tmp_path / "pwned"
    partial = tmp_path / "run.partial"
    partial.mkdir()
    torch.save({"epoch": 1, "student": _Payload(marker)}, partial / "checkpoint.pt")
    rc, err = codekd_main(monkeypatch, capsys, "distill", "--task", "exception", "--data", small_exception,
                          "--student", GRU_CLI, "--vocab", small_vocab, "--method", "ft", "--out", tmp_path / "run",
                          "--epochs", "1", "--max-length", "64", "--resume")
    assert not marker.exists()
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "checkpoint.pt: refused" in err and "posix.system" in err
    assert not (tmp_path / "run").exists()


def test_checkpoint_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    import numpy as np

    from codekd.train import _rng_state, _save_checkpoint, _set_rng_state, load_checkpoint

    random.random(), np.random.normal(), torch.rand(1)  # noqa: B018 (a cached numpy gaussian is state too)
    _save_checkpoint(tmp_path / "c.pt", {"rng": [_rng_state()]})
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    _set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0])
    again = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def _model_dir(path: Path, vocab: Path, model_type: str, code_marker: Path) -> Path:
    """A codekd-looking model directory whose config names its own code (`auto_map`), which would create
    `code_marker` if it ran; `model_type` "bigru" is codekd's registered BiGRU student."""
    import json
    import shutil

    from codekd.encoding import InputSpec
    from codekd.models import build_student, custom_spec

    if model_type == "bigru":
        build_student(custom_spec("gru", 400, 16, 1), 2).save_pretrained(path)
    else:
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig",
                          "AutoModelForSequenceClassification": "custom.CustomModel"}
    (path / "config.json").write_text(json.dumps(config))
    (path / "custom.py").write_text(f"import pathlib\npathlib.Path({str(code_marker)!r}).touch()\n"
                                    "from transformers import PretrainedConfig, PreTrainedModel\n"
                                    f"class CustomConfig(PretrainedConfig):\n    model_type = {model_type!r}\n"
                                    "class CustomModel(PreTrainedModel):\n    config_class = CustomConfig\n")
    for f in vocab.iterdir():
        shutil.copy2(f, path / f.name)
    InputSpec("exception", 64).save(path)
    return path


@pytest.mark.parametrize("command", ["evaluate", "predict", "bench-model"])
def test_model_dir_with_custom_code_is_refused(command, small_exception, small_vocab, tmp_path, monkeypatch,
                                               capsys):
    marker = tmp_path / "pwned"
    model = _model_dir(tmp_path / "model", small_vocab, "custommodel", marker)
    args = {"evaluate": ["evaluate", "--task", "exception", "--data", small_exception, "--model", model],
            "predict": ["predict", "--model", model, "--input", small_exception / "test.jsonl"],
            "bench-model": ["bench-model", model, "--data", small_exception, "--task", "exception"]}[command]
    rc, err = codekd_main(monkeypatch, capsys, *args)
    assert not marker.exists()
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{model}: refused" in err and "--trust-remote-code" in err


def test_trust_remote_code_flag_reaches_the_loader(small_exception, small_vocab, tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic

    from codekd.cli import main

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not the user's cache
    marker = tmp_path / "ran"
    model = _model_dir(tmp_path / "model", small_vocab, "custommodel", marker)
    monkeypatch.setattr(sys, "argv", ["codekd", "evaluate", "--task", "exception", "--data", str(small_exception),
                                      "--model", str(model), "--trust-remote-code"])
    with contextlib.suppress(SystemExit, OSError):  # the directory has no weights: loading fails after its code ran
        main()
    assert marker.exists()  # the user opted in: the directory's code ran


def test_codekd_bigru_dir_with_auto_map_loads_without_remote_code(small_vocab, tmp_path):
    from codekd.models import BiGRUForSequenceClassification
    from codekd.models.teacher import load_model_dir

    marker = tmp_path / "ran"
    model, _, spec = load_model_dir(_model_dir(tmp_path / "model", small_vocab, "bigru", marker))
    assert isinstance(model, BiGRUForSequenceClassification) and spec.task == "exception"
    assert not marker.exists()


@pytest.mark.parametrize("field", ["teacher", "study name", "student", "task"])
def test_study_names_cannot_escape_the_study_directory(field, small_exception, tmp_path, monkeypatch, capsys):
    import yaml

    cfg = {"name": "s", "out": str(tmp_path / "study"), "data": {"exception": str(small_exception)}, "seeds": [1],
           "teachers": {"t": {"model": "demo-teacher"}}, "students": ["roberta-0.6m"], "methods": ["ft", "kd"]}
    if field == "teacher":
        cfg["teachers"] = {"../../escaped": {"model": "demo-teacher"}}
    elif field == "study name":
        del cfg["out"]
        cfg["name"] = "../escaped"
    elif field == "student":
        cfg["students"] = ["../escaped"]
    else:
        cfg["data"] = {"../escaped": str(small_exception)}
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "study.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path / "work")
    rc, err = codekd_main(monkeypatch, capsys, "study", "study.yaml")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "study.yaml: " in err and "'../" in err and "no '..'" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["study.yaml", "work"]  # nothing written anywhere


def test_study_paths_resolve_under_the_study_directory(small_exception, tmp_path):
    from codekd.study_config import load_study

    (tmp_path / "s.yaml").write_text(f"name: s\nout: {tmp_path / 'out'}\ndata: {{exception: {small_exception}}}\n"
                                     "seeds: [1]\nstudents: [roberta-0.6m]\nmethods: [ft]\n")
    study = load_study(tmp_path / "s.yaml")
    assert study.under("runs", "x-1") == tmp_path / "out" / "runs" / "x-1"
    with pytest.raises(ValueError, match="outside the study directory"):
        study.under("runs", "../../x")


@pytest.fixture
def study_dir(tmp_path):
    from test_report import study_records, write_study

    return write_study(tmp_path / "study", study_records())


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("where", ["study", "parent"])
def test_report_never_replaces_its_study(where, force, study_dir, monkeypatch, capsys):
    before = _tree(study_dir.parent)
    out = study_dir if where == "study" else study_dir.parent
    rc, err = codekd_main(monkeypatch, capsys, "report", study_dir, "--out", out, *(["--force"] if force else []))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "is or contains" in err
    assert _tree(study_dir.parent) == before


def test_report_out_that_exists_needs_force(study_dir, tmp_path, monkeypatch, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    rc, err = codekd_main(monkeypatch, capsys, "report", study_dir, "--out", target)
    assert rc == 2 and "already exists" in err and "--force" in err and target.read_text() == "mine"
    other = tmp_path / "data"
    (other / "keep").mkdir(parents=True)
    rc, err = codekd_main(monkeypatch, capsys, "report", study_dir, "--out", other, "--force")
    assert rc == 2 and "not an output of this command" in err and (other / "keep").is_dir()
    rc, _ = codekd_main(monkeypatch, capsys, "report", study_dir, "--out", target, "--force")
    assert rc == 0 and (target / "tables.md").is_file()
    assert not list(tmp_path.glob(".notes.txt*"))  # no temporary or old copy left
    rc, _ = codekd_main(monkeypatch, capsys, "report", study_dir, "--out", target, "--force")  # an old report
    assert rc == 0 and (target / "tables.md").is_file()


def test_evaluate_and_bench_out_that_exists_needs_force(small_exception, tiny_teacher, tmp_path, monkeypatch,
                                                        capsys):
    import json

    out = tmp_path / "metrics.json"
    out.write_text("precious")
    for args in (["evaluate", "--task", "exception", "--data", small_exception, "--model", tiny_teacher],
                 ["bench-model", tiny_teacher, "--data", small_exception, "--runs", "1", "--warmup", "0"]):
        rc, err = codekd_main(monkeypatch, capsys, *args, "--out", out)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "already exists" in err, err
        assert out.read_text() == "precious"
    rc, _ = codekd_main(monkeypatch, capsys, "evaluate", "--task", "exception", "--data", small_exception,
                        "--model", tiny_teacher, "--out", out, "--force")
    assert rc == 0 and json.loads(out.read_text())["split"] == "test"
