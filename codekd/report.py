"""`codekd report STUDY_DIR`: the study's tables, significance marks, plots and one HTML page, from its results.

The result records of a study (`results*.jsonl`, read by `codekd.study.read_results`) are grouped once into
cells — one per (task, teacher, student, method), the teacher's own runs with student None — and every output
is rendered from those cells: `tables.md`, `tables.tex`, `results.csv`, `claims.md` (the study's claims tested
here, `codekd.claims`), `diagnostics.md` and the validation curves (`codekd.curves`), four PNG plots and a
self-contained `index.html`. A score is the record's headline
metric in %, mean ± sample std over seeds. A method is compared
with FT on the same (task, teacher, student), trained with the same options (`codekd.claims.ft_rows`), by a
paired t-test over the seeds both ran, because seeds fix the data order and initialisation that both runs share.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogFormatter  # noqa: E402

from codekd.claims import base_method, claims, ft_rows  # noqa: E402
from codekd.claims import to_markdown as claims_markdown  # noqa: E402
from codekd.curves import CAPTION, write_curves  # noqa: E402
from codekd.io import atomic_dir, check_new_output  # noqa: E402
from codekd.stats import ALPHA, mean_std, paired_test  # noqa: E402
from codekd.study import read_results  # noqa: E402

METHOD_ORDER = ("ft", "kd", "dist", "pkd", "ckd")  # the study's order; other methods follow alphabetically, and a
# renamed variant (kd_hinton) sorts with the method it runs
TASK_ORDER = ("defect", "clone", "exception")
DAGGER = "†"
MISSING = "–"  # no run for this cell
NO_TEACHER = "none"  # the group of a study without teachers (FT only): no reference row, no retention
NA = "n/a"  # a run without this measurement
MARKERS = {"roberta": ("o", "-"), "gru": ("s", ":")}  # student kind -> marker, line style
PLOTS = {"metric_vs_params.png": "Headline metric against student parameters (mean ± std over seeds).",
         "retention_heatmap.png": "Retention: student headline ÷ teacher headline (%), mean over seeds.",
         "latency_vs_metric.png": "Headline metric against p50 latency; the step line is the Pareto front.",
         "curves.png": CAPTION}


def _rank(value: str, preferred: tuple[str, ...]) -> tuple[int, str]:
    """Sort key: the preferred values in their order, then the others alphabetically."""
    return (preferred.index(value), "") if value in preferred else (len(preferred), value)


def _method_rank(cell: Cell) -> tuple[tuple[int, str], str]:
    """A row's place: by the method it runs in the study's order (a variant next to its method), then by name."""
    return _rank(base_method(cell), METHOD_ORDER), cell.method


def _mean(values: Iterable[float | None]) -> float | None:
    return mean_std(v for v in values if v is not None)[0]


@dataclass
class Cell:
    """Every record of one (task, teacher, student, method); the teacher's own runs have student None.

    FT students use no teacher: their records appear in a cell under every teacher of their task, which is
    then the reference for their retention and for the tests of the other methods against FT.
    """

    task: str
    teacher: str
    student: str | None
    method: str
    headline: str
    records: list[dict[str, Any]] = field(default_factory=list)
    reference: float | None = None  # the teacher's mean headline score in %, for retention
    n_pairs: int = 0  # seeds shared with FT on the same (task, teacher, student)
    p_value: float | None = None  # paired t-test against FT; None when untested

    @property
    def name(self) -> str:
        return self.student or self.teacher

    @property
    def kind(self) -> str:
        """The student's architecture family from its preset name (`roberta-1.5m` -> `roberta`)."""
        return self.name.split("-")[0]

    @property
    def scores(self) -> dict[int, float]:
        """Seed -> headline metric in %."""
        return {r["seed"]: 100 * r["metrics"][self.headline] for r in self.records}

    @property
    def retention(self) -> dict[int, float]:
        """Seed -> retention in %: the student's headline ÷ the teacher's mean headline (empty without a teacher)."""
        return {seed: 100 * score / self.reference for seed, score in self.scores.items() if self.reference}

    @property
    def mark(self) -> str:
        """The dagger when FT and this method are not significantly different at ALPHA."""
        return DAGGER if self.p_value is not None and self.p_value >= ALPHA else ""

    @cached_property
    def efficiency(self) -> dict[str, Any]:
        return efficiency(self.records)


def efficiency(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Size and speed of a model: its parameter count, and each measurement's mean over the records that have it
    (None when none has: a run whose measurement was skipped)."""
    effs = [r.get("efficiency") or {} for r in records]
    lat = [e.get("latency_ms") or {} for e in effs]
    seen = {key: "/".join(sorted({str(e[key]) for e in effs if e.get(key) is not None})) or None
            for key in ("device", "threads")}
    return {"parameters": next((r["parameters"] for r in records if r.get("parameters") is not None), None),
            "size_mb": _mean(r.get("size_mb") for r in records),
            "latency_p50_ms": _mean(x.get("p50") for x in lat), "latency_p95_ms": _mean(x.get("p95") for x in lat),
            "throughput": _mean(e.get("throughput") for e in effs),
            "peak_memory_mb": _mean(e.get("peak_memory_mb") for e in effs), **seen}


def aggregate(records: list[dict[str, Any]]) -> list[Cell]:
    """Group records into cells in the tables' order, set the teachers' scores as references for retention, and
    test every method against FT on the seeds both ran. Teacherless records join every teacher of their task."""
    teachers: dict[str, list[str]] = {}
    for r in records:
        if r.get("teacher") and r["teacher"] not in teachers.setdefault(r["task"], []):
            teachers[r["task"]].append(r["teacher"])
    cells: dict[tuple[str, str, str | None, str], Cell] = {}
    for r in records:
        for teacher in [r["teacher"]] if r.get("teacher") else teachers.get(r["task"]) or [NO_TEACHER]:
            key = (r["task"], teacher, r.get("student"), r["method"])
            cells.setdefault(key, Cell(*key, headline=r["headline"])).records.append(r)
    refs = {(c.task, c.teacher): mean_std(c.scores.values())[0] for c in cells.values() if c.student is None}
    every = list(cells.values())
    for cell in every:
        cell.reference = refs.get((cell.task, cell.teacher))
        ft = next(iter(ft_rows(cell, every)), None)
        if cell.student is not None and base_method(cell) != "ft" and ft is not None:
            cell.n_pairs, cell.p_value = paired_test(cell.scores, ft.scores)
    return sorted(cells.values(), key=lambda c: (_rank(c.task, TASK_ORDER), c.teacher, c.student is not None,
                                                 -(c.efficiency["parameters"] or 0), c.name,
                                                 _method_rank(c)))


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _pm(values: Iterable[float], mark: str = "") -> str:
    """"mean ± std" with two decimals ("mean" alone for one value, MISSING for none), then the mark."""
    mean, std = mean_std(values)
    if mean is None:
        return MISSING
    return (f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}") + mark


def _num(value: float | None, fmt: str) -> str:
    return NA if value is None else format(value, fmt)


def _millions(parameters: float | None, fmt: str = ".2f") -> str:
    return _num(None if parameters is None else parameters / 1e6, fmt)


# ---------------------------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A rendered-agnostic table: a header row (optionally grouped by task above it), text rows, a footnote."""

    title: str
    header: list[str]
    rows: list[list[str]]
    groups: list[tuple[str, int]] = field(default_factory=list)  # spans over header[1:]
    footnote: str = ""


def _significance_note(cells: list[Cell]) -> str:
    compared = [c for c in cells if c.student is not None and base_method(c) != "ft"]
    tested = sorted({c.n_pairs for c in compared if c.p_value is not None})
    if not tested:
        return "No significance test was possible: no method has 2 or more seeds paired with FT."
    seeds = str(tested[0]) if len(tested) == 1 else f"{tested[0]}–{tested[-1]}"
    note = f"{DAGGER} not significantly different from FT (paired t-test over {seeds} seeds, α = {ALPHA})"
    if any(c.p_value is None for c in compared):
        note += "; cells with fewer than 2 seeds paired with FT were not tested"
    return note + "."


def study_tables(cells: list[Cell]) -> list[Table]:
    """Per teacher: the headline table (teacher reference row, one row per method) and the retention table."""
    tables = []
    for teacher in _unique(c.teacher for c in cells):
        mine = [c for c in cells if c.teacher == teacher]
        students = [c for c in mine if c.student is not None]
        columns = _unique((c.task, c.student) for c in students)
        groups = [(task, sum(t == task for t, _ in columns)) for task in _unique(t for t, _ in columns)]
        header = ["method", *(s for _, s in columns)]
        at = {(c.task, c.student, c.method): c for c in mine}
        ref = {c.task: c for c in mine if c.student is None}
        methods = list(dict.fromkeys(c.method for c in sorted(students, key=_method_rank)))
        scores = [[f"teacher ({teacher})", *(_pm(ref[t].scores.values()) if t in ref else MISSING
                                             for t, _ in columns)]]
        retention = []
        for m in methods:
            row = [at.get((t, s, m)) for t, s in columns]
            scores.append([m.upper(), *(_pm(c.scores.values(), c.mark) if c else MISSING for c in row)])
            retention.append([m.upper(), *(_pm(c.retention.values()) if c else MISSING for c in row)])
        headlines = ", ".join(f"{task} {headline}" for task, headline in _unique((c.task, c.headline) for c in mine))
        if teacher == NO_TEACHER:
            tables.append(Table(f"No teacher: headline metric in % ({headlines}), mean ± std over seeds",
                                header, scores[1:], groups, _significance_note(mine)))
            continue
        tables.append(Table(f"Teacher {teacher}: headline metric in % ({headlines}), mean ± std over seeds",
                            header, scores, groups, _significance_note(mine)))
        tables.append(Table(f"Teacher {teacher}: retention in % (student ÷ teacher headline), mean ± std over seeds",
                            header, retention, groups))
    return tables


def efficiency_table(cells: list[Cell]) -> Table:
    """One row per (task, model): teachers, then students by size, measurements averaged over their runs."""
    models: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for c in cells:  # keyed by id(): an FT record sits in a cell under every teacher but counts once here
        models.setdefault((c.task, "student" if c.student else "teacher", c.name), {}).update(
            (id(r), r) for r in c.records)
    measured = [(key, efficiency(list(records.values()))) for key, records in models.items()]
    measured.sort(key=lambda m: (_rank(m[0][0], TASK_ORDER), m[0][1] != "teacher", -(m[1]["parameters"] or 0)))
    rows = [[task, name, role, _millions(e["parameters"]), _num(e["size_mb"], ".1f"), _num(e["latency_p50_ms"], ".2f"),
             _num(e["latency_p95_ms"], ".2f"), _num(e["throughput"], ".1f"), _num(e["peak_memory_mb"], ".1f"),
             f"{e['threads'] or NA} / {e['device'] or NA}"] for (task, role, name), e in measured]
    return Table("Efficiency per model (mean over its runs)",
                 ["task", "model", "role", "parameters (M)", "size MB", "p50 ms", "p95 ms", "throughput ex/s",
                  "peak memory MB", "threads / device"], rows)


def to_markdown(table: Table) -> str:
    """A pipe table; grouped columns are headed `task / student`."""
    tasks = [g for g, n in table.groups for _ in range(n)]
    header = [table.header[0], *(f"{t} / {h}" for t, h in zip(tasks, table.header[1:], strict=True))] \
        if tasks else table.header
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines + ([f"\n{table.footnote}"] if table.footnote else [])) + "\n"


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}"}
TEX_SYMBOLS = {"±": r"$\pm$", DAGGER: r"$^\dagger$", "α": r"$\alpha$", "÷": r"$\div$", "–": "--"}


def tex(text: str) -> str:
    """LaTeX text: special characters escaped, then the report's symbols as math."""
    text = "".join(TEX_ESCAPES.get(ch, ch) for ch in text)
    return "".join(TEX_SYMBOLS.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs `table` float: task groups spanning their students, the footnote under the tabular."""
    n = len(table.header)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex(table.title)}}}",
             rf"\begin{{tabular}}{{l{'r' * (n - 1)}}}", r"\toprule"]
    if table.groups:
        spans, rules, col = [], [], 2
        for task, width in table.groups:
            spans.append(rf"\multicolumn{{{width}}}{{c}}{{{tex(task)}}}")
            rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
            col += width
        lines += [" & ".join(["", *spans]) + r" \\", " ".join(rules)]
    lines += [" & ".join(tex(h) for h in table.header) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.footnote:
        lines += [r"\par\smallskip\footnotesize " + tex(table.footnote)]
    return "\n".join(lines + [r"\end{table}", ""])


def to_html(table: Table) -> str:
    """An HTML table with a task row spanning its students above the header, the footnote under it."""
    e = html.escape
    head = ""
    if table.groups:
        head = "<tr><th></th>" + "".join(f'<th colspan="{n}">{e(g)}</th>' for g, n in table.groups) + "</tr>"
    head += "<tr>" + "".join(f"<th>{e(h)}</th>" for h in table.header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    note = f'<p class="note">{e(table.footnote)}</p>' if table.footnote else ""
    return f"<h3>{e(table.title)}</h3><table><thead>{head}</thead><tbody>{body}</tbody></table>{note}\n"


CSV_FIELDS = ("task", "teacher", "student", "method", "role", "headline", "n_seeds", "seeds", "mean_pct", "std_pct",
              "retention_mean_pct", "retention_std_pct", "n_pairs_with_ft", "p_value_vs_ft", "parameters", "size_mb",
              "latency_p50_ms", "latency_p95_ms", "throughput", "peak_memory_mb", "device", "threads")


def csv_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    """One tidy row per cell (the teacher's own with an empty student); None where there is no value."""
    rows = []
    for c in cells:
        mean, std = mean_std(c.scores.values())
        rmean, rstd = mean_std(c.retention.values())
        rows.append({"task": c.task, "teacher": c.teacher, "student": c.student, "method": c.method,
                     "role": "student" if c.student else "teacher", "headline": c.headline,
                     "n_seeds": len(c.scores), "seeds": ";".join(map(str, sorted(c.scores))), "mean_pct": mean,
                     "std_pct": std, "retention_mean_pct": rmean, "retention_std_pct": rstd,
                     "n_pairs_with_ft": c.n_pairs if c.student and base_method(c) != "ft" else None,
                     "p_value_vs_ft": c.p_value, **c.efficiency})
    return rows


# ----------------------------------------------------------------------------------------------- plots


def _panels(cells: list[Cell], draw: Callable[[Any, list[Cell]], None], title: str, path: Path) -> None:
    """A task × teacher grid of panels; `draw(ax, cells)` fills one from that task's and teacher's cells."""
    tasks, teachers = _unique(c.task for c in cells), _unique(c.teacher for c in cells)
    fig, axes = plt.subplots(len(tasks), len(teachers), figsize=(6 * len(teachers), 4.5 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for j, teacher in enumerate(teachers):
            ax, mine = axes[i][j], [c for c in cells if c.task == task and c.teacher == teacher]
            if not mine:
                ax.axis("off")
                continue
            ax.set_title(f"{task} — teacher {teacher}", fontsize=10)
            draw(ax, mine)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log_x(ax: Any, label: str) -> None:
    """A log x axis with plain tick labels (2, 5, 10 rather than 2×10⁰); minor ones only on a short span."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(label)


def _style(cell: Cell, colors: dict[str, str]) -> dict[str, Any]:
    """Colour by method, marker and line style by student kind (so same-size RoBERTa and GRU stay apart)."""
    marker, line = MARKERS.get(cell.kind, ("^", "--"))
    return {"color": colors[cell.method], "marker": marker, "linestyle": line}


def _metric_vs_params(ax: Any, cells: list[Cell], colors: dict[str, str]) -> None:
    students = [c for c in cells if c.student]
    for method, kind in _unique((c.method, c.kind) for c in students):
        line = sorted((c for c in students if (c.method, c.kind) == (method, kind)),
                      key=lambda c: c.efficiency["parameters"] or 0)
        stats = [mean_std(c.scores.values()) for c in line]
        ax.errorbar([(c.efficiency["parameters"] or math.nan) / 1e6 for c in line], [m for m, _ in stats],
                    yerr=[s or 0 for _, s in stats], capsize=3, label=f"{method.upper()} ({kind})",
                    **_style(line[0], colors))
    for t in (c for c in cells if not c.student):
        ax.axhline(mean_std(t.scores.values())[0], linestyle="--", color="gray",
                   label=f"teacher {t.teacher} ({_millions(t.efficiency['parameters'], '.1f')}M)")
    _log_x(ax, "student parameters (millions)")
    ax.set_ylabel(f"{cells[0].headline} (%)")
    ax.legend(fontsize=7)


def _retention_heatmap(ax: Any, cells: list[Cell]) -> None:
    students = [c for c in cells if c.student]
    methods, names = _unique(c.method for c in students), _unique(c.student for c in students)
    grid = np.full((len(methods), len(names)), np.nan)
    for c in students:
        mean = mean_std(c.retention.values())[0]
        grid[methods.index(c.method), names.index(c.student)] = np.nan if mean is None else mean
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    middle = np.nanmean(grid) if not np.isnan(grid).all() else 0
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if value < middle else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), [m.upper() for m in methods])
    ax.figure.colorbar(image, ax=ax, label="retention (%)")


def _latency_vs_metric(ax: Any, cells: list[Cell], colors: dict[str, str]) -> None:
    points = [(c.efficiency["latency_p50_ms"], mean_std(c.scores.values())[0], c) for c in cells
              if c.efficiency["latency_p50_ms"] is not None]
    if not points:
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", transform=ax.transAxes)
        return
    for x, y, c in points:
        style = {"color": "black", "marker": "*", "s": 160} if not c.student else \
            {"color": colors[c.method], "marker": _style(c, colors)["marker"], "s": 50}
        ax.scatter([x], [y], label=f"teacher {c.teacher}" if not c.student else f"{c.method.upper()} ({c.kind})",
                   zorder=3, **style)
    front, best = [], -math.inf
    for x, y, c in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y, c))
            best = y
    ax.step([x for x, _, _ in front], [y for _, y, _ in front], where="post", color="red", alpha=0.6,
            label="Pareto front")
    ax.scatter([x for x, _, _ in front], [y for _, y, _ in front], s=220, facecolors="none", edgecolors="red",
               zorder=4)
    for x, y, c in front:
        ax.annotate(f"{c.name} {c.method.upper() if c.student else ''}".strip(), (x, y), fontsize=7,
                    textcoords="offset points", xytext=(6, -10))
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    _log_x(ax, "p50 latency (ms, batch 1)")
    ax.set_ylabel(f"{cells[0].headline} (%)")


def write_plots(cells: list[Cell], out: Path) -> None:
    """The three figures, each a task × teacher grid of panels."""
    colors = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(
        c.method for c in sorted((c for c in cells if c.student), key=_method_rank)))}
    names = list(PLOTS)
    _panels(cells, lambda ax, cs: _metric_vs_params(ax, cs, colors), "headline metric vs student size", out / names[0])
    _panels(cells, _retention_heatmap, "retention of the teacher's headline metric (%)", out / names[1])
    _panels(cells, lambda ax, cs: _latency_vs_metric(ax, cs, colors), "headline metric vs latency", out / names[2])


# ------------------------------------------------------------------------------------------------ page

CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{padding:.25em .6em;text-align:right}"
       "th:first-child,td:first-child{text-align:left}thead tr:last-child th{border-bottom:1px solid #444}"
       "table{border-top:2px solid #444;border-bottom:2px solid #444}.note{font-size:.85em;color:#555}"
       "img{max-width:100%}figure{margin:1.5em 0}")


def summary(records: list[dict[str, Any]]) -> str:
    """One line: how many records and study cells, which seeds, and the machines the records were measured on."""
    seeds = sorted({r["seed"] for r in records if r["kind"] == "student"})
    env = [r.get("environment") or {} for r in records]
    facts = {"processor": "processor", "cpu_count": "CPUs", "torch_threads": "torch threads", "cuda": "CUDA"}
    machine = "; ".join(f"{label} {'/'.join(sorted({str(e.get(key) or 'none') for e in env}))}"
                        for key, label in facts.items() if any(key in e for e in env))
    return (f"{len(records)} records ({sum(r['kind'] == 'teacher' for r in records)} teacher runs) of "
            f"{len({r['cell'] for r in records})} study cells; student seeds: {', '.join(map(str, seeds)) or 'none'}; "
            f"machine: {machine or 'not recorded'}.")


def _page(title: str, line: str, tables: list[Table], out: Path) -> str:
    figures = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,'
                      f'{base64.b64encode((out / name).read_bytes()).decode()}"><figcaption>{html.escape(caption)}'
                      f"</figcaption></figure>" for name, caption in PLOTS.items())
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(line)}</p>"
            f"<h2>Tables</h2>{''.join(to_html(t) for t in tables)}<h2>Figures</h2>{figures}</body></html>\n")


def build_report(study_dir: Path, out: Path | None = None, force: bool = False) -> Path:
    """Write the report of the study in `study_dir` to `out` (default STUDY_DIR/report/, replaced if it exists).

    The directory appears complete or not at all: it is built next to `out` and renamed into place. An `out`
    that exists is refused unless `force` (and then only a file or an old report); one that is or contains
    the study directory always is.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise ValueError(f"{study_dir}: no such study directory")
    out = check_new_output(study_dir / "report" if out is None else out, force or out is None, keep=study_dir,
                           replaceable=lambda p: p.is_file() or (p / "tables.md").is_file())
    records = read_results(study_dir)
    if not records:
        raise ValueError(f"{study_dir}: no results to report (no records in results*.jsonl)")
    cells = aggregate(records)
    tables = [*study_tables(cells), efficiency_table(cells)]
    title = f"codekd study report: {study_dir.resolve().name}"
    with atomic_dir(out, replace=True) as tmp:
        (tmp / "tables.md").write_text(f"# {title}\n\n" + "\n".join(map(to_markdown, tables)), encoding="utf-8")
        (tmp / "tables.tex").write_text("% requires \\usepackage{booktabs}\n" + "\n".join(map(to_latex, tables)),
                                        encoding="utf-8")
        with open(tmp / "results.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(csv_rows(cells))
        (tmp / "claims.md").write_text(claims_markdown(claims(cells)), encoding="utf-8")
        write_plots(cells, tmp)
        write_curves(cells, study_dir, tmp)
        (tmp / "index.html").write_text(_page(title, summary(records), tables, tmp), encoding="utf-8")
    return out
