"""The study's three headline claims, tested on a study's own results (`claims.md` in its report).

The study (arXiv 2508.15423) reports that (a) knowledge distillation beats fine-tuning for every student
kind, (b) feature-based distillation does at least as well as logit-based distillation, and (c) a student
of about 5 % of the teacher's size keeps ≥ 90 % of its quality. These are checked here the same way on any
grid codekd ran, with a paired t-test over the seeds two rows share (seeds fix data order and
initialisation, which both rows use):

- (a) per student: every vanilla-KD row (base method `kd`, no transfer set) against the FT rows trained with
  the same training options (learning rate, epochs, …; every FT row when none is), so that a KD row at a
  tuned learning rate meets FT at that rate; the claim holds for that student when at least one KD row is
  better than its FT row with p < α.
- (b) per student: the feature-based row with the best mean test score against the logit-based row with the
  best mean (rows with a transfer set left out, since they see more data). Picking both by their test
  means favours neither family; the claim holds when the feature mean ≥ the logit mean.
- (c) the best row of the students with at most `SMALL` parameters: its mean headline ÷ the teacher's
  mean headline ≥ `KEEP`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from codekd.stats import ALPHA, paired_test

Cell = Any  # codekd.report.Cell (the report imports this module, so not the other way round)

SMALL = 2_000_000  # claim (c)'s "1.5M students": every student with at most this many parameters
KEEP = 0.90


@dataclass
class Verdict:
    """One claim for one student (or the whole study): what was compared, the figures, and whether it holds."""

    claim: str
    subject: str
    compared: str
    difference: float | None  # percentage points, or the retention in % for claim (c)
    n_pairs: int
    p_value: float | None
    holds: bool | None  # None: not enough seeds to decide

    def row(self) -> list[str]:
        diff = "n/a" if self.difference is None else f"{self.difference:+.2f}"
        if self.claim == "c" and self.difference is not None:
            diff = f"{self.difference:.1f} %"
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        verdict = {True: "holds", False: "fails", None: "untested"}[self.holds]
        return [self.claim, self.subject, self.compared, diff, str(self.n_pairs), p, verdict]


def _config(cell: Cell) -> dict[str, Any]:
    """The study cell config its records were run with (empty for records written without one)."""
    return cell.records[0].get("config") or {}


def base_method(cell: Cell) -> str:
    """The registered method a (possibly renamed) study row ran."""
    return _config(cell).get("method", cell.method)


def uses_transfer(cell: Cell) -> bool:
    return bool(_config(cell).get("transfer"))


def _training(cell: Cell) -> dict[str, Any]:
    """The row's training options, less the seed (which the paired test pairs on)."""
    return {k: v for k, v in (_config(cell).get("train") or {}).items() if k != "seed"}


def ft_rows(cell: Cell, cells: Sequence[Cell]) -> list[Cell]:
    """The FT rows `cell` is compared with: FT on its task, teacher and student trained with the same options
    (learning rate, epochs, …; so a method at a tuned learning rate meets FT at that rate), or every FT row
    there when none is; the row named `ft` first."""
    fts = [c for c in cells if (c.task, c.teacher, c.student) == (cell.task, cell.teacher, cell.student)
           and base_method(c) == "ft" and c is not cell]
    return sorted([f for f in fts if _training(f) == _training(cell)] or fts, key=lambda c: c.method != "ft")


def family(cell: Cell) -> str:
    """`ft` (no teacher), `logit` (the teacher's logits only) or `feature` (also its hidden states, attentions…);
    `unknown` for a row this codekd cannot classify (a method or option it no longer has), so that a report of
    old records still renders and leaves that row out of claim (b)."""
    from codekd.methods import get_method

    try:
        needs = set(get_method(base_method(cell)).needs(_config(cell).get("hparams") or {})[0])
    except ValueError:
        return "unknown"
    return "ft" if not needs else "logit" if needs <= {"logits"} else "feature"


def _mean(cell: Cell) -> float:
    return statistics.fmean(cell.scores.values())  # a cell holds at least one record's score


def _versus(claim: str, subject: str, a: Cell, b: Cell, better: bool) -> Verdict:
    """`a` against `b`, paired over seeds; `better`: the claim needs a significantly above b, else a's mean ≥ b's.
    The difference is the mean over the seeds both ran, the pairs the test uses (all seeds when they share none)."""
    n, p = paired_test(a.scores, b.scores)
    common = sorted(a.scores.keys() & b.scores.keys())
    diff = statistics.fmean(a.scores[s] - b.scores[s] for s in common) if common else _mean(a) - _mean(b)
    holds = (None if p is None else diff > 0 and p < ALPHA) if better else (None if n < 2 else diff >= 0)
    return Verdict(claim, subject, f"{a.method} vs {b.method}", diff, n, p, holds)


def claims(cells: Sequence[Cell]) -> list[Verdict]:
    """The verdicts of claims (a), (b) per (task, teacher, student) and (c) per (task, teacher)."""
    verdicts: list[Verdict] = []
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.task, c.teacher), []).append(c)
    for (task, teacher), mine in groups.items():
        students = [c for c in mine if c.student is not None]
        for student in dict.fromkeys(c.student for c in students):
            rows = [c for c in students if c.student == student]
            subject = f"{task} / {teacher} / {student}"
            for kd in (c for c in rows if base_method(c) == "kd" and not uses_transfer(c)):
                verdicts += [_versus("a", subject, kd, f, better=True) for f in ft_rows(kd, rows)]
            best = {f: max((c for c in rows if family(c) == f and not uses_transfer(c)), key=_mean, default=None)
                    for f in ("logit", "feature")}
            if best["logit"] and best["feature"]:
                verdicts.append(_versus("b", subject, best["feature"], best["logit"], better=False))
        teacher_row = next((c for c in mine if c.student is None), None)
        candidates = [c for c in students if (c.efficiency["parameters"] or SMALL + 1) <= SMALL]
        if teacher_row is not None and candidates:
            top, reference = max(candidates, key=_mean), _mean(teacher_row)
            kept = 100 * _mean(top) / reference if reference else None
            verdicts.append(Verdict("c", f"{task} / {teacher}", f"{top.student} {top.method} ÷ teacher", kept,
                                    len(top.scores), None, None if kept is None else kept >= 100 * KEEP))
    return verdicts


HEADER = ["claim", "subject", "compared", "Δ (points) / kept", "seeds", "p", "verdict"]


def to_markdown(verdicts: Sequence[Verdict]) -> str:
    """`claims.md`: the three claims, then one table row per verdict."""
    lines = ["# The study's claims on this study", "",
             "(a) KD > FT for each student (each vanilla-KD row vs FT, paired t-test, significant at "
             f"α = {ALPHA}); (b) the best feature-based row ≥ the best logit-based row per student (transfer-set "
             f"rows excluded; p is the paired t-test of the two); (c) the best student of ≤ {SMALL / 1e6:g}M "
             f"parameters keeps ≥ {KEEP:.0%} of the teacher's headline.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(v.row()) + " |" for v in verdicts]
    if not verdicts:
        lines.append("| " + " | ".join(["–"] * len(HEADER)) + " |")
    return "\n".join(lines) + "\n"
