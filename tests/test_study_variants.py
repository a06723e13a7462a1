"""Study files: an entry of `methods:` may name a variant of a method (`kd_hinton: {method: kd, ...}`)."""

from pathlib import Path

import pytest

from codekd.study_config import load_study


def _write(tmp_path: Path, methods: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(f"name: s\ndata: {{exception: demo}}\nseeds: [1]\nstudents: [roberta-0.6m]\n"
                 f"teachers: {{t: {{model: demo-teacher}}}}\nmethods:\n{methods}")
    return p


def test_variants_run_their_method_under_their_own_name(tmp_path: Path) -> None:
    study = load_study(_write(tmp_path, "  kd: {}\n  kd_hinton: {method: kd, hparams: {temperature: 4.0}}\n"),
                       tmp_path / "out")
    cells = {c.method: c for c in study.student_cells()}
    assert set(cells) == {"kd", "kd_hinton"}
    assert cells["kd_hinton"].config["method"] == "kd" and cells["kd_hinton"].config["variant"] == "kd_hinton"
    assert "variant" not in cells["kd"].config  # a plain entry keeps the key it always had
    assert cells["kd"].key != cells["kd_hinton"].key and cells["kd_hinton"].name.endswith("kd_hinton.s1")


def test_a_variant_of_an_unknown_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"methods\.x: .*nope.*unknown"):
        load_study(_write(tmp_path, "  x: {method: nope}\n"), tmp_path / "out")
