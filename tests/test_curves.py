"""The report's validation curves and diagnostics, read from hand-made run directories of a study."""

import json

import matplotlib.image
import numpy as np
from test_report import TEACHER, TEACHER_ACC, record, write_study

from codekd.report import build_report

# seed -> validation accuracy per epoch; seed 3's run stopped early after 2 epochs
KD = {1: (0.20, 0.40, 0.50), 2: (0.30, 0.50, 0.55), 3: (0.25, 0.35)}
SOFT = {"name": "soft_targets_uniform", "message": "the teacher's soft targets at T=10 carry almost no information"}
COLLAPSED = {"name": "collapsed", "message": "the student predicts ValueError for 97% of the validation split"}


def run_dir(study, name: str, accs, majority: float, diagnostics: list) -> str:
    path = study / "runs" / name
    path.mkdir(parents=True)
    history = [{"epoch": i + 1, "valid": {"accuracy": a}, "majority": {"class": 3, "share": majority - 0.01 * i}}
               for i, a in enumerate(accs)]
    (path / "metrics.json").write_text(json.dumps({"history": history, "best_epoch": len(accs),
                                                   "diagnostics": diagnostics}), encoding="utf-8")
    return f"runs/{name}"


def test_the_report_shows_each_cells_curve_and_the_seeds_that_raised_each_diagnostic(tmp_path):
    study = tmp_path / "study"
    teacher = record(None, "ft", 42, TEACHER_ACC)
    teacher["run_dir"] = run_dir(study, "teacher", (0.5, 0.6), 0.3, [])
    records = [teacher]
    for seed, accs in KD.items():
        r = record("gru-1.5m", "kd", seed, accs[-1], TEACHER)
        r["run_dir"] = run_dir(study, f"kd.s{seed}", accs, 0.9 if seed == 2 else 0.5,
                               [SOFT] + ([COLLAPSED] if seed == 2 else []))
        records.append(r)
    gone = record("gru-1.5m", "ft", 1, 0.3)
    gone["run_dir"] = "runs/moved-away"  # its directory is not in the study: counted, not guessed
    records += [gone, record("gru-1.5m", "ft", 2, 0.3)]
    out = build_report(write_study(study, records))

    rows = {line.split(" | ")[1]: line.split(" | ") for line in
            (out / "diagnostics.md").read_text(encoding="utf-8").splitlines() if line.startswith("| exception")}
    kd = rows["kd"]
    assert kd[2] == "3 of 3"
    means = [np.mean([a[e] for a in KD.values() if len(a) > e]) * 100 for e in range(3)]
    assert kd[3] == ", ".join(f"{m:.1f}" for m in means) == "25.0, 41.7, 52.5"
    assert kd[4] == "3, 3, 2" and kd[5] == "90.0"
    assert kd[6].startswith(f"soft_targets_uniform (seeds 1, 2, 3): {SOFT['message']}; "
                            f"collapsed (seeds 2): {COLLAPSED['message']}")
    assert rows["ft"][2] == "0 of 2" and rows["ft"][3] == "n/a" and rows["ft"][6].startswith("none")

    image = matplotlib.image.imread(out / "curves.png")
    assert image.shape[0] > 200 and image.shape[1] > 200 and image[..., :3].std() > 0.05  # not a blank canvas
    assert "curves.png" in (out / "index.html").read_text(encoding="utf-8")
