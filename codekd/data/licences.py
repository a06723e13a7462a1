"""Which licence a Python source carries, and whether it is permissive, for `codekd data exception`.

Read from a distribution's metadata (PEP 639 `License-Expression`, then the `License ::` trove
classifiers, then the free-text `License` field, then the licence files in `*.dist-info`), or, for a
project checkout, from its LICENSE / COPYING file. Only permissive licences (MIT, BSD, Apache-2.0,
PSF, ISC, zlib, Boost, Unlicense, CC0, …) let a source into the corpus by default: their code may be
redistributed in a data set with attribution, copyleft code (GPL, LGPL, MPL, EPL) may not without
passing its terms on. Anything not recognised counts as unknown and is left out.
"""

from __future__ import annotations

import re
from email.parser import HeaderParser
from pathlib import Path

PERMISSIVE = {
    "mit", "mit-0", "bsd", "bsd-2-clause", "bsd-3-clause", "0bsd", "apache-2.0", "apache", "isc",
    "psf-2.0", "python-2.0", "zlib", "bsl-1.0", "unlicense", "cc0-1.0", "hpnd", "mit-cmu", "x11",
}
# trove classifier suffix -> SPDX-like id
_CLASSIFIERS = {
    "mit license": "MIT", "bsd license": "BSD", "apache software license": "Apache-2.0",
    "python software foundation license": "PSF-2.0", "isc license (iscl)": "ISC",
    "zlib/libpng license": "Zlib", "boost software license 1.0 (bsl-1.0)": "BSL-1.0",
    "the unlicense (unlicense)": "Unlicense", "mit no attribution license (mit-0)": "MIT-0",
    "historical permission notice and disclaimer (hpnd)": "HPND",
    "cc0 1.0 universal (cc0 1.0) public domain dedication": "CC0-1.0",
}
# A licence text is recognised by its title or grant sentence (a mere mention, like CPython's "GPL-
# compatible" table, does not count); copyleft titles are checked first, so a file holding a GPL text
# beside a permissive one is not taken as permissive. Short free-text fields ("BSD", "Apache 2.0",
# "GPLv3") are recognised by their names.
_TEXTS = [
    (r"gnu (affero |lesser |library )?general public licen[cs]e\s+version", "GPL-family"),
    (r"mozilla public licen[cs]e,? (version|v\.)", "MPL"),
    (r"eclipse public licen[cs]e", "EPL"),
    (r"apache licen[cs]e,?\s+version 2\.0", "Apache-2.0"),
    (r"python software foundation licen[cs]e version 2", "PSF-2.0"),
    (r"permission is hereby granted, free of charge", "MIT"),
    (r"redistribution and use in source and binary forms", "BSD"),
    (r"permission to use, copy, modify, and(/or)? distribute this software for any purpose", "ISC"),
    (r"this is free and unencumbered software released into the public domain", "Unlicense"),
]
_NAMES = [
    (r"\bl?gpl|\bagpl|general public licen[cs]e", "GPL-family"),
    (r"\bmpl\b|mozilla", "MPL"),
    (r"\bepl\b|eclipse", "EPL"),
    (r"apache", "Apache-2.0"),
    (r"\bpsf\b|python software foundation", "PSF-2.0"),
    (r"\bmit\b", "MIT"),
    (r"\bbsd\b", "BSD"),
    (r"\bisc\b", "ISC"),
    (r"unlicense", "Unlicense"),
]
# a file header naming one of these is third-party code under another licence: left out
FOREIGN_HEADER = re.compile(
    r"gnu (affero |lesser |library )?general public licen[cs]e|\bl?gpl\b|mozilla public licen[cs]e|"
    r"eclipse public licen[cs]e|creative commons", re.IGNORECASE)


def is_permissive(licence: str) -> bool:
    """Whether an SPDX-like expression allows redistribution without copyleft terms: every part of an
    AND is permissive, some alternative of an OR is (`X WITH exception` counts as X)."""
    expr = licence.replace("(", " ").replace(")", " ")
    for alternative in re.split(r"\s+or\s+", expr.strip(), flags=re.IGNORECASE):
        parts = [re.split(r"\s+with\s+", p.strip(), flags=re.IGNORECASE)[0].lower()
                 for p in re.split(r"\s+and\s+", alternative, flags=re.IGNORECASE)]
        if parts and all(p in PERMISSIVE for p in parts):
            return True
    return False


def classify_text(text: str) -> str:
    """The licence a text (a LICENSE file, a free-text `License:` field) names, or "unknown"."""
    head = " ".join(text[:20000].lower().split())
    for pattern, name in _TEXTS if len(head) > 200 else _NAMES:
        if re.search(pattern, head):
            return name
    return "unknown"


def distribution_licence(dist_info: Path) -> str:
    """The licence of an installed distribution from its `*.dist-info` metadata (see module doc)."""
    meta = HeaderParser().parsestr((dist_info / "METADATA").read_text(encoding="utf-8", errors="replace"))
    if meta.get("License-Expression"):
        return " ".join(meta["License-Expression"].split())
    classified = []
    for c in meta.get_all("Classifier") or []:
        if c.startswith("License ::"):
            name = c.split("::")[-1].strip().lower()
            classified.append(_CLASSIFIERS.get(name) or classify_text(name))
    classified = [c for c in classified if c != "unknown"]
    if classified:
        # several classifiers usually mean a choice (dual licensing); a copyleft one among them is
        # taken conservatively as a conjunction, so the source is left out
        return " AND ".join(dict.fromkeys(classified))
    field = (meta.get("License") or "").strip()
    if field and field.upper() != "UNKNOWN":
        found = classify_text(field)
        if found != "unknown":
            return found
    files = sorted(p for p in dist_info.rglob("*") if p.is_file() and re.match(r"(licen[cs]e|copying)", p.name, re.I))
    return checkout_licence_files(files)


def checkout_licence(root: Path) -> str:
    """The licence of a project checkout or library directory from its LICENSE / COPYING file(s)."""
    files = sorted(p for p in root.iterdir() if p.is_file() and re.match(r"(licen[cs]e|copying)", p.name, re.I))
    return checkout_licence_files(files)


def checkout_licence_files(files: list[Path]) -> str:
    """The licence named by the first of `files` that names one, or "unknown" (also for no file)."""
    for f in files:
        found = classify_text(f.read_text(encoding="utf-8", errors="replace"))
        if found != "unknown":
            return found
    return "unknown"
