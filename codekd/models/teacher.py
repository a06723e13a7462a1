"""Loading models and tokenizers: pre-trained encoders, codekd model directories, any HF classifier.

Pre-trained encoders (to fine-tune as teachers, or as `--student DIR`) come from a hub id or a local
directory (offline, only local directories work) through `AutoModelForSequenceClassification`, so
RoBERTa-family models (CodeBERT, UniXcoder), ModernBERT, BERT-family models and UniXcoder's older
`vocab.json`/`merges.txt`/`pytorch_model.bin` layout all load the same way, with a new head sized to
the task.

A fine-tuned classifier (`load_classifier`) is a codekd model directory, any directory that
`AutoModelForSequenceClassification` loads (trained anywhere: its `id2label` is matched to the task's
label names by name and its head reordered to the task's order), or a `peft` adapter directory on such
a base model (merged into it). Decoder-only classifiers get a pad token when their tokenizer has none.

Every failure to load is a `LoadError`: one line naming the option and the source (the CLI prints it
and exits with status 2). Every `from_pretrained` goes through `codekd.trust`, so nothing here runs code
from a model directory unless `trust_remote_code` (codekd's own BiGRU is a registered, installed class:
its run directories' `auto_map` is never followed inside codekd).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

import codekd.models.bigru  # noqa: F401  (registers the BiGRU student with the Auto classes)
from codekd.data import Task
from codekd.data.text import shown
from codekd.encoding import SPEC_FILE, InputSpec, load_tokenizer, model_task
from codekd.models.adapters import reorder_labels
from codekd.trust import RemoteCodeRefused, from_pretrained

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
DEMO_TEACHER = "demo-teacher"
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


class LoadError(ValueError):
    """A model or tokenizer that cannot be loaded, in one line."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


@contextmanager
def _loading(option: str, source: str | Path, what: str = "it") -> Iterator[None]:
    """Turn what transformers/peft raise while loading `source` into one `LoadError` line."""
    where = f"{option} {source}"
    try:
        yield
    except LoadError:
        raise
    except RemoteCodeRefused as e:  # trust.py's line names the directory and the flag
        raise LoadError(str(e)) from None
    except ImportError as e:
        raise LoadError(f"{where}: {_first_line(e)}") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        text = str(e)
        if text.startswith("Unrecognized configuration class"):
            kind = shown(m[1] if (m := re.search(r"configuration_(\w+)\.", text)) else "?")
            raise LoadError(f"{where}: not a sequence classifier (transformers has no "
                            f"ForSequenceClassification class for model type {kind})") from None
        if "size mismatch" in text:
            raise LoadError(f"{where}: the weights do not fit the model's config ({_first_line(e)[:200]})") from None
        raise LoadError(f"{where}: cannot load {what}: {_first_line(e)[:300]}") from None


def check_source(source: str | Path, option: str) -> None:
    """A local directory, or a hub id while the hub is reachable; anything else is one clear line."""
    path = Path(source).expanduser()
    if path.is_dir():
        return
    if str(source) == DEMO_TEACHER:
        from codekd.demo import minilm_path

        raise LoadError(f"{option} {DEMO_TEACHER}: that alias works in study files only; give its directory, "
                        f"{minilm_path()}")
    if path.exists():
        raise LoadError(f"{option} {source}: not a directory")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    hub_like = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(source)) is not None
    if offline or not hub_like:
        why = "and hub ids cannot be downloaded while HF_HUB_OFFLINE is set" if offline and hub_like else ""
        raise LoadError(f"{option} {source}: no such directory" + (f", {why}" if why else ""))


def load_pretrained_encoder(name_or_dir: str | Path, task: Task, option: str = "--model",
                            trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pre-trained encoder with a fresh head for `task`, and its tokenizer."""
    check_source(name_or_dir, option)
    labels = dict(enumerate(task.labels))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected here
    try:
        with _loading(option, name_or_dir):
            model = from_pretrained(
                AutoModelForSequenceClassification, name_or_dir, trust_remote_code, num_labels=len(labels),
                id2label=labels, label2id={v: k for k, v in labels.items()}, ignore_mismatched_sizes=True)
        with _loading(option, name_or_dir, "its tokenizer"):
            tokenizer = load_tokenizer(name_or_dir, trust_remote_code)
    finally:
        hf_logging.set_verbosity(verbosity)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        tok_id = getattr(tokenizer, key, None)
        if tok_id is not None and hasattr(model.config, key):
            setattr(model.config, key, tok_id)  # ModernBERT defaults assume its 50k vocabulary
    return model, tokenizer


def max_input_length(tokenizer: PreTrainedTokenizerBase, requested: int) -> int:
    """The requested length, capped by what the tokenizer declares it supports."""
    declared = tokenizer.model_max_length
    return min(requested, declared) if declared and declared < 1_000_000 else requested


def label_order(id2label: dict[int, str], task: Task, where: str) -> list[int]:
    """For each of the task's labels, the model's class index with that name.

    A model whose labels were never named (`LABEL_0`, `LABEL_1`, … as transformers defaults) is taken
    to be in the task's order when the counts agree.
    """
    names = [id2label[i] for i in sorted(id2label)]
    if len(names) == len(task.labels) and all(_GENERIC_LABEL.fullmatch(n) for n in names):
        return list(range(len(names)))
    missing = [n for n in task.labels if n not in names]
    extra = [n for n in names if n not in task.labels]
    if missing or extra or len(names) != len(task.labels):
        raise LoadError(f"{where}: its labels (config.json id2label) do not match task {shown(task.name)}: "
                        f"missing {missing or 'none'}, not in the task {extra or 'none'}")
    return [names.index(n) for n in task.labels]


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Decoder-only tokenizers (GPT-2, Llama) often have no pad token: use the end-of-text one, as HF does."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    config = model.config.get_text_config()
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
        model.config.pad_token_id = tokenizer.pad_token_id


def _check_classifier(path: Path, where: str) -> None:
    """Refuse a directory saved without a classification head (`architectures` names none), which transformers
    would load with a random head: a base model, a language model, a retriever."""
    with open(path / "config.json", encoding="utf-8") as f:
        architectures = json.load(f).get("architectures") or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise LoadError(f"{where}: not a sequence classifier (config.json architectures {', '.join(architectures)}: "
                        "no classification head was saved; fine-tune it first, e.g. with codekd teacher --model)")


def _adapter_base(path: Path) -> str:
    with open(path / ADAPTER_CONFIG, encoding="utf-8") as f:
        return json.load(f)["base_model_name_or_path"]


def _load_adapter(path: Path, task: Task, option: str, trust_remote_code: bool
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A peft (LoRA) adapter directory merged into its base model; labels from the adapter's or base's config."""
    try:
        import peft
    except ImportError:
        raise LoadError(f"{option} {path}: a LoRA adapter needs peft: pip install 'codekd[peft]'") from None
    with _loading(option, path):
        base = _adapter_base(path)
    check_source(base, f"{option} {path}: its base model")
    with _loading(option, path):
        config = from_pretrained(AutoConfig, path if (path / "config.json").is_file() else base, trust_remote_code)
        id2label = config.id2label
        if len(id2label) != len(task.labels) and all(_GENERIC_LABEL.fullmatch(n) for n in id2label.values()):
            id2label = {i: f"LABEL_{i}" for i in range(len(task.labels))}
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the base's head is reported "newly initialised": the adapter brings it
        try:
            model = from_pretrained(AutoModelForSequenceClassification, base, trust_remote_code,
                                    num_labels=len(id2label), id2label=id2label,
                                    label2id={v: k for k, v in id2label.items()})
        finally:
            hf_logging.set_verbosity(verbosity)
        model = peft.PeftModel.from_pretrained(model, str(path)).merge_and_unload()  # weights only, no code
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    with _loading(option, path, "its tokenizer"):
        tokenizer = load_tokenizer(path if has_tokenizer else base, trust_remote_code)
    return model, tokenizer


def load_classifier(source: str | Path, task: Task | str | None = None, option: str = "--model",
                    defaults: InputSpec | None = None, trust_remote_code: bool = False
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, InputSpec]:
    """A fine-tuned classifier (codekd directory, any HF classifier directory, or a peft adapter), its
    tokenizer and input spec, its classes in the task's order.

    A directory codekd did not write has no `codekd.json`; its inputs are then prepared as `defaults`
    says (length capped by its tokenizer), and without `defaults` it is refused. `task` (default: the
    one in `codekd.json`) must be the one the directory was trained for.
    """
    check_source(source, option)
    path = Path(source).expanduser()
    has_spec = (path / SPEC_FILE).is_file()
    if not has_spec and defaults is None:
        raise LoadError(f"{option} {source}: no {SPEC_FILE}, so not a codekd model directory (a classifier "
                        "trained elsewhere can be a --teacher, or be evaluated with --task)")
    with _loading(option, source):
        spec = InputSpec.load(path) if has_spec else defaults
    task = model_task(spec, task, f"{option} {source}:")
    if (path / ADAPTER_CONFIG).is_file():
        model, tokenizer = _load_adapter(path, task, option, trust_remote_code)
    else:
        if not (path / "config.json").is_file():
            raise LoadError(f"{option} {source}: no config.json (nor {ADAPTER_CONFIG}): not a model directory")
        with _loading(option, source):
            _check_classifier(path, f"{option} {source}")
            model = from_pretrained(AutoModelForSequenceClassification, path, trust_remote_code)
        with _loading(option, source, "its tokenizer"):
            tokenizer = load_tokenizer(path, trust_remote_code)
    reorder_labels(model, label_order(model.config.id2label, task, f"{option} {source}"))
    model.config.id2label = dict(enumerate(task.labels))
    model.config.label2id = {name: i for i, name in enumerate(task.labels)}
    _ensure_pad_token(model, tokenizer)
    if not has_spec:
        spec = replace(spec, max_length=max_input_length(tokenizer, spec.max_length))
    return model.eval(), tokenizer, spec


def load_model_dir(path: str | Path, trust_remote_code: bool = False, option: str = "--model"
                   ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, InputSpec]:
    """A model directory written by codekd (teacher or student): model, tokenizer and input spec."""
    return load_classifier(path, None, option, trust_remote_code=trust_remote_code)


def source_files(path: str | Path) -> list[Path]:
    """The files that define a classifier directory's outputs: weights, configs, `codekd.json`, and for an
    adapter those of its local base model (what the teacher cache's key hashes)."""
    d = Path(path)
    weights = sorted(p for p in d.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise LoadError(f"{d}: no weight file (*.safetensors, *.bin)")
    files = weights + [d / name for name in ("config.json", SPEC_FILE, ADAPTER_CONFIG) if (d / name).is_file()]
    if (d / ADAPTER_CONFIG).is_file() and Path(_adapter_base(d)).is_dir():
        files += source_files(_adapter_base(d))
    return files
