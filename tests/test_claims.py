"""The study's claims (a)–(c) on hand-made study records: which rows are compared, the figures, the verdicts."""

import statistics

import pytest
from scipy.stats import ttest_rel
from test_report import SEEDS, TEACHER, TEACHER_ACC, record, write_study

from codekd.claims import claims
from codekd.report import aggregate, build_report, study_tables

# student -> row -> (base method, transfer?, accuracy per seed)
ROWS = {"roberta-7m": {"ft": ("ft", False, (0.50, 0.52, 0.51)), "kd": ("kd", False, (0.56, 0.585, 0.57)),
                       "ckd": ("ckd", False, (0.58, 0.60, 0.595))},
        "gru-1.5m": {"ft": ("ft", False, (0.40, 0.45, 0.42)), "kd_hinton": ("kd", False, (0.43, 0.41, 0.44)),
                     "dist": ("dist", False, (0.44, 0.44, 0.45)), "pkd": ("pkd", False, (0.41, 0.42, 0.40)),
                     "kd_transfer": ("kd", True, (0.56, 0.57, 0.55))}}


def records() -> list[dict]:
    out = [record(None, "ft", 42, TEACHER_ACC)]
    for student, rows in ROWS.items():
        for name, (method, transfer, accs) in rows.items():
            for seed, acc in zip(SEEDS, accs, strict=True):
                r = record(student, name, seed, acc, None if method == "ft" else TEACHER)
                r["config"] = {"method": method, **({"transfer": "unlabelled.jsonl"} if transfer else {})}
                out.append(r)
    return out


def pct(student: str, row: str) -> list[float]:
    return [100 * a for a in ROWS[student][row][2]]


def test_each_claim_compares_the_right_rows_with_a_paired_test():
    verdicts = {(v.claim, v.subject.split(" / ")[-1], v.compared): v for v in claims(aggregate(records()))}
    a7 = verdicts[("a", "roberta-7m", "kd vs ft")]
    assert a7.p_value == pytest.approx(ttest_rel(pct("roberta-7m", "kd"), pct("roberta-7m", "ft")).pvalue)
    assert a7.difference == pytest.approx(statistics.mean(pct("roberta-7m", "kd")) - 51.0)
    assert a7.holds is True and a7.n_pairs == 3
    a1 = verdicts[("a", "gru-1.5m", "kd_hinton vs ft")]  # a renamed KD row counts; the transfer row does not
    assert a1.holds is False and a1.p_value > 0.05
    assert not any(k[0] == "a" and "kd_transfer" in k[2] for k in verdicts)
    b7 = verdicts[("b", "roberta-7m", "ckd vs kd")]
    assert b7.holds is True
    assert b7.p_value == pytest.approx(ttest_rel(pct("roberta-7m", "ckd"), pct("roberta-7m", "kd")).pvalue)
    b1 = verdicts[("b", "gru-1.5m", "pkd vs dist")]  # the best logit row is DIST here (the transfer row excluded)
    assert b1.holds is False and b1.difference == pytest.approx(41.0 - statistics.mean(pct("gru-1.5m", "dist")))
    (c,) = [v for v in verdicts.values() if v.claim == "c"]  # only gru-1.5m is small; its best row is the transfer one
    assert c.compared.startswith("gru-1.5m kd_transfer")
    assert c.difference == pytest.approx(statistics.mean(pct("gru-1.5m", "kd_transfer")) / 60.0 * 100)
    assert c.holds is True  # 56 % of the teacher's 60 %: 93.3 % kept
    assert len(verdicts) == 5


def test_a_kd_row_meets_the_ft_row_trained_like_it():
    """A KD row at a tuned learning rate is compared with FT at that rate, not with FT at the grid's rate."""
    extra = [("ft_lr5e-4", "ft", (0.60, 0.61, 0.59)), ("kd_lr5e-4", "kd", (0.62, 0.64, 0.63))]
    rs = records()
    for name, method, accs in extra:
        for seed, acc in zip(SEEDS, accs, strict=True):
            r = record("roberta-7m", name, seed, acc, None if method == "ft" else TEACHER)
            r["config"] = {"method": method, "train": {"lr": 5e-4, "seed": seed}}
            rs.append(r)
    cells = aggregate(rs)
    compared = sorted(v.compared for v in claims(cells) if v.claim == "a" and "roberta-7m" in v.subject)
    assert compared == ["kd vs ft", "kd_lr5e-4 vs ft_lr5e-4"]
    # the report's significance marks pair the same way; an FT variant is not tested against FT
    at = {c.method: c for c in cells if c.student == "roberta-7m"}
    assert at["kd_lr5e-4"].p_value == pytest.approx(ttest_rel([62, 64, 63], [60, 61, 59]).pvalue)
    assert at["kd"].p_value == pytest.approx(ttest_rel(pct("roberta-7m", "kd"), pct("roberta-7m", "ft")).pvalue)
    assert at["ft_lr5e-4"].p_value is None
    # the tables list a variant with the method it runs, in the study's method order
    # a row with more seeds than its partner: the difference is over the seeds both ran, as the test's pairs
    more = [*rs, *(dict(r, seed=9, key=r["key"] + "9", metrics={**r["metrics"], "accuracy": 0.2})
                   for r in rs if r["student"] == "roberta-7m" and r["method"] == "ft_lr5e-4" and r["seed"] == 1)]
    (v,) = [v for v in claims(aggregate(more)) if v.compared == "kd_lr5e-4 vs ft_lr5e-4"]
    assert v.n_pairs == 3 and v.difference == pytest.approx(63.0 - 60.0)
    scores = study_tables(cells)[0]
    assert [row[0] for row in scores.rows] == [f"teacher ({TEACHER})", "FT", "FT_LR5E-4", "KD", "KD_HINTON",
                                               "KD_LR5E-4", "KD_TRANSFER", "DIST", "PKD", "CKD"]


def test_a_row_is_feature_based_by_the_options_it_ran_with():
    """A combo with a PKD part, or MiniLM's value relation, reads more than logits: the family comes from the
    method's needs under the row's own options, not from the class defaults."""
    from types import SimpleNamespace

    from codekd.claims import family

    def row(method, hparams):
        return SimpleNamespace(method="r", records=[{"config": {"method": method, "hparams": hparams}}])

    assert family(row("combo", {"parts": [{"method": "kd"}]})) == "logit"
    assert family(row("combo", {"parts": [{"method": "kd"}, {"method": "pkd", "weight": 0.5}]})) == "feature"
    assert family(row("ft", {})) == "ft" and family(row("dist", {"temperature": 4.0})) == "logit"
    # records of an older codekd: an option or a method since removed leaves the row unclassified, not the report
    assert family(row("kd", {"no_such_option": 1})) == "unknown" and family(row("gone", {})) == "unknown"


def test_the_report_writes_claims_md(tmp_path):
    out = build_report(write_study(tmp_path / "study", records()))
    text = (out / "claims.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert len(rows) == 4 and "| holds |" in rows[0]
