"""Training options (`TrainConfig`, the fields of a run's `train:` and of the CLI's training flags) and their
checks, which run before anything is written. Kept apart from the loop so that reading and checking a
config (the CLI, study files) needs neither torch's training stack nor the loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from codekd.data import Task
from codekd.data.text import shown
from codekd.device import PRECISIONS, check_precision, process_state, teacher_device, teacher_precision
from codekd.trainlog import REPORT_TO, tensorboard_writer_class

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")  # transformers.get_scheduler's names


@dataclass
class TrainConfig:
    """Optimisation settings; the defaults are the study's student settings (§5 of STUDY.md)."""

    epochs: int = 5
    lr: float = 3e-4
    batch_size: int = 32  # the global batch of one optimizer step: per-process batch × processes × grad_accum
    grad_accum: int = 1  # micro-batches each process accumulates before a step
    eval_batch_size: int = 64  # per process: each evaluates whole batches
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping (the study's code never clips, by accident)
    seed: int = 42
    precision: str = "fp32"  # the student's training precision
    teacher_precision: str = "auto"  # the frozen teacher's inference: bf16 where supported, else fp32
    teacher_device: str = "auto"  # where the frozen teacher runs: auto (this process's device) | cpu | cuda
    bucket: bool = True  # group similar lengths into batches (less padding); False = plain random batches
    teacher_dropout: bool = False  # run the teacher in train mode (dropout on), as the study's code does
    pad_to_max_length: bool = False  # pad every batch to max_length (the study's padding='max_length')
    gru_over_pads: bool = False  # BiGRU students run over pad positions and pool at the last one (the study's)
    study_compat: bool = False  # all of the study's quirks for the method and student kind (codekd.compat)
    lr_scheduler_type: str = "linear"  # HF's names: linear | cosine | constant | constant_with_warmup
    early_stopping_patience: int = 0  # stop after this many epochs without a better validation score; 0: never
    metric_for_best_model: str = ""  # the validation metric that picks the best epoch; "": the task's headline
    logging_steps: int = 50  # a training-loss row in log.csv every this many optimizer steps; 0: per epoch only
    report_to: str = "csv"  # log.csv is always written; tensorboard adds TensorBoard event files


def train_options(opts: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`TrainConfig` fields from a mapping (a YAML file), each converted to its field's type: YAML reads
    `2e-4` (no dot) as a string. An unknown field or a bad value is a ValueError naming `where`.key."""
    defaults = TrainConfig()
    unknown = set(opts) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{where or 'options'}: unknown training option(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(TrainConfig.__dataclass_fields__)}")
    typed = {}
    for key, value in opts.items():
        kind = type(getattr(defaults, key))
        try:
            if kind is bool and not isinstance(value, bool):
                raise ValueError("expected true or false")
            typed[key] = kind(value)
        except ValueError as e:
            raise ValueError(f"{where + '.' if where else '--'}{key} {shown(value)}: {e}") from None
    return typed


def best_metric(cfg: TrainConfig, task: Task) -> str:
    """The validation metric that picks the best epoch (HF's `eval_` prefix is accepted)."""
    name = cfg.metric_for_best_model.removeprefix("eval_") or task.headline
    if name not in task.metric_names():
        raise ValueError(f"--metric-for-best-model {shown(cfg.metric_for_best_model)}: task {shown(task.name)} reports "
                         f"{', '.join(task.metric_names())}")
    return name


def check_config(cfg: TrainConfig, task: Task, teachers: int = 0, machine: bool = True) -> None:
    """Every option of `cfg`, checked against `task` and (with `machine`) this machine and launch, before a run
    creates anything."""
    bad = [(k, v) for k, v in (("epochs", cfg.epochs), ("batch_size", cfg.batch_size),
                               ("eval_batch_size", cfg.eval_batch_size)) if v < 1]
    bad += [(k, v) for k, v in (("weight_decay", cfg.weight_decay), ("max_grad_norm", cfg.max_grad_norm),
                                ("logging_steps", cfg.logging_steps),
                                ("early_stopping_patience", cfg.early_stopping_patience)) if v < 0]
    bad += [("lr", cfg.lr)] if not cfg.lr > 0 else []
    bad += [("warmup_ratio", cfg.warmup_ratio)] if not 0 <= cfg.warmup_ratio <= 1 else []
    if bad:
        key, value = bad[0]
        raise ValueError(f"--{key.replace('_', '-')} {value}: out of range")
    for key, value, allowed in (("lr_scheduler_type", cfg.lr_scheduler_type, SCHEDULERS),
                                ("report_to", cfg.report_to, REPORT_TO),
                                ("teacher_precision", cfg.teacher_precision, ("auto", *PRECISIONS))):
        if value not in allowed:
            raise ValueError(f"--{key.replace('_', '-')} {shown(value)}: expected one of {', '.join(allowed)}")
    if cfg.report_to == "tensorboard":
        tensorboard_writer_class()
    best_metric(cfg, task)
    if not machine:
        return
    check_precision(cfg.precision)
    state = process_state()
    micro_batch_size(cfg, state.num_processes)
    where = teacher_device(cfg.teacher_device, state.device)
    if teachers:
        teacher_precision(cfg.teacher_precision, where)


def micro_batch_size(cfg: TrainConfig, processes: int) -> int:
    """Examples per forward on each process: the global `batch_size` over processes × `grad_accum`."""
    if cfg.grad_accum < 1:
        raise ValueError(f"--grad-accum {cfg.grad_accum}: expected 1 or more")
    parts = processes * cfg.grad_accum
    if cfg.batch_size % parts:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: it must be a multiple of processes × "
                         f"--grad-accum = {processes} × {cfg.grad_accum}")
    return cfg.batch_size // parts
