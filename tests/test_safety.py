"""Issue 15, execution and outputs: planted checkpoints and model directories cannot run code, study names
cannot escape the study directory, outputs are never overwritten without --force, disk errors and
concurrent runs give one line."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
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
        build_student(custom_spec("gru", 400, 16, 1), 20).save_pretrained(path)  # the 20 exception classes
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
    (tmp_path / "work").mkdir()
    if field == "task":  # a data key that is a task file is read, not written; its task's name: is the path part
        from codekd.data.tasks import TASK_FILES

        text = (TASK_FILES / "exception.yaml").read_text(encoding="utf-8")
        (tmp_path / "work" / "evil.yaml").write_text(text.replace("name: exception", "name: ../escaped"))
        cfg["data"] = {"evil.yaml": str(small_exception)}
    (tmp_path / "work" / "study.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path / "work")
    rc, err = codekd_main(monkeypatch, capsys, "study", "study.yaml")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    # a task file refuses its own bad name, at its line
    assert "study.yaml: " in err and "'../" in err and ("evil.yaml:3: name" if field == "task" else "no '..'") in err
    written = sorted(p.name for p in tmp_path.rglob("*"))
    assert written == sorted(["study.yaml", "work"] + (["evil.yaml"] if field == "task" else []))  # nothing written


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


@pytest.mark.parametrize("command", ["vocab", "teacher", "distill", "export", "data exception"])
def test_an_output_directory_that_exists_is_refused_before_any_work(command, small_exception, small_vocab,
                                                                    tiny_teacher, tmp_path, monkeypatch, capsys):
    """Every command that writes a directory refuses an existing --out in one line, exit 2, having written nothing
    (`data exception` refused it only after reading every source, a minute here)."""
    if command == "export":
        pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("precious")
    args = {"vocab": ["vocab", "--task", "exception", "--data", small_exception, "--size", "300"],
            "teacher": ["teacher", "--task", "exception", "--data", small_exception, "--model", tiny_teacher],
            "distill": ["distill", "--task", "exception", "--data", small_exception, "--teacher", tiny_teacher,
                        "--student", "roberta-0.6m", "--vocab", small_vocab, "--method", "kd"],
            "export": ["export", "--model", tiny_teacher],
            "data exception": ["data", "exception", "--from", Path(__file__).parent / "fixtures"]}[command]
    before = _tree(tmp_path)
    rc, err = codekd_main(monkeypatch, capsys, *args, "--out", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and f"{out}: already exists" in err, err
    assert _tree(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _erofs(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def test_full_disk_while_training_is_one_line_and_leaves_no_temporaries(small_exception, small_vocab, tmp_path,
                                                                         monkeypatch, capsys):
    from codekd import train

    monkeypatch.setattr(train.torch, "save", _enospc)  # the first checkpoint finds the disk full
    rc, err = codekd_main(monkeypatch, capsys, "distill", "--task", "exception", "--data", small_exception,
                          "--student", GRU_CLI, "--vocab", small_vocab, "--method", "ft", "--out", tmp_path / "run",
                          "--epochs", "1", "--max-length", "64")
    last = err.strip().splitlines()[-1]  # after the epoch's progress lines
    assert rc == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    assert last.startswith(f"error: {tmp_path / 'run.partial' / 'checkpoint.pt'}: cannot write") and "ENOSPC" in last
    assert list(tmp_path.iterdir()) == []  # no OUT.partial (nothing resumable in it), no temporary, no lock


@pytest.mark.parametrize("command", ["vocab", "evaluate"])
def test_read_only_output_is_one_line(command, small_exception, tiny_teacher, tmp_path, monkeypatch, capsys):
    import codekd.io

    monkeypatch.setattr(codekd.io.tempfile, "mkdtemp", _erofs)  # every output goes through a temporary
    monkeypatch.setattr(codekd.io.tempfile, "mkstemp", _erofs)
    out = tmp_path / ("vocab" if command == "vocab" else "eval.json")
    args = {"vocab": ["vocab", "--task", "exception", "--data", small_exception, "--size", "300"],
            "evaluate": ["evaluate", "--task", "exception", "--data", small_exception, "--model", tiny_teacher]}
    rc, err = codekd_main(monkeypatch, capsys, *args[command], "--out", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{out}: cannot write" in err and "EROFS" in err and "read-only" in err
    assert list(tmp_path.iterdir()) == []


def test_safetensors_disk_errors_are_recognised():
    from codekd.io import DiskError, disk_error

    e = disk_error(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "m")
    assert isinstance(e, DiskError) and str(e).startswith("m: cannot write: No space left on device (ENOSPC)")
    assert disk_error(OSError(errno.ENOENT, "gone")) is None


@pytest.fixture
def teacher_data(tiny_teacher, small_exception):
    from codekd.data import load_split
    from codekd.encoding import EncodedData, encode_view
    from codekd.models.teacher import load_model_dir

    model, tok, spec = load_model_dir(tiny_teacher)
    examples = load_split("exception", small_exception, "train", spec.whitespace)
    return model, EncodedData([ex.label for ex in examples], {"teacher0": encode_view(tok, examples, spec)})


def test_cache_short_of_disk_space_falls_back_to_the_live_teacher(teacher_data, tmp_path, monkeypatch, capfd):
    import shutil

    import codekd.cache as cache

    model, data = teacher_data
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**5, 10**5))
    assert cache.build_cache(model, data, "teacher0", ["logits", "hidden_states"], tmp_path / "c") is None
    out = " ".join("".join(capfd.readouterr()).split())  # the console wraps at 160 columns: long paths break lines
    assert "free on" in out and "the teacher runs live" in out
    assert list(tmp_path.iterdir()) == []  # no temporary, no cache, no lock


def test_cache_disk_full_mid_build_is_one_line_and_removes_the_temporary(teacher_data, tmp_path, monkeypatch):
    import codekd.cache as cache
    from codekd.io import DiskError

    model, data = teacher_data
    monkeypatch.setattr(cache.os, "posix_fallocate", _enospc)  # the blocks cannot be reserved
    with pytest.raises(DiskError, match=r"c: cannot write: No space left on device \(ENOSPC\)"):
        cache.build_cache(model, data, "teacher0", ["logits", "hidden_states"], tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_second_build_of_a_cache_key_waits_and_reuses_the_first(teacher_data, tmp_path, capfd):
    import threading

    from filelock import FileLock

    import codekd.cache as cache

    model, data = teacher_data
    path, calls = tmp_path / "c", []
    model.register_forward_hook(lambda *a: calls.append(threading.current_thread().name))
    first = FileLock(tmp_path / ".c.lock")
    first.acquire()  # the first build holds the key's lock
    second: list = []
    waiter = threading.Thread(name="second", target=lambda: second.append(
        cache.build_cache(model, data, "teacher0", ["logits"], path)))
    waiter.start()
    waiter.join(2.0)
    assert waiter.is_alive() and not path.exists()  # it waits
    cache._build(model, data, "teacher0", ["logits"], path, "fp16", 2**30, 64, "fp32", None, None, {})  # the 1st build
    first.release()
    waiter.join(60)
    assert second[0].path == path and "second" not in calls  # reused: the second ran no teacher forward
    assert "waiting for another codekd process" in capfd.readouterr().err


def test_second_run_on_the_same_out_exits_at_once_and_the_lock_dies_with_its_holder(small_exception, small_vocab,
                                                                                    tmp_path, monkeypatch, capsys):
    import subprocess
    import time

    from filelock import FileLock

    lock = tmp_path / ".run.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; from filelock import FileLock; "
                               f"held = FileLock({str(lock)!r}); held.acquire(); print('held', flush=True); "
                               "time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    rc, err = codekd_main(monkeypatch, capsys, "distill", "--task", "exception", "--data", small_exception,
                          "--student", GRU_CLI, "--vocab", small_vocab, "--method", "ft", "--out", tmp_path / "run",
                          "--epochs", "1", "--max-length", "64", "--resume")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "in use by another codekd process" in err and time.monotonic() - started < 60
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
    holder.kill()
    holder.wait()
    after = FileLock(lock)
    after.acquire(timeout=5)  # a Timeout if the dead holder's lock had outlived it
    after.release()


def test_force_replaces_only_an_earlier_output_of_the_same_command(small_exception, small_vocab, tiny_encoder,
                                                                   tiny_teacher, tmp_path, monkeypatch, capsys):
    """`--force` on the commands that write directories (vocab, teacher, distill, export, data exception):
    an earlier output of that command is replaced once the new one is complete; any other directory is kept."""
    import json
    import shutil

    from test_builder import _tree as sources

    foreign = tmp_path / "mine"
    (foreign / "keep").mkdir(parents=True)
    cases = {
        "vocab": ["vocab", "--task", "exception", "--data", small_exception, "--size", "300"],
        "teacher": ["teacher", "--task", "exception", "--data", small_exception, "--model", tiny_encoder,
                    "--epochs", "1", "--max-length", "32", "--batch-size", "32"],
        "data exception": ["data", "exception", *sum((["--from", s] for s in sources(tmp_path / "src")), []),
                           "--any-licence"],
    }
    for name, args in cases.items():
        out = tmp_path / name.replace(" ", "-")
        assert codekd_main(monkeypatch, capsys, *args, "--out", out)[0] == 0
        before = _tree(out)
        rc, err = codekd_main(monkeypatch, capsys, *args, "--out", foreign, "--force")
        assert rc == 2 and "not an output of this command" in err and (foreign / "keep").is_dir(), err
        rc, err = codekd_main(monkeypatch, capsys, *args, "--out", out, "--force")
        assert rc == 0, err
        assert sorted(_tree(out)) == sorted(before) and not list(tmp_path.glob(f".{out.name}*"))
        assert not out.with_name(out.name + ".partial").exists()
    assert json.loads((tmp_path / "teacher" / "metrics.json").read_text())["method"] == "ft"
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_teacher, run_dir)
    rc, err = codekd_main(monkeypatch, capsys, *cases["vocab"], "--out", run_dir, "--force")  # a model, not a vocab
    assert rc == 2 and "not an output of this command" in err and (run_dir / "model.safetensors").is_file()
    rc, err = codekd_main(monkeypatch, capsys, "distill", "--task", "exception", "--data", small_exception,
                          "--teacher", tiny_teacher, "--student", "roberta-0.6m", "--vocab", small_vocab,
                          "--method", "kd", "--epochs", "1", "--max-length", "32", "--batch-size", "32",
                          "--out", run_dir, "--force")
    assert rc == 0 and json.loads((run_dir / "metrics.json").read_text())["method"] == "kd", err
    if importlib.util.find_spec("onnxruntime"):
        out = tmp_path / "onnx"
        for force in ([], ["--force"]):
            rc, err = codekd_main(monkeypatch, capsys, "export", "--model", tiny_teacher, "--out", out, *force)
            assert rc == 0 and (out / "onnx.json").is_file(), err
