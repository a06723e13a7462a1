"""Read a task's train/valid/test splits from a data directory, whatever public layout it is in.

The format is detected from the directory contents, in this order (the first that matches wins):

1. JSONL records: a split file for any split, named `{name}.jsonl`, `{name}.jsontxt` or
   `{name}.jsontxt-*` shards (read in sorted order, as one file). One JSON object per line;
   blank lines are skipped. The fields are the task's (its task file's `input` and `label`, or
   their `aliases`): the built-in `defect` and `exception` read the study's / CodeXGLUE Devign's
   `func`, `target` or CuBERT's `function`, `label` (other fields such as `info` are ignored);
   `clone` reads `func1`, `func2`, `target`. A label is an int class index or a class name of the task.
2. CodeXGLUE Devign: `function.json` (one JSON array of `{"func", "target", ...}` objects) and
   `{split}.txt` index files, one integer index into the array per line.
3. CodeXGLUE BigCloneBench: `data.jsonl` (`{"func", "idx"}` per line) and `{split}.txt` pair files,
   `idx1<TAB>idx2<TAB>label` per line with label 0 or 1.

Split file names: "train" is `train`, "test" is `test`, "valid" is the first of `valid`, `dev`
(CuBERT's name) or `eval` that exists — in every format, with the extensions above.

Everything is validated while reading: any problem is a `DataError` whose message starts with the
offending file and 1-based line, so a bad dataset fails loudly before training starts, not silently
halfway through. Bytes are read by `codekd.data.text` (UTF-8, a BOM accepted; bad bytes, lone surrogates,
too deep JSON and too long numbers refused with their line). A split name that is a directory, a link
loop or a dangling link is reported as such, not as a missing split. In `data.jsonl`, an `idx` given
twice is refused when the two functions differ (the later one would silently win); a repeated identical
record is accepted, as it changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codekd.data.tasks import Task, get_task
from codekd.data.text import DataError, file_kind, json_lines, parse_json, read_text, regular_file, shown, text_lines
from codekd.hub.codekd_text import collapse_whitespace

SPLITS = ("train", "valid", "test")
WHITESPACE = ("collapse", "keep")
_NAMES = {"train": ("train",), "valid": ("valid", "dev", "eval"), "test": ("test",)}


@dataclass(frozen=True)
class Example:
    """One labelled input: a function (or a pair of functions for clone detection) and its class index."""

    code: str
    label: int
    code2: str | None = None
    source: str = ""


class InvalidRecord(Exception):
    """A bad record; the caller knows where it is and re-raises it as a DataError."""


def normalize_code(code: str, whitespace: str) -> str:
    """Apply the whitespace policy: "collapse" joins all tokens with single spaces, as the study does
    (it fits more code into the model's window); "keep" returns the code unchanged."""
    _check(whitespace, WHITESPACE, "whitespace mode")
    return collapse_whitespace(code) if whitespace == "collapse" else code


def load_split(
    task: Task | str | Path, data_dir: str | Path, split: str, whitespace: str = "collapse"
) -> list[Example]:
    """Read and validate one split ("train", "valid" or "test") of `task` from `data_dir`."""
    task = get_task(task)
    _check(split, SPLITS, "split")
    _check(whitespace, WHITESPACE, "whitespace mode")
    d = Path(data_dir)
    kind = file_kind(d)
    if kind != "dir":
        raise DataError(d, "data directory does not exist" if kind is None else "is a file, not a data directory")
    if any(_jsonl_files(d, s) for s in SPLITS):
        return _read_jsonl_split(task, d, split, whitespace)
    if regular_file(d / "function.json"):
        return _read_devign(task, d, split, whitespace)
    if regular_file(d / "data.jsonl"):
        return _read_bigclonebench(task, d, split, whitespace)
    raise DataError(
        d,
        "no known data format; looked for {train,valid|dev|eval,test}.jsonl / .jsontxt / .jsontxt-* "
        "(JSONL records), function.json + {split}.txt (CodeXGLUE Devign), "
        "data.jsonl + {split}.txt (CodeXGLUE BigCloneBench)",
    )


def load_splits(
    task: Task | str | Path, data_dir: str | Path, splits: Iterable[str] = SPLITS, whitespace: str = "collapse"
) -> dict[str, list[Example]]:
    """Read and validate all requested splits before returning, so a command fails before writing anything."""
    return {split: load_split(task, data_dir, split, whitespace) for split in splits}


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {shown(value)}; valid: {', '.join(allowed)}")


def _jsonl_files(d: Path, split: str) -> list[Path]:
    """The JSONL file(s) holding `split`, or [] when there are none."""
    for name in _NAMES[split]:
        for path in (d / f"{name}.jsonl", d / f"{name}.jsontxt"):
            if regular_file(path):
                return [path]
        shards = sorted(d.glob(f"{name}.jsontxt-*"))
        if shards:
            return [path for path in shards if regular_file(path)]
    return []


def _txt_file(d: Path, split: str, what: str) -> Path:
    for name in _NAMES[split]:
        if regular_file(d / f"{name}.txt"):
            return d / f"{name}.txt"
    looked = ", ".join(f"{name}.txt" for name in _NAMES[split])
    raise DataError(d, f"missing {split} split file ({what}); looked for {looked}")


def record_code(rec: dict[str, Any], key: str, whitespace: str) -> str:
    value = rec[key]
    if not isinstance(value, str):
        raise InvalidRecord(f"field {shown(key)} must be a string, got {type(value).__name__}")
    code = normalize_code(value, whitespace)
    if not code.strip():
        raise InvalidRecord(f"field {shown(key)} is empty")
    return code


def _label(task: Task, value: Any) -> int:
    if isinstance(value, str) and value in task.labels:
        return task.labels.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(task.labels):
        return value
    raise InvalidRecord(
        f"label {shown(value)} is neither a class index 0..{len(task.labels) - 1} nor a class name of task "
        f"{shown(task.name)} ({', '.join(task.labels)})"
    )


def record_inputs(task: Task, rec: Any, whitespace: str) -> list[str]:
    """The input code(s) of one JSON record, by the task's input fields (or their aliases); raises
    InvalidRecord naming what is wrong."""
    if not isinstance(rec, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(rec).__name__}")
    return [record_code(rec, _field(task, rec, key), whitespace) for key in task.inputs]


def _field(task: Task, rec: dict[str, Any], field: str) -> str:
    """The name `field` has in `rec`: itself or the first of its aliases that is present."""
    names = task.field_names(field)
    for name in names:
        if name in rec:
            return name
    others = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    raise InvalidRecord(f"missing field {shown(field)}{others}")


def _record(task: Task, rec: Any, whitespace: str, source: str) -> Example:
    """Turn one JSON record into an Example; raises InvalidRecord naming what is wrong."""
    codes = record_inputs(task, rec, whitespace)
    label = _label(task, rec[_field(task, rec, task.label_field)])
    return Example(codes[0], label, codes[1] if task.pair else None, source)


def _read_jsonl_split(task: Task, d: Path, split: str, whitespace: str) -> list[Example]:
    paths = _jsonl_files(d, split)
    if not paths:
        looked = ", ".join(f"{name}.jsonl, {name}.jsontxt, {name}.jsontxt-*" for name in _NAMES[split])
        raise DataError(d, f"missing {split} split file; looked for {looked}")
    examples = []
    for path in paths:
        for n, rec in json_lines(path):
            try:
                examples.append(_record(task, rec, whitespace, f"{path}:{n}"))
            except InvalidRecord as e:
                raise DataError(path, str(e), n) from None
    if not examples:
        raise DataError(paths[0], f"{split} split has no records")
    return examples


def _read_devign(task: Task, d: Path, split: str, whitespace: str) -> list[Example]:
    path = d / "function.json"
    if task.pair:
        raise DataError(
            path, f"CodeXGLUE Devign data holds single functions, but task {shown(task.name)} needs pairs"
        )
    index_path = _txt_file(d, split, "Devign index file")
    records = parse_json(read_text(path), path)
    if not isinstance(records, list):
        raise DataError(path, f"expected a JSON array of records, got {type(records).__name__}")
    examples = []
    for n, text in text_lines(index_path):
        try:
            i = int(text)
        except ValueError:
            raise DataError(index_path, f"index {shown(text)} is not an integer", n) from None
        if not 0 <= i < len(records):
            raise DataError(
                index_path, f"index {shown(i)} is out of range (function.json has {len(records)} records)", n
            )
        try:
            examples.append(_record(task, records[i], whitespace, f"{index_path}:{n}"))
        except InvalidRecord as e:
            raise DataError(index_path, f"function.json record {i}: {e}", n) from None
    if not examples:
        raise DataError(index_path, f"{split} split has no records")
    return examples


def _read_bigclonebench(task: Task, d: Path, split: str, whitespace: str) -> list[Example]:
    path = d / "data.jsonl"
    if not task.pair:
        raise DataError(
            path, f"CodeXGLUE BigCloneBench data holds function pairs, but task {shown(task.name)} does not"
        )
    pairs_path = _txt_file(d, split, "BigCloneBench pair file")
    functions: dict[str, tuple[str, int]] = {}  # idx -> (code, line)
    for n, rec in json_lines(path):
        try:
            idx, code = _function(rec, whitespace)
        except InvalidRecord as e:
            raise DataError(path, str(e), n) from None
        if idx in functions and functions[idx][0] != code:
            raise DataError(path, f"idx {shown(idx)} is also at line {functions[idx][1]}, with different code", n)
        functions.setdefault(idx, (code, n))
    examples = []
    for n, line in text_lines(pairs_path):
        fields = line.split("\t")
        if len(fields) != 3 or fields[2] not in ("0", "1"):
            raise DataError(
                pairs_path, f"expected 'idx1<TAB>idx2<TAB>label' with label 0 or 1, got {shown(line)}", n
            )
        for idx in fields[:2]:
            if idx not in functions:
                raise DataError(pairs_path, f"function id {shown(idx)} is not in data.jsonl", n)
        label = int(fields[2])
        examples.append(Example(functions[fields[0]][0], label, functions[fields[1]][0], f"{pairs_path}:{n}"))
    if not examples:
        raise DataError(pairs_path, f"{split} split has no records")
    return examples


def _function(rec: Any, whitespace: str) -> tuple[str, str]:
    """(idx, code) of one BigCloneBench `data.jsonl` record; raises InvalidRecord naming what is wrong."""
    if not isinstance(rec, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(rec).__name__}")
    for key in ("func", "idx"):
        if key not in rec:
            raise InvalidRecord(f"missing field {shown(key)}")
    idx = rec["idx"]
    if isinstance(idx, bool) or not isinstance(idx, int | str):
        raise InvalidRecord(f"field 'idx' must be a string or an integer, got {shown(idx)}")
    return str(idx), record_code(rec, "func", whitespace)
