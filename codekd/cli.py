"""`codekd` command line: parses options and calls the Python API in `codekd.pipeline`.

Method hyperparameters are given as extra options (`--beta 10`) or in `--config FILE.yaml`, whose keys
are option names (`epochs: 3`) plus a `hparams:` mapping; options on the command line win.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from codekd.data import DataError
from codekd.data.text import load_yaml, shown
from codekd.io import BusyError, DiskError, OutputExistsError, disk_error, is_main_process
from codekd.trust import TrustRemoteCode

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Knowledge distillation for code models.")
console = Console(quiet=not is_main_process())  # under a multi-process launch, results print once
err = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
GLOBAL_BATCH = "global batch of one optimizer step: per-process batch × processes × --grad-accum"
GRAD_ACCUM = "micro-batches each process accumulates per optimizer step"
FORCE = "replace an existing --out (atomically, once the new output is complete)"
TASK = "defect | clone | exception | a task file FILE.yaml"


def _print_version(value: bool) -> None:
    if value:
        from codekd import __version__

        typer.echo(f"codekd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print codekd's version and exit")) -> None:
    """Knowledge distillation for code models."""


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _extra_options(args: list[str]) -> dict[str, str]:
    """`--key value` / `--key=value` pairs left over by the parser: method hyperparameters."""
    opts: dict[str, str] = {}
    it = iter(args)
    for arg in it:
        if not arg.startswith("--"):
            _fail(f"unexpected argument {shown(arg)}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            value = next(it, None)
            if value is None:
                _fail(f"option --{key} needs a value")
        opts[key.replace("-", "_")] = value
    return opts


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    cfg = load_yaml(path) or {}  # bytes, YAML, nesting, numbers: a DataError naming the file and line
    if not isinstance(cfg, dict):
        _fail(f"--config {path}: expected a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in cfg.items()}


def _train_config(cfg: dict[str, Any]):
    """A TrainConfig from the given options that it knows; the rest keep their defaults."""
    from codekd.train_config import TrainConfig, train_options

    keys = TrainConfig.__dataclass_fields__
    return TrainConfig(**train_options({k: v for k, v in cfg.items() if k in keys and v is not None}))


def _metrics_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title=title)
    keys = [k for k in rows[0][1] if k != "n"]
    table.add_column("model")
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in rows:
        table.add_row(name, *(f"{m[k]:.4f}" for k in keys))
    return table


@app.command()
def vocab(task: str = typer.Option(..., help=TASK),
          data: Path = typer.Option(..., help="data directory (any supported layout)"),
          size: int = typer.Option(..., help="vocabulary size, e.g. 1000 2000 5000 20000 50000"),
          out: Path = typer.Option(..., help="output tokenizer directory"),
          whitespace: str = typer.Option("collapse", help="collapse (the study) | keep"),
          force: bool = typer.Option(False, help=FORCE)) -> None:
    """Train a byte-level BPE student vocabulary on the task's training code."""
    from codekd.pipeline import make_vocab

    path = make_vocab(task, data, size, out, whitespace=whitespace, force=force)
    console.print(f"vocabulary written to {path}")


# Options shared by every training command (teacher, distill): one definition each, HF TrainingArguments names.
Opt = typer.Option
Epochs = Annotated[int | None, Opt(help="training epochs (default 5)")]
Lr = Annotated[float | None, Opt(help="peak learning rate (AdamW)")]
BatchSize = Annotated[int | None, Opt(help=f"{GLOBAL_BATCH} (default 32)")]
GradAccum = Annotated[int | None, Opt(help=f"{GRAD_ACCUM} (default 1)")]
MaxLength = Annotated[int | None, Opt(help="tokens per input (default 512)")]
Seed = Annotated[int | None, Opt(help="random seed (default 42)")]
Whitespace = Annotated[str | None, Opt(help="collapse (the study; default) | keep")]
Precision = Annotated[str | None, Opt(help="training precision: fp32 (default) | bf16 | fp16 (CUDA)")]
Bucket = Annotated[bool | None, Opt("--bucket/--no-bucket", help="length-bucketed batches (default on)")]
Truncation = Annotated[str | None, Opt(help="head (the study; default) | focus (centre on the task's marker)")]
MaxGradNorm = Annotated[float | None, Opt(help="gradient clipping norm (default 1.0; 0: none, as the study)")]
WeightDecay = Annotated[float | None, Opt(help="AdamW weight decay, not on biases and norms (default 0)")]
WarmupRatio = Annotated[float | None, Opt(help="share of the steps with linear warm-up (default 0.1)")]
Scheduler = Annotated[str | None, Opt("--lr-scheduler-type", "--lr-scheduler",
                                      help="linear (default) | cosine | constant | constant_with_warmup")]
Patience = Annotated[int | None, Opt(help="stop after N epochs without a better validation score (default 0: off)")]
BestMetric = Annotated[str | None, Opt(help="validation metric that picks the best epoch (default: the task's "
                                            "headline), e.g. macro_f1")]
LoggingSteps = Annotated[int | None, Opt(help="a training-loss row in log.csv every N optimizer steps (default 50)")]
ReportTo = Annotated[str | None, Opt(help="csv (default; log.csv is always written) | tensorboard | none")]
Resume = Annotated[bool, Opt(help="continue an interrupted run in OUT.partial/")]
Force = Annotated[bool, Opt(help=f"{FORCE}; only an earlier run directory is replaced")]
Config = Annotated[Path | None, Opt(help="YAML file of options (keys: option names); the command line wins")]
NOT_OPTIONS = ("config", "resume", "cache", "cache_dir", "cache_dtype", "cache_budget_gb", "trust_remote_code")


def _options(ctx: typer.Context, config: Path | None, required: tuple[str, ...], extra: tuple[str, ...] = ()
             ) -> dict[str, Any]:
    """The command's options: those given on the command line over those in `--config` (whose keys must be
    option names, or `extra` ones); every `required` one present."""
    cfg = _load_config(config)
    unknown = sorted(set(cfg) - set(ctx.params) - set(extra) - set(NOT_OPTIONS))
    if unknown:
        _fail(f"--config {config}: unknown option(s) {', '.join(unknown)}")
    given = {k: v for k, v in ctx.params.items() if v not in (None, []) and k not in NOT_OPTIONS}
    merged = {**cfg, **given}
    for key in required:
        if merged.get(key) is None:
            _fail(f"missing option --{key.replace('_', '-')} (on the command line or in --config)")
    return merged


@app.command()
def teacher(ctx: typer.Context, task: str = typer.Option(None, help=TASK), data: Path = typer.Option(None),
            model: str = typer.Option(None, help="hub id or local directory of any HF encoder"),
            out: Path = typer.Option(None), epochs: Epochs = None, lr: Lr = None, batch_size: BatchSize = None,
            grad_accum: GradAccum = None, max_length: MaxLength = None, seed: Seed = None,
            whitespace: Whitespace = None, precision: Precision = None, bucket: Bucket = None,
            unixcoder_prefix: str = typer.Option(None, help="auto (detect <encoder-only>; default) | on | off"),
            truncation: Truncation = None, max_grad_norm: MaxGradNorm = None, weight_decay: WeightDecay = None,
            warmup_ratio: WarmupRatio = None, lr_scheduler_type: Scheduler = None,
            early_stopping_patience: Patience = None, metric_for_best_model: BestMetric = None,
            logging_steps: LoggingSteps = None, report_to: ReportTo = None, resume: Resume = False,
            config: Config = None, trust_remote_code: TrustRemoteCode = False, force: Force = False) -> None:
    """Fine-tune a teacher (the study's defaults: AdamW 2e-5, batch 32, 5 epochs, 10% warm-up)."""
    from codekd.pipeline import train_teacher

    o = {"lr": 2e-5, **_options(ctx, config, ("task", "data", "model", "out"))}
    m = train_teacher(o["task"], o["data"], o["model"], o["out"], _train_config(o), int(o.get("max_length") or 512),
                      o.get("whitespace") or "collapse", o.get("unixcoder_prefix") or "auto", resume,
                      o.get("truncation") or "head", trust_remote_code, force)
    console.print(_metrics_table(f"teacher on {m['task']}/test", [(str(o["model"]), m["model"])]))


@app.command(context_settings=EXTRA)
def distill(ctx: typer.Context, task: str = typer.Option(None, help=TASK), data: Path = typer.Option(None),
            teacher: list[Path] = typer.Option(None, help="fine-tuned teacher directory; repeat for multi-teacher KD"),
            teacher_weights: str = typer.Option(None, help="comma-separated weights of the teachers (default equal)"),
            student: str = typer.Option(None, help="preset name (codekd presets), a pre-trained HF encoder "
                                        "directory, or a custom shape in YAML, e.g. "
                                        "'{kind: roberta, hidden_size: 64, num_layers: 2, num_heads: 2, "
                                        "intermediate_size: 256}', or a preset with other dropout, "
                                        "'{preset: roberta-1.5m, attention_dropout: 0}'"),
            vocab: Path = typer.Option(None, help="student vocabulary directory (codekd vocab); not with a "
                                       "--student directory"),
            method: str = typer.Option(None, help="method name (codekd methods)"), out: Path = typer.Option(None),
            epochs: Epochs = None, lr: Lr = None, batch_size: BatchSize = None, grad_accum: GradAccum = None,
            max_length: MaxLength = None, temperature: float = typer.Option(None), seed: Seed = None,
            whitespace: Whitespace = None, precision: Precision = None,
            teacher_precision: str = typer.Option(None, help="teacher inference: auto (bf16 where supported) | fp32"),
            teacher_device: str = typer.Option(None, help="where the frozen teacher runs: auto (each process's "
                                               "device) | cpu | cuda"),
            max_grad_norm: MaxGradNorm = None, bucket: Bucket = None,
            study_compat: bool = typer.Option(None, "--study-compat/--no-study-compat",
                                              help="reproduce the study's code for this method and student (README)"),
            teacher_dropout: bool = typer.Option(None, "--teacher-dropout/--no-teacher-dropout",
                                                 help="teacher in train mode, dropout on (the study's; no cache)"),
            pad_to_max_length: bool = typer.Option(None, "--pad-to-max-length/--no-pad-to-max-length",
                                                   help="pad every batch to --max-length (the study's)"),
            gru_over_pads: bool = typer.Option(None, "--gru-over-pads/--no-gru-over-pads",
                                               help="BiGRU students run over pads (the study's)"),
            align: str = typer.Option(None, help="token pairing for token-level methods: position (study) | offsets"),
            cache: bool = typer.Option(True, "--cache/--no-cache", help="cache teacher outputs on the training split"),
            cache_dir: Path = typer.Option(None, help="cache root (default $CODEKD_CACHE or ~/.cache/codekd)"),
            cache_dtype: str = typer.Option("fp16", help="fp16 | fp32 for cached token states (logits: fp32)"),
            cache_budget_gb: float = typer.Option(2.0, help="largest cache to build; beyond it the teacher runs live"),
            truncation: Truncation = None, weight_decay: WeightDecay = None, warmup_ratio: WarmupRatio = None,
            lr_scheduler_type: Scheduler = None, early_stopping_patience: Patience = None,
            metric_for_best_model: BestMetric = None, logging_steps: LoggingSteps = None, report_to: ReportTo = None,
            transfer: Path = typer.Option(None, help="unlabelled code (task JSONL without labels, or source files) "
                                          "the teacher labels for the distillation terms"),
            resume: Resume = False, config: Config = None, trust_remote_code: TrustRemoteCode = False,
            force: Force = False) -> None:
    """Train a student by fine-tuning (ft) or distillation from a teacher (kd, dist, pkd, ckd, ...)."""
    merged = _options(ctx, config, ("task", "data", "student", "method", "out"), extra=("hparams",))
    hparams = {**(merged.pop("hparams", None) or {}), **_extra_options(ctx.args)}
    if merged.get("temperature") is not None:
        hparams["temperature"] = merged["temperature"]
    if isinstance(merged["student"], str) and merged["student"].lstrip().startswith("{"):
        merged["student"] = yaml.safe_load(merged["student"])
    weights = merged.get("teacher_weights")
    if isinstance(weights, str):
        try:
            weights = [float(w) for w in weights.split(",")]
        except ValueError:
            _fail(f"--teacher-weights {shown(weights)}: expected comma-separated numbers")
    train_cfg = _train_config(merged)
    cache_options = _cache_options(cache, cache_dir, cache_dtype, cache_budget_gb)
    from codekd.pipeline import distill as run_distill

    m = run_distill(merged["task"], merged["data"], merged["student"], merged.get("vocab"), merged["method"],
                    merged["out"], train_cfg, teacher=merged.get("teacher"), teacher_weights=weights,
                    max_length=int(merged.get("max_length") or 512), whitespace=merged.get("whitespace") or "collapse",
                    hparams=hparams, resume=resume, align=merged.get("align") or "position",
                    truncation=merged.get("truncation") or "head", cache=cache_options,
                    trust_remote_code=trust_remote_code, transfer=merged.get("transfer"), force=force)
    rows = [(f"{merged['student']} ({merged['method']})", m["model"])]
    if m["teacher"]:
        rows.append(("teacher", m["teacher"]))
    console.print(_metrics_table(f"{m['task']}/test", rows))
    if m["retention"] is not None:
        console.print(f"retention ({m['headline']}): {100 * m['retention']:.1f}%")


def _cache_options(enabled: bool, root: Path | None, dtype: str, budget_gb: float):
    from codekd.pipeline import CacheOptions

    return CacheOptions(enabled, root, dtype, budget_gb)


@app.command("cache", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def cache_cmd(ctx: typer.Context, teacher: Path = typer.Option(..., help="fine-tuned teacher directory"),
              task: str = typer.Option(..., help=TASK),
              data: Path = typer.Option(...), split: str = typer.Option("train"),
              method: str = typer.Option("kd", help="cache what this method needs from the teacher"),
              cache_dir: Path = typer.Option(None, help="cache root (default $CODEKD_CACHE or ~/.cache/codekd)"),
              cache_dtype: str = typer.Option("fp16"), cache_budget_gb: float = typer.Option(2.0),
              precision: str = typer.Option("auto", help="teacher inference: auto (bf16 where supported) | fp32 | "
                                            "bf16"),
              trust_remote_code: TrustRemoteCode = False) -> None:
    """Run a teacher once over a split and cache its outputs for every later distillation run; the method's
    options (`--value-relation 1`, combo `--parts ...`) may add to what it needs."""
    from codekd.methods import get_method
    from codekd.pipeline import cache_teacher

    needs = get_method(method).needs(_extra_options(ctx.args))[0] or ("logits",)
    built = cache_teacher(teacher, task, data, split, needs,
                          _cache_options(True, cache_dir, cache_dtype, cache_budget_gb), precision, trust_remote_code)
    if built is None:
        _fail(f"the cache would exceed --cache-budget-gb {cache_budget_gb}; distill will run the teacher live")
    console.print(f"cache: {built.path} ({', '.join(built.needs)})")


@app.command("evaluate")
def evaluate_cmd(task: str = typer.Option(None, help=f"{TASK}; default: the model's own task"),
                 data: Path = typer.Option(...), model: Path = typer.Option(...),
                 split: str = typer.Option("test"),
                 out: Path = typer.Option(None, help="JSON output (default MODEL/eval-SPLIT.json)"),
                 trust_remote_code: TrustRemoteCode = False, force: bool = typer.Option(False, help=FORCE)) -> None:
    """Evaluate a teacher or student directory on a split; print and write the metrics."""
    from codekd.pipeline import evaluate_model

    m = evaluate_model(task, data, model, split, out, trust_remote_code, force)
    console.print(_metrics_table(f"{m['task']}/{split}", [(str(model), m["metrics"])]))


@app.command()
def methods() -> None:
    """List the distillation methods, what they need from the teacher, and their defaults."""
    from codekd.catalog import method_catalog

    table = Table(title="methods")
    for col in ("name", "teacher needs", "defaults", "what"):
        table.add_column(col)
    for name, cls in method_catalog().items():
        defaults = ", ".join(f"{k}={v}" for k, v in cls.defaults.items()) or "-"
        table.add_row(name, ", ".join(cls.teacher_needs) or "no teacher", defaults, cls.summary)
    console.print(table)


@app.command()
def presets() -> None:
    """Print the student presets with their exact parameter counts."""
    from codekd.models import preset_table

    console.print(preset_table(), markup=False)


@app.command()
def study(config: Path = typer.Argument(..., help="study file (see configs/quick.yaml)"),
          out: Path = typer.Option(None, help="study directory (default: the file's out:, else studies/NAME)"),
          only: list[str] = typer.Option(None, help="run only matching cells: KEY=GLOB[,GLOB] with KEY one of "
                                         "task, teacher, student, method, seed, cell; repeat to combine"),
          dry_run: bool = typer.Option(False, help="list the cells, which are done, and a rough cost; run nothing"),
          shard: str = typer.Option(None, help="i/n: run only the cells that hash to shard i of n (cluster arrays)"),
          keep_going: bool = typer.Option(False, help="run the other cells when one fails; list the failures at the "
                                          "end (exit 2)")) -> None:
    """Run a study grid (tasks × teachers × students × methods × seeds); rerun to resume."""
    from codekd.study import run_study

    records = run_study(config, out, only or (), dry_run, shard, keep_going)
    if not dry_run:
        console.print(f"{len(records)} cell record(s) done; tables and plots: codekd report STUDY_DIR")


@app.command("bench-model")
def bench_model(model: Path = typer.Argument(..., help="codekd model directory (teacher or student)"),
                data: Path = typer.Option(..., help="task data: inputs are taken from its test split"),
                task: str = typer.Option(None, help="checked against the model's task (a name or FILE.yaml)"),
                runs: int = typer.Option(50, help="timed batch-1 forwards"),
                warmup: int = typer.Option(10, help="untimed forwards first"),
                device: str = typer.Option("cpu", help="cpu | cuda"),
                threads: int = typer.Option(None, help="torch intra-op threads (default: torch's)"),
                out: Path = typer.Option(None, help="also write the figures as JSON here"),
                trust_remote_code: TrustRemoteCode = False, force: bool = typer.Option(False, help=FORCE)) -> None:
    """Measure a model's size, batch-1 latency (p50/p95), batch-32 throughput and peak memory."""
    from codekd.bench import measure_efficiency
    from codekd.io import check_new_output, write_json
    from codekd.pipeline import load_for_task

    if out:
        check_new_output(out, force)
    if task:
        load_for_task(model, task, "MODEL", trust_remote_code)
    e = measure_efficiency(model, data, runs, warmup, device, threads, trust_remote_code=trust_remote_code)
    table = Table(title=f"{model} on {e['device_name'] or device}, {e['threads']} thread(s)")
    for col in ("params", "MB", "tokens", "p50 ms", "p95 ms", f"batch-{e['throughput_batch']} ex/s", "peak MB"):
        table.add_column(col, justify="right")
    table.add_row(f"{e['parameters']:,}", f"{e['size_mb']:.1f}", str(e["input_tokens"]),
                  f"{e['latency_ms']['p50']:.2f}", f"{e['latency_ms']['p95']:.2f}", f"{e['throughput']:.1f}",
                  f"{e['peak_memory_mb']:.0f}")
    console.print(table)
    if out:
        write_json(out, e)


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), help="directory for the demo's runs and results"),
         fast: bool = typer.Option(False, help="a much smaller run, for smoke tests")) -> None:
    """Run the offline demo: vocabulary, teacher, FT and KD students on the shipped exception slice."""
    from codekd.demo import run_demo

    run_demo(out, fast=fast)


@app.command()
def report(study_dir: Path = typer.Argument(..., help="study directory (holds results*.jsonl)"),
           out: Path = typer.Option(None, help="report directory (default STUDY_DIR/report, replaced); refused if it "
                                   "exists, or is or contains STUDY_DIR"),
           force: bool = typer.Option(False, help=FORCE)) -> None:
    """Write a study's tables (Markdown, LaTeX, CSV), plots and self-contained index.html from its results."""
    from codekd.report import build_report

    path = build_report(study_dir, out, force)
    console.print((path / "tables.md").read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True)
    console.print(f"report written to {path}: {', '.join(sorted(f.name for f in path.iterdir()))}")


data_app = typer.Typer(no_args_is_help=True, help="Build task data sets from source code.")
app.add_typer(data_app, name="data")


@data_app.command("exception")
def data_exception(src: list[Path] = typer.Option(None, "--from", help="source directory (repeat); default: "
                                                   "this Python's standard library and site-packages"),
                   out: Path = typer.Option(..., help="output data directory (train/dev/test.jsonl)"),
                   seed: int = typer.Option(0, help="seed of the clause choice, split assignment and order"),
                   any_licence: bool = typer.Option(False, help="also take sources whose licence is not "
                                                    "permissive or not known"),
                   force: bool = typer.Option(False, help=FORCE)) -> None:
    """Build an exception-classification corpus with CuBERT's recipe from Python sources."""
    from codekd.data.builder import build_exception

    for s in src or []:
        if not s.is_dir():
            _fail(f"--from {s}: not a directory")
    build_exception(src or None, out, seed, any_licence,
                    log=lambda t: console.print(t, markup=False, highlight=False, soft_wrap=True), force=force)
    console.print(f"corpus written to {out}")


def _lazy_command(name: str, module: str, function: str) -> None:
    """Add command `name`, defined as `function` in `module` (which imports torch), so that only running it
    imports the module: `codekd --help` shows its docstring's first line, read from the source."""
    source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    doc = next(ast.get_docstring(node) for node in ast.parse(source).body
               if isinstance(node, ast.FunctionDef) and node.name == function)

    @app.command(name, help=doc, context_settings=EXTRA, add_help_option=False)
    def run(ctx: typer.Context) -> None:
        command = typer.Typer(add_completion=False)
        command.command(name)(getattr(importlib.import_module(module), function))
        typer.main.get_command(command).main(ctx.args, prog_name=f"codekd {name}")


_lazy_command("predict", "codekd.predict", "predict_command")
_lazy_command("export", "codekd.export", "export_command")


def main() -> None:
    """Entry point: user errors (bad data, options, existing outputs) give one line and exit code 2."""
    if not sys.stdout.isatty():  # a log or a pipe: Rich would wrap tables at 80 columns
        os.environ.setdefault("COLUMNS", "160")
    try:
        app()
    except (DataError, ValueError, OutputExistsError, FileExistsError, FileNotFoundError, DiskError, BusyError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except OSError as e:  # a full or read-only disk that no writer named: the file the error names
        if (disk := disk_error(e)) is None:
            raise
        err.print(f"[bold red]error:[/] {disk}", highlight=False)
        sys.exit(2)
