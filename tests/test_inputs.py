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
