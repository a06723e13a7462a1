"""Loading Hugging Face files without running code from them unless the user opts in.

A model or tokenizer directory can name Python classes of its own (`auto_map` in `config.json` or
`tokenizer_config.json`) that transformers imports, and so runs, when `trust_remote_code=True`. codekd
passes `trust_remote_code=False` to every `from_pretrained` unless the user gives `--trust-remote-code`;
a directory that needs its own code is then refused in one line. A model type that is installed (any of
transformers', and codekd's own `bigru`, registered by `codekd.models.bigru`) loads with the installed class,
whatever `auto_map` says, so codekd's run directories never need the flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="allow a model directory to run its own Python code (auto_map); only for authors "
                                "you trust")]


class RemoteCodeRefused(ValueError):
    """A directory that needs its own Python code, loaded without `--trust-remote-code` (one line)."""


def from_pretrained(loader: Any, source: str | Path, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """`loader.from_pretrained(source, **kwargs)` (an Auto class, or any class with that method), refusing
    custom code in one line (`RemoteCodeRefused`). A model's weights load in fp32 whatever dtype the
    checkpoint was saved in (transformers keeps the saved one): training needs fp32 master weights, and
    codekd's precisions (`--precision`, `--teacher-precision`) are autocast over them."""
    import torch
    from transformers import PreTrainedModel

    if hasattr(loader, "from_config") or isinstance(loader, type) and issubclass(loader, PreTrainedModel):
        kwargs.setdefault("dtype", torch.float32)  # a model class: configs and tokenizers take no dtype
    try:
        return loader.from_pretrained(str(source), trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as e:
        if trust_remote_code or "trust_remote_code" not in str(e):
            raise
        raise RemoteCodeRefused(f"{source}: refused: the model directory holds its own Python code (auto_map), "
                                "which codekd does not run; pass --trust-remote-code to run it, if you trust its "
                                "author") from None
