"""Loading any Hugging Face encoder as a teacher, and any codekd model directory back.

Teachers come from a hub id or a local directory (offline, only local directories work) through
`AutoModelForSequenceClassification`, so RoBERTa-family models (CodeBERT, UniXcoder), ModernBERT,
BERT-family models and UniXcoder's older `vocab.json`/`merges.txt`/`pytorch_model.bin` layout all load
the same way. A new classification head is sized to the task.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

import codekd.models.bigru  # noqa: F401  (registers the BiGRU student with the Auto classes)
from codekd.data import Task
from codekd.encoding import InputSpec, load_tokenizer
from codekd.trust import from_pretrained


def load_pretrained_encoder(name_or_dir: str, task: Task, trust_remote_code: bool = False
                            ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pre-trained encoder with a fresh head for `task`, and its tokenizer (`codekd.trust`: custom code only
    with `trust_remote_code`)."""
    tokenizer = load_tokenizer(name_or_dir, trust_remote_code)
    labels = dict(enumerate(task.labels))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected here
    try:
        model = from_pretrained(
            AutoModelForSequenceClassification, name_or_dir, trust_remote_code, num_labels=len(labels), id2label=labels,
            label2id={v: k for k, v in labels.items()}, ignore_mismatched_sizes=True)
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


def load_model_dir(path: str | Path, trust_remote_code: bool = False
                   ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, InputSpec]:
    """A model directory written by codekd (teacher or student): model, tokenizer and input spec."""
    spec = InputSpec.load(path)
    return (from_pretrained(AutoModelForSequenceClassification, path, trust_remote_code),
            load_tokenizer(path, trust_remote_code), spec)
