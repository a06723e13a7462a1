"""Turning examples into model inputs, the same way at training, evaluation and prediction time.

Every model directory codekd writes carries `codekd.json` (an `InputSpec`): the task (and its
definition, so a custom task needs no task file later), the whitespace mode, the maximum length and
whether UniXcoder's encoder-only prefix is used. Reading it back is what makes a saved model see
exactly the inputs it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from codekd.data import Example, Task, get_task, normalize_code
from codekd.data.tasks import is_task_file, task_from_mapping
from codekd.data.text import shown
from codekd.hub.codekd_text import encode_texts, tokenize
from codekd.io import read_json, write_json
from codekd.trust import from_pretrained

SPEC_FILE = "codekd.json"
UNIXCODER_TOKEN = "<encoder-only>"


@dataclass
class InputSpec:
    """How a model's inputs are built; saved next to its weights."""

    task: str
    max_length: int = 512
    whitespace: str = "collapse"
    unixcoder_prefix: bool = False
    truncation: str = "head"
    extra: dict[str, Any] = field(default_factory=dict)
    task_def: dict[str, Any] | None = None  # the task's definition (task-file form); None: the built-in `task`

    def get_task(self) -> Task:
        """The task the model was trained for: its recorded definition, else the built-in task of that name."""
        return get_task(self.task) if self.task_def is None else task_from_mapping(self.task_def, SPEC_FILE)

    def save(self, model_dir: str | Path) -> None:
        write_json(Path(model_dir) / SPEC_FILE, asdict(self))

    @classmethod
    def load(cls, model_dir: str | Path) -> InputSpec:
        path = Path(model_dir) / SPEC_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; {model_dir} was not written by codekd")
        return cls(**read_json(path))


def model_task(spec: InputSpec, task: str | Path | Task | None, where: str) -> Task:
    """The task a model was trained for; `task`, when given (a name or a task file), must be that task
    (`where` starts the error: "--model DIR was").

    A custom task's name alone is enough: its definition is recorded in the model directory."""
    mine = spec.get_task()
    if task is None or (not isinstance(task, Task) and not is_task_file(task) and str(task) == mine.name):
        return mine
    given = get_task(task)
    if given != mine:
        differs = "defined differently" if given.name == mine.name else f"not {shown(given.name)}"
        raise ValueError(f"{where} trained for task {shown(mine.name)}, {differs}")
    return mine


def is_unixcoder(tokenizer: PreTrainedTokenizerBase) -> bool:
    """UniXcoder is recognised by its `<encoder-only>` mode token in the vocabulary."""
    return UNIXCODER_TOKEN in tokenizer.get_vocab()


def resolve_unixcoder_prefix(tokenizer: PreTrainedTokenizerBase, mode: str) -> bool:
    """`auto` follows `is_unixcoder`; `on`/`off` force the choice (`on` needs the token)."""
    if mode == "auto":
        return is_unixcoder(tokenizer)
    if mode == "on" and not is_unixcoder(tokenizer):
        raise ValueError(f"--unixcoder-prefix on: the tokenizer has no {UNIXCODER_TOKEN} token")
    if mode not in ("on", "off"):
        raise ValueError(f"--unixcoder-prefix {shown(mode)}: expected auto, on or off")
    return mode == "on"


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return from_pretrained(AutoTokenizer, path, trust_remote_code)


def _prefix(tokenizer: PreTrainedTokenizerBase, spec: InputSpec) -> list[int]:
    if not spec.unixcoder_prefix:
        return []
    return [tokenizer.convert_tokens_to_ids(UNIXCODER_TOKEN), tokenizer.sep_token_id]


TRUNCATION = ("head", "focus")


def input_settings(tokenizer: PreTrainedTokenizerBase, spec: InputSpec) -> dict[str, Any]:
    """What `codekd.hub.codekd_text` needs to prepare inputs as `spec` says (also saved in run directories).

    A bad truncation mode, or focus truncation on a task without a marker (or with pairs), is refused here.
    """
    if spec.truncation not in TRUNCATION:
        raise ValueError(f"--truncation {shown(spec.truncation)}: expected one of {', '.join(TRUNCATION)}")
    task = spec.get_task()
    if spec.truncation == "focus" and (task.focus is None or task.pair):
        raise ValueError(f"--truncation focus: task {shown(spec.task)} has no marker to centre the input on")
    normalize_code("", spec.whitespace)  # validates the mode
    return {"max_length": spec.max_length, "whitespace": spec.whitespace, "truncation": spec.truncation,
            "marker": task.focus if spec.truncation == "focus" else None, "prefix": _prefix(tokenizer, spec)}


def _texts(examples: Sequence[Example]) -> tuple[list[str], list[str] | None]:
    pair = bool(examples) and examples[0].code2 is not None
    return [ex.code for ex in examples], [ex.code2 for ex in examples] if pair else None


def encode(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], spec: InputSpec) -> list[dict]:
    """Token ids (and token types where the tokenizer uses them) for each example.

    Clone pairs use the tokenizer's pair encoding. With the UniXcoder prefix the input is
    `<s> <encoder-only> </s> code </s>`, as in UniXcoder's own encoder-only usage.
    """
    return encode_texts(tokenizer, *_texts(examples), input_settings(tokenizer, spec))


Span = tuple[int, int, int] | None


def token_spans(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], spec: InputSpec) -> list[list[Span]]:
    """(sequence, first char, end char) of every token `encode` produces; None for special tokens."""
    if not tokenizer.is_fast:
        raise ValueError(f"--align offsets needs a fast tokenizer; {type(tokenizer).__name__} gives no offsets")
    settings = input_settings(tokenizer, spec)
    enc = tokenize(tokenizer, *_texts(examples), settings, return_offsets_mapping=True)
    prefix = [None] * len(settings["prefix"])
    out = []
    for i in range(len(examples)):
        spans = [None if seq is None or a == b else (seq, a, b)
                 for seq, (a, b) in zip(enc.sequence_ids(i), enc["offset_mapping"][i], strict=True)]
        out.append(spans[:1] + prefix + spans[1:])
    return out


def align_by_offsets(student: Sequence[Span], teacher: Sequence[Span]) -> list[int]:
    """For each student token, the teacher token covering the same source characters (-1: none).

    A student token maps to the first teacher token that covers any of its characters; the leading
    special token (`<s>`/[CLS]) maps to the teacher's first token; other special tokens map to none.
    """
    owner: dict[tuple[int, int], int] = {}
    for k, span in enumerate(teacher):
        if span is not None:
            for c in range(span[1], span[2]):
                owner.setdefault((span[0], c), k)
    index = []
    for j, span in enumerate(student):
        if span is None:
            index.append(0 if j == 0 else -1)
        else:
            index.append(next((owner[(span[0], c)] for c in range(span[1], span[2]) if (span[0], c) in owner), -1))
    return index


def pad_batch(items: Sequence[dict], pad_id: int, width: int | None = None) -> dict[str, torch.Tensor]:
    """Pad to the longest member of the batch, or to `width` (the study's ``padding='max_length'``), on the
    right, and build the attention mask.

    `input_ids` are padded with `pad_id`, every other sequence with 0.
    """
    lengths = [len(next(iter(it.values()))) for it in items]
    width = max(max(lengths), width or 0)
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([it[key] + [fill] * (width - len(it[key])) for it in items])
    batch["attention_mask"] = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    return batch


class EncodedData(torch.utils.data.Dataset):
    """Labels plus one encoding per model role ("student", "teacher", …) of the same examples."""

    def __init__(self, labels: Sequence[int], views: dict[str, tuple[list[dict], int]],
                 pad_to: dict[str, int] | None = None):
        self.labels = list(labels)
        self.views = views
        self.pad_to = pad_to or {}  # view → fixed batch width (pad to max_length); others pad to the longest
        for name, (items, _) in views.items():
            if len(items) != len(self.labels):
                raise ValueError(f"view {shown(name)} has {len(items)} items for {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def lengths(self, view: str = "student") -> list[int]:
        """Token count of every example in one view (what bucketing sorts by)."""
        return [len(item["input_ids"]) for item in self.views[view][0]]

    def collate(self, indices: Sequence[int]) -> dict[str, Any]:
        batch: dict[str, Any] = {"labels": torch.tensor([self.labels[i] for i in indices]),
                                 "index": torch.tensor(list(indices))}
        for name, (items, pad_id) in self.views.items():
            batch[name] = pad_batch([items[i] for i in indices], pad_id, self.pad_to.get(name))
        return batch


def encode_view(path_or_tokenizer: str | Path | PreTrainedTokenizerBase, examples: Sequence[Example],
                spec: InputSpec) -> tuple[list[dict], int]:
    """One role's encodings and its pad id, ready for `EncodedData`."""
    tok = path_or_tokenizer if isinstance(path_or_tokenizer, PreTrainedTokenizerBase) \
        else load_tokenizer(path_or_tokenizer)
    return encode(tok, examples, spec), tok.pad_token_id


def batch_order(lengths: Sequence[int], batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = False,
                bucket: bool = False, chunk: int = 50) -> list[list[int]]:
    """Index batches. A shuffle depends only on (seed, epoch), so a resumed run sees the same order.

    With `bucket`, examples of similar length share a batch so dynamic padding adds few pad tokens:
    the (shuffled) order is cut into chunks of `chunk` batches, each chunk is sorted by length, and
    (when shuffling) the batches are shuffled again so lengths still vary from step to step.
    """
    n = len(lengths)
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
    if bucket:
        size = batch_size * chunk
        order = [i for s in range(0, n, size) for i in sorted(order[s:s + size], key=lambda i: -lengths[i])]
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if bucket and shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    return batches
