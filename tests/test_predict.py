"""`codekd predict` and `Predictor`: the same labels as evaluation (argmax of `codekd.train.predict`) from
JSONL, raw files and stdin; every bad input names its line; `--skip-bad` reports and goes on."""

import json

import numpy as np
import pytest
import typer
from transformers import AutoTokenizer
from typer.testing import CliRunner

from codekd.data import DataError, get_task, load_split
from codekd.encoding import EncodedData, InputSpec, encode_view
from codekd.models import build_student, custom_spec
from codekd.models.teacher import load_model_dir
from codekd.pipeline import distill
from codekd.predict import CHUNK_BATCHES, Predictor, predict_command
from codekd.train import TrainConfig, predict

SPECS = {"roberta": custom_spec("roberta", 400, 16, 2, 2, 32), "gru": custom_spec("gru", 400, 16, 2)}


@pytest.fixture(scope="module", params=list(SPECS))
def student(request, small_exception, small_vocab, tmp_path_factory):
    """A tiny student trained for one epoch on `small_exception` (so its predictions are not all alike)."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    distill("exception", small_exception, SPECS[request.param], small_vocab, "ft", out,
            TrainConfig(epochs=1, lr=3e-3, batch_size=16), max_length=64)
    return out


@pytest.fixture(scope="module")
def clone_model(small_vocab, tmp_path_factory):
    """A tiny random clone-detection (pair) model directory."""
    tok = AutoTokenizer.from_pretrained(small_vocab)
    path = tmp_path_factory.mktemp("clone") / "model"
    build_student(SPECS["gru"], 2, vocab_size=len(tok), max_positions=66).save_pretrained(path)
    tok.save_pretrained(path)
    InputSpec("clone", 64).save(path)
    return path


def _cli(*args: str, input: str | None = None):
    app = typer.Typer()
    app.command("predict")(predict_command)
    app.command("unused")(lambda: None)  # two commands, so "predict" is a subcommand as in codekd's CLI
    return CliRunner().invoke(app, ["predict", *args], input=input)


def _expected(model_dir, data) -> tuple[list[str], np.ndarray]:
    """What `codekd evaluate` predicts: argmax of `codekd.train.predict` on the test split, and the probabilities."""
    model, tok, spec = load_model_dir(model_dir)
    examples = load_split("exception", data, "test", whitespace=spec.whitespace)
    probs = predict(model, EncodedData([ex.label for ex in examples], {"student": encode_view(tok, examples, spec)}))
    return [get_task("exception").labels[i] for i in probs.argmax(1)], probs


def _labels(stdout: str) -> list[str]:
    return [json.loads(line)["label"] for line in stdout.splitlines()]


def test_jsonl_raw_files_and_stdin_match_evaluate(student, small_exception, tmp_path):
    expected, probs = _expected(student, small_exception)
    labels = get_task("exception").labels
    test_file = small_exception / "test.jsonl"
    res = _cli("--model", str(student), "--input", str(test_file), "--top-k", "20")
    assert res.exit_code == 0, res.output
    assert _labels(res.stdout) == expected
    got = [json.loads(line)["probs"] for line in res.stdout.splitlines()]
    np.testing.assert_allclose([[p[c] for c in labels] for p in got], probs, atol=1e-6)

    stdin = _cli("--model", str(student), "--task", "exception", input=test_file.read_text())
    assert _labels(stdin.stdout) == expected
    first = json.loads(stdin.stdout.splitlines()[0])
    assert len(first["probs"]) == 3 and list(first["probs"])[0] == first["label"]
    assert list(first["probs"].values()) == sorted(first["probs"].values(), reverse=True)

    files = []
    for i, line in enumerate(test_file.read_text().splitlines()):
        files.append(tmp_path / f"f{i:02d}.py")
        files[-1].write_text(json.loads(line)["function"], encoding="utf-8")
    raw = _cli("--model", str(student), "--batch-size", "7", *map(str, files))
    assert _labels(raw.stdout) == expected

    functions = [json.loads(line)["function"] for line in test_file.read_text().splitlines()]
    api = Predictor.from_pretrained(student)(functions)
    assert [r["label"] for r in api] == expected


BAD = {
    "not JSON": ("{not json", "bad JSON"),
    "not an object": ("[1, 2]", "expected a JSON object, got list"),
    "missing field": (json.dumps({"code": "def f(): pass"}), "missing field 'func' (or 'function')"),
    "empty code": (json.dumps({"func": "  \n "}), "field 'func' is empty"),
    "not a string": (json.dumps({"function": 3}), "field 'function' must be a string"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_line_names_its_line(case, student, tmp_path):
    line, what = BAD[case]
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"func": "def f():\n    raise __HOLE__"}) + "\n\n" + line + "\n")
    res = _cli("--model", str(student), "--input", str(path))
    assert isinstance(res.exception, DataError) and res.stdout == ""
    assert str(res.exception).startswith(f"{path}:3: ") and what in str(res.exception)


def test_skip_bad_reports_each_bad_line_and_predicts_the_rest(student, tmp_path):
    good = json.dumps({"func": "def f():\n    raise __HOLE__"})
    lines = [good, BAD["not JSON"][0], good, BAD["empty code"][0], BAD["missing field"][0], good]
    res = _cli("--model", str(student), "--skip-bad", input="\n".join(lines) + "\n")
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 3
    reports = res.stderr.splitlines()
    assert len(reports) == 3
    for report, (n, case) in zip(reports, ((2, "not JSON"), (4, "empty code"), (5, "missing field")), strict=True):
        assert report.startswith(f"skipped <stdin>:{n}: ") and BAD[case][1] in report


def test_clone_pairs(clone_model, tmp_path):
    pair = {"func1": "def f(a): return a", "func2": "def g(b): return b"}
    res = _cli("--model", str(clone_model), input=json.dumps(pair) + "\n" + json.dumps({"func1": "x = 1"}) + "\n")
    assert isinstance(res.exception, DataError) and str(res.exception) == "<stdin>:2: missing field 'func2'"
    out = Predictor.from_pretrained(clone_model)([(pair["func1"], pair["func2"])])
    assert set(out[0]["probs"]) == {"not-clone", "clone"} and sum(out[0]["probs"].values()) == pytest.approx(1)
    with pytest.raises(ValueError, match="takes \\(code1, code2\\) pairs"):
        Predictor.from_pretrained(clone_model)(["def f(): pass"])
    (tmp_path / "a.py").write_text("def f(): pass")
    res = _cli("--model", str(clone_model), str(tmp_path / "a.py"))
    assert "single-function tasks only" in str(res.exception)


def test_refusals(student, tmp_path):
    res = _cli("--model", str(student), "--task", "defect", input="")
    assert "--task defect: the model at" in str(res.exception) and "'exception'" in str(res.exception)
    assert str(_cli("--model", str(student), input="\n\n").exception) == "no functions to predict: the input is empty"
    assert Predictor.from_pretrained(student)([]) == []
    (tmp_path / "empty.py").write_text(" \n")
    res = _cli("--model", str(student), str(tmp_path / "empty.py"))
    assert str(res.exception) == f"{tmp_path / 'empty.py'}: no code (the file is empty)"
    with pytest.raises(ValueError, match="input item 1: field 'func' is empty"):
        Predictor.from_pretrained(student)(["def f(): pass", ""])
    with pytest.raises(FileNotFoundError, match="neither model.onnx"):
        Predictor.from_pretrained(tmp_path)


# --- issue 15: bad bytes, exact skipping, line numbers, streaming ------------------------------------------

GOOD = json.dumps({"func": "def f():\n    raise __HOLE__"}).encode()
BAD_BYTES = {5: b'{"func": "def f(): \xff"}', 8: b'{"func": "\\ud800"}',
             10: b'{"func": "x", "n": ' + b"9" * 5000 + b"}", 11: b"[" * 200_000}


def _payload(n: int = 12) -> bytes:
    lines = [BAD_BYTES.get(i, json.dumps({"func": f"def f{i}():\n    raise __HOLE__", "id": f"f{i}"}).encode()
                           if i % 3 == 0 else GOOD) for i in range(1, n + 1)]
    return b"\n".join(lines) + b"\n"


def test_skip_bad_skips_exactly_the_bad_lines_and_keeps_line_numbers(student, tmp_path):
    """Before: an invalid byte on stdin ended the input there (the good lines after it were dropped, exit 0);
    a lone surrogate crashed the tokenizer; a 5000-digit number was not skipped; outputs had no line numbers."""
    res = _cli("--model", str(student), "--skip-bad", "--batch-size", "2", input=_payload())
    assert res.exit_code == 0, res.output
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3, 4, 6, 7, 9, 12]
    assert [o.get("id") for o in out] == [None, None, "f3", None, "f6", None, "f9", "f12"]
    reports = res.stderr.splitlines()
    assert [r.split(":")[1] for r in reports] == ["5", "8", "10", "11"]
    whats = ("not UTF-8", "lone surrogate", "number too long", "nested too deep")
    for report, what in zip(reports, whats, strict=True):
        assert report.startswith("skipped <stdin>:") and what in report and len(report) < 300


def test_a_bad_file_prints_nothing_and_stdin_stops_at_its_bad_line(student, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(_payload())
    res = _cli("--model", str(student), "--input", str(path))
    assert isinstance(res.exception, DataError) and res.stdout == ""  # the whole file is checked first
    assert str(res.exception).startswith(f"{path}:5: not UTF-8 text")
    res = _cli("--model", str(student), "--batch-size", "1", input=_payload())
    assert str(res.exception).startswith("<stdin>:5: not UTF-8 text")
    assert [json.loads(line)["line"] for line in res.stdout.splitlines()] == [1, 2, 3, 4]
    (tmp_path / "a.py").write_bytes(b"def f():\n    raise __HOLE__\n")
    (tmp_path / "b.py").write_bytes(b"\xef\xbb\xbfdef g():\r\n    raise __HOLE__\r\n")  # a BOM and CRLF: fine
    (tmp_path / "c.py").write_bytes(b"def h():\n    x = '\xe9'\n")
    res = _cli("--model", str(student), "--skip-bad", *(str(tmp_path / n) for n in ("a.py", "b.py", "c.py")))
    files = [json.loads(line)["file"] for line in res.stdout.splitlines()]
    assert files == [str(tmp_path / n) for n in ("a.py", "b.py")]
    assert res.stderr.startswith(f"skipped {tmp_path / 'c.py'}:2: not UTF-8 text: byte 0xe9")


def test_predict_streams_with_bounded_reading(student, monkeypatch, capsys):
    """Each chunk's predictions are printed before the rest of the input is read (no timing involved: the input
    fails after 3 chunks' lines, and by then those 3 chunks' results must be out)."""
    chunk = 2 * CHUNK_BATCHES

    def lines():
        for _ in range(3 * chunk):
            yield GOOD + b"\n"
        raise RuntimeError("input cut")

    monkeypatch.setattr("sys.stdin", type("Stdin", (), {"buffer": lines()})())
    with pytest.raises(RuntimeError, match="input cut"):
        predict_command(model=student, files=None, task=None, input_=None, top_k=3, batch_size=2, skip_bad=False,
                        trust_remote_code=False)
    assert [json.loads(line)["line"] for line in capsys.readouterr().out.splitlines()] == list(range(1, 3 * chunk + 1))
