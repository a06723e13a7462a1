"""The one training loop every method shares, on Hugging Face Accelerate (CPU, one GPU or many).

It is method-agnostic: per batch it asks the adapters for the student's (and the frozen teacher's)
`Outputs`, hands them to the method, and minimises the method's "loss". After every epoch it
evaluates on the validation split, keeps the best model by the task's headline metric, and writes a
checkpoint atomically so a killed run resumes where the last finished epoch left it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from transformers import get_linear_schedule_with_warmup

from codekd.cache import TeacherCache
from codekd.data import Task
from codekd.encoding import EncodedData, batch_order
from codekd.io import atomic_file
from codekd.methods import Method
from codekd.models.adapters import Outputs, align_to, run, run_frozen

console = Console(stderr=True)
CHECKPOINT = "checkpoint.pt"
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Optimisation settings; the defaults are the study's student settings (§5 of STUDY.md)."""

    epochs: int = 5
    lr: float = 3e-4
    batch_size: int = 32
    eval_batch_size: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping (the study's code never clips, by accident)
    seed: int = 42
    precision: str = "fp32"  # the student's training precision
    teacher_precision: str = "auto"  # the frozen teacher's inference: bf16 where supported, else fp32
    bucket: bool = True  # group similar lengths into batches (less padding); False = plain random batches


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def teacher_view(i: int) -> str:
    """Name of the i-th teacher's encodings in an `EncodedData`."""
    return f"teacher{i}"


def align_view(i: int) -> str:
    """Name of the student-token → i-th-teacher-token index in an `EncodedData` (`--align offsets`)."""
    return f"align{i}"


def normalized_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Teacher weights that sum to 1 (equal when not given)."""
    if not weights:
        return [1.0 / n] * n if n else []
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--teacher-weights {list(weights)}: need {n} non-negative weights, not all zero")
    return [w / sum(weights) for w in weights]


def check_teachers(method: Method, n: int) -> None:
    """Several teachers work with logit methods only (feature methods own per-teacher projections)."""
    if n > 1 and tuple(method.teacher_needs) != ("logits",):
        raise ValueError(f"method {method.name!r} compares features; several teachers work with logit methods only")


def bf16_supported() -> bool:
    """bf16 on this device: a GPU that has it, or a CPU whose oneDNN has bf16 kernels (AVX-512 BF16 / AMX).

    Without them CPU bf16 is emulated and several times slower than fp32.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(precision: str, option: str = "--precision") -> str:
    """`precision` if this machine supports it, else a clear error."""
    if precision not in PRECISIONS:
        raise ValueError(f"{option} {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError(f"{option} fp16 needs a CUDA GPU (it trains with a grad scaler); use fp32 or bf16")
    if precision == "bf16" and not bf16_supported():
        raise ValueError(f"{option} bf16: this {'GPU' if torch.cuda.is_available() else 'CPU'} has no native bf16 "
                         "support (it would be emulated, slower than fp32); use fp32")
    return precision


def teacher_precision(precision: str) -> str:
    """The teacher's inference precision: `auto` is bf16 where supported, else fp32."""
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return check_precision(precision, "--teacher-precision")


def teacher_autocast(precision: str, device: torch.device):
    """Autocast for the frozen teacher's forward, independent of the student's precision."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def make_accelerator(precision: str) -> Accelerator:
    """An Accelerator for `fp32`, `bf16` or `fp16` (fp16 needs CUDA, where a grad scaler is used)."""
    check_precision(precision)
    return Accelerator(mixed_precision="no" if precision == "fp32" else precision)


def loader(data: EncodedData, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = False,
           bucket: bool = True, view: str = "student") -> torch.utils.data.DataLoader:
    """Batches of `data`, length-bucketed on `view` unless `bucket` is off."""
    batches = batch_order(data.lengths(view), batch_size, seed, epoch, shuffle, bucket)
    return torch.utils.data.DataLoader(data, batch_sampler=batches, collate_fn=data.collate)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: _to(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


@torch.no_grad()
def logits_of(model: nn.Module, data: EncodedData, view: str = "student", batch_size: int = 64,
              accelerator: Accelerator | None = None) -> torch.Tensor:
    """Logits [N, C] (fp32) of `model` on the `view` encodings of `data`, in data order."""
    accelerator = accelerator or make_accelerator("fp32")
    model = model.to(accelerator.device)
    logits: torch.Tensor | None = None
    for batch in loader(data, batch_size, view=view):
        with accelerator.autocast():
            out = run_frozen(model, _to(batch[view], accelerator.device), ("logits",))
        if logits is None:
            logits = torch.empty(len(data), out.logits.size(-1), device=out.logits.device)
        logits[batch["index"].to(out.logits.device)] = out.logits.float()
    return logits


def predict(model: nn.Module, data: EncodedData, view: str = "student", batch_size: int = 64,
            accelerator: Accelerator | None = None) -> np.ndarray:
    """Class probabilities [N, C] of `model` on the `view` encodings of `data`, in data order."""
    return torch.softmax(logits_of(model, data, view, batch_size, accelerator), dim=-1).cpu().numpy()


def evaluate(model: nn.Module, data: EncodedData, task: Task, view: str = "student", batch_size: int = 64,
             accelerator: Accelerator | None = None) -> dict[str, float]:
    """The task's metrics of `model` on `data`."""
    return task.metrics(data.labels, predict(model, data, view, batch_size, accelerator))


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def _method_loss(method: Method, student: Outputs, teachers: Sequence[nn.Module], weights: Sequence[float],
                 caches: Sequence[TeacherCache | None], batch: dict[str, Any],
                 precision: str) -> dict[str, torch.Tensor]:
    """The method's losses; with several teachers, their weighted sum (one term per teacher)."""
    if not method.teacher_needs:
        return method(student, None, batch["labels"])
    total: dict[str, torch.Tensor] = {}
    for i, (teacher, weight) in enumerate(zip(teachers, weights, strict=True)):
        cache = caches[i] if caches else None
        if cache is not None:
            t_out = cache.outputs(batch["index"], student.logits.device)
        else:
            with teacher_autocast(precision, student.logits.device):
                t_out = run_frozen(teacher, batch[teacher_view(i)], method.teacher_needs)
        if align_view(i) in batch:
            t_out = align_to(t_out, batch[align_view(i)]["teacher_index"], batch[align_view(i)]["attention_mask"])
        for key, value in method(student, t_out, batch["labels"]).items():
            total[key] = total.get(key, 0.0) + weight * value
    return total


def fit(student: nn.Module, method: Method, train: EncodedData, valid: EncodedData, task: Task,
        cfg: TrainConfig, work_dir: str | Path, save_best: Callable[[nn.Module], None],
        teachers: Sequence[nn.Module] = (), teacher_weights: Sequence[float] | None = None,
        teacher_caches: Sequence[TeacherCache | None] = (), resume: bool = False) -> FitResult:
    """Train `student` with `method`, against frozen `teachers` when the method uses one.

    Several teachers (multi-teacher KD) contribute the method's loss each, weighted by
    `teacher_weights` (normalised to sum to 1; equal by default). A teacher with a cache of its
    outputs on `train` (`codekd.cache`) is not run at all.

    `save_best` is called with the student whenever the validation headline metric improves.
    With `resume`, training continues from `work_dir/checkpoint.pt` (if present) exactly as if it
    had never stopped: model, method, optimiser, schedule and random state are all restored.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(cfg.precision)
    set_seed(cfg.seed)
    params = [p for p in list(student.parameters()) + list(method.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, eps=1e-8, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    method.to(accelerator.device)
    for teacher in teachers:
        teacher.to(accelerator.device).eval()
        teacher.requires_grad_(False)
    weights = normalized_weights(teacher_weights, len(teachers))

    check_teachers(method, len(teachers))
    t_precision = teacher_precision(cfg.teacher_precision)

    result = FitResult(best_score=-float("inf"), best_epoch=0)
    start_epoch = 1
    ckpt_path = work_dir / CHECKPOINT
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        accelerator.unwrap_model(student).load_state_dict(state["student"])
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        result = FitResult(state["best_score"], state["best_epoch"], state["history"])
        start_epoch = state["epoch"] + 1
        console.print(f"resuming from {ckpt_path} after epoch {state['epoch']}")

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                        disable=not accelerator.is_main_process)
    with progress:
        for epoch in range(start_epoch, cfg.epochs + 1):
            bar = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=steps_per_epoch, info="")
            student.train()
            method.train()
            started, seen, loss_sum = time.perf_counter(), 0, 0.0
            batches = loader(train, cfg.batch_size, cfg.seed, epoch, shuffle=True, bucket=cfg.bucket)
            for batch in accelerator.prepare_data_loader(batches):
                with accelerator.autocast():
                    s_out = run(student, batch["student"], method.student_needs)
                    losses = _method_loss(method, s_out, teachers, weights, teacher_caches, batch, t_precision)
                accelerator.backward(losses["loss"])
                if cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                seen += len(batch["labels"])
                loss_sum += losses["loss"].item() * len(batch["labels"])
                rate = seen / (time.perf_counter() - started)
                progress.update(bar, advance=1, info=f"loss {loss_sum / seen:.4f}  {rate:.1f} ex/s")
            train_seconds = time.perf_counter() - started
            metrics = evaluate(student, valid, task, batch_size=cfg.eval_batch_size, accelerator=accelerator)
            record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_seconds": train_seconds,
                      "seconds": time.perf_counter() - started, "valid": metrics}
            result.history.append(record)
            score = metrics[task.headline]
            if score > result.best_score:
                result.best_score, result.best_epoch = score, epoch
                if accelerator.is_main_process:
                    save_best(accelerator.unwrap_model(student))
            console.print(f"epoch {epoch}: train loss {record['train_loss']:.4f}, valid {task.headline} "
                          f"{score:.4f} (best {result.best_score:.4f} @ {result.best_epoch})")
            if accelerator.is_main_process:
                _save_checkpoint(ckpt_path, {
                    "epoch": epoch, "student": accelerator.unwrap_model(student).state_dict(),
                    "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": _rng_state(), "best_score": result.best_score,
                    "best_epoch": result.best_epoch, "history": result.history})
    return result
