"""`codekd report`: tables, significance marks, plots and the HTML page from hand-made study results."""

import csv
import json
import statistics
from pathlib import Path

import matplotlib.image
import pytest
from scipy.stats import ttest_rel
from typer.testing import CliRunner

from codekd.cli import app
from codekd.data import DataError
from codekd.report import aggregate, build_report
from codekd.stats import paired_test

TEACHER = "minilm_l6"  # an underscore, to check LaTeX escaping
TEACHER_ACC = 0.60
SEEDS = (1, 2, 3)
# student -> method -> accuracy per seed. roberta-7m: KD beats FT on every seed (significant);
# gru-1.5m: KD is sometimes better, sometimes worse (not significant).
ACC = {"roberta-7m": {"ft": (0.50, 0.52, 0.51), "kd": (0.56, 0.585, 0.57)},
       "gru-1.5m": {"ft": (0.40, 0.45, 0.42), "kd": (0.43, 0.41, 0.44)}}
PARAMS = {"roberta-7m": 7_000_000, "gru-1.5m": 1_500_000, TEACHER: 22_713_620, "codebert": 124_647_170,
          "unixcoder": 125_929_730}


def efficiency(p50: float) -> dict:
    return {"parameters": 1, "size_mb": 1.0, "device": "cpu", "threads": 2, "input_tokens": 64, "warmup": 10,
            "runs": 50, "latency_ms": {"p50": p50, "p95": p50 * 1.2, "mean": p50}, "throughput": 1000 / p50,
            "throughput_batch": 32, "peak_memory_mb": 100.0}


def record(student, method, seed, acc, teacher=TEACHER, eff=None) -> dict:
    """A study record as `codekd study` writes it (FT students have no teacher, as in the study runner)."""
    name = student or teacher
    return {"kind": "student" if student else "teacher", "key": f"{teacher}.{name}{method}{seed}", "task": "exception",
            "cell": f"exception.{teacher}.{name}.{method}.s{seed}", "headline": "accuracy",
            "teacher": teacher, "student": student, "method": method, "seed": seed,
            "metrics": {"accuracy": acc, "top3_accuracy": min(1.0, acc + 0.2), "macro_f1": acc / 2, "n": 300},
            "parameters": PARAMS[name], "size_mb": PARAMS[name] * 4 / 1e6, "efficiency": eff,
            "environment": {"processor": "x86_64", "cpu_count": 2, "torch_threads": 2, "cuda": None}}


def study_records() -> list[dict]:
    records = [record(None, "ft", 42, TEACHER_ACC, eff=efficiency(20.0))]
    for student, methods in ACC.items():
        for method, accs in methods.items():
            for seed, acc in zip(SEEDS, accs, strict=True):
                # gru-1.5m: efficiency skipped for FT, latency missing for KD.
                eff = efficiency(2.0) if student == "roberta-7m" else \
                    None if method == "ft" else {**efficiency(1.0), "latency_ms": None}
                records.append(record(student, method, seed, acc, None if method == "ft" else TEACHER, eff))
    return records


def write_study(path: Path, records: list[dict]) -> Path:
    """Half the records in results.jsonl, half in a shard's file, as a sharded study leaves them."""
    path.mkdir(parents=True, exist_ok=True)
    half = len(records) // 2
    for name, part in (("results.jsonl", records[:half]), ("results-1of2.jsonl", records[half:])):
        (path / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return build_report(write_study(tmp_path_factory.mktemp("study"), study_records()))


def pct(values) -> list[float]:
    return [100 * v for v in values]


def pm(values, mark="") -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}{mark}"


def markdown_rows(text: str, title_start: str, label: int = 0) -> tuple[list[str], dict[str, list[str]]]:
    """Header and rows (by their `label` column) of the Markdown table whose title starts with `title_start`."""
    block = text.split(f"### {title_start}")[1].split("###")[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], {row[label]: row for row in cells[2:]}


def test_headline_and_retention_tables(report):
    text = (report / "tables.md").read_text(encoding="utf-8")
    header, rows = markdown_rows(text, f"Teacher {TEACHER}: headline")
    assert header == ["method", "exception / roberta-7m", "exception / gru-1.5m"]  # largest student first
    assert rows[f"teacher ({TEACHER})"][1:] == ["60.00", "60.00"]
    assert rows["FT"][1:] == [pm(pct(ACC["roberta-7m"]["ft"])), pm(pct(ACC["gru-1.5m"]["ft"]))]
    # KD on roberta-7m differs significantly from FT (no mark); on gru-1.5m it does not (dagger).
    assert rows["KD"][1:] == [pm(pct(ACC["roberta-7m"]["kd"])), pm(pct(ACC["gru-1.5m"]["kd"]), "†")]
    assert "† not significantly different from FT (paired t-test over 3 seeds, α = 0.05)." in text

    _, retention = markdown_rows(text, f"Teacher {TEACHER}: retention")
    for label, method in (("FT", "ft"), ("KD", "kd")):
        assert retention[label][1:] == [pm([100 * a / TEACHER_ACC for a in ACC[s][method]]) for s in ACC]
    assert f"teacher ({TEACHER})" not in retention

    header, eff = markdown_rows(text, "Efficiency", label=1)
    assert list(eff) == [TEACHER, "roberta-7m", "gru-1.5m"]
    assert eff[TEACHER] == ["exception", TEACHER, "teacher", "22.71", "90.9", "20.00", "24.00", "50.0", "100.0",
                            "2 / cpu"]
    # gru-1.5m: FT skipped the measurement, KD has no latency: latency n/a, the rest from KD's records.
    assert eff["gru-1.5m"][5:] == ["n/a", "n/a", "1000.0", "100.0", "2 / cpu"]


def test_csv_values_and_p_values(report):
    rows = {(r["teacher"], r["student"], r["method"]): r
            for r in csv.DictReader((report / "results.csv").open(encoding="utf-8"))}
    assert len(rows) == 5  # teacher + 2 students × (ft, kd)
    for student, methods in ACC.items():
        ft = pct(methods["ft"])
        for method, accs in methods.items():
            row, scores = rows[(TEACHER, student, method)], pct(accs)
            assert float(row["mean_pct"]) == pytest.approx(statistics.mean(scores))
            assert float(row["std_pct"]) == pytest.approx(statistics.stdev(scores))
            assert row["n_seeds"] == "3" and row["seeds"] == "1;2;3"
            retention = [100 * a / TEACHER_ACC for a in accs]
            assert float(row["retention_mean_pct"]) == pytest.approx(statistics.mean(retention))
            assert float(row["retention_std_pct"]) == pytest.approx(statistics.stdev(retention))
            expected_p = ttest_rel(scores, ft).pvalue if method == "kd" else None
            assert (row["p_value_vs_ft"] == "") if expected_p is None else \
                float(row["p_value_vs_ft"]) == pytest.approx(expected_p)
    assert float(rows[(TEACHER, "roberta-7m", "kd")]["p_value_vs_ft"]) < 0.05
    assert float(rows[(TEACHER, "gru-1.5m", "kd")]["p_value_vs_ft"]) > 0.05
    assert float(rows[(TEACHER, "roberta-7m", "kd")]["latency_p50_ms"]) == 2.0
    assert rows[(TEACHER, "gru-1.5m", "ft")]["latency_p50_ms"] == ""  # efficiency skipped
    teacher = rows[(TEACHER, "", "ft")]
    assert teacher["role"] == "teacher" and float(teacher["mean_pct"]) == pytest.approx(60.0)


def test_latex_is_escaped(report):
    tex = (report / "tables.tex").read_text(encoding="utf-8")
    assert r"minilm\_l6" in tex and r"in \%" in tex and r"$\pm$" in tex and r"$^\dagger$" in tex
    assert r"\toprule" in tex and r"\multicolumn{2}{c}{exception}" in tex
    assert "minilm_l6" not in tex and "±" not in tex and "†" not in tex


def test_paired_test_edge_cases():
    assert paired_test({1: 50.0, 2: 52.0}, {1: 50.0, 2: 52.0}) == (2, 1.0)  # all differences zero
    assert paired_test({1: 51.0, 2: 53.0}, {1: 50.0, 2: 52.0}) == (2, 0.0)  # identical non-zero differences
    assert paired_test({1: 51.0, 2: 53.0}, {2: 52.0, 3: 50.0}) == (1, None)  # one common seed: no test


def test_plots_are_real_pngs(report):
    for name in ("metric_vs_params.png", "retention_heatmap.png", "latency_vs_metric.png"):
        path = report / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_index_html_is_self_contained(report):
    page = (report / "index.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 4  # the three plots and the validation curves
    assert "<table>" in page and "60.00" in page and "†" in page
    assert "13 records (1 teacher runs) of 13 study cells; student seeds: 1, 2, 3" in page
    assert "processor x86_64" in page and "paired t-test over 3 seeds" in page


def test_one_seed_and_several_teachers(tmp_path):
    """FT (no teacher) is listed under every teacher with its own retention; one seed gives no test."""
    records = [record(None, "ft", 42, 0.6, "codebert"), record(None, "ft", 42, 0.8, "unixcoder"),
               record("roberta-7m", "ft", 1, 0.48, None), record("roberta-7m", "kd", 1, 0.5, "codebert"),
               record("roberta-7m", "kd", 1, 0.6, "unixcoder")]
    cells = {(c.teacher, c.student, c.method): c for c in aggregate(records)}
    assert cells[("codebert", "roberta-7m", "ft")].retention == {1: pytest.approx(80.0)}
    assert cells[("unixcoder", "roberta-7m", "ft")].retention == {1: pytest.approx(60.0)}
    assert cells[("codebert", "roberta-7m", "kd")].p_value is None
    out = build_report(write_study(tmp_path / "study", records), tmp_path / "out")
    text = (out / "tables.md").read_text(encoding="utf-8")
    assert "Teacher codebert" in text and "Teacher unixcoder" in text and "†" not in text
    assert "No significance test was possible" in text
    (out / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="--force"):
        build_report(tmp_path / "study", tmp_path / "out")
    assert not (build_report(tmp_path / "study", tmp_path / "out", force=True) / "stale.txt").exists()  # replaced whole


def test_missing_or_empty_study_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no such study directory"):
        build_report(tmp_path / "absent")
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(ValueError, match="no results"):
        build_report(tmp_path)
    (tmp_path / "results.jsonl").write_text(json.dumps(study_records()[0]) + "\n{truncated\n")
    with pytest.raises(DataError, match="results.jsonl:2"):
        build_report(tmp_path)
    assert not (tmp_path / "report").exists()


def test_cli_report(tmp_path):
    study = write_study(tmp_path / "study", study_records())
    result = CliRunner().invoke(app, ["report", str(study), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "FT" in result.output and "report written to" in result.output
    assert {"index.html", "tables.md", "tables.tex", "results.csv"} <= {p.name for p in (tmp_path / "r").iterdir()}


def test_study_without_teachers(tmp_path):
    """FT only: no teacher reference row and no retention table, just the scores."""
    records = [record("roberta-7m", "ft", seed, acc, teacher=None, eff=efficiency(2.0))
               for seed, acc in zip(SEEDS, ACC["roberta-7m"]["ft"], strict=True)]
    text = (build_report(write_study(tmp_path / "s", records)) / "tables.md").read_text()
    assert "### No teacher: headline metric" in text and "retention" not in text and "teacher (" not in text
    assert f"| FT | {pm(pct(ACC['roberta-7m']['ft']))} |" in text
