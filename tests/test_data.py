"""Tests of codekd.data: task metrics, the readers for every supported layout, their error messages,
the real datasets in ../shared/data (skipped when absent) and the shipped demo slice."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from codekd.data import (
    SPLITS,
    TASKS,
    DataError,
    demo_data_dir,
    get_task,
    load_split,
    load_splits,
    normalize_code,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def one_hot_probs(preds: list[int], n_classes: int) -> np.ndarray:
    probs = np.full((len(preds), n_classes), 0.1 / n_classes)
    probs[np.arange(len(preds)), preds] = 0.9
    return probs


# --- tasks and metrics ---------------------------------------------------------------------------


def test_binary_metrics_hand_computed():
    # gold 1,1,0,0 vs predicted 1,1,0,1: tp=2 fp=1 fn=0 -> P=2/3, R=1, F1=0.8, accuracy 3/4
    m = get_task("defect").metrics([1, 1, 0, 0], one_hot_probs([1, 1, 0, 1], 2))
    assert m == pytest.approx({"n": 4, "accuracy": 0.75, "precision": 2 / 3, "recall": 1.0, "f1": 0.8})
    assert get_task("defect").headline == "accuracy" and get_task("clone").headline == "f1"
    assert get_task("clone").metrics([1, 1, 0, 0], one_hot_probs([1, 1, 0, 1], 2))["f1"] == pytest.approx(0.8)


def test_binary_metrics_no_positive_prediction_is_zero_not_error():
    m = get_task("clone").metrics([1, 0], one_hot_probs([0, 0], 2))
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 0.5


def test_multiclass_metrics_hand_computed():
    task = get_task("exception")
    probs = np.zeros((5, 20))
    ranked = [[0, 5, 6], [1, 5, 6], [2, 5, 6], [0, 3, 6], [0, 5, 6, 4]]  # classes by falling probability
    for row, classes in enumerate(ranked):
        probs[row, classes] = [0.5, 0.3, 0.1, 0.05][: len(classes)]
    m = task.metrics([0, 1, 2, 3, 4], probs)
    # top-1 predictions 0,1,2,0,0: class F1s 0.5, 1, 1, 0, 0 and 0 for the 15 unseen classes -> 2.5 / 20
    assert m == pytest.approx({"n": 5, "accuracy": 0.6, "macro_f1": 0.125, "top3_accuracy": 0.8})
    assert task.headline in m


def test_tasks_and_labels():
    assert set(TASKS) == {"defect", "clone", "exception"}
    assert [t.pair for t in TASKS.values()] == [False, True, False]
    labels = get_task("exception").labels
    assert len(labels) == 20 and labels[:3] == ("ValueError", "KeyError", "AttributeError")
    assert labels[-1] == "NameError" and labels.index("DoesNotExist") == 8
    with pytest.raises(ValueError, match="defect, clone, exception"):
        get_task("summarize")
    with pytest.raises(ValueError, match="shape"):
        get_task("defect").metrics([0, 1], np.zeros((2, 3)))


# --- reading every layout ------------------------------------------------------------------------


def test_study_jsonl_single_int_labels():
    data = load_splits("defect", FIXTURES / "study_defect")
    assert {s: len(v) for s, v in data.items()} == {"train": 3, "valid": 1, "test": 2}
    assert [e.label for e in data["train"]] == [0, 1, 1]
    assert data["train"][0].code == "int add(int a, int b) { return a + b; }"
    assert data["train"][0].code2 is None
    assert data["train"][2].source.endswith("train.jsonl:4")  # line 3 is blank and skipped


def test_study_jsonl_pairs():
    train = load_split("clone", FIXTURES / "study_clone", "train")
    assert [e.label for e in train] == [1, 0]
    assert train[0].code2 == "int larger(int x, int y) { if (x > y) return x; return y; }"


def test_study_jsonl_class_names_and_indices():
    data = load_splits(get_task("exception"), FIXTURES / "study_exception")
    assert [e.label for e in data["train"]] == [4, 1, 0]  # "OSError", "KeyError", 0
    assert data["valid"][0].label == 2 and data["test"][0].label == 10


def test_devign_function_json_with_index_files():
    data = load_splits("defect", FIXTURES / "devign")
    assert [e.label for e in data["train"]] == [0, 1]
    assert data["train"][0].code == "int neg(int x) { return -x; }"
    assert data["train"][1].code == "void leak(void) { malloc(16); }"
    assert data["train"][1].source.endswith("train.txt:2")
    assert len(data["valid"]) == 1 and [e.label for e in data["test"]] == [1, 0]


def test_bigclonebench_data_jsonl_with_pair_files():
    data = load_splits("clone", FIXTURES / "bigclonebench")
    assert [e.label for e in data["train"]] == [1, 0, 0]
    first = data["train"][0]
    assert first.code.startswith("int sum(int[] xs) { int s = 0;") and first.code2.startswith("int total(")
    assert len(data["valid"]) == 1 and data["test"][0].code.startswith("int total(")


def test_cubert_jsonl_dev_split_and_shards():
    data = load_splits("exception", FIXTURES / "cubert")
    assert [e.label for e in data["train"]] == [6, 7]  # ImportError, IndexError
    assert data["valid"][0].label == 0 and data["valid"][0].source.endswith("dev.jsonl:1")
    assert [e.label for e in data["test"]] == [1, 9]  # shards concatenated in sorted order


def test_eval_is_accepted_for_valid(tmp_path):
    (tmp_path / "eval.jsonl").write_text('{"func": "int f();", "target": 1}\n')
    assert load_split("defect", tmp_path, "valid")[0].label == 1


def test_whitespace_collapse_and_keep():
    keep = load_split("defect", FIXTURES / "study_defect", "train", whitespace="keep")
    assert keep[0].code == "int add(int a, int b)\n{\n    return a + b;\n}\n"
    assert normalize_code(" a\n\t b  ", "collapse") == "a b"
    assert normalize_code(" a\n b", "keep") == " a\n b"
    with pytest.raises(ValueError, match="whitespace"):
        load_split("defect", FIXTURES / "study_defect", "train", whitespace="strip")
    with pytest.raises(ValueError, match="split"):
        load_split("defect", FIXTURES / "study_defect", "dev")


# --- bad input: every DataError names the file and the 1-based line --------------------------------

GOOD = '{"func": "int f();", "target": 0}\n'
DATA_JSONL = '{"func": "void a() {}", "idx": "1"}\n{"func": "void b() {}", "idx": "2"}\n'
DEVIGN_JSON = '[{"func": "int f();", "target": 0}, {"func": "int g();"}]'

BCB = {"data.jsonl": DATA_JSONL}
DEV = {"function.json": DEVIGN_JSON}
T = "train.jsonl"
BAD_CASES = {  # name: (task, files to write, "file:line" the message must start with, part of the message)
    "bad json": ("defect", {T: GOOD + '{"func": \n'}, "train.jsonl:2", "bad JSON"),
    "not an object": ("defect", {T: GOOD + "[1, 2]\n"}, "train.jsonl:2", "JSON object"),
    "missing field": ("defect", {T: GOOD + '{"func": "g"}\n'}, "train.jsonl:2", "'target'"),
    "missing pair field": ("clone", {T: '{"func1": "a", "target": 1}'}, "train.jsonl:1", "'func2'"),
    "label out of range": ("defect", {T: '{"func": "x", "target": 2}'}, "train.jsonl:1", "label 2"),
    "bool label": ("defect", {T: '{"func": "x", "target": true}'}, "train.jsonl:1", "label True"),
    "bad class": ("exception", {"dev.jsonl": '{"function": "f", "label": "FooError"}'}, "dev.jsonl:1", "Foo"),
    "empty code": ("defect", {T: '\n{"func": " \\n\\t ", "target": 0}'}, "train.jsonl:2", "empty"),
    "code not a string": ("defect", {T: '{"func": 5, "target": 0}'}, "train.jsonl:1", "string"),
    "unknown pair id": ("clone", {**BCB, "train.txt": "1\t2\t1\n2\t999\t0\n"}, "train.txt:2", "'999'"),
    "pair line fields": ("clone", {**BCB, "train.txt": "1\t2\n"}, "train.txt:1", "idx1<TAB>"),
    "pair label": ("clone", {**BCB, "train.txt": "1\t2\t1\n1\t2\t2\n"}, "train.txt:2", "label"),
    "bad data.jsonl record": (
        "clone",
        {"data.jsonl": DATA_JSONL + '{"func": "c"}', "train.txt": "1\t2\t1"},
        "data.jsonl:3",
        "'idx'",
    ),
    "devign index range": ("defect", {**DEV, "train.txt": "0\n2\n"}, "train.txt:2", "out of range"),
    "devign index not int": ("defect", {**DEV, "train.txt": "0\n\nx1\n"}, "train.txt:3", "not an integer"),
    "devign missing field": ("defect", {**DEV, "train.txt": "1\n"}, "train.txt:1", "record 1: missing"),
    "devign json": ("defect", {"function.json": "[\n{]", "train.txt": "0"}, "function.json:2", "bad JSON"),
}


@pytest.mark.parametrize("case", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_bad_input_names_file_and_line(tmp_path, case):
    task, files, where, fragment = case
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    split = "valid" if where.startswith("dev.jsonl") else "train"
    with pytest.raises(DataError) as err:
        load_split(task, tmp_path, split)
    assert str(err.value).startswith(f"{tmp_path / where}: ")
    assert fragment in str(err.value)


def test_missing_split_file_names_directory_and_files(tmp_path):
    (tmp_path / "train.jsonl").write_text(GOOD)
    with pytest.raises(DataError) as err:
        load_splits("defect", tmp_path)  # train is fine, valid is missing
    assert str(err.value).startswith(f"{tmp_path}: missing valid split file")
    assert "valid.jsonl" in str(err.value) and "dev.jsonl" in str(err.value)
    (tmp_path / "function.json").write_text(DEVIGN_JSON)
    (tmp_path / "train.jsonl").unlink()
    with pytest.raises(DataError, match="looked for test.txt"):
        load_split("defect", tmp_path, "test")


def test_empty_split_file_is_an_error(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no records") as err:
        load_split("defect", tmp_path, "train")
    assert str(err.value).startswith(f"{tmp_path / 'train.jsonl'}: ")


def test_unknown_layout_or_wrong_task_kind(tmp_path):
    with pytest.raises(DataError, match="function.json.*data.jsonl"):
        load_split("defect", tmp_path, "train")
    with pytest.raises(DataError, match="does not exist"):
        load_split("defect", tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="pairs"):
        load_split("clone", FIXTURES / "devign", "train")
    with pytest.raises(DataError, match="pairs"):
        load_split("defect", FIXTURES / "bigclonebench", "train")


# --- real data and the shipped slice -------------------------------------------------------------


@pytest.mark.parametrize(
    "task, sizes",
    [("defect", (2000, 300, 300)), ("clone", (2997, 400, 400)), ("exception", (2000, 300, 300))],
)
def test_shared_data_loads(shared_data, task, sizes):
    data = load_splits(task, shared_data / task)
    assert tuple(len(data[s]) for s in SPLITS) == sizes
    n_classes = len(get_task(task).labels)
    for examples in data.values():
        assert {e.label for e in examples} == set(range(n_classes))
        assert all((e.code2 is not None) == get_task(task).pair for e in examples)


def test_demo_slice_loads_and_is_small():
    root = demo_data_dir()
    data = load_splits("exception", root)
    assert tuple(len(data[s]) for s in SPLITS) == (2000, 300, 300)
    assert sum(f.stat().st_size for f in root.parent.rglob("*") if f.is_file()) <= 5 * 2**20
    with (root / "source_licenses.tsv").open() as f:
        allowed = {row["repo"] for row in csv.DictReader(f, delimiter="\t") if row["allowed"] == "yes"}
    for split in ("train", "dev", "test"):
        with (root / f"{split}.jsonl").open() as f:
            repos = {"/".join(json.loads(line)["info"].split(" ")[1].split("/")[:2]) for line in f}
        assert repos <= allowed
        assert all((root / "licenses" / f"{repo.replace('/', '__')}.txt").is_file() for repo in repos)


# --- bad bytes, odd files (issue 15): one DataError naming the file and line, whatever the reader --------

REC = b'{"func": "int f();", "target": 0}\n'
BAD_BYTES = {  # name: (line 2 of train.jsonl, part of the message)
    "invalid utf-8": (b'{"func": "int \xff g();", "target": 0}', "not UTF-8 text: byte 0xff"),
    "utf-8 encoded surrogate": (b'{"func": "\xed\xa0\x80", "target": 0}', "not UTF-8 text"),
    "lone surrogate escape": (b'{"func": "int \\ud800 g();", "target": 0}', "lone surrogate"),
    "lone low surrogate": (b'{"func": "\\udc00", "target": 0}', "lone surrogate"),
    "deep nesting": (b"[" * 200_000 + b"]" * 200_000, "nested too deep"),
    "5000-digit label": (b'{"func": "x", "target": ' + b"7" * 5000 + b"}", "number too long"),
    "NUL byte": (b'{"func": "x\x00", "target": 0}', "NUL byte"),
}


@pytest.mark.parametrize("case", BAD_BYTES.values(), ids=BAD_BYTES.keys())
def test_bad_bytes_name_file_and_line(tmp_path, case):
    line, fragment = case
    (tmp_path / "train.jsonl").write_bytes(REC + line + b"\n" + REC)
    with pytest.raises(DataError) as err:
        load_split("defect", tmp_path, "train")
    assert str(err.value).startswith(f"{tmp_path / 'train.jsonl'}:2: ") and fragment in str(err.value)
    assert len(str(err.value)) < 300  # one readable line, not the payload


def test_utf16_file_is_refused_with_its_name(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(REC.decode().encode("utf-16"))
    with pytest.raises(DataError, match="train.jsonl:1: not UTF-8 text: the file is UTF-16"):
        load_split("defect", tmp_path, "train")
    (tmp_path / "train.jsonl").write_bytes(REC.decode().encode("utf-16-le"))  # no byte-order mark
    with pytest.raises(DataError, match="train.jsonl:1: not UTF-8 text: a NUL byte"):
        load_split("defect", tmp_path, "train")


def test_large_label_and_index_are_shown_short(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b'{"func": "x", "target": ' + b"9" * 4000 + b"}\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: label <4000-digit integer> is neither"):
        load_split("defect", tmp_path, "train")
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "function.json").write_text(DEVIGN_JSON)
    (tmp_path / "train.txt").write_text("0\n" + "1" * 5000 + "\n")
    with pytest.raises(DataError, match=r"train.txt:2: index '1111.*\.\.\. is not an integer"):
        load_split("defect", tmp_path, "train")


def test_whole_file_json_errors_name_their_line(tmp_path):
    (tmp_path / "train.txt").write_text("0\n")
    for payload, line, fragment in ((b'[{"func": "f", "target": 0},\n{"func": "\xfe"}]', 2, "byte 0xfe at byte 11"),
                                    (b"[\n\n" + b"[" * 100_000 + b"]" * 100_000 + b"]", 3, "nested too deep"),
                                    (b'[\n{"func": "\\ud800", "target": 0}]', 2, "lone surrogate"),
                                    (b'[\n1,\n' + b"2" * 5000 + b"]", 3, "number too long")):
        (tmp_path / "function.json").write_bytes(payload)
        with pytest.raises(DataError) as err:
            load_split("defect", tmp_path, "train")
        assert str(err.value).startswith(f"{tmp_path / 'function.json'}:{line}: ") and fragment in str(err.value)


def test_bom_and_crlf_are_accepted_in_every_layout(tmp_path):
    bom = b"\xef\xbb\xbf"
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    for split in ("train", "valid", "test"):
        (jsonl / f"{split}.jsonl").write_bytes(bom + REC.replace(b"\n", b"\r\n") * 2)
    assert [len(v) for v in load_splits("defect", jsonl).values()] == [2, 2, 2]
    bcb = tmp_path / "bcb"
    bcb.mkdir()
    (bcb / "data.jsonl").write_bytes(bom + DATA_JSONL.encode().replace(b"\n", b"\r\n"))
    for split in ("train", "valid", "test"):
        (bcb / f"{split}.txt").write_bytes(bom + b"1\t2\t1\r\n")
    assert load_split("clone", bcb, "train")[0].code2 == "void b() {}"
    devign = tmp_path / "devign"
    devign.mkdir()
    (devign / "function.json").write_bytes(bom + DEVIGN_JSON.encode())
    (devign / "train.txt").write_bytes(bom + b"0\r\n")
    assert load_split("defect", devign, "train")[0].code == "int f();"


def test_bigclonebench_duplicate_idx(tmp_path):
    (tmp_path / "train.txt").write_text("1\t2\t1\n")
    (tmp_path / "data.jsonl").write_text(DATA_JSONL + '{"func": "void a() {}", "idx": 1}\n')  # identical: accepted
    assert load_split("clone", tmp_path, "train")[0].code == "void a() {}"
    (tmp_path / "data.jsonl").write_text(DATA_JSONL + '{"func": "void c() {}", "idx": "1"}\n')
    with pytest.raises(DataError, match=r"data.jsonl:3: idx '1' is also at line 1, with different code"):
        load_split("clone", tmp_path, "train")
    (tmp_path / "data.jsonl").write_text('{"func": "void a() {}", "idx": [1]}\n')
    with pytest.raises(DataError, match=r"data.jsonl:1: field 'idx' must be a string or an integer"):
        load_split("clone", tmp_path, "train")


def test_odd_split_files_are_reported_as_what_they_are(tmp_path):
    cases = {"a directory": lambda p: p.mkdir(), "a symbolic link loop": lambda p: p.symlink_to(p.name),
             "a dangling symbolic link": lambda p: p.symlink_to("gone.jsonl")}
    for what, make in cases.items():
        d = tmp_path / what.replace(" ", "-")
        d.mkdir()
        make(d / "train.jsonl")
        with pytest.raises(DataError) as err:
            load_split("defect", d, "train")
        assert str(err.value).startswith(f"{d / 'train.jsonl'}: is {what}")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataError, match="a-file: is a file, not a data directory"):
        load_split("defect", tmp_path / "a-file", "train")
    d = tmp_path / "shard-dir"
    (d / "train.jsontxt-00000-of-00001").mkdir(parents=True)
    with pytest.raises(DataError, match="train.jsontxt-00000-of-00001: is a directory"):
        load_split("exception", d, "train")


def test_bad_byte_column_counts_from_the_text_after_a_bom(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + REC + b'{"f\xff": 1}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: not UTF-8 text: byte 0xff at byte 4 of the line"):
        load_split("defect", tmp_path, "train")
