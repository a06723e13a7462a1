"""Reading user text safely: every reader of user files (data splits, `results.jsonl`, `predict`'s input,
stdin, study, task and `--config` YAML files) goes through these functions, so every bad byte gets the same
one-line `DataError`.

Text is UTF-8; a UTF-8 byte-order mark at the start of a file is accepted and dropped (`utf-8-sig`).
Lines are split on `\\n` only (a `\\r` before it is dropped), never on the other characters Python's
`str.splitlines` treats as line breaks (`\\u2028`, `\\x85`, ... may appear inside JSON strings).
Each line is decoded on its own, so a bad byte costs that line only (what `predict --skip-bad` needs).
A JSON line must parse to values that are valid Unicode: not UTF-8, a lone surrogate escape
(`"\\ud800"`, which cannot be encoded or tokenized), nesting deeper than the parser's recursion limit and
integers longer than Python's 4,300-digit limit are each a `DataError` naming the file and line. A YAML
file is read with PyYAML's safe loader and held to the same rules.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

_HIGH, _LOW = r"\\u[dD][89abAB][0-9a-fA-F]{2}", r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_SURROGATE_ESCAPE = re.compile(f"{_HIGH}(?!{_LOW})|(?<!{_HIGH}){_LOW}")  # an escape \ud800-\udfff without its pair
_LONG_NUMBER = re.compile(r"\d{" + str(sys.get_int_max_str_digits() + 1) + "}")
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a decoded str: a surrogate left unpaired
_YAML_SURROGATE_ESCAPE = re.compile(r"\\(?:u|U0000)[dD][89a-fA-F][0-9a-fA-F]{2}")  # YAML pairs nothing
_JSON_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[\[{]|[\]}]|\n')  # strings, brackets, newlines (nesting scan)


class DataError(ValueError):
    """A dataset problem, reported as "<path>:<line>: <what is wrong>" (no line for whole-file problems)."""

    def __init__(self, path: str | Path, what: str, line: int | None = None) -> None:
        self.path, self.line, self.what = Path(path), line, what
        super().__init__(f"{path}:{line}: {what}" if line is not None else f"{path}: {what}")


def shown(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for error messages about values of any size."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else f"<{len(str(value))}-digit integer>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_kind(path: Path) -> str | None:
    """"file" or "dir" for what `path` names (links followed), None when nothing is there; a `DataError` says
    what it is when it is neither (a link loop, a dangling link, a FIFO, ...) or cannot be looked at."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(path, "is a symbolic link loop") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            if path.is_symlink():
                target = os.readlink(path)
                raise DataError(path, f"is a dangling symbolic link (to {target}, which does not exist)") from None
            return None
        raise DataError(path, f"cannot be read: {e.strerror}") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    raise DataError(path, "is not a regular file (a FIFO, socket or device)")


def regular_file(path: Path) -> bool:
    """Whether `path` is a regular file: False when nothing is there, a `DataError` when it is something else."""
    kind = file_kind(path)
    if kind == "dir":
        raise DataError(path, "is a directory, not a file")
    return kind == "file"


def raw_lines(f: IO[bytes] | Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Numbered lines (1-based) of a binary stream, without their line ending."""
    for n, raw in enumerate(f, 1):
        yield n, raw.rstrip(b"\n").removesuffix(b"\r")


def decode_text(raw: bytes, where: str | Path, line: int | None = None, first: bool = True) -> str:
    """`raw` as UTF-8 (`utf-8-sig` when it starts a file: `first`); a `DataError` at `where:line` if it is not."""
    if first and raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise DataError(where, "not UTF-8 text: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
                        "convert it to UTF-8", line or 1)
    if b"\0" in raw:
        at = raw.index(b"\0")
        raise DataError(where, f"not UTF-8 text: a NUL byte at byte {_column(raw, at)} of the line (UTF-16 or a "
                        "binary file?)", line if line is not None else raw.count(b"\n", 0, at) + 1)
    if first:
        raw = raw.removeprefix(codecs.BOM_UTF8)  # `utf-8-sig`, by hand: error offsets then count from the text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 1].hex()
        raise DataError(where, f"not UTF-8 text: byte 0x{bad} at byte {_column(raw, e.start)} of the line ({e.reason})",
                        line if line is not None else raw.count(b"\n", 0, e.start) + 1) from None


def _column(raw: bytes, offset: int) -> int:
    """The 1-based byte column of `offset` within its line."""
    return offset - raw.rfind(b"\n", 0, offset)


def parse_json(text: str, where: str | Path, line: int | None = None) -> Any:
    """`text` parsed as JSON, or a `DataError` at `where:line` saying why it is not acceptable.

    For a whole file (`line` None), the error's line is the one where the problem is.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(where, f"bad JSON: {e.msg} (column {e.colno})", e.lineno if line is None else line) from None
    except RecursionError:
        at = line if line is not None else _deep_line(text)
        raise DataError(where, "bad JSON: nested too deep (arrays or objects inside each other more than "
                        f"{sys.getrecursionlimit()} levels)", at) from None
    except ValueError:  # Python's integer digit limit (4300 digits); the message has no position
        at = line if line is not None else _line_at(text, _LONG_NUMBER.search(text))
        raise DataError(where, f"bad JSON: a number too long to read (over {sys.get_int_max_str_digits()} digits)",
                        at) from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        at = line if line is not None else _line_at(text, _SURROGATE_ESCAPE.search(text))
        raise DataError(where, "bad JSON: a string holds a lone surrogate escape (\\ud800-\\udfff without its "
                        "pair), which is not valid Unicode", at)
    return value


def parse_yaml(text: str, where: str | Path) -> Any:
    """`text` parsed by PyYAML's safe loader, or a `DataError` at `where:line` saying why it is not acceptable:
    bad YAML (at its mark), a control character, nesting too deep, an integer over Python's digit limit, or a
    surrogate escape (`"\\ud800"`: YAML's escapes are code points, and a surrogate is not one)."""
    try:
        value = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise DataError(where, f"bad YAML: {e.problem or e.context}", mark.line + 1 if mark else 1) from None
    except yaml.reader.ReaderError as e:
        raise DataError(where, f"bad YAML: character #x{e.character:04x} is not allowed (a control character)",
                        text.count("\n", 0, e.position) + 1) from None
    except RecursionError:
        raise DataError(where, "bad YAML: nested too deep (sequences or mappings inside each other more than "
                        f"{sys.getrecursionlimit()} levels)", _deep_line(text)) from None
    except ValueError:  # Python's integer digit limit, from the int constructor; its message has no position
        raise DataError(where, f"bad YAML: a number too long to read (over {sys.get_int_max_str_digits()} digits)",
                        _line_at(text, _LONG_NUMBER.search(text))) from None
    if _has_lone_surrogate(value):
        raise DataError(where, "bad YAML: a string holds a surrogate escape (\\ud800-\\udfff), which is not valid "
                        "Unicode", _line_at(text, _YAML_SURROGATE_ESCAPE.search(text)))
    return value


def load_yaml(path: Path) -> Any:
    """A whole YAML file (a study, task or `--config` file) read and parsed by the rules of `parse_yaml`."""
    return parse_yaml(read_text(path), path)


def _line_at(text: str, match: re.Match[str] | None) -> int:
    return text.count("\n", 0, match.start()) + 1 if match else 1


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string in `value` (keys too, at any depth; shared and self-referencing YAML nodes visited once)
    holds a surrogate code point, which no decoder pairs into a character."""
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict | list | tuple | set | frozenset) and id(item) not in seen:
            seen.add(id(item))
            stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item)
    return False


def _deep_line(text: str) -> int:
    """The line where brackets first nest deeper than the recursion limit (strings skipped)."""
    depth, line, limit = 0, 1, sys.getrecursionlimit() // 2
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok == "\n":
            line += 1
        elif tok in ("[", "{"):
            depth += 1
            if depth > limit:
                return line
        elif tok in ("]", "}"):
            depth -= 1
    return line


def open_binary(path: Path) -> IO[bytes]:
    """`path` opened for reading bytes; a `DataError` when it is not a readable regular file."""
    if not regular_file(path):
        raise DataError(path, "does not exist")
    try:
        return path.open("rb")
    except OSError as e:
        raise DataError(path, f"cannot be read: {e.strerror}") from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file with their 1-based numbers; the first bad one is a `DataError`."""
    with open_binary(path) as f:
        for n, raw in raw_lines(f):
            text = decode_text(raw, path, n, first=n == 1)
            if text.strip():
                yield n, text


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """Parsed JSONL lines of `path` (blank lines skipped) with their 1-based numbers."""
    for n, text in text_lines(path):
        yield n, parse_json(text, path, n)


def copy_head(src: Path, dst: Path, n: int) -> None:
    """Write the lines of the text file `src` up to its `n`-th non-blank one to `dst` (a slice of a split's
    records, index or pair lines), each decoded as `text_lines` decodes it (a BOM dropped, CRLF written as LF).
    Blank lines are copied, not counted, so a line keeps its number in the slice."""
    with open_binary(src) as f, dst.open("w", encoding="utf-8", newline="\n") as out:
        for k, raw in raw_lines(f):
            if n <= 0:
                break
            text = decode_text(raw, src, k, first=k == 1)
            out.write(text + "\n")
            n -= bool(text.strip())


def read_text(path: Path) -> str:
    """A whole UTF-8 text file (a BOM dropped); a `DataError` naming the line of its first bad byte."""
    with open_binary(path) as f:
        try:
            raw = f.read()
        except OSError as e:
            raise DataError(path, f"cannot be read: {e.strerror}") from None
    return decode_text(raw, path)
