"""Turning examples into model inputs, the same way at training, evaluation and prediction time.

Every model directory codekd writes carries `codekd.json` (an `InputSpec`): the task, the
whitespace mode, the maximum length and whether UniXcoder's encoder-only prefix is used. Reading it
back is what makes a saved model see exactly the inputs it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from codekd.data import Example, normalize_code
from codekd.io import read_json, write_json

SPEC_FILE = "codekd.json"
UNIXCODER_TOKEN = "<encoder-only>"


@dataclass
class InputSpec:
    """How a model's inputs are built; saved next to its weights."""

    task: str
    max_length: int = 512
    whitespace: str = "collapse"
    unixcoder_prefix: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, model_dir: str | Path) -> None:
        write_json(Path(model_dir) / SPEC_FILE, asdict(self))

    @classmethod
    def load(cls, model_dir: str | Path) -> InputSpec:
        path = Path(model_dir) / SPEC_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; {model_dir} was not written by codekd")
        return cls(**read_json(path))


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
        raise ValueError(f"--unixcoder-prefix {mode!r}: expected auto, on or off")
    return mode == "on"


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path))


def encode(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], spec: InputSpec) -> list[dict]:
    """Token ids (and token types where the tokenizer uses them) for each example.

    Clone pairs use the tokenizer's pair encoding. With the UniXcoder prefix the input is
    `<s> <encoder-only> </s> code </s>`, as in UniXcoder's own encoder-only usage.
    """
    prefix = []
    if spec.unixcoder_prefix:
        prefix = [tokenizer.convert_tokens_to_ids(UNIXCODER_TOKEN), tokenizer.sep_token_id]
    first = [normalize_code(ex.code, spec.whitespace) for ex in examples]
    second = [normalize_code(ex.code2, spec.whitespace) for ex in examples] if examples and \
        examples[0].code2 is not None else None
    enc = tokenizer(first, second, truncation=True, max_length=spec.max_length - len(prefix))
    out = []
    for i in range(len(examples)):
        ids = enc["input_ids"][i]
        item = {"input_ids": ids[:1] + prefix + ids[1:]}
        if "token_type_ids" in enc:
            types = enc["token_type_ids"][i]
            item["token_type_ids"] = types[:1] + [0] * len(prefix) + types[1:]
        out.append(item)
    return out


def pad_batch(items: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest member of the batch (right padding) and build the attention mask."""
    width = max(len(it["input_ids"]) for it in items)
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([it[key] + [fill] * (width - len(it[key])) for it in items])
    batch["attention_mask"] = torch.tensor(
        [[1] * len(it["input_ids"]) + [0] * (width - len(it["input_ids"])) for it in items])
    return batch


class EncodedData(torch.utils.data.Dataset):
    """Labels plus one encoding per model role ("student", "teacher", …) of the same examples."""

    def __init__(self, labels: Sequence[int], views: dict[str, tuple[list[dict], int]]):
        self.labels = list(labels)
        self.views = views
        for name, (items, _) in views.items():
            if len(items) != len(self.labels):
                raise ValueError(f"view {name!r} has {len(items)} items for {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: Sequence[int]) -> dict[str, Any]:
        batch: dict[str, Any] = {"labels": torch.tensor([self.labels[i] for i in indices]),
                                 "index": torch.tensor(list(indices))}
        for name, (items, pad_id) in self.views.items():
            batch[name] = pad_batch([items[i] for i in indices], pad_id)
        return batch


def encode_view(path_or_tokenizer: str | Path | PreTrainedTokenizerBase, examples: Sequence[Example],
                spec: InputSpec) -> tuple[list[dict], int]:
    """One role's encodings and its pad id, ready for `EncodedData`."""
    tok = path_or_tokenizer if isinstance(path_or_tokenizer, PreTrainedTokenizerBase) \
        else load_tokenizer(path_or_tokenizer)
    return encode(tok, examples, spec), tok.pad_token_id


def batch_order(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool) -> Iterator[list[int]]:
    """Index batches; a shuffle depends only on (seed, epoch), so a resumed run sees the same order."""
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n, generator=gen).tolist()
    else:
        order = list(range(n))
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]
