"""Predicting with a shipped model: a PyTorch checkpoint directory or an ONNX export of one.

Every input goes through `codekd.encoding.encode` with the `codekd.json` saved next to the model, so a
prediction sees exactly the preprocessing the model was trained with (whitespace mode, truncation mode,
maximum length, UniXcoder prefix). Input is JSONL with the task's input fields (built-ins: `func` or
`function`; `func1` and `func2` for clone pairs; any label field is ignored) or raw source files, one function per
file. A bad input line is a `DataError` naming `<input>:<line>`; `--skip-bad` reports them and predicts the
rest, so a large batch job loses exactly its bad lines. The command streams: it reads, predicts and prints
`CHUNK_BATCHES` batches at a time, so its memory does not grow with the input and the first results appear
after the first chunk; each output line names its input line (or file) so outputs stay matched to inputs.

ONNX directories (written by `codekd export`, detected by their `model.onnx`) need the optional
`onnxruntime` dependency (`pip install codekd[deploy]`); it is imported only when one is loaded.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Annotated, Any

import numpy as np
import torch
import typer
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from codekd.data import DataError, Example, Task, normalize_code
from codekd.data.readers import InvalidRecord, record_inputs
from codekd.data.text import decode_text, open_binary, parse_json, raw_lines, read_text, shown
from codekd.encoding import InputSpec, batch_order, encode, load_tokenizer, model_task, pad_batch
from codekd.models.adapters import run_frozen
from codekd.models.teacher import check_source, load_model_dir
from codekd.trust import TrustRemoteCode

hf_logging.disable_progress_bar()  # per-file load bars on stderr would mix with --skip-bad's reports

ONNX_FILE = "model.onnx"
UNLABELLED = -1  # the label of an Example read for prediction
CHUNK_BATCHES = 8  # `predict` reads, predicts (length-bucketed) and prints this many batches at a time

Batch = dict[str, torch.Tensor]
Forward = Callable[[Batch], np.ndarray]
Input = tuple[dict[str, Any], Example]  # where an input came from ({"line": n, "id": ...} or {"file": path}), and it


def torch_forward(model: PreTrainedModel) -> Forward:
    """Logits [B, C] (fp32, numpy) of a PyTorch model on one padded batch, in eval mode without gradients."""
    return lambda batch: run_frozen(model, batch, ("logits",)).logits.float().numpy()


def require_deploy(module: str) -> ModuleType:
    """Import an optional `deploy` dependency, or say how to install it (a user error, not a crash)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{module} is not installed: ONNX export and ONNX models need "
                         "`pip install codekd[deploy]`") from None


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session; `threads` sets its intra-op threads (None: ONNX Runtime's default)."""
    ort = require_deploy("onnxruntime")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_forward(session: Any) -> Forward:
    """Logits [B, C] of an ONNX Runtime session on one padded batch (it takes the inputs it was exported with)."""
    names = [i.name for i in session.get_inputs()]
    return lambda batch: session.run(None, {name: batch[name].numpy() for name in names})[0]


def _example(task: Task, rec: Any, whitespace: str, source: str) -> Example:
    """An unlabelled Example from one record, validated as the data readers do; raises `InvalidRecord`."""
    codes = record_inputs(task, rec, whitespace)
    return Example(codes[0], UNLABELLED, codes[1] if task.pair else None, source)


def read_jsonl(f: IO[bytes], name: str, task: Task, whitespace: str) -> Iterator[Input | DataError]:
    """Each JSONL line of the binary stream `f` (blank lines skipped) as `(key, Example)`, or a `DataError` for a
    bad line; `key` is `{"line": n}` (1-based), plus the record's `"id"` when it has one.

    `name` is what errors call the input (a path or `<stdin>`). Each line is decoded on its own, so a bad byte
    costs its own line only.
    """
    for n, raw in raw_lines(f):
        try:
            text = decode_text(raw, name, n, first=n == 1)
            if text.strip():
                rec = parse_json(text, name, n)
                example = _example(task, rec, whitespace, f"{name}:{n}")
                yield {"line": n, **({"id": rec["id"]} if "id" in rec else {})}, example
        except InvalidRecord as e:
            yield DataError(name, str(e), n)
        except DataError as e:
            yield e


def read_sources(paths: Sequence[Path], whitespace: str) -> Iterator[Input | DataError]:
    """One function per raw source file, as `({"file": path}, Example)`, or a `DataError` for a bad file."""
    for path in paths:
        try:
            code = normalize_code(read_text(Path(path)), whitespace)
        except DataError as e:
            yield e
            continue
        if code.strip():
            yield {"file": str(path)}, Example(code, UNLABELLED, None, str(path))
        else:
            yield DataError(path, "no code (the file is empty)")


class Predictor:
    """Class probabilities of a shipped model for raw functions, with the model's own preprocessing.

    `Predictor.from_pretrained(DIR)(["def f(): ..."])` gives one `{"label": NAME, "probs": {class: p}}` per
    input (for clone, inputs are `(code1, code2)` tuples). Works on CPU for teachers and both student kinds.
    """

    def __init__(self, forward: Forward, tokenizer: PreTrainedTokenizerBase, spec: InputSpec,
                 batch_size: int = 32) -> None:
        self.forward, self.tokenizer, self.spec, self.batch_size = forward, tokenizer, spec, batch_size
        self.task = spec.get_task()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, batch_size: int = 32, threads: int | None = None,
                        trust_remote_code: bool = False) -> Predictor:
        """Load a codekd model directory: an ONNX export (has `model.onnx`) or a PyTorch checkpoint.

        `threads` is ONNX Runtime's intra-op thread count; PyTorch uses `torch.get_num_threads()`.
        """
        check_source(model_dir, "--model")
        model_dir = Path(model_dir)
        if (model_dir / ONNX_FILE).is_file():
            forward = onnx_forward(ort_session(model_dir / ONNX_FILE, threads))
            return cls(forward, load_tokenizer(model_dir, trust_remote_code), InputSpec.load(model_dir), batch_size)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: neither {ONNX_FILE} (ONNX export) nor config.json "
                                    "(PyTorch checkpoint) is there")
        model, tokenizer, spec = load_model_dir(model_dir, trust_remote_code)
        return cls(torch_forward(model), tokenizer, spec, batch_size)

    def _batches(self, examples: Sequence[Example], batch_size: int, bucket: bool) -> Iterator[tuple[list[int], Batch]]:
        """(example indices, padded batch) pairs; `bucket` groups similar lengths as evaluation does."""
        items = encode(self.tokenizer, examples, self.spec) if examples else []
        for indices in batch_order([len(item["input_ids"]) for item in items], batch_size, bucket=bucket):
            yield indices, pad_batch([items[i] for i in indices], self.tokenizer.pad_token_id)

    def batches(self, examples: Sequence[Example], batch_size: int | None = None) -> Iterator[Batch]:
        """Padded batches (of `batch_size`, default the predictor's) of the encoded examples, in order.

        Padding is the training's (`pad_batch`), so a batch is what the model saw while it was trained.
        """
        return (batch for _, batch in self._batches(examples, batch_size or self.batch_size, bucket=False))

    def probs(self, examples: Sequence[Example]) -> np.ndarray:
        """Class probabilities [N, C] of the examples, in order (computed in length-bucketed batches)."""
        logits = np.zeros((len(examples), len(self.task.labels)), dtype=np.float32)
        for indices, batch in self._batches(examples, self.batch_size, bucket=True):
            logits[indices] = self.forward(batch)
        return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()

    def predict(self, examples: Sequence[Example], top_k: int = 3) -> list[dict[str, Any]]:
        """`{"label", "probs"}` per example; `probs` holds both classes of a binary task, else the top `top_k`."""
        if top_k < 1:
            raise ValueError(f"--top-k {top_k}: expected at least 1")
        labels = self.task.labels
        k = len(labels) if len(labels) == 2 else min(top_k, len(labels))
        out = []
        for p in self.probs(examples):
            order = np.argsort(-p, kind="stable")[:k]
            out.append({"label": labels[order[0]], "probs": {labels[i]: float(p[i]) for i in order}})
        return out

    def __call__(self, inputs: Sequence[str | tuple[str, str]], top_k: int = 3) -> list[dict[str, Any]]:
        """Predict raw functions (strings; `(code1, code2)` tuples for clone). A bad item is a ValueError."""
        examples = []
        for i, item in enumerate(inputs):
            if self.task.pair and not (isinstance(item, tuple | list) and len(item) == 2):
                raise ValueError(f"input item {i}: task {shown(self.task.name)} takes (code1, code2) pairs")
            rec = dict(zip(self.task.inputs, item if self.task.pair else [item], strict=True))
            try:
                examples.append(_example(self.task, rec, self.spec.whitespace, f"item {i}"))
            except InvalidRecord as e:
                raise ValueError(f"input item {i}: {e}") from None
        return self.predict(examples, top_k)


def predict_command(
    model: Annotated[Path, typer.Option(help="model directory: PyTorch checkpoint or ONNX export")],
    files: Annotated[list[Path] | None, typer.Argument(metavar="FILES", help="raw source files, one function each "
                                                           "(single-function tasks only)")] = None,
    task: Annotated[str | None, typer.Option(help="must match the model's task (a name or FILE.yaml)")] = None,
    input_: Annotated[str | None, typer.Option("--input", help="JSONL file, or - for standard input "
                                                              "(the default without FILES)")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="classes to list per input (multi-class tasks)")] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    skip_bad: Annotated[bool, typer.Option(help="report bad inputs on stderr and predict the rest")] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Predict functions with a trained model: one JSON line {"line" (or "file"), ["id"], "label", "probs"} per
    input on stdout, streamed in chunks of CHUNK_BATCHES batches."""
    if files and input_ is not None:
        raise ValueError("give either --input or raw source FILES, not both")
    predictor = Predictor.from_pretrained(model, batch_size, trust_remote_code=trust_remote_code)
    model_task(predictor.spec, task, f"--task {task}: the model at {model} was")
    t, whitespace = predictor.task, predictor.spec.whitespace
    if files and t.pair:
        raise ValueError(f"raw source files work for single-function tasks only; give {t.name} pairs "
                         f"as JSONL lines with {' and '.join(t.inputs)}")

    def inputs() -> Iterator[Input | DataError]:
        if files:
            yield from read_sources(files, whitespace)
        elif input_ in (None, "-"):
            yield from read_jsonl(sys.stdin.buffer, "<stdin>", t, whitespace)
        else:
            with open_binary(Path(input_)) as f:
                yield from read_jsonl(f, input_, t, whitespace)

    if not skip_bad and (files or input_ not in (None, "-")):  # a file can be read twice: check it all first
        first_error = next((item for item in inputs() if isinstance(item, DataError)), None)
        if first_error is not None:
            raise first_error
    seen = 0
    for chunk in _chunks(inputs(), batch_size * CHUNK_BATCHES):
        good = [item for item in chunk if not isinstance(item, DataError)]
        results = iter(predictor.predict([example for _, example in good], top_k))
        lines = []
        for item in chunk:
            if isinstance(item, DataError):
                if not skip_bad:
                    _write(lines)
                    raise item
                typer.echo(f"skipped {item}", err=True)
            else:
                lines.append(json.dumps({**item[0], **next(results)}))
        _write(lines)
        seen += len(chunk)
    if not seen:
        raise ValueError("no functions to predict: the input is empty")


def _chunks(items: Iterable[Input | DataError], size: int) -> Iterator[list[Input | DataError]]:
    """Consecutive runs of `items` holding `size` inputs each (bad lines ride along), the last one shorter."""
    chunk: list[Input | DataError] = []
    good = 0
    for item in items:
        chunk.append(item)
        good += not isinstance(item, DataError)
        if good == size:
            yield chunk
            chunk, good = [], 0
    if chunk:
        yield chunk


def _write(lines: list[str]) -> None:
    """Print output lines now (a pipe would otherwise hold them in its buffer)."""
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
