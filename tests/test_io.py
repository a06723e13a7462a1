"""Atomic outputs get the permissions a plain write would give (not the private ones of temporaries)."""

import os
import stat

from codekd.io import atomic_dir, write_json


def test_atomic_outputs_have_plain_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
