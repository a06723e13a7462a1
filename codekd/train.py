"""The one training loop every method shares, on Hugging Face Accelerate: one process (plain `python -m
codekd`, CPU or one GPU) or many (`accelerate launch` / `torchrun`, GPUs over NCCL, CPUs over gloo).

It is method-agnostic: per batch it asks the adapters for the student's (and the frozen teacher's)
`Outputs`, hands them to the method, and minimises the method's "loss". After every epoch it
evaluates on the validation split, keeps the best model by the task's headline metric, and writes a
checkpoint atomically so a killed run resumes where the last finished epoch left it.

The topology changes nothing but speed: `batch_size` is the global batch (one optimizer step), cut into
processes × `grad_accum` micro-batches; the schedule counts global batches; evaluation computes each
example once and gathers the logits; only the main process writes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn
from transformers import get_scheduler
from transformers.trainer_pt_utils import get_parameter_names

from codekd.cache import TeacherCache
from codekd.data import Task
from codekd.device import (
    autocast,
    make_accelerator,
    process_state,
    teacher_device,
    teacher_precision,
    to_device,
)
from codekd.diagnostics import COLLAPSE_SHARE, collapse_message, majority_share
from codekd.encoding import EncodedData, batch_order
from codekd.io import atomic_file, is_main_process, write_json
from codekd.methods import Method
from codekd.models.adapters import Outputs, align_to, run, run_frozen, unwrap
from codekd.train_config import TrainConfig, best_metric, check_config, micro_batch_size
from codekd.trainlog import TrainLog

console = Console(stderr=True, quiet=not is_main_process())
CHECKPOINT = "checkpoint.pt"
# parameters that get no weight decay: biases and normalisation weights (Hugging Face Trainer's rule)
NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


class NonFiniteLossError(ValueError):
    """Training met a NaN or infinite loss; the message names the step and each loss part."""


FAILURE = "failure.json"  # in the work dir, beside the checkpoint: why the run stopped


def _stop_non_finite(accelerator: Accelerator, losses: dict[str, Tensor], epoch: int, step: int,
                     work_dir: Path) -> None:
    """Raise `NonFiniteLossError` on every process when the loss of any process is not finite.

    The checkpoint of the last finished epoch is left as it is (`--resume` continues from it); the step
    and the loss parts are also written to `work_dir/failure.json` for the run's diagnostics.
    """
    value = losses["loss"].detach().float()
    bad = ~torch.isfinite(value)
    if accelerator.num_processes > 1:  # all processes stop together: none waits in a collective
        bad = accelerator.reduce(bad.float(), "sum") > 0
    if not bad:
        return
    parts = {key: float(torch.as_tensor(v).detach()) for key, v in losses.items()}
    after = f"the checkpoint of epoch {epoch - 1}" if epoch > 1 else "no checkpoint (epoch 1 had not finished)"
    if accelerator.is_main_process:
        write_json(work_dir / FAILURE, {"error": "non-finite loss", "epoch": epoch, "step": step, "losses": parts})
    raise NonFiniteLossError(
        f"non-finite loss at epoch {epoch}, optimizer step {step}: "
        f"{', '.join(f'{k}={v:.6g}' for k, v in parts.items())}; training stopped, {work_dir} keeps {after} "
        f"(--resume continues from it)")
def _optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (eps 1e-8); with weight decay, biases and normalisation weights are not decayed (as in HF Trainer)."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": [p for _, p in params]}]
    if cfg.weight_decay:
        decay = set(get_parameter_names(module, [nn.LayerNorm], NO_DECAY))
        groups = [{"params": [p for n, p in params if n in decay], "weight_decay": cfg.weight_decay},
                  {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, eps=1e-8, weight_decay=cfg.weight_decay)


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False  # `early_stopping_patience` epochs passed without a better validation score


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
    if len(weights) != n or not all(0 <= w < float("inf") for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--teacher-weights {list(weights)}: need {n} finite non-negative weights, not all zero")
    return [w / sum(weights) for w in weights]


def check_teachers(method: Method, n: int) -> None:
    """Several teachers work with logit methods only (feature methods own per-teacher projections)."""
    if n > 1 and tuple(method.teacher_needs) != ("logits",):
        raise ValueError(f"method {method.name!r} compares features; several teachers work with logit methods only")


def micro_batches(batches: Sequence[list[int]], processes: int, rank: int, accum: int) -> list[tuple[list[int], float]]:
    """Process `rank`'s micro-batches of the global `batches`, in step order, each with its loss weight.

    A global batch is cut into processes × `accum` contiguous slices whose sizes differ by at most one;
    process r takes slice k·P + r at accumulation step k. The weight is the slice's share of the global
    batch × P (DDP averages over processes), so the gradients add up to the global batch's mean whatever
    the cut. A process left without examples by a short last batch runs a stand-in example at weight 0.
    """
    parts, plan = processes * accum, []
    for batch in batches:
        size, extra = divmod(len(batch), parts)
        bounds = np.cumsum([0] + [size + (i < extra) for i in range(parts)])
        for j in range(rank, parts, processes):
            ids = batch[bounds[j]:bounds[j + 1]]
            plan.append((ids or batch[:1], len(ids) * processes / len(batch)))
    return plan


def loader(data: EncodedData, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = False,
           bucket: bool = True, view: str = "student", part: int = 0, parts: int = 1) -> torch.utils.data.DataLoader:
    """Batches of `data`, length-bucketed on `view` unless `bucket` is off; of them, every `parts`-th from
    number `part` (one process's share)."""
    batches = batch_order(data.lengths(view), batch_size, seed, epoch, shuffle, bucket)
    return torch.utils.data.DataLoader(data, batch_sampler=batches[part::parts], collate_fn=data.collate)


@torch.no_grad()
def logits_of(model: nn.Module, data: EncodedData, view: str = "student", batch_size: int = 64,
              precision: str = "fp32") -> Tensor:
    """Logits [N, C] (fp32, on the CPU) of `model` on the `view` encodings of `data`, in data order.

    Exact under any number of processes: each runs every P-th batch of the same batches one process
    would run and the rows are gathered by example index, so every example is computed once (no
    sampler padding, no duplicates) and every process gets all N rows.
    """
    state = process_state()
    model = unwrap(model).to(state.device)  # not through DDP: processes run different numbers of batches
    parts = []
    for batch in loader(data, batch_size, view=view, part=state.process_index, parts=state.num_processes):
        with autocast(precision, state.device):
            out = run_frozen(model, to_device(batch[view], state.device), ("logits",))
        parts.append((batch["index"], out.logits.float().cpu()))
    logits: Tensor | None = None
    for index, rows in gather_object(parts):
        if logits is None:
            logits = torch.empty(len(data), rows.size(-1))
        logits[index] = rows
    return logits


def predict(model: nn.Module, data: EncodedData, view: str = "student", batch_size: int = 64,
            precision: str = "fp32") -> np.ndarray:
    """Class probabilities [N, C] of `model` on the `view` encodings of `data`, in data order."""
    return torch.softmax(logits_of(model, data, view, batch_size, precision), dim=-1).numpy()


def evaluate(model: nn.Module, data: EncodedData, task: Task, view: str = "student", batch_size: int = 64,
             precision: str = "fp32") -> dict[str, float]:
    """The task's metrics of `model` on `data` (on every process, from all processes' predictions)."""
    return task.metrics(data.labels, predict(model, data, view, batch_size, precision))


def validate(model: nn.Module, data: EncodedData, task: Task, batch_size: int = 64,
             precision: str = "fp32") -> tuple[dict[str, float], dict[str, Any]]:
    """An epoch's validation: the task's metrics and the most predicted class with its share (the
    collapse diagnostic reads it from each epoch's history)."""
    probs = predict(model, data, "student", batch_size, precision)
    top, share = majority_share(probs)
    return task.metrics(data.labels, probs), {"class": top, "share": share}


def _rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors and plain lists, so that a checkpoint loads with
    `torch.load(weights_only=True)` (numpy's state is a tuple holding an array: its parts are stored)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # through a Python file: a full disk is an OSError (ENOSPC), not torch's 'unexpected pos'


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, loaded with `weights_only=True` (tensors and plain containers only), so that a
    file planted in a run directory cannot run code: anything else is refused in one line (ValueError)."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        detail = [line.removeprefix("Please file an issue with the following so that we can make `weights_only=True` "
                                    "compatible with your use case: ").strip() for line in str(e).splitlines()[1:]]
        detail = [d for d in detail if d and not d.startswith(("WeightsUnpickler error", "Check the documentation"))]
        raise ValueError(f"{path}: refused: not a plain codekd checkpoint ({detail[0] if detail else e}); delete it "
                         "to restart the run from its first epoch") from None


def _teacher_outputs(teachers: Sequence[nn.Module], caches: Sequence[TeacherCache | None], needs: Sequence[str],
                     batch: dict[str, Any], precision: str, device: torch.device,
                     dropout: bool = False) -> list[Outputs]:
    """Each teacher's outputs on `batch`, on the student's `device`: read from its cache when it has one,
    else computed where the teacher sits, in inference mode (or, with `dropout`, in train mode without
    gradients, as the study's code runs it)."""
    outputs = []
    for i, teacher in enumerate(teachers):
        cache = caches[i] if caches else None
        if cache is not None:
            out = cache.outputs(batch["index"], device)
        else:
            where = next(teacher.parameters()).device
            with autocast(precision, where), torch.no_grad():
                forward = run if dropout else run_frozen
                out = forward(teacher, to_device(batch[teacher_view(i)], where), needs).to(device)
        if align_view(i) in batch:
            out = align_to(out, batch[align_view(i)]["teacher_index"], batch[align_view(i)]["attention_mask"])
        outputs.append(out)
    return outputs


class Trainee(nn.Module):
    """What a run trains: the student and the method's own modules (PKD's and TinyBERT's projections).

    One module, so that one `accelerator.prepare` (one DDP wrapper) averages all their gradients across
    processes; the teachers are inputs, never parameters.
    """

    def __init__(self, student: nn.Module, method: Method):
        super().__init__()
        self.student, self.method = student, method

    def forward(self, batch: dict[str, Any], targets: Sequence[Outputs], weights: Sequence[float]) -> dict[str, Tensor]:
        """The method's losses against the teachers' outputs `targets`; with several teachers, their weighted
        sum (one term per teacher)."""
        student = run(self.student, batch["student"], self.method.student_needs)
        if not self.method.teacher_needs:
            return self.method(student, None, batch["labels"])
        total: dict[str, Tensor] = {}
        for t_out, weight in zip(targets, weights, strict=True):
            for key, value in self.method(student, t_out, batch["labels"]).items():
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

    One optimizer step per global batch of `cfg.batch_size` examples, whatever the number of processes:
    each process accumulates `cfg.grad_accum` micro-batches of it (`micro_batches`).

    `save_best` is called (on the main process) with the student whenever the validation metric
    (`cfg.metric_for_best_model`, default the task's headline) improves; with `cfg.early_stopping_patience`
    training stops after that many epochs without improvement.
    With `resume`, training continues from `work_dir/checkpoint.pt` (if present) exactly as if
    it had never stopped: model, method, optimiser, schedule and every process's random state are restored.
    """
    check_config(cfg, task, len(teachers))
    work_dir = Path(work_dir)
    accelerator = make_accelerator(cfg.precision)
    processes, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    if accelerator.is_main_process:
        work_dir.mkdir(parents=True, exist_ok=True)
    micro = micro_batch_size(cfg, processes)
    set_seed(cfg.seed, device_specific=True)  # each process its own dropout; process 0 as a lone process
    trainee = Trainee(student, method)
    optimizer = _optimizer(trainee, cfg)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, int(cfg.warmup_ratio * total), total)
    trainee, optimizer = accelerator.prepare(trainee, optimizer)  # not the scheduler: it counts global batches
    model = accelerator.unwrap_model(trainee)
    where = teacher_device(cfg.teacher_device, device)
    for teacher in teachers:  # frozen, in inference mode (unless teacher_dropout), never wrapped by DDP
        teacher.to(where).train(cfg.teacher_dropout)
        teacher.requires_grad_(False)
    weights = normalized_weights(teacher_weights, len(teachers))
    check_teachers(method, len(teachers))
    t_precision = teacher_precision(cfg.teacher_precision, where)
    needs = method.teacher_needs if teachers else ()
    if processes > 1 or cfg.grad_accum > 1:
        console.print(f"global batch {cfg.batch_size} = {processes} process(es) × {cfg.grad_accum} accumulation "
                      f"step(s) × {micro} examples")

    result = FitResult(best_score=-float("inf"), best_epoch=0)
    start_epoch, log_rows, metric = 1, [], best_metric(cfg, task)
    ckpt_path = work_dir / CHECKPOINT
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.student.load_state_dict(state["student"])
        model.method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if rank < len(state["rng"]):  # one state per process that wrote it; a new process keeps its seed
            _set_rng_state(state["rng"][rank])
        result = FitResult(state["best_score"], state["best_epoch"], state["history"])
        start_epoch, log_rows = state["epoch"] + 1, state.get("log", [])
        console.print(f"resuming from {ckpt_path} after epoch {state['epoch']}")

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                        disable=not accelerator.is_main_process)
    log = TrainLog(work_dir, task.metric_names(), cfg.report_to, log_rows, accelerator.is_main_process)
    with progress:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if cfg.early_stopping_patience and epoch - 1 - result.best_epoch >= cfg.early_stopping_patience:
                result.stopped_early = True
                console.print(f"early stopping: no better valid {metric} in {cfg.early_stopping_patience} epoch(s)")
                break
            bar = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=steps_per_epoch, info="")
            trainee.train()
            model.method.set_epoch(epoch)
            started, seen, loss_sum, since = time.perf_counter(), 0, 0.0, [0.0, 0]
            order = batch_order(train.lengths(), cfg.batch_size, cfg.seed, epoch, shuffle=True, bucket=cfg.bucket)
            plan = micro_batches(order, processes, rank, cfg.grad_accum)
            batches = torch.utils.data.DataLoader(train, batch_sampler=[ids for ids, _ in plan],
                                                  collate_fn=train.collate)
            for k, (batch, (_, weight)) in enumerate(zip(batches, plan, strict=True)):
                batch = to_device(batch, device)
                targets = _teacher_outputs(teachers, teacher_caches, needs, batch, t_precision, device,
                                           cfg.teacher_dropout) if needs else []
                step = k % cfg.grad_accum == cfg.grad_accum - 1  # the last micro-batch: synchronise, then step
                with nullcontext() if step else accelerator.no_sync(trainee):
                    with accelerator.autocast():
                        losses = trainee(batch, targets, weights)
                    global_step = (epoch - 1) * steps_per_epoch + k // cfg.grad_accum + 1
                    _stop_non_finite(accelerator, losses, epoch, global_step, work_dir)
                    accelerator.backward(losses["loss"] * weight)
                examples = len(batch["labels"]) if weight else 0
                seen += examples
                loss_sum += losses["loss"].item() * examples
                since = [since[0] + losses["loss"].item() * examples, since[1] + examples]
                if not step:
                    continue
                if cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainee.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if not accelerator.optimizer_step_was_skipped:  # fp16: a step with inf/NaN gradients
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                done = (epoch - 1) * steps_per_epoch + (k + 1) // cfg.grad_accum
                if cfg.logging_steps and done % cfg.logging_steps == 0:
                    part = accelerator.reduce(torch.tensor(since, dtype=torch.float64, device=device), "sum")
                    log.log({"step": done, "epoch": round(done / steps_per_epoch, 4), "loss": part[0].item()
                             / max(part[1].item(), 1), "learning_rate": scheduler.get_last_lr()[0]})
                    since = [0.0, 0]
                rate = seen * processes / (time.perf_counter() - started)
                progress.update(bar, advance=1, info=f"loss {loss_sum / max(seen, 1):.4f}  {rate:.1f} ex/s")
            train_seconds = time.perf_counter() - started
            totals = accelerator.reduce(torch.tensor([loss_sum, seen], dtype=torch.float64, device=device), "sum")
            metrics, majority = validate(model.student, valid, task, cfg.eval_batch_size, cfg.precision)
            record = {"epoch": epoch, "train_loss": totals[0].item() / max(totals[1].item(), 1),
                      "train_seconds": train_seconds, "seconds": time.perf_counter() - started, "valid": metrics,
                      "majority": majority}
            result.history.append(record)
            if majority["share"] >= COLLAPSE_SHARE:
                console.print(f"warning: collapsed: "
                              f"{collapse_message(task.labels[majority['class']], majority['share'], epoch)}",
                              highlight=False, soft_wrap=True)
            log.log({"step": epoch * steps_per_epoch, "epoch": epoch, "learning_rate": scheduler.get_last_lr()[0],
                     "train_loss": record["train_loss"], **{f"eval_{k}": v for k, v in metrics.items() if k != "n"}})
            score = metrics[metric]
            if score > result.best_score:
                result.best_score, result.best_epoch = score, epoch
                if accelerator.is_main_process:
                    save_best(model.student)
            console.print(f"epoch {epoch}: train loss {record['train_loss']:.4f}, valid {metric} "
                          f"{score:.4f} (best {result.best_score:.4f} @ {result.best_epoch})")
            rng = gather_object([_rng_state()])
            if accelerator.is_main_process:
                _save_checkpoint(ckpt_path, {
                    "epoch": epoch, "student": model.student.state_dict(), "method": model.method.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
                    "best_score": result.best_score, "best_epoch": result.best_epoch, "history": result.history,
                    "log": log.rows})
            accelerator.wait_for_everyone()  # the checkpoint and best/ are complete before anyone goes on
    log.close()
    return result
