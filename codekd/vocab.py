"""Student vocabularies: a byte-level BPE per task, as in the study (vocab/train_tokenizer.py).

Each student in the study has its own vocabulary trained on the task's training code, sized to the
student (1000 … 50000). We train with HF `tokenizers` (min frequency 2, RoBERTa specials
`<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3 `<mask>`=4 and RoBERTa's post-processor) and save a directory
that `AutoTokenizer.from_pretrained` loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing
from transformers import PreTrainedTokenizerFast

from codekd.data import Example
from codekd.io import atomic_dir

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def training_texts(examples: Iterable[Example]) -> list[str]:
    """The distinct functions of a split (both sides of clone pairs), in first-seen order."""
    seen: dict[str, None] = {}
    for ex in examples:
        seen.setdefault(ex.code)
        if ex.code2 is not None:
            seen.setdefault(ex.code2)
    return list(seen)


def train_vocab(texts: list[str], size: int, max_length: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of at most `size` tokens (specials included) on `texts`."""
    if size < len(SPECIALS) + 256:
        raise ValueError(f"--size {size}: a byte-level BPE needs at least {len(SPECIALS) + 256} tokens")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=size, min_frequency=2, special_tokens=SPECIALS,
                            show_progress=False)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>", model_max_length=max_length,
    )
    tok.model_input_names = ["input_ids", "attention_mask"]
    return tok


def save_vocab(tokenizer: PreTrainedTokenizerFast, out: str | Path, replace: bool = False) -> Path:
    """Write the tokenizer directory atomically (nothing appears at `out` until it is complete; with `replace`, an
    existing `out` goes only then)."""
    with atomic_dir(out, replace=replace) as tmp:
        tokenizer.save_pretrained(tmp)
    return Path(out)
