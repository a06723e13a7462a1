"""The Python API behind the CLI: vocabularies, teachers, distillation runs and evaluation.

Every command reads and validates all its inputs before writing anything. A run works inside
`OUT.partial/` (checkpoints, the best model so far) and becomes `OUT/` by one rename when it has
finished, so `OUT/` is always complete: the best model in Hugging Face format (loadable with
`from_pretrained(OUT)`), its tokenizer, `codekd.json` (input spec), `metrics.json` and `run.yaml`
(the configuration and library versions that produced it).

`teacher`, `distill`, `cache` and `evaluate` run the same under `accelerate launch` / `torchrun`: every
process reads, checks, trains and evaluates; the main process alone writes, and the others wait for it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from accelerate.utils import set_seed
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from codekd.cache import TeacherCache, build_cache, cache_dir, default_cache_root, key_inputs, key_of
from codekd.compat import study_settings
from codekd.data import SPLITS, Task, get_task, load_split, load_splits
from codekd.data.tasks import task_record
from codekd.data.text import load_yaml, shown
from codekd.data.unlabelled import load_unlabelled
from codekd.device import process_state, teacher_precision
from codekd.diagnostics import collapse_diagnostic, method_diagnostics, soft_target_diagnostic
from codekd.encoding import (
    SPEC_FILE,
    EncodedData,
    InputSpec,
    align_by_offsets,
    encode_view,
    load_tokenizer,
    resolve_unixcoder_prefix,
    token_spans,
)
from codekd.io import (
    atomic_dir,
    atomic_write_text,
    check_new_output,
    disk_errors,
    exclusive_lock,
    output_of,
    read_json,
    write_json,
)
from codekd.methods import TeacherTargets, get_method
from codekd.models import PRESETS, StudentSpec, build_student, count_parameters, student_spec
from codekd.models.adapters import prepare, shape_of
from codekd.models.teacher import load_classifier, load_pretrained_encoder, max_input_length
from codekd.rundir import configure, copy_code, environment, write_card
from codekd.train import (
    CHECKPOINT,
    FAILURE,
    align_view,
    check_teachers,
    console,
    evaluate,
    fit,
    logits_of,
    normalized_weights,
    teacher_view,
)
from codekd.train_config import TrainConfig, check_config, micro_batch_size
from codekd.trainlog import LOG_FILE, TENSORBOARD_DIR
from codekd.trust import from_pretrained
from codekd.vocab import save_vocab, train_vocab, training_texts

hf_logging.disable_progress_bar()  # codekd draws its own progress; per-file load/save bars are noise

RUN_CONFIG = "run.yaml"
ALIGN = ("position", "offsets")
METRICS = "metrics.json"
VOCAB_FILES = ("tokenizer.json", "tokenizer_config.json")  # what `make_vocab` writes


def make_vocab(task: str | Path | Task, data: str | Path, size: int, out: str | Path, max_length: int = 512,
               whitespace: str = "collapse", force: bool = False) -> Path:
    """Train a student BPE vocabulary of `size` tokens on the task's training code (as the students see it).

    Every split is read and checked first, as by every command: a broken test split fails here, not later.
    `force` replaces an earlier vocabulary at `out` (a directory of a tokenizer's files only), atomically."""
    check_new_output(out, force, replaceable=output_of(*VOCAB_FILES, only=True))
    examples = load_splits(task, data, whitespace=whitespace)["train"]
    return save_vocab(train_vocab(training_texts(examples), size, max_length), out, replace=force)


def size_mb(model_dir: Path) -> float:
    """Size of the weight files on disk, in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin")) / 1e6


def _save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: InputSpec, path: Path) -> None:
    with atomic_dir(path, replace=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        spec.save(tmp)
        copy_code(model, tmp)


def _work_dir(out: Path, config: dict[str, Any], resume: bool) -> Path:
    """`OUT.partial/` for a new run, or the existing one when resuming the same configuration.

    Every process checks it; once all have, the main process creates it and the others wait for that."""
    work = out.with_name(out.name + ".partial")
    saved = work / RUN_CONFIG
    if work.exists() and not resume:
        raise FileExistsError(f"{work}: an unfinished run is there; add --resume to continue it, or delete it")
    if resume and saved.exists():
        before = load_yaml(saved)["config"]
        defaults = asdict(TrainConfig())  # an option a newer codekd added, left at its default, changes nothing
        changed = sorted(k for k in set(before) | set(config) if before.get(k, defaults.get(k)) != config.get(k))
        if changed:
            raise ValueError(f"--resume: {saved} was started with different options: {', '.join(changed)}")
    state = process_state()
    state.wait_for_everyone()
    if state.is_main_process:
        with disk_errors(work):
            work.mkdir(parents=True, exist_ok=True)
        if not saved.exists():
            atomic_write_text(saved, yaml.safe_dump({"config": config}, sort_keys=True))
    state.wait_for_everyone()
    return work


@contextmanager
def _run_guard(out: Path) -> Iterator[None]:
    """Around a run: the exclusive lock of `out` (a second process on the same --out exits 2 at once; the lock
    vanishes with its process), and on a failure before anything resumable was written (a checkpoint, or the
    failure report), the removal of the `OUT.partial/` this run created."""
    work = out.with_name(out.name + ".partial")
    existed = work.exists()
    main = process_state().is_main_process
    if main:
        with disk_errors(out.parent):
            out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.with_name(f".{out.name}.lock")
    with exclusive_lock(lock, f"run directory {work}") if main else nullcontext():
        try:
            yield
        except BaseException:
            if main and not existed and work.is_dir() and not any((work / f).exists() for f in (CHECKPOINT, FAILURE)):
                shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            if main and not work.exists():  # finished, or nothing left to resume: the lock file goes too
                lock.unlink(missing_ok=True)


class ModelDir(NamedTuple):
    """A codekd model directory (teacher or student), loaded."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: InputSpec
    path: Path


@dataclass
class CacheOptions:
    """Where and how teacher outputs on the training split are cached (see `codekd.cache`)."""

    enabled: bool = True
    root: Path | None = None  # default: $CODEKD_CACHE, $XDG_CACHE_HOME/codekd or ~/.cache/codekd
    dtype: str = "fp16"  # token states and first-token vectors; logits are always fp32
    budget_gb: float = 2.0


def teacher_cache(teacher: ModelDir, view: str, data: EncodedData, needs: Sequence[str], task: str, split: str,
                  options: CacheOptions, precision: str, targets: TeacherTargets | None = None,
                  layers: dict[str, list[int]] | None = None) -> TeacherCache | None:
    """Open or build the cache of `teacher`'s outputs on `data`; None when it would exceed the budget.

    A complete cache of the outputs `needs` names (what `codekd cache` builds) serves any method; else the one
    built is of the method's `targets` computed from them and of the `layers` it reads, when it has them."""
    items = data.views[view][0]
    full = key_inputs(teacher.path, task, split, items, needs, options.dtype, precision)
    root = options.root or default_cache_root()
    inputs = key_inputs(teacher.path, task, split, items, needs, options.dtype, precision, targets, layers, full)
    path = cache_dir(root, key_of(full))
    cache = TeacherCache.open(path)
    if cache is None:
        path = cache_dir(root, key_of(inputs))
        cache = TeacherCache.open(path)
    if cache is None:
        cache = build_cache(teacher.model, data, view, needs, path, options.dtype, int(options.budget_gb * 2**30),
                            precision=precision, inputs=inputs, targets=targets, layers=layers)
    console.print(f"teacher outputs: {f'cached at {path}' if cache else 'not cached (budget or disk space): run live'}")
    return cache


def load_for_task(path: str | Path, task: str | Path | Task | None, option: str, trust_remote_code: bool = False,
                  defaults: InputSpec | None = None) -> ModelDir:
    """A fine-tuned classifier for `task`, refused (naming `option`) when it was trained for another task.

    A directory codekd did not write (any HF classifier, or a peft adapter) is accepted when `defaults`
    says how to prepare its inputs; its labels are matched to the task's by name.
    """
    return ModelDir(*load_classifier(path, task, option, defaults, trust_remote_code), Path(path))


def foreign_inputs(task: str | Path | Task, whitespace: str = "collapse", truncation: str = "head") -> InputSpec:
    """How a classifier trained elsewhere sees its inputs: the run's whitespace and truncation modes, up to
    512 tokens (less when its tokenizer says so)."""
    t = get_task(task)
    return InputSpec(t.name, 512, whitespace, False, truncation, task_def=t.to_dict())


LABELLED_TERMS = {"dkd"}  # methods whose distillation terms use the gold label (DKD's target class)


def _diagnostics(method_name: str, method: Any, task: Task, cfg: TrainConfig, processes: int,
                 teachers: Sequence[ModelDir], caches: Sequence[Any], train: EncodedData) -> list[dict[str, Any]]:
    """`codekd.diagnostics` before training: the method's constant terms, and whether the first teacher's
    soft targets on the training split are nearly uniform (logits from its cache, else one teacher pass)."""
    found = method_diagnostics(method_name, method.hp, len(task.labels), micro_batch_size(cfg, processes))
    temperature = method.hp.get("temperature")
    if teachers and temperature and "logits" in method.teacher_needs:
        if caches and caches[0] is not None:
            logits = torch.from_numpy(np.array(caches[0].arrays["logits"], dtype=np.float32))
        else:
            logits = logits_of(teachers[0].model, train, view=teacher_view(0), batch_size=cfg.eval_batch_size)
        found += [d for d in [soft_target_diagnostic(logits, temperature)] if d]
    for d in found:
        console.print(f"warning: {d['name']}: {d['message']}", highlight=False, soft_wrap=True)
    return found


def _run(task: Task, splits: dict[str, Any], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
         spec: InputSpec, method_name: str, hparams: dict[str, Any], cfg: TrainConfig, out: Path,
         config: dict[str, Any], resume: bool, teachers: Sequence[ModelDir] = (),
         teacher_weights: Sequence[float] | None = None, align: str = "position",
         cache: CacheOptions | None = None, force: bool = False) -> dict[str, Any]:
    """Train `model` with a method, then test the best epoch and assemble `out` atomically (replacing an earlier
    run there only with `force`, once the new one is complete)."""
    if align not in ALIGN:
        raise ValueError(f"--align {shown(align)}: expected one of {', '.join(ALIGN)}")
    if align == "offsets" and any(t.spec.whitespace != spec.whitespace for t in teachers):
        raise ValueError("--align offsets needs the teacher and the student to use the same --whitespace mode")
    configure(model, tokenizer, spec)
    method = get_method(method_name)(shape_of(model), shape_of(teachers[0].model) if teachers else None, **hparams)
    check_teachers(method, len(teachers))
    check_config(cfg, task, len(teachers))
    state = process_state()
    weights = normalized_weights(teacher_weights, len(teachers))
    own = not cfg.study_compat  # the study's loop draws torch's dropout stream, which --study-compat repeats
    prepare(model, method.student_needs, method.student_attention_layers(), own_attention=own)
    for t in teachers:
        prepare(t.model, method.teacher_needs, own_attention=own)
    work = _work_dir(out, config, resume)

    def data(split: str) -> EncodedData:
        views = {"student": encode_view(tokenizer, splits[split], spec)}
        for i, (_, tok, tspec, _) in enumerate(teachers):
            views[teacher_view(i)] = encode_view(tok, splits[split], tspec)
            if align == "offsets":
                pairs = zip(token_spans(tokenizer, splits[split], spec), token_spans(tok, splits[split], tspec),
                            strict=True)
                views[align_view(i)] = ([{"teacher_index": align_by_offsets(s, t)} for s, t in pairs], 0)
        pad_to = {name: spec.max_length for name in views} if cfg.pad_to_max_length else {}
        pad_to.update({teacher_view(i): t.spec.max_length for i, t in enumerate(teachers) if pad_to})
        return EncodedData([ex.label for ex in splits[split]], views, pad_to)

    train, valid, test = data("train"), data("valid"), data("test")
    caches = []
    if cfg.teacher_dropout and teachers:
        console.print("teacher dropout on (--teacher-dropout / --study-compat): its outputs are random, so the "
                      "teacher runs live and nothing is cached")
    elif cache and cache.enabled and method.teacher_needs and method.teacher_cacheable():
        position = align == "position"  # offsets re-order (and re-read) the teacher's tokens: its whole outputs
        caches = [teacher_cache(t, teacher_view(i), train, method.teacher_needs, task.name, "train", cache,
                                teacher_precision(cfg.teacher_precision, state.device),
                                method.teacher_targets() if position else None,
                                method.teacher_layers() if position else None)
                  for i, t in enumerate(teachers)]
    diagnostics = _diagnostics(method_name, method, task, cfg, state.num_processes, teachers, caches, train)
    result = fit(model, method, train, valid, task, cfg, work,
                 save_best=lambda m: _save_model(m, tokenizer, spec, work / "best"),
                 teachers=[t.model for t in teachers], teacher_weights=weights, teacher_caches=caches,
                 resume=resume)
    best = from_pretrained(AutoModelForSequenceClassification, work / "best")
    metrics: dict[str, Any] = {
        "task": task.name, "split": "test", "headline": task.headline, "method": method_name,
        "model": evaluate(best, test, task, batch_size=cfg.eval_batch_size), "teacher": None, "retention": None,
        "parameters": count_parameters(best), "size_mb": size_mb(work / "best"),
        "best_epoch": result.best_epoch, "stopped_early": result.stopped_early, "history": result.history,
        "train_seconds": sum(h["seconds"] for h in result.history),
        "diagnostics": diagnostics + [d for d in [collapse_diagnostic(result.history, task.labels)] if d]}
    if teachers:
        metrics["teachers"] = [
            {"metrics": evaluate(t.model, test, task, view=teacher_view(i), batch_size=cfg.eval_batch_size),
             "parameters": count_parameters(t.model), "weight": w}
            for i, (t, w) in enumerate(zip(teachers, weights, strict=True))]
        best_teacher = max(metrics["teachers"], key=lambda t: t["metrics"][task.headline])
        metrics["teacher"] = best_teacher["metrics"]
        metrics["teacher_parameters"] = best_teacher["parameters"]
        metrics["retention"] = metrics["model"][task.headline] / max(metrics["teacher"][task.headline], 1e-12)
    if state.is_main_process:
        with atomic_dir(out, replace=force) as tmp:
            for f in (work / "best").iterdir():
                shutil.copy2(f, tmp / f.name)
            shutil.copy2(work / LOG_FILE, tmp / LOG_FILE)
            if (work / TENSORBOARD_DIR).is_dir():
                shutil.copytree(work / TENSORBOARD_DIR, tmp / TENSORBOARD_DIR)
            write_json(tmp / METRICS, metrics)
            write_card(tmp, metrics, config, out.name)
            (tmp / RUN_CONFIG).write_text(yaml.safe_dump(
                {"config": config, "train": asdict(cfg), "hparams": method.hp,
                 "environment": {**environment(), "processes": state.num_processes}}, sort_keys=True))
        shutil.rmtree(work)
    state.wait_for_everyone()
    return metrics


def train_teacher(task: str | Path | Task, data: str | Path, model: str | Path, out: str | Path, cfg: TrainConfig,
                  max_length: int = 512, whitespace: str = "collapse", unixcoder_prefix: str = "auto",
                  resume: bool = False, truncation: str = "head", trust_remote_code: bool = False,
                  force: bool = False) -> dict[str, Any]:
    """Fine-tune any Hugging Face encoder on a task (the study's teacher fine-tuning); `force` replaces an earlier
    run directory at `out`."""
    t = get_task(task)
    out = Path(out)
    config = {"command": "teacher", **task_record(t), "data": str(data), "model": str(model), "max_length": max_length,
              "whitespace": whitespace, "unixcoder_prefix": unixcoder_prefix, "truncation": truncation,
              **asdict(cfg)}
    check_new_output(out, force, replaceable=output_of(SPEC_FILE, METRICS, RUN_CONFIG))  # --force: an earlier run only
    splits = load_splits(t, data, whitespace="keep")  # `encode` applies each model's whitespace mode
    set_seed(cfg.seed)
    net, tok = load_pretrained_encoder(str(model), t, "--model", trust_remote_code)
    prefix = resolve_unixcoder_prefix(tok, unixcoder_prefix)
    spec = InputSpec(t.name, max_input_length(tok, max_length), whitespace, prefix, truncation, task_def=t.to_dict())
    with _run_guard(out):
        return _run(t, splits, net, tok, spec, "ft", {}, cfg, out, config, resume, force=force)


def student_dir(student: str | Path | dict[str, Any] | StudentSpec) -> Path | None:
    """`student` as a pre-trained model directory (or hub id), None for a preset or a custom shape."""
    if isinstance(student, Path):
        return student
    if isinstance(student, str) and student not in PRESETS and (Path(student).exists() or "/" in student):
        return Path(student)
    return None


def distill(task: str | Path | Task, data: str | Path, student: str | Path | dict[str, Any] | StudentSpec,
            vocab: str | Path | None, method: str, out: str | Path, cfg: TrainConfig,
            teacher: str | Path | Sequence[str | Path] | None = None,
            max_length: int = 512, whitespace: str = "collapse", hparams: dict[str, Any] | None = None,
            resume: bool = False, teacher_weights: Sequence[float] | None = None,
            align: str = "position", truncation: str = "head",
            cache: CacheOptions | None = None, trust_remote_code: bool = False,
            transfer: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Train a student by `method`: a preset name or `StudentSpec` with its own vocabulary (`vocab`), or a
    pre-trained HF encoder directory with its own tokenizer (then `vocab` is None; it gets a new head).

    `transfer` is unlabelled code (`codekd.data.unlabelled`) added to the training split: the teacher
    labels it (through the cache), the method's distillation terms run over every example and its label
    term over the labelled ones only; the two are shuffled together, so batches mix them in proportion.

    `teacher` is one fine-tuned teacher directory or several (multi-teacher KD with a logit method:
    the method's loss against each teacher, weighted by `teacher_weights`, equal by default). The
    retention in the metrics is relative to the best teacher on the test split. `align` pairs
    student and teacher tokens for token-level methods: `position` (the study: i-th with i-th) or
    `offsets` (the teacher token covering the same source characters). Teacher outputs on the
    training split are cached on disk (`cache`, on by default) and reused by later runs.
    """
    teachers = [] if teacher is None else [teacher] if isinstance(teacher, str | Path) else list(teacher)
    t = get_task(task)
    out = Path(out)
    pretrained = student_dir(student)
    if (pretrained is None) == (vocab is None):
        raise ValueError("--vocab is needed with a student preset or shape, and not with a --student directory "
                         "(it brings its own tokenizer)" if pretrained is None else
                         f"--vocab {vocab}: a --student directory brings its own tokenizer; drop --vocab")
    spec_s = None
    if pretrained is None:
        tok = load_tokenizer(vocab, trust_remote_code)
        spec_s = student_spec(student, len(tok))
    kind = spec_s.kind if spec_s else "roberta"
    hparams = dict(hparams or {})
    if cfg.study_compat:
        train_settings, method_settings = study_settings(method, kind)
        cfg, hparams = replace(cfg, **train_settings), {**hparams, **method_settings}
    if cfg.gru_over_pads and kind != "gru":
        raise ValueError(f"--gru-over-pads needs a BiGRU student, not {shown(student)}")
    config = {"command": "distill", **task_record(t), "data": str(data),
              "student": str(pretrained) if pretrained else spec_s.record(),
              "vocab": None if vocab is None else str(vocab), "method": method, "teachers": [str(t) for t in teachers],
              "teacher_weights": list(teacher_weights or []),
              "max_length": max_length, "whitespace": whitespace, "hparams": hparams, "align": align,
              "truncation": truncation, **asdict(cfg), **({"transfer": str(transfer)} if transfer else {})}
    check_new_output(out, force, replaceable=output_of(SPEC_FILE, METRICS, RUN_CONFIG))  # --force: an earlier run only
    method_cls = get_method(method)
    if method_cls.teacher_needs and not teachers:
        raise ValueError(f"--method {method} needs --teacher")
    if transfer and (not method_cls.teacher_needs or method in LABELLED_TERMS or
                     any(p.get("method") in LABELLED_TERMS for p in hparams.get("parts", []))):
        raise ValueError(f"--transfer: method {method} cannot learn from unlabelled code (it needs a teacher and "
                         f"distillation terms without labels; not {', '.join(sorted(LABELLED_TERMS))} or ft)")
    splits = load_splits(t, data, whitespace="keep")  # `encode` applies each model's whitespace mode
    if transfer:
        extra = load_unlabelled(t, transfer)
        splits["train"] = splits["train"] + extra
        console.print(f"transfer set: {len(extra)} unlabelled examples beside {len(splits['train']) - len(extra)} "
                      "labelled ones", highlight=False)
    loaded = [load_for_task(path, t, "--teacher", trust_remote_code, foreign_inputs(t, whitespace, truncation))
              for path in teachers]
    set_seed(cfg.seed)
    if pretrained is None:
        net = build_student(spec_s, len(t.labels), max_positions=max_length + 2)
        if spec_s.kind == "gru":
            net.config.run_over_pads = cfg.gru_over_pads
        net.config.id2label = dict(enumerate(t.labels))
        net.config.label2id = {v: k for k, v in net.config.id2label.items()}
    else:
        net, tok = load_pretrained_encoder(pretrained, t, "--student", trust_remote_code)
        max_length = max_input_length(tok, max_length)
    spec = InputSpec(t.name, max_length, whitespace, unixcoder_prefix=False, truncation=truncation,
                     extra={"student": str(pretrained) if pretrained else spec_s.name,
                            **({"pad_to_max_length": True} if cfg.pad_to_max_length else {})},
                     task_def=t.to_dict())
    with _run_guard(out):
        return _run(t, splits, net, tok, spec, method, hparams, cfg, out, config, resume, loaded, teacher_weights,
                    align, CacheOptions() if cache is None else cache, force=force)


def cache_teacher(teacher: str | Path, task: str | Path | Task, data: str | Path, split: str = "train",
                  needs: Sequence[str] = ("logits",), options: CacheOptions | None = None,
                  precision: str = "auto", trust_remote_code: bool = False,
                  targets: TeacherTargets | None = None, layers: dict[str, list[int]] | None = None
                  ) -> TeacherCache | None:
    """Build (or find) the cache of a fine-tuned teacher's outputs on one split, ahead of distillation (with a
    method's `targets`, `Method.teacher_targets()`, those instead: they depend on the student's layers; with
    `layers`, `Method.teacher_layers()`, only those).

    `distill` finds it by content: same teacher, same token ids, same stored fields, targets and precision.
    """
    options = options or CacheOptions()
    t = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"--split {shown(split)}: expected one of {', '.join(SPLITS)}")
    examples = load_split(t, data, split, whitespace="keep")
    loaded = load_for_task(teacher, t, "--teacher", trust_remote_code, foreign_inputs(t))
    prepare(loaded.model, needs)
    encoded = EncodedData([ex.label for ex in examples],
                          {teacher_view(0): encode_view(loaded.tokenizer, examples, loaded.spec)})
    precision = teacher_precision(precision, process_state().device)
    return teacher_cache(loaded, teacher_view(0), encoded, needs, t.name, split, options, precision, targets,
                         layers)


def evaluate_model(task: str | Path | Task | None, data: str | Path, model_dir: str | Path, split: str = "test",
                   out: str | Path | None = None, trust_remote_code: bool = False, force: bool = False
                   ) -> dict[str, Any]:
    """Evaluate a codekd model directory on one split; write the metrics as JSON to `out` (refused if it exists,
    unless `force`), by default to MODEL/eval-SPLIT.json (replaced: codekd's own record in the model directory).

    `task` None is the model's own task (a custom task's definition is recorded in the directory)."""
    if out is not None:
        check_new_output(out, force)
    if split not in SPLITS:
        raise ValueError(f"--split {shown(split)}: expected one of {', '.join(SPLITS)}")
    foreign = task is not None and not (Path(model_dir) / SPEC_FILE).is_file()  # a custom task's name suffices here
    model, tok, spec, _ = load_for_task(model_dir, task, "--model", trust_remote_code,
                                        foreign_inputs(task) if foreign else None)
    t = spec.get_task()
    examples = load_split(t, data, split, whitespace="keep")
    data_ = EncodedData([ex.label for ex in examples], {"student": encode_view(tok, examples, spec)},
                        {"student": spec.max_length} if spec.extra.get("pad_to_max_length") else None)
    metrics = {"task": t.name, "split": split, "model": str(model_dir), "data": str(data),
               "metrics": evaluate(model, data_, t)}
    if process_state().is_main_process:
        write_json(Path(out) if out else Path(model_dir) / f"eval-{split}.json", metrics)
    return metrics


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / METRICS)
