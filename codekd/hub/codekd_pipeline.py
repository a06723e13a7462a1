"""The text-classification pipeline of a codekd run directory (registered in its `config.json`).

`transformers.pipeline("text-classification", model=DIR, trust_remote_code=True)` loads this class, which
prepares each input exactly as codekd did when it trained and evaluated the model (`codekd_text`, read
from the directory's `codekd_input` settings): whitespace mode, truncation at the trained length (head,
or a window centred on the task's marker) and any UniXcoder prefix. Give a pair as
`{"text": code1, "text_pair": code2}`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TextClassificationPipeline

from .codekd_text import encode_texts


class CodeClassificationPipeline(TextClassificationPipeline):
    """`TextClassificationPipeline` with codekd's input preparation; postprocessing is unchanged."""

    def preprocess(self, inputs: Any, **tokenizer_kwargs: Any) -> dict[str, torch.Tensor]:
        if isinstance(inputs, dict):
            first, second = [inputs["text"]], [inputs["text_pair"]] if "text_pair" in inputs else None
        else:
            first, second = [inputs], None
        item = encode_texts(self.tokenizer, first, second, self.model.config.codekd_input)[0]
        batch = {key: torch.tensor([ids]) for key, ids in item.items()}
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        return batch
