"""`codekd data exception`: CuBERT's masking recipe, licences, project splits, dedup, determinism and
bad files, on tiny source trees built here."""

import json
from pathlib import Path

import pytest

from codekd.data import load_splits
from codekd.data.builder import SPLIT_FILES, build_exception, extract
from codekd.data.licences import classify_text, is_permissive

MIT = "Permission is hereby granted, free of charge, to any person obtaining a copy of this software " * 3
PSF = "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2\n" + "terms and conditions " * 20
GPL = "GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n" + "terms and conditions " * 20


def _fn(name: str, exc: str, body: str = "pass") -> str:
    return f"def {name}(x):\n    try:\n        {body}\n    except {exc}:\n        return x\n\n"


def _dist(site: Path, name: str, files: dict[str, str], meta: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: {name}\nVersion: 1.0\n{meta}\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(text.encode() if isinstance(text, str) else text)
    (info / "RECORD").write_text("".join(f"{rel},sha256=x,1\n" for rel in files))


def _tree(tmp_path: Path) -> list[Path]:
    site = tmp_path / "site"
    for i in range(6):
        code = "".join(_fn(f"f{i}_{j}", "KeyError" if j % 2 else "pkg.errors.ValueError", f"y = {i * 10 + j}")
                       for j in range(4)) + _fn(f"u{i}", "pkg.FooError", f"y = 'u{i}'")
        _dist(site, f"mitpkg{i}", {f"mitpkg{i}/__init__.py": code,
                                   f"mitpkg{i}/tests/test_a.py": _fn("t", "KeyError"),
                                   f"mitpkg{i}/_vendor/v.py": _fn("v", "KeyError")},
              "License-Expression: MIT")
    _dist(site, "gplpkg", {"gplpkg/__init__.py": _fn("g", "KeyError")},
          "Classifier: License :: OSI Approved :: GNU General Public License v3 (GPLv3)")
    _dist(site, "nolicence", {"nolicence/__init__.py": _fn("n", "KeyError")}, "")
    _dist(site, "dual", {"dual/__init__.py": _fn("d", "OSError", "y = 'dual'")},
          "License-Expression: GPL-3.0-only OR MIT")
    _dist(site, "badfiles", {"badfiles/__init__.py": b"x = '\xff\xfe'\n" + _fn("b1", "KeyError").encode(),
                             "badfiles/broken.py": "def f(:\n    except KeyError\n",
                             "badfiles/ok.py": _fn("ok", "TypeError", "y = 'ok'")},
          "License-Expression: BSD-3-Clause")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "os.py").write_text("")
    (lib / "LICENSE.txt").write_text(PSF)
    (lib / "mod_a.py").write_text(_fn("a", "IndexError", "y = 'a'"))
    (lib / "pkg_b").mkdir()
    (lib / "pkg_b" / "__init__.py").write_text(_fn("b", "StopIteration", "y = 'b'"))
    (lib / "pkg_b" / "core.py").write_text(_fn("f0_1", "KeyError", "y = 1"))  # = mitpkg0's f0_1
    (lib / "pkg_b" / "spaced.py").write_text(_fn("f1_1", "KeyError", "y  =  11"))  # mitpkg1's, spaces only
    checkout = tmp_path / "proj"
    (checkout / "src").mkdir(parents=True)
    (checkout / "COPYING").write_text(MIT)
    (checkout / "src" / "m.py").write_text(_fn("c", "AttributeError", "y = 'c'"))
    return [site, lib, checkout]


def _records(out: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(x) for x in (out / f).read_text().splitlines()] for s, f in SPLIT_FILES.items()}


def test_extract_masks_one_named_class_per_innermost_function() -> None:
    src = ("class C:\n    def m(self):\n        try:\n            pass\n        except requests.HTTPError:\n"
           "            pass\n        except (KeyError, ValueError):\n            pass\n"
           "        def inner():\n            try:\n                pass\n            except KeyError:\n"
           "                pass\n        return inner\n")
    got = {q: (code, label) for _, q, code, label in extract(src, 0, "x")}
    assert set(got) == {"C.m", "C.m.inner"}
    code, label = got["C.m"]
    assert label == "HTTPError" and "except __HOLE__:" in code and "requests" not in code
    assert "except (KeyError, ValueError)" in code  # tuples are not candidates
    assert code.startswith("def m(self):\n")  # dedented
    assert got["C.m.inner"][1] == "KeyError"
    # a multi-byte character before the clause: columns are UTF-8 byte offsets
    (_, _, code, _), = extract("def f():\n    try:\n        pass\n    except é.KeyError: pass\n", 0, "y")
    assert "except __HOLE__: pass" in code


def test_licences() -> None:
    assert is_permissive("MIT") and is_permissive("Apache-2.0 WITH LLVM-exception AND BSD-3-Clause")
    assert is_permissive("GPL-3.0-only OR MIT") and is_permissive("(MIT OR GPL-2.0) AND ISC")
    assert not is_permissive("MIT AND GPL-3.0-only") and not is_permissive("unknown")
    assert not is_permissive("MPL-2.0")
    assert classify_text(PSF) == "PSF-2.0" and classify_text(MIT) == "MIT" and classify_text(GPL) == "GPL-family"
    # CPython's LICENSE mentions "GPL-compatible" in its history table: a mention is not the licence
    assert classify_text("GPL-compatible table " * 20 + PSF) == "PSF-2.0"
    assert classify_text("BSD 3-Clause") == "BSD" and classify_text("Some licence") == "unknown"


def test_build_splits_licences_dedup_bad_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    counts = build_exception(_tree(tmp_path), out, seed=3, log=lambda t: None)
    recs = _records(out)
    assert counts["total"] == {s: len(r) for s, r in recs.items()}
    # the data is read by every command's reader
    loaded = load_splits("exception", out)
    assert sum(len(v) for v in loaded.values()) == sum(counts["total"].values())
    packages = {s: {r["provenance"]["package"] for r in rs} for s, rs in recs.items()}
    everything = set().union(*packages.values())
    # permissive only; dual licence with a permissive option kept; vendored code and tests skipped
    assert "gplpkg" not in everything and "nolicence" not in everything and "dual" in everything
    left = (out / "left_out.tsv").read_text()
    assert "gplpkg\t1.0\tlicence: GPL-family" in left and "nolicence\t1.0\tlicence: unknown" in left
    codes = [r["function"] for rs in recs.values() for r in rs]
    assert not any(c.startswith("def t(") or c.startswith("def v(") for c in codes)
    # a whole project in one split
    for a in SPLIT_FILES:
        for b in SPLIT_FILES:
            if a < b:
                assert not packages[a] & packages[b]
    # bad files skipped and counted; the good file of the same distribution still read
    assert counts["bad_files"] == {"not UTF-8": 1, "unparsable": 1}
    assert any(r["function"].startswith("def ok(") for rs in recs.values() for r in rs)
    # exact and whitespace-normalised duplicates dropped, within and across splits
    norm = [" ".join(c.split()) for c in codes]
    assert len(norm) == len(set(norm))
    assert counts["duplicates"] == {"exact": 1, "whitespace-normalised": 1}
    # provenance and CuBERT's layout
    r = next(r for rs in recs.values() for r in rs if r["function"].startswith("def c("))
    assert set(r) == {"function", "label", "info", "provenance"} and r["label"] == "AttributeError"
    assert r["provenance"] == {"package": "proj", "version": "", "path": "src/m.py", "line": 1, "licence": "MIT"}
    lib = next(r for rs in recs.values() for r in rs if r["function"].startswith("def b("))
    assert lib["provenance"]["package"] == "pkg_b"  # a library dir: one project per top-level package
    assert lib["provenance"]["licence"] == "PSF-2.0"
    assert json.loads((out / "counts.json").read_text())["per_class"]["KeyError"] == {
        s: sum(x["label"] == "KeyError" for x in recs[s]) for s in SPLIT_FILES}
    assert "| **total** |" in (out / "counts.md").read_text()
    # functions catching only other classes: unlabelled, from the training projects only
    transfer = [json.loads(x) for x in (out / "transfer.jsonl").read_text().splitlines()]
    assert transfer and counts["transfer"] == len(transfer)
    assert all("label" not in r and r["provenance"]["package"] in packages["train"] for r in transfer)
    assert all("except __HOLE__:" in r["function"] and r["function"].startswith("def u") for r in transfer)


def test_build_is_deterministic(tmp_path: Path) -> None:
    srcs = _tree(tmp_path)
    build_exception(srcs, tmp_path / "a", seed=5, log=lambda t: None)
    build_exception(srcs, tmp_path / "b", seed=5, log=lambda t: None)
    for name in [*SPLIT_FILES.values(), "counts.json", "projects.tsv", "left_out.tsv"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with pytest.raises(FileExistsError):
        build_exception(srcs, tmp_path / "a", seed=5, log=lambda t: None)


def test_cli_builds_and_refuses_bad_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from codekd.cli import app

    srcs = _tree(tmp_path)
    args = ["data", "exception", *sum((["--from", str(s)] for s in srcs), []), "--out", str(tmp_path / "c")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "| **total** |" in res.output and (tmp_path / "c" / "train.jsonl").is_file()
    res = CliRunner().invoke(app, ["data", "exception", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "not a directory" in res.output and not (tmp_path / "d").exists()
