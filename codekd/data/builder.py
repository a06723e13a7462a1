"""`codekd data exception`: build an exception-classification corpus from Python sources with CuBERT's
recipe (Kanade et al., ICML 2020): a function whose `except` clause catches one of CuBERT's 20 classes,
that class name replaced by `__HOLE__`, the class is the label.

By default the sources are the running interpreter's standard library and site-packages, so any
machine builds the corpus offline. A source directory is one of
- a site-packages-style directory (it holds `*.dist-info`): each installed distribution is one
  project, its files from its RECORD, its licence from its metadata;
- a library directory (it holds `os.py`, i.e. a standard library): each top-level module or package
  is one project, the licence is the directory's LICENSE file;
- anything else is one project checkout, licence from its LICENSE / COPYING file.
A whole project goes into one split (no function of a package is in train while its sibling is in
test). Functions are deduplicated (exact, then whitespace-normalised) within and across splits;
permissive licences only (`codekd.data.licences`); test folders and vendored code are skipped.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import sys
import sysconfig
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from codekd.data.licences import FOREIGN_HEADER, checkout_licence, distribution_licence, is_permissive
from codekd.data.tasks import get_task
from codekd.io import atomic_dir, check_new_output, output_of, write_json

HOLE = "__HOLE__"
EXCEPTION_LABELS = get_task("exception").labels  # CuBERT's 20 classes, in index order
SPLIT_FILES = {"train": "train.jsonl", "valid": "dev.jsonl", "test": "test.jsonl"}
OUTPUT_FILES = (*SPLIT_FILES.values(), "counts.json", "projects.tsv", "left_out.tsv")  # what marks a built corpus
FRACTIONS = {"train": 0.7, "valid": 0.15, "test": 0.15}
MAX_CHARS = 6000  # CuBERT's function-length bound
SKIP_DIRS = {"test", "tests", "testing", "idle_test", "__pycache__", "site-packages", "dist-packages",
             "_vendor", "vendor", "vendored", "third_party", "thirdparty", "3rdparty", "extern", "externals"}
_CLASSES = frozenset(EXCEPTION_LABELS)
# a file can hold a candidate only if some `except` line names a class (saves parsing most files)
_MAYBE = re.compile(r"except\b[^\n:]*\b(?:" + "|".join(EXCEPTION_LABELS) + r")\b")


@dataclass
class Project:
    """One split unit: a distribution, a top-level stdlib module/package, or a checkout."""

    name: str
    version: str
    licence: str
    root: Path  # paths in records are relative to it
    files: list[Path] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    unlabelled: list[dict] = field(default_factory=list)  # label None: for the transfer set


def default_sources() -> list[Path]:
    """The running interpreter's standard library and its site-packages (purelib, platlib)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(Path(paths[k]) for k in ("stdlib", "purelib", "platlib")))


def _skipped_path(rel: Path) -> bool:
    return any(part in SKIP_DIRS for part in rel.parts[:-1]) or rel.name == "conftest.py"


def _site_packages(src: Path) -> list[Project]:
    projects = []
    for info in sorted(src.glob("*.dist-info")):
        path = info / "METADATA"
        meta = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        name = next((ln[6:].strip() for ln in meta.splitlines() if ln.startswith("Name: ")), info.name)
        version = next((ln[9:].strip() for ln in meta.splitlines() if ln.startswith("Version: ")), "")
        licence = distribution_licence(info) if meta else "unknown"
        files = []
        if (info / "RECORD").is_file():
            for line in (info / "RECORD").read_text(encoding="utf-8", errors="replace").splitlines():
                rel = Path(line.split(",", 1)[0])
                if rel.suffix == ".py" and ".." not in rel.parts and not _skipped_path(rel) and (src / rel).is_file():
                    files.append(src / rel)
        projects.append(Project(name, version, licence, src, sorted(files)))
    return projects


def _library(src: Path) -> list[Project]:
    licence = checkout_licence(src)
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}" \
        if src.resolve() == Path(sysconfig.get_paths()["stdlib"]).resolve() else ""
    projects: dict[str, Project] = {}
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if _skipped_path(rel) or (len(rel.parts) > 1 and not (src / rel.parts[0] / "__init__.py").is_file()):
            continue
        top = rel.parts[0].removesuffix(".py")
        projects.setdefault(top, Project(f"stdlib:{top}" if version else top, version, licence, src)).files.append(path)
    return list(projects.values())


def _checkout(src: Path) -> list[Project]:
    files = [p for p in sorted(src.rglob("*.py")) if not _skipped_path(p.relative_to(src))]
    return [Project(src.resolve().name, "", checkout_licence(src), src, files)]


def discover(src: Path) -> list[Project]:
    """The projects of one source directory (see the module doc for the three kinds)."""
    if any(src.glob("*.dist-info")):
        return _site_packages(src)
    if (src / "os.py").is_file():
        return _library(src)
    return _checkout(src)


_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")  # statement lists (defs occur only there)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _functions(stmts: list, prefix: str = "") -> list[tuple[ast.AST, str]]:
    """Every function (methods and nested ones included) under `stmts`, with its qualified name."""
    out = []
    for s in stmts:
        name = getattr(s, "name", None) if isinstance(s, (*_DEFS, ast.ClassDef)) else None
        q = f"{prefix}.{name}" if name and prefix else name or prefix
        if isinstance(s, _DEFS):
            out.append((s, q))
        for block in _BLOCKS:
            out += _functions(getattr(s, block, None) or [], q)
    return out


def _handlers(stmts: list) -> list[tuple[ast.expr, str]]:
    """The `except` clauses under `stmts` whose type is a (dotted) name on one line, with its last part,
    without entering nested functions or classes (a clause belongs to its innermost function)."""
    out = []
    for s in stmts:
        if isinstance(s, (*_DEFS, ast.ClassDef)):
            continue
        if isinstance(s, ast.ExceptHandler) and s.type is not None:
            t = s.type
            last = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else None
            if last and t.lineno == t.end_lineno:
                out.append((t, last))
        for block in _BLOCKS:
            out += _handlers(getattr(s, block, None) or [])
    return out


def extract(source: str, seed: int, where: str) -> list[tuple[int, str, str, str | None]]:
    """(line, qualified name, masked function, label) for each function of `source` with a candidate
    clause; one clause per function is chosen by a generator seeded by `seed` and `where`. A function
    whose named clauses catch only other classes gives an unlabelled example (label None): task-shaped
    code for a transfer set."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    out = []
    for fn, qual in sorted(_functions(tree.body), key=lambda x: (x[0].lineno, x[1])):
        named = _handlers(fn.body)
        found = [h for h in named if h[1] in _CLASSES] or [(t, None) for t, _ in named]
        if not found:
            continue
        rng = random.Random(f"{seed}:{where}:{fn.lineno}")
        t, label = found[rng.randrange(len(found))]
        body = [ln.encode() for ln in lines[fn.lineno - 1:fn.end_lineno]]
        i = t.lineno - fn.lineno  # ast column offsets count UTF-8 bytes
        body[i] = body[i][:t.col_offset] + HOLE.encode() + body[i][t.end_col_offset:]
        text = textwrap.dedent(b"".join(body).decode())
        if len(text) > MAX_CHARS:
            continue
        try:
            ast.parse(text)
        except SyntaxError:
            continue
        out.append((fn.lineno, qual, text if text.endswith("\n") else text + "\n", label))
    return out


def _assign_splits(projects: list[Project], seed: int) -> dict[str, list[Project]]:
    """Whole projects to splits, in a seeded random order, each to the split furthest below its share
    (70/15/15 of the records): the splits' sizes come close to the shares, and large and small
    projects (third-party distributions, stdlib modules) land in every split."""
    order = sorted(projects, key=lambda p: p.name)
    random.Random(seed).shuffle(order)
    total = sum(len(p.records) for p in projects) or 1
    splits: dict[str, list[Project]] = {s: [] for s in SPLIT_FILES}
    sizes = Counter()
    for p in order:
        s = max(SPLIT_FILES, key=lambda s: (FRACTIONS[s] * total - sizes[s], FRACTIONS[s]))
        splits[s].append(p)
        sizes[s] += len(p.records)
    return splits


def build_exception(sources: list[Path] | None, out: str | Path, seed: int = 0,
                    any_licence: bool = False, log=print, force: bool = False) -> dict:
    """Build the corpus into `out` (train/dev/test.jsonl in CuBERT's layout, `counts.json`,
    `counts.md`, `projects.tsv`, `left_out.tsv`); returns the counts. `force` replaces an earlier corpus there."""
    check_new_output(out, force, replaceable=output_of(*OUTPUT_FILES))  # before reading any source
    sources = [Path(s) for s in (sources or default_sources())]
    for s in sources:
        if not s.is_dir():
            raise FileNotFoundError(f"--from {s}: not a directory")
    left_out: list[dict] = []
    bad = Counter()
    projects: dict[str, Project] = {}
    for src in sources:
        for p in discover(src):
            if p.name in projects:
                continue  # the same distribution seen through a second source directory
            projects[p.name] = p
    kept = []
    for p in projects.values():
        if not any_licence and not is_permissive(p.licence):
            left_out.append({"project": p.name, "version": p.version, "reason": f"licence: {p.licence}"})
            continue
        for path in p.files:
            rel = path.relative_to(p.root).as_posix()
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                bad["not UTF-8"] += 1
                continue
            if not _MAYBE.search(text):
                continue
            if FOREIGN_HEADER.search(text[:3000]):
                reason = f"file header names another licence: {rel}"
                left_out.append({"project": p.name, "version": p.version, "reason": reason})
                continue
            try:
                found = extract(text, seed, f"{p.name}/{rel}")
            except (SyntaxError, ValueError, RecursionError):
                bad["unparsable"] += 1
                continue
            for line, qual, code, label in found:
                record = {"function": code, "label": label, "info": f"codekd-data {p.name}/{rel} {qual}",
                          "provenance": {"package": p.name, "version": p.version, "path": rel, "line": line,
                                         "licence": p.licence}}
                (p.records if label else p.unlabelled).append(record)
        if p.records:
            kept.append(p)
        else:
            left_out.append({"project": p.name, "version": p.version, "reason": "no candidate function"})
    candidates = sum(len(p.records) for p in kept)
    splits = _assign_splits(kept, seed)
    seen_exact: set[str] = set()
    seen_norm: set[str] = set()
    dups = Counter()
    rows: dict[str, list[dict]] = {}
    for s in SPLIT_FILES:  # train first: a function also in a later split is kept in the earlier one
        rows[s] = []
        for p in sorted(splits[s], key=lambda p: p.name):
            for r in p.records:
                exact = hashlib.sha1(r["function"].encode()).hexdigest()
                norm = hashlib.sha1(" ".join(r["function"].split()).encode()).hexdigest()
                if exact in seen_exact or norm in seen_norm:
                    dups["exact" if exact in seen_exact else "whitespace-normalised"] += 1
                    continue
                seen_exact.add(exact)
                seen_norm.add(norm)
                rows[s].append(r)
        random.Random(f"{seed}:{s}").shuffle(rows[s])
    transfer = []  # unlabelled functions of the training projects only, unlike every labelled one
    for p in sorted(splits["train"], key=lambda p: p.name):
        for r in p.unlabelled:
            norm = hashlib.sha1(" ".join(r["function"].split()).encode()).hexdigest()
            if norm not in seen_norm:
                seen_norm.add(norm)
                transfer.append({k: v for k, v in r.items() if k != "label"})
    random.Random(f"{seed}:transfer").shuffle(transfer)
    counts = {
        "sources": [str(s) for s in sources], "seed": seed, "candidates": candidates,
        "projects": {s: len(splits[s]) for s in SPLIT_FILES}, "duplicates": dict(dups), "bad_files": dict(bad),
        "left_out_projects": sum(1 for x in left_out if x["reason"].startswith("licence")),
        "empty_projects": sum(1 for x in left_out if x["reason"] == "no candidate function"),
        "left_out_files": sum(1 for x in left_out if x["reason"].startswith("file header")),
        "per_class": {c: {s: sum(r["label"] == c for r in rows[s]) for s in SPLIT_FILES} for c in EXCEPTION_LABELS},
        "total": {s: len(rows[s]) for s in SPLIT_FILES}, "transfer": len(transfer),
    }
    with atomic_dir(out, replace=force) as tmp:
        for s, name in SPLIT_FILES.items():
            with open(tmp / name, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[s])
        with open(tmp / "transfer.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in transfer)
        write_json(tmp / "counts.json", counts)
        (tmp / "counts.md").write_text(counts_table(counts) + "\n", encoding="utf-8")
        with open(tmp / "projects.tsv", "w", encoding="utf-8") as f:
            f.write("project\tversion\tlicence\tsplit\trecords_before_dedup\n")
            for s in SPLIT_FILES:
                f.writelines(f"{p.name}\t{p.version}\t{p.licence}\t{s}\t{len(p.records)}\n"
                             for p in sorted(splits[s], key=lambda p: p.name))
        with open(tmp / "left_out.tsv", "w", encoding="utf-8") as f:
            f.write("project\tversion\treason\n")
            f.writelines(f"{x['project']}\t{x['version']}\t{x['reason']}\n" for x in left_out)
    log(counts_table(counts))
    return counts


def counts_table(counts: dict) -> str:
    """Markdown table of records per class and split, with the build's other counts underneath."""
    head = "| label | train | dev | test |\n|---|---:|---:|---:|\n"
    body = "".join(f"| {c} | " + " | ".join(str(v[s]) for s in SPLIT_FILES) + " |\n"
                   for c, v in counts["per_class"].items())
    total = "| **total** | " + " | ".join(str(counts["total"][s]) for s in SPLIT_FILES) + " |\n"
    projects = "/".join(str(counts["projects"][s]) for s in SPLIT_FILES)
    tail = (f"\nprojects train/dev/test {projects}; candidate functions {counts['candidates']}; "
            f"duplicates dropped {counts['duplicates'] or 0}; bad files skipped {counts['bad_files'] or 0}; "
            f"unlabelled functions of the training projects (transfer.jsonl) {counts['transfer']}; "
            f"left out for their licence: {counts['left_out_projects']} projects, {counts['left_out_files']} "
            f"files; {counts['empty_projects']} projects without a candidate (left_out.tsv)")
    return head + body + total + tail
