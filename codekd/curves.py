"""Why a study's scores are what they are: each cell's validation curve and the diagnostics its runs raised.

A student run directory keeps its per-epoch history (`metrics.json`: `history[].valid`, the validation
split's metrics after each epoch, and `history[].majority`, the share of the validation split given the
most-predicted class) and the diagnostics that fired (`codekd.diagnostics`: soft targets that carry no
information, a collapsed student, …). The report shows them beside the scores, so that a claim that fails
can be read off its curves (issue 12): `curves.png`, one panel per (task, teacher, student) with each
method's validation headline per epoch (mean over seeds, the band from the lowest to the highest seed), and
`diagnostics.md`, one row per cell with its mean curve, its best epochs, its largest majority share and
the diagnostics with the seeds that raised them. A record whose run directory is gone (a merged shard, a
moved study) is counted as such, not guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from codekd.data import DataError  # noqa: E402
from codekd.io import read_json  # noqa: E402

Cell = Any  # codekd.report.Cell (the report imports this module, so not the other way round)
CAPTION = "Validation headline per epoch: mean over seeds, band from the lowest to the highest seed."


def histories(cell: Cell, study_dir: Path) -> dict[int, dict[str, Any]]:
    """Seed -> the run's `metrics.json` (history, diagnostics), for the records whose run directory holds one."""
    runs = {}
    for r in cell.records:
        path = study_dir / str(r.get("run_dir") or "") / "metrics.json"
        if r.get("run_dir") and path.is_file():
            try:
                metrics = read_json(path)
            except DataError:
                continue
            if isinstance(metrics, dict) and isinstance(metrics.get("history"), list):
                runs[r["seed"]] = metrics
    return runs


def curve(metrics: dict[str, Any], headline: str) -> list[float]:
    """The validation headline in % after each epoch (NaN for an epoch without validation)."""
    return [100 * float((h.get("valid") or {}).get(headline, np.nan)) for h in metrics["history"]]


def _curves(runs: dict[int, dict[str, Any]], headline: str) -> np.ndarray:
    """(seeds, epochs) validation headlines, shorter runs (stopped early) padded with NaN."""
    rows = [curve(m, headline) for _, m in sorted(runs.items())]
    width = max(map(len, rows), default=0)
    return np.array([row + [np.nan] * (width - len(row)) for row in rows]).reshape(len(rows), width)


def _diagnostics(runs: dict[int, dict[str, Any]]) -> str:
    """Each diagnostic's message once, with the seeds whose run raised it."""
    seen: dict[str, tuple[str, list[int]]] = {}
    for seed, m in sorted(runs.items()):
        for d in m.get("diagnostics") or []:
            name = str(d.get("name"))
            seen.setdefault(name, (str(d.get("message", "")), []))[1].append(seed)
    return "; ".join(f"{name} (seeds {', '.join(map(str, seeds))}): {message}"
                     for name, (message, seeds) in seen.items()) or "none"


def _majority(runs: dict[int, dict[str, Any]]) -> str:
    shares = [float(h["majority"]["share"]) for m in runs.values() for h in m["history"]
              if isinstance(h.get("majority"), dict) and "share" in h["majority"]]
    return f"{100 * max(shares):.1f}" if shares else "n/a"


Runs = dict[int, dict[int, dict[str, Any]]]  # id(cell) -> its histories(), read once for both outputs


def write_curves(cells: Sequence[Cell], study_dir: Path, out: Path) -> None:
    """`diagnostics.md` and `curves.png` in `out`, from each run directory's `metrics.json`, each read once."""
    runs = {id(c): histories(c, study_dir) for c in cells}
    (out / "diagnostics.md").write_text(diagnostics_markdown(cells, runs), encoding="utf-8")
    plot_curves(cells, runs, out / "curves.png")


def diagnostics_markdown(cells: Sequence[Cell], runs_of: Runs) -> str:
    """`diagnostics.md`: per student cell its mean validation curve, best epochs, largest majority share and
    the diagnostics its runs raised."""
    lines = ["# Training curves and diagnostics", "",
             "Per cell: the validation headline (%) after each epoch, mean over the seeds whose run directory is "
             "in the study; the best epoch of each seed; the largest share of the validation split that one "
             "class took in any epoch (a collapsed student predicts one class); the diagnostics the runs raised.",
             "", "| task / teacher / student | method | runs | validation per epoch (mean) | best epochs | "
             "largest majority % | diagnostics |", "|---|---|---|---|---|---|---|"]
    for c in (c for c in cells if c.student is not None):
        runs = runs_of[id(c)]
        grid = _curves(runs, c.headline)
        means = ", ".join("–" if np.isnan(v) else f"{v:.1f}" for v in
                          (np.nanmean(col) if not np.isnan(col).all() else np.nan for col in grid.T))
        best = ", ".join(str(m.get("best_epoch")) for _, m in sorted(runs.items()))
        lines.append(f"| {c.task} / {c.teacher} / {c.student} | {c.method} | {len(runs)} of {len(c.records)} | "
                     f"{means or 'n/a'} | {best or 'n/a'} | {_majority(runs)} | {_diagnostics(runs)} |")
    return "\n".join(lines) + "\n"


def plot_curves(cells: Sequence[Cell], runs_of: Runs, path: Path) -> None:
    """`curves.png`: one panel per (task, teacher, student), a line per method."""
    groups = list(dict.fromkeys((c.task, c.teacher, c.student) for c in cells if c.student is not None))
    columns = min(3, max(1, len(groups)))
    rows = max(1, -(-len(groups) // columns))
    colors = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(c.method for c in cells if c.student))}
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False)
    for ax, group in zip(axes.flat, groups, strict=False):
        for c in (c for c in cells if (c.task, c.teacher, c.student) == group):
            grid = _curves(runs_of[id(c)], c.headline)
            if not grid.size or np.isnan(grid).all():
                continue
            epochs = np.arange(1, grid.shape[1] + 1)
            with np.errstate(all="ignore"):
                low, mean, high = np.nanmin(grid, 0), np.nanmean(grid, 0), np.nanmax(grid, 0)
            ax.plot(epochs, mean, marker="o", color=colors[c.method], label=f"{c.method} ({grid.shape[0]} runs)")
            ax.fill_between(epochs, low, high, color=colors[c.method], alpha=0.15)
        teacher = next((c for c in cells if (c.task, c.teacher, c.student) == (group[0], group[1], None)), None)
        grid = _curves(runs_of[id(teacher)], teacher.headline) if teacher is not None else np.empty(0)
        if grid.size and not np.isnan(grid).all():
            ax.plot(np.arange(1, grid.shape[1] + 1), np.nanmean(grid, 0), linestyle="--", color="gray",
                    label=f"teacher {teacher.teacher}")
        ax.set_title(" / ".join(map(str, group)), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("validation headline (%)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    fig.suptitle(CAPTION, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
