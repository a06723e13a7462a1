"""Issue 15, inputs: `vocab` checks every split, `results.jsonl` refuses bad bytes and duplicated records, and
the CLI turns every bad byte into one `path:line` line with exit status 2, having written nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codekd.data import DataError
from codekd.pipeline import make_vocab
from codekd.study import read_results

REC = '{"func": "int f(int a) { return a; }", "target": 0}\n'


def _data(root: Path, **splits: bytes) -> Path:
    root.mkdir()
    for split in ("train", "valid", "test"):
        (root / f"{split}.jsonl").write_bytes(splits.get(split, REC.encode() * 4))
    return root


def test_vocab_reads_and_checks_every_split(tmp_path):
    data = _data(tmp_path / "data", test=REC.encode() + b'{"func": "\xff"}\n')
    with pytest.raises(DataError, match=r"test.jsonl:2: not UTF-8"):
        make_vocab("defect", data, 300, tmp_path / "v")
    (data / "valid.jsonl").unlink()
    with pytest.raises(DataError, match="missing valid split file"):
        make_vocab("defect", data, 300, tmp_path / "v")
    assert not (tmp_path / "v").exists()


def _record(key: str) -> str:
    return json.dumps({"key": key, "cell": f"cell-{key}", "kind": "student", "metrics": {"accuracy": 0.5}}) + "\n"


def test_results_refuse_duplicates_and_bad_bytes(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text(_record("a") + _record("b"))
    assert [r["key"] for r in read_results(tmp_path)] == ["a", "b"]
    results.write_text(_record("a") + _record("b") + _record("a"))  # a copied line: the report counted it twice
    with pytest.raises(DataError, match=r"results.jsonl:3: a second record of cell 'cell-a' \(its first is at "
                                        r".*results.jsonl:1\)"):
        read_results(tmp_path)
    results.write_text(_record("a"))
    (tmp_path / "results-0of2.jsonl").write_text(_record("a"))  # the same cell in two shards' files
    with pytest.raises(DataError, match=r"results.jsonl:1: a second record"):
        read_results(tmp_path)
    (tmp_path / "results-0of2.jsonl").unlink()
    for payload, fragment in ((b"\xff\xfe" + _record("b").encode("utf-16-le"), "UTF-16"),
                              (_record("b").replace("cell-b", "\\ud800").encode(), "lone surrogate"),
                              (b"[" * 100_000, "nested too deep"), (b"\x80{}", "not UTF-8")):
        results.write_bytes(_record("a").encode() + payload + b"\n")
        with pytest.raises(DataError) as err:
            read_results(tmp_path)
        assert str(err.value).startswith(f"{results}:2: ") and fragment in str(err.value)
    results.write_bytes(b"\xef\xbb\xbf" + _record("a").encode().replace(b"\n", b"\r\n"))
    assert len(read_results(tmp_path)) == 1  # a BOM and CRLF line ends are fine


def _codekd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codekd", *args], capture_output=True, text=True, timeout=300)


def test_cli_exit_2_one_line_nothing_written(tmp_path, small_vocab):
    """The issue's lone surrogate left `out.partial/run.yaml` behind (a TypeError in the tokenizer); now every
    reader refuses it first."""
    data = _data(tmp_path / "data", test=REC.encode() + b'{"func": "\\ud800", "target": 0}\n')
    out = tmp_path / "out"
    res = _codekd("distill", "--task", "defect", "--data", str(data), "--student", "roberta-0.6m",
                  "--vocab", str(small_vocab), "--method", "ft", "--out", str(out))
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and f"{data / 'test.jsonl'}:2: bad JSON: a string holds a lone" in res.stderr
    assert not out.exists() and not out.with_name("out.partial").exists()
    (data / "test.jsonl").write_bytes(REC.encode() + b'{"func": "x", "target": ' + b"1" * 5000 + b"}\n")
    res = _codekd("vocab", "--task", "defect", "--data", str(data), "--size", "300", "--out", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and not out.exists()
    assert f"{data / 'test.jsonl'}:2: bad JSON: a number too long" in res.stderr


def test_config_file_with_bad_bytes_names_its_line(tmp_path):
    from codekd.cli import _load_config

    (tmp_path / "c.yaml").write_bytes(b"\xef\xbb\xbfepochs: 1\nlr: '\xff'\n")
    with pytest.raises(DataError, match=r"c.yaml:2: not UTF-8 text: byte 0xff"):
        _load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_bytes(b"\xef\xbb\xbfepochs: 1\n")  # a BOM is fine
    assert _load_config(tmp_path / "c.yaml") == {"epochs": 1}


STUDY = """name: s
data: {defect: DATA}
limit: {train: 2}
seeds: [1]
students: [roberta-0.6m]
methods: {ft: {}}
"""
YAML_PAYLOADS = (  # (line 3 of a YAML file, what the one-line refusal says)
    (b"x: '\xff'", "not UTF-8 text: byte 0xff"), (b'x: "\\ud800"', "surrogate escape"),
    (b"x: " + b"[" * 5000 + b"]" * 5000, "nested too deep"), (b"x: " + b"7" * 5000, "number too long"),
    (b"x: \x01", "character #x0001 is not allowed"), (b"x: [1]]", "bad YAML"), (b"x: \0", "a NUL byte"),
)


def test_study_file_bad_bytes_name_file_and_line(tmp_path):
    """The study file was read with `Path.read_text` and `yaml.safe_load`: a bad byte was a UnicodeDecodeError
    without a line, deep nesting a RecursionError traceback; now it goes through `codekd.data.text`."""
    from codekd.study_config import load_study

    text = STUDY.replace("DATA", str(Path(__file__).parent / "fixtures" / "data" / "study_defect")).encode()
    path = tmp_path / "s.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))  # a BOM and CRLF are fine
    assert load_study(path, tmp_path / "out").name == "s"
    lines = text.split(b"\n")
    for payload, fragment in YAML_PAYLOADS:
        path.write_bytes(b"\n".join([*lines[:2], payload, *lines[2:]]))
        with pytest.raises(DataError) as err:
            load_study(path, tmp_path / "out")
        assert str(err.value).startswith(f"{path}:3: ") and fragment in str(err.value), (payload[:10], err.value)
    path.write_bytes(b"\xff\xfe" + text.decode().encode("utf-16-le"))
    with pytest.raises(DataError, match=r"s.yaml:1: not UTF-8 text: the file is UTF-16"):
        load_study(path, tmp_path / "out")
    res = _codekd("study", str(path), "--out", str(tmp_path / "study"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "UTF-16" in res.stderr, res.stderr
    assert not (tmp_path / "study").exists()


def test_task_and_config_files_bad_bytes_name_file_and_line(tmp_path):
    from codekd.cli import _load_config
    from codekd.data.tasks import load_task_file

    task = b"name: t\ninput: code\nlabel: y\nlabels: [a, b]\nmetric: accuracy\n"
    path = tmp_path / "t.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + task)
    assert load_task_file(path).labels == ("a", "b")
    lines = task.split(b"\n")
    for payload, fragment in YAML_PAYLOADS:
        for read in (load_task_file, _load_config):
            path.write_bytes(b"\n".join([*lines[:2], payload, *lines[2:]]))
            with pytest.raises(DataError) as err:
                read(path)
            assert str(err.value).startswith(f"{path}:3: ") and fragment in str(err.value), (read, err.value)


def test_study_data_slice_reads_through_text(tmp_path):
    """`limit:` slices were cut with `open(encoding='utf-8')`: a bad byte was a UnicodeDecodeError traceback
    and blank lines counted as records. Now a bad byte names the original file and line, and a BOM, CRLF and
    blank lines are fine (blank lines are kept, so line numbers in the slice are the original's)."""
    from codekd.study import _data_for
    from codekd.study_config import load_study

    data = _data(tmp_path / "data", train=b"\xef\xbb\xbf" + (REC + "\n" + REC + REC).encode().replace(b"\n", b"\r\n"))
    (tmp_path / "s.yaml").write_text(STUDY.replace("DATA", str(data)))
    study = load_study(tmp_path / "s.yaml", tmp_path / "out")
    sliced = _data_for(study, "defect")
    assert (sliced / "train.jsonl").read_bytes() == (REC + "\n" + REC).encode()
    data2 = _data(tmp_path / "data2", train=REC.encode() + b'{"func": "\xff", "target": 0}\n' + REC.encode())
    (tmp_path / "s.yaml").write_text(STUDY.replace("DATA", str(data2)))
    study = load_study(tmp_path / "s.yaml", tmp_path / "out2")
    with pytest.raises(DataError, match=rf"{data2 / 'train.jsonl'}:2: not UTF-8 text: byte 0xff"):
        _data_for(study, "defect")
    assert not (tmp_path / "out2" / "data" / "defect").exists()


def test_model_directory_json_bad_bytes(tmp_path):
    """`codekd.json`, metrics and cache manifests were read with `json.load`: a crafted model directory gave a
    UnicodeDecodeError traceback."""
    from codekd.io import read_json

    (tmp_path / "codekd.json").write_bytes(b'{"task": "exception",\n "max_length": "\xff"}\n')
    with pytest.raises(DataError, match=r"codekd.json:2: not UTF-8 text"):
        read_json(tmp_path / "codekd.json")
    (tmp_path / "codekd.json").write_bytes(b'{"task": "exception",\n "max_length": ' + b"[" * 100_000 + b"\n")
    with pytest.raises(DataError, match=r"codekd.json:2: bad JSON: nested too deep"):
        read_json(tmp_path / "codekd.json")


def test_transfer_source_bad_bytes_name_file_and_line(tmp_path):
    """The `--transfer` reader decoded whole files and split them with `str.splitlines`: a bad byte had no line,
    a BOM broke the first record, deep nesting was a RecursionError traceback."""
    from codekd.data import get_task
    from codekd.data.unlabelled import load_unlabelled

    path = tmp_path / "transfer.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + REC.encode() + REC.encode().replace(b"\n", b"\r\n"))
    assert len(load_unlabelled(get_task("defect"), path)) == 2
    payloads = ((b'{"func": "\xff"}', "not UTF-8 text: byte 0xff"), (b"[" * 100_000, "nested too deep"),
                (b'{"func": "\\ud800"}', "lone surrogate"), (b'{"func": ' + b"7" * 5000 + b"}", "too long"))
    for payload, fragment in payloads:
        path.write_bytes(REC.encode() + payload + b"\n")
        with pytest.raises(DataError) as err:
            load_unlabelled(get_task("defect"), path)
        assert str(err.value).startswith(f"{path}:2: ") and fragment in str(err.value), err.value
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_bytes(b"def f():\n    return '\xff'\n")
    with pytest.raises(DataError, match=r"a.py:2: not UTF-8 text"):
        load_unlabelled(get_task("exception"), tmp_path / "src")
