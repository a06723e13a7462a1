"""`codekd study`: a small grid end to end, resume after a kill, damaged results, filters, shards and claims."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from codekd.cli import app
from codekd.data import DataError
from codekd.study import claim, read_results, run_study
from codekd.study_config import Cell, in_shard, load_study, parse_shard, plan


def write_study(path: Path, data: Path, teacher: Path, out: Path, **changes) -> Path:
    """A 2-cell grid (FT and KD of one tiny preset student, one seed) on a fine-tuned tiny teacher."""
    cfg = {"name": "tiny", "out": str(out), "data": {"exception": str(data)}, "max_length": 64, "seeds": [1],
           "teachers": {"tiny": {"dir": str(teacher)}}, "students": ["roberta-0.6m"], "vocab_size": 400,
           "train": {"epochs": 3, "lr": 1e-3, "batch_size": 16},
           "methods": {"ft": {}, "kd": {"hparams": {"temperature": 4.0, "alpha": 0.5}}},
           "efficiency": {"runs": 5, "warmup": 2, "isolate": False}, **changes}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # methods run in the order given
    return path


@pytest.fixture(scope="module")
def finished(small_exception, tiny_teacher, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The grid run once, uninterrupted."""
    d = tmp_path_factory.mktemp("study")
    config = write_study(d / "study.yaml", small_exception, tiny_teacher, d / "out")
    run_study(config)
    return config, read_results(d / "out")


def _comparable(records: list[dict]) -> list[tuple]:
    return sorted((r["key"], r["cell"], json.dumps(r["metrics"], sort_keys=True), r["best_epoch"],
                   r["parameters"]) for r in records)


def test_grid_runs_end_to_end(finished):
    config, records = finished
    assert sorted(r["cell"] for r in records) == ["exception.roberta-0.6m.ft.s1", "exception.tiny.roberta-0.6m.kd.s1",
                                                  "exception.tiny.teacher"]
    kd = next(r for r in records if r["method"] == "kd")
    ft = next(r for r in records if r["kind"] == "student" and r["method"] == "ft")
    assert ft["teacher"] is None and kd["teacher"] == "tiny"
    teacher = next(r for r in records if r["kind"] == "teacher")
    assert teacher["metrics"] == kd["teacher_metrics"]  # the reference row is tested on the study's own split
    assert kd["retention"] == pytest.approx(kd["metrics"]["accuracy"] / kd["teacher_metrics"]["accuracy"])
    for r in records:
        assert r["metrics"]["n"] == 32 and r["efficiency"]["runs"] == 5 and r["efficiency"]["latency_ms"]["p50"] > 0
        assert r["environment"]["versions"]["torch"] and r["config"]["kind"] == r["kind"]
    study_dir = Path(yaml.safe_load(config.read_text())["out"])
    assert (study_dir / kd["run_dir"] / "model.safetensors").is_file()
    # a rerun finds every cell done and runs nothing
    before = (study_dir / "results.jsonl").read_text()
    run_study(config)
    assert (study_dir / "results.jsonl").read_text() == before


def test_killed_study_resumes_to_the_same_results(finished, tmp_path):
    config, expected = finished
    cfg = yaml.safe_load(config.read_text())
    out = tmp_path / "out"
    killed = write_study(tmp_path / "study.yaml", Path(cfg["data"]["exception"]), Path(cfg["teachers"]["tiny"]["dir"]),
                         out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "codekd", "study", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(out.glob("runs/*.partial/checkpoint.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.glob("runs/*.partial/checkpoint.pt")), "the study should have been killed inside a cell"
    run_study(killed)
    records = read_results(out)
    assert len(records) == len({r["key"] for r in records}) == 3
    assert _comparable(records) == _comparable(expected)
    assert not list(out.glob("runs/*.partial"))


def test_damaged_trailing_line_is_reported(finished, tmp_path):
    config, _ = finished
    study_dir = Path(yaml.safe_load(config.read_text())["out"])
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    lines = (study_dir / "results.jsonl").read_text().splitlines(keepends=True)
    (damaged / "results.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    with pytest.raises(DataError, match=r"results.jsonl:3: not a complete JSON record"):
        read_results(damaged)
    result = CliRunner().invoke(app, ["report", str(damaged)])
    assert result.exit_code != 0
    proc = subprocess.run([sys.executable, "-m", "codekd", "study", str(config), "--out", str(damaged)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "results.jsonl:3" in proc.stderr
    assert (damaged / "results.jsonl").read_text() == "".join(lines[:2]) + lines[2][:40]  # left for the user


def test_report_builds_from_the_study(finished, tmp_path):
    config, _ = finished
    study_dir = Path(yaml.safe_load(config.read_text())["out"])
    result = CliRunner().invoke(app, ["report", str(study_dir), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "report" / "tables.md").read_text()
    assert "roberta-0.6m" in table and "| kd" in table.lower()


def test_dry_run_only_and_shards(small_exception, tiny_teacher, tmp_path):
    config = write_study(tmp_path / "s.yaml", small_exception, tiny_teacher, tmp_path / "out", seeds=[1, 2],
                         methods={"ft": {}, "kd": {}, "dist": {}})
    study = load_study(config)
    cells = plan(study)
    assert len(cells) == 1 + 3 * 2 and cells[0].kind == "teacher"
    only = plan(study, ["method=kd,dist", "seed=2"])
    assert sorted(c.name for c in only) == ["exception.tiny.roberta-0.6m.dist.s2", "exception.tiny.roberta-0.6m.kd.s2",
                                            "exception.tiny.teacher"]
    shards = [plan(study, shard=(i, 3)) for i in range(3)]
    students = [c.key for s in shards for c in s if c.kind == "student"]
    assert sorted(students) == sorted(c.key for c in cells if c.kind == "student")  # each cell in exactly one shard
    assert all(in_shard(c, (i, 3)) for i, s in enumerate(shards) for c in s if c.kind == "student")
    result = CliRunner().invoke(app, ["study", str(config), "--dry-run"])
    assert result.exit_code == 0 and "7 cells" in result.output and not (tmp_path / "out").exists()


def test_changing_a_cell_option_changes_its_key(small_exception, tiny_teacher, tmp_path):
    a = load_study(write_study(tmp_path / "a.yaml", small_exception, tiny_teacher, tmp_path / "o"))
    b = load_study(write_study(tmp_path / "b.yaml", small_exception, tiny_teacher, tmp_path / "o",
                               methods={"ft": {}, "kd": {"hparams": {"temperature": 2.0}}}))
    ka, kb = ({c.name: c.key for c in plan(s)} for s in (a, b))
    assert ka["exception.roberta-0.6m.ft.s1"] == kb["exception.roberta-0.6m.ft.s1"]
    assert ka["exception.tiny.roberta-0.6m.kd.s1"] != kb["exception.tiny.roberta-0.6m.kd.s1"]


def test_an_entry_changes_its_students_dropout(small_exception, tiny_teacher, tmp_path):
    config = write_study(tmp_path / "s.yaml", small_exception, tiny_teacher, tmp_path / "out",
                         methods={"ft": {}, "ft_ad0": {"method": "ft", "student": {"attention_dropout": 0}}},
                         train={"epochs": 1, "lr": 1e-3, "batch_size": 16})
    cells = {c.name: c for c in plan(load_study(config))}
    plain, changed = cells["exception.roberta-0.6m.ft.s1"], cells["exception.roberta-0.6m.ft_ad0.s1"]
    assert "student_options" not in plain.config and changed.config["student_options"] == {"attention_dropout": 0}
    assert plain.key != changed.key
    run_study(config, only=["method=ft_ad0"])
    (run,) = (tmp_path / "out" / "runs").iterdir()
    assert yaml.safe_load((run / "run.yaml").read_text())["config"]["student"]["attention_dropout"] == 0.0
    model = json.loads((run / "config.json").read_text())
    assert (model["attention_probs_dropout_prob"], model["hidden_dropout_prob"]) == (0.0, 0.1)


@pytest.mark.parametrize(("change", "message"), [
    ({"students": ["roberta-9m"]}, "students"),
    ({"methods": {"ft": {"student": {"hidden_size": 8}}}}, "methods.ft.student: roberta-0.6m: .*not hidden_size"),
    ({"students": ["gru-1.5m"], "methods": {"ft": {"student": {"attention_dropout": 0}}}},
     "methods.ft.student: gru-1.5m: .*no attention"),
    ({"methods": {"ft": {"student": 0}}}, "methods.ft.student: expected a mapping"),
    ({"train": {"epochs": 1, "learning_rate": 1e-3}}, "train: unknown training option"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"methods": {"nope": {}}}, "methods"),
    ({"limit": {"train": -1}}, "limit"),
    ({"teachers": {"tiny": {}}}, "teachers.tiny"),
    ({"efficiency": {"runs": 5, "repeats": 2}}, "efficiency"),
])
def test_bad_study_file_names_the_option(small_exception, tiny_teacher, tmp_path, change, message):
    config = write_study(tmp_path / "bad.yaml", small_exception, tiny_teacher, tmp_path / "out", **change)
    with pytest.raises(ValueError, match=message) as e:
        load_study(config)
    assert str(config) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_yaml_exponents_without_a_dot_are_numbers(small_exception, tiny_teacher, tmp_path):
    config = tmp_path / "s.yaml"
    write_study(config, small_exception, tiny_teacher, tmp_path / "o")
    config.write_text(config.read_text().replace("lr: 0.001", "lr: 1e-3"))
    assert load_study(config).train["lr"] == 1e-3
    from codekd.cli import _train_config  # `distill --config FILE.yaml` reads its training options the same way

    assert _train_config(yaml.safe_load("lr: 2e-4\nepochs: 3")).lr == 2e-4


def test_claims(tmp_path):
    cell = Cell("exception", None, "roberta-0.6m", "ft", 1, {"x": 1})
    assert claim(tmp_path, cell, "0of2")
    assert claim(tmp_path, cell, "0of2")  # this process again (a resumed loop)
    assert not claim(tmp_path, cell, "1of2")  # another shard never takes it
    path = tmp_path / "claims" / f"{cell.dir_name}.claim"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = json.loads(path.read_text())
    path.write_text(json.dumps({**held, "pid": int(dead.stdout)}))
    assert claim(tmp_path, cell, "0of2")  # the same shard rerun after its process died takes it back
    path.write_text(json.dumps({**held, "pid": 1}))  # alive (init) under another owner's process
    assert not claim(tmp_path, Cell("exception", None, "roberta-0.6m", "ft", 1, {"x": 1}), "1of2")


def test_parse_shard():
    assert parse_shard(None) == (0, 1) and parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_shards_on_one_directory_run_each_cell_once(finished, small_exception, tiny_teacher, tmp_path):
    """Two shards at once on one directory, one killed mid-cell and rerun, then an overlapping whole-grid run."""
    _, expected = finished
    out = tmp_path / "out"
    config = write_study(tmp_path / "s.yaml", small_exception, tiny_teacher, out, seeds=[1, 2])
    study = load_study(config)
    sizes = [sum(c.kind == "student" for c in plan(study, shard=(i, 2))) for i in range(2)]
    victim = sizes.index(max(sizes))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "codekd", "study", str(config), "--shard", f"{i}/2"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    procs = [start(0), start(1)]
    victim_runs = {c.dir_name for c in plan(study, shard=(victim, 2)) if c.kind == "student"}
    deadline = time.time() + 240
    while procs[victim].poll() is None and time.time() < deadline and not any(
            p.parent.name.removesuffix(".partial") in victim_runs for p in out.glob("runs/*.partial/checkpoint.pt")):
        time.sleep(0.05)
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    other = procs[1 - victim]
    assert other.wait(timeout=300) == 0, other.stderr.read()
    assert len(read_results(out)) < 5  # the killed shard's cells are missing
    rerun = subprocess.run([sys.executable, "-m", "codekd", "study", str(config), "--shard", f"{victim}/2"], env=env,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    whole = subprocess.run([sys.executable, "-m", "codekd", "study", str(config)], env=env, capture_output=True,
                           text=True)
    assert whole.returncode == 0, whole.stderr
    records = read_results(out)
    assert len(records) == len({r["key"] for r in records}) == 5  # teacher + 2 methods × 2 seeds, none twice
    assert {p.name for p in out.glob("results*.jsonl")} <= {"results-0of2.jsonl", "results-1of2.jsonl"}
    for i in range(2):  # each shard wrote its own file with its own cells (and the teacher's, if it took it);
        path = out / f"results-{i}of2.jsonl"  # a shard may get no cell at all: the split depends on the keys
        mine = {c.key for c in plan(study, shard=(i, 2)) if c.kind == "student"}
        written = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        assert {r["key"] for r in written if r["kind"] == "student"} == mine
    same_seed = [r for r in records if r["seed"] == 1 or r["kind"] == "teacher"]
    assert _comparable(same_seed) == _comparable(expected)  # cells of seed 1 are those of the 1-seed grid


def test_keep_going_runs_the_other_cells(small_exception, tiny_teacher, tmp_path):
    """minilm refuses a BiGRU student: the study stops there, or with --keep-going runs FT and lists the failure."""
    config = write_study(tmp_path / "s.yaml", small_exception, tiny_teacher, tmp_path / "out", students=["gru-1.5m"],
                         train={"epochs": 1, "lr": 1e-3, "batch_size": 16}, methods={"minilm": {}, "ft": {}})
    with pytest.raises(ValueError, match="minilm"):
        run_study(config)
    assert [r["kind"] for r in read_results(tmp_path / "out")] == ["teacher"]
    with pytest.raises(ValueError, match=r"1 cell\(s\) failed .*exception\.tiny\.gru-1\.5m\.minilm\.s1"):
        run_study(config, keep_going=True)
    assert sorted(r["cell"] for r in read_results(tmp_path / "out")) == ["exception.gru-1.5m.ft.s1",
                                                                         "exception.tiny.teacher"]
