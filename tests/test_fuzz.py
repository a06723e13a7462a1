"""Fuzzing every reader of user files (issue 15): the four data layouts, `results.jsonl`, `predict`'s input, study
files and task files, each over seeded random mutations of valid files — truncation, byte flips, a BOM, CRLF
line ends, UTF-16, invalid UTF-8, NUL bytes, lone surrogate escapes, deep nesting, huge numbers, repeated and
dropped lines.

Each mutated file must be accepted, or refused with a `DataError` naming a file of the input and (except for
whole-file problems, such as an empty split) its line: never another exception. Readers run in-process."""

import json
import random
import shutil
from pathlib import Path

import pytest

from codekd.data import DataError, get_task, load_splits
from codekd.predict import read_jsonl
from codekd.study import read_results

FIXTURES = Path(__file__).parent / "fixtures" / "data"
LAYOUTS = {"study_defect": "defect", "cubert": "exception", "devign": "defect", "bigclonebench": "clone"}
PER_READER = 100  # 8 readers: 800 mutated inputs
WHOLE_FILE = ("split has no records", "missing", "expected a JSON array", "does not exist")


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """`data` with one to three random mutations."""
    for _ in range(rng.randint(1, 3)):
        lines = data.split(b"\n")
        i = rng.randrange(len(lines))
        kind = rng.randrange(12)
        if kind == 0 and data:
            data = data[: rng.randrange(len(data))]  # truncated
        elif kind == 1 and data:
            pos = rng.randrange(len(data))
            data = data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1:]  # a byte changed
        elif kind == 2:
            data = b"\xef\xbb\xbf" + data
        elif kind == 3:
            data = data.replace(b"\n", b"\r\n")
        elif kind == 4:
            data = data.decode("utf-8", "replace").encode("utf-16")
        elif kind == 5:
            lines[i] = lines[i][: len(lines[i]) // 2] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\0"]) \
                + lines[i][len(lines[i]) // 2:]
        elif kind == 6:
            lines[i] = lines[i].replace(b'": "', b'": "\\ud800', 1) if rng.random() < 0.8 else b'"\\udfff"'
        elif kind == 7:
            depth = rng.choice([999, 5_000, 200_000])
            lines[i] = b"[" * depth + b"]" * depth * rng.randint(0, 1)
        elif kind == 8:
            digits = b"7" * rng.choice([20, 4_000, 5_000])
            lines[i] = lines[i].replace(b"0", digits, 1).replace(b"1", digits, 1) if lines[i] else digits
        elif kind == 9:
            lines.insert(i, lines[i])  # a repeated line
        elif kind == 10:
            del lines[i]
        else:
            lines[i] = json.dumps(rng.choice([None, 3, "x", [1], {"func": 1}, {"func": "", "target": 0}])).encode()
        if kind >= 5:
            data = b"\n".join(lines)
    return data


def _check_refusal(err: DataError, root: Path) -> None:
    assert err.path == root or root in err.path.parents, err
    assert str(err).startswith(f"{err.path}:"), err
    assert err.line is not None or any(w in err.what for w in WHOLE_FILE), err
    assert len(str(err)) < 1000 and "\n" not in err.what, err


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_data_readers_accept_or_refuse_with_path_and_line(layout, tmp_path):
    rng = random.Random(f"data-{layout}")
    outcomes = {"accepted": 0, "refused": 0}
    for k in range(PER_READER):
        root = tmp_path / str(k)
        shutil.copytree(FIXTURES / layout, root)
        victim = rng.choice(_files(root))
        victim.write_bytes(_mutate(victim.read_bytes(), rng))
        try:
            load_splits(LAYOUTS[layout], root)
            outcomes["accepted"] += 1
        except DataError as e:
            _check_refusal(e, root)
            outcomes["refused"] += 1
    assert outcomes["accepted"] > 0 and outcomes["refused"] > PER_READER // 2, outcomes


def _record(i: int) -> bytes:
    return json.dumps({"key": f"k{i}", "cell": f"exception.t.s.ft.s{i}", "kind": "student",
                       "metrics": {"accuracy": 0.5, "n": 10}, "seed": i}).encode()


def test_results_reader_accepts_or_refuses_with_path_and_line(tmp_path):
    rng = random.Random("results")
    refused = 0
    for k in range(PER_READER):
        root = tmp_path / str(k)
        root.mkdir()
        (root / "results.jsonl").write_bytes(_mutate(b"\n".join(_record(i) for i in range(4)) + b"\n", rng))
        try:
            read_results(root)
        except DataError as e:
            _check_refusal(e, root)
            refused += 1
    assert 0 < refused < PER_READER


@pytest.mark.parametrize("task, pair", [("exception", False), ("clone", True)])
def test_predict_input_reader_sees_every_line(task, pair, tmp_path):
    """Every line is its own input or its own refusal: a bad one never hides the lines after it."""
    rng = random.Random(f"predict-{task}")
    base = FIXTURES / ("study_clone" if pair else "cubert") / "train.jsonl"
    for k in range(PER_READER // 2):
        path = tmp_path / f"{k}.jsonl"
        path.write_bytes(_mutate(base.read_bytes(), rng))
        with path.open("rb") as f:
            items = list(read_jsonl(f, str(path), get_task(task), "collapse"))
        lines = [item.line if isinstance(item, DataError) else item[0]["line"] for item in items]
        raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")
        assert lines == [n for n, text in enumerate(raw, 1) if text.decode("utf-8", "replace").strip()]
        for item in items:
            if isinstance(item, DataError):
                _check_refusal(item, path.parent)
                assert item.line is not None


STUDY_FILE = """# a study file
name: fuzz
data: {defect: DATA}
limit: {train: 2, valid: 2, test: 2}
seeds: [1, 2]
teachers:
  t: {dir: DATA}
students: [roberta-0.6m, gru-1.5m]
train: {epochs: 1, lr: 1e-3, batch_size: 16}
methods:
  ft: {}
  kd: {hparams: {temperature: 4.0, alpha: 0.5}}
"""
TASK_FILE = """name: smell
input: source
label: smell
labels: [clean, long-method, god-class]
metric: macro_f1
positive: god-class
k: 2
aliases: {source: [code]}
"""


def _yaml_outcome(read, path: Path) -> str:
    """'accepted', or 'refused' with a `DataError` at `path:line` or a `ValueError` naming the file (a study
    file's wrong option names the option instead of a line); any other exception fails the test."""
    try:
        read(path)
        return "accepted"
    except DataError as e:
        _check_refusal(e, path.parent)
        assert e.line is not None, e
    except ValueError as e:
        assert str(e).startswith(f"{path}:") and "\n" not in str(e) and len(str(e)) < 1000, e
    return "refused"


@pytest.mark.parametrize("kind", ["study", "task"])
def test_study_and_task_file_readers_accept_or_refuse_with_path(kind, tmp_path, monkeypatch):
    from codekd.data.tasks import load_task_file
    from codekd.study_config import load_study

    monkeypatch.chdir(tmp_path)  # the data path is `d`, so the mutations are the same on every machine
    (tmp_path / "d").symlink_to(FIXTURES / "study_defect")
    base = (STUDY_FILE.replace("DATA", "d") if kind == "study" else TASK_FILE).encode()
    read = (lambda p: load_study(p, tmp_path / "out")) if kind == "study" else load_task_file
    rng = random.Random(f"yaml-{kind}")
    outcomes = {"accepted": 0, "refused": 0}
    for k in range(PER_READER):
        path = tmp_path / f"{k}.yaml"
        path.write_bytes(_mutate(base, rng))
        outcomes[_yaml_outcome(read, path)] += 1
    assert outcomes["accepted"] > 0 and outcomes["refused"] > PER_READER // 4, outcomes
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field", ["students: [roberta-{}.6m]", "methods: {{kd: {{hparams: {{temperature: x{}}}}}}}",
                                   "methods: {{kd: {{hparams: {{t{}: 1}}}}}}", "train: {{lr_scheduler_type: s{}}}"])
def test_a_huge_value_is_shown_cut_in_the_error(field, tmp_path, monkeypatch):
    """A 900-character value in a study file (the fuzz found a 5,000-character one; a YAML key stops at
    1,024) is quoted in a short, one-line error."""
    from codekd.study_config import load_study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").symlink_to(FIXTURES / "study_defect")
    valid = {"name": "fuzz", "data": "{defect: d}", "seeds": "[1]", "teachers": "{t: {dir: d}}",
             "students": "[roberta-0.6m]", "methods": "{ft: {}}"}
    valid[field.split(":")[0]] = field.split(": ", 1)[1].format("7" * 900)
    path = tmp_path / "study.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in valid.items()))
    with pytest.raises(ValueError) as e:
        load_study(path, tmp_path / "out")
    assert str(e.value).startswith(f"{path}:") and "\n" not in str(e.value) and len(str(e.value)) < 400, e.value
    assert "..." in str(e.value) and not (tmp_path / "out").exists()
