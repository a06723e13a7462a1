"""How codekd turns source code into token ids: whitespace mode, focus truncation, UniXcoder prefix.

codekd runs these functions at training, evaluation and prediction time, and copies this file into
every run directory (beside `codekd_pipeline.py`), so a directory's own pipeline prepares inputs with
the same code. It imports nothing but the standard library: the tokenizer is passed in.

`settings` is the `codekd_input` mapping of the directory's `config.json`: `max_length` (the trained
length, special tokens included), `whitespace` (`collapse` | `keep`), `truncation` (`head` | `focus`),
`marker` (the text the focus window is centred on, or None) and `prefix` (token ids inserted after the
first token: UniXcoder's `<encoder-only> </s>`, else empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def collapse_whitespace(code: str) -> str:
    """The study's `' '.join(code.split())`: every whitespace run becomes one space, ends stripped."""
    return " ".join(code.split())


def focus_window(tokenizer: Any, text: str, marker: str, budget: int) -> str:
    """The longest run of whole tokens of `text`, centred on `marker`, that fits in `budget` tokens.

    For a function longer than the model's input, head truncation (the study's) can cut away the very
    part the label depends on (CuBERT's `__HOLE__` lies beyond 128 tokens in 42 % of the exception
    slice); this keeps the context around it instead. Text without the marker is returned unchanged.
    """
    at = text.find(marker)
    room = budget - tokenizer.num_special_tokens_to_add(pair=False)
    if at < 0:
        return text
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    if len(offsets) <= room:
        return text
    k = next(i for i, (_, end) in enumerate(offsets) if end > at)
    start = max(0, min(k - room // 2, len(offsets) - room))
    return text[offsets[start][0]:offsets[start + room - 1][1]]


def tokenize(tokenizer: Any, first: Sequence[str], second: Sequence[str] | None, settings: dict[str, Any],
             **kwargs: Any) -> Any:
    """The tokenizer's batch encoding of the texts (pairs when `second` is given), prefix not yet inserted."""
    budget = settings["max_length"] - len(settings["prefix"])
    if settings["whitespace"] == "collapse":
        first = [collapse_whitespace(t) for t in first]
        second = None if second is None else [collapse_whitespace(t) for t in second]
    if settings["truncation"] == "focus":
        first = [focus_window(tokenizer, t, settings["marker"], budget) for t in first]
    return tokenizer(list(first), None if second is None else list(second), truncation=True, max_length=budget,
                     verbose=False, **kwargs)


def encode_texts(tokenizer: Any, first: Sequence[str], second: Sequence[str] | None,
                 settings: dict[str, Any]) -> list[dict[str, list[int]]]:
    """Token ids (and token types where the tokenizer uses them) of each text or pair, unpadded.

    With a prefix the input is `<s> <encoder-only> </s> code </s>`, UniXcoder's encoder-only usage.
    """
    prefix = list(settings["prefix"])
    enc = tokenize(tokenizer, first, second, settings)
    out = []
    for i in range(len(first)):
        ids = enc["input_ids"][i]
        item = {"input_ids": ids[:1] + prefix + ids[1:]}
        if "token_type_ids" in enc:
            types = enc["token_type_ids"][i]
            item["token_type_ids"] = types[:1] + [0] * len(prefix) + types[1:]
        out.append(item)
    return out
