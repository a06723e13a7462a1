"""Exporting a trained model (teacher, RoBERTa or BiGRU student) to ONNX, checked before it is written.

`export_model` traces the model with PyTorch's TorchScript-based ONNX exporter (`dynamo=False`, which
handles the BiGRU's packed sequences: they become ONNX `GRU` nodes with `sequence_lens`), with dynamic
batch and sequence axes. It then runs the export in ONNX Runtime on padded batches of mixed lengths
(real test examples from `data` when given, plus synthetic functions of different lengths) and compares
the logits with PyTorch's; if they differ by more than `TOLERANCE` nothing is written. With
`quantize="int8"` the checked fp32 graph is quantized dynamically (int8 weights) and, given `data`, the
test metrics before and after are reported.

The output directory holds `model.onnx`, the tokenizer files, `codekd.json` (the same `InputSpec`, so
predictions use the training preprocessing) and `onnx.json` (opset, quantization, class labels, check).
Needs the optional `onnx` and `onnxruntime` packages (`pip install codekd[deploy]`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from torch import nn

from codekd.data import Example, load_split
from codekd.data.text import shown
from codekd.encoding import SPEC_FILE, encode, model_task, pad_batch
from codekd.io import atomic_dir, check_new_output, output_of, write_json
from codekd.models.teacher import load_model_dir
from codekd.predict import (
    ONNX_FILE,
    Batch,
    Forward,
    Predictor,
    onnx_forward,
    ort_session,
    require_deploy,
    torch_forward,
)
from codekd.rundir import export_config, write_export_card
from codekd.trust import TrustRemoteCode

ONNX_META = "onnx.json"
TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| over the fp32 logits
QUANTIZE = ("int8",)
CHECK_EXAMPLES = 16  # real test examples in the check batch
SYNTHETIC = (  # from a few tokens to longer than any max length, so the traced batch has padding
    "pass",
    "def f(x):\n    return x + 1",
    "def total(items):\n    result = 0\n    for item in items:\n        try:\n            result += item.value\n"
    "        except __HOLE__:\n            pass\n    return result",
    "def long_function(data):\n" + "    data = transform(data, key='value', size=len(data))\n" * 200,
)


class ExportCheckError(ValueError):
    """The exported graph does not reproduce the PyTorch model; nothing was written."""


class _Logits(nn.Module):
    """The model as a function of its input tensors (in `names` order) to its logits, for tracing."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True)), return_dict=True).logits


def synthetic_examples(pair: bool) -> list[Example]:
    """Functions of very different lengths (the longest beyond any max length), as pairs for pair tasks."""
    codes = list(SYNTHETIC)
    return [Example(a, 0, b if pair else None, "synthetic") for a, b in zip(codes, codes[::-1], strict=True)]


def export_onnx(model: nn.Module, batch: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    """Trace `model` on the padded `batch` into an ONNX file with dynamic batch and sequence axes.

    The batch must contain padding, so that the traced graph keeps the attention-mask path.
    """
    names = list(batch)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    wrapper = _Logits(model, names).eval()
    with warnings.catch_warnings():  # tracer and deprecation notes; the check below is what counts
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(batch.values()), str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)


def max_logit_diff(a: Forward, b: Forward, batches: Iterable[Batch]) -> float:
    """Largest |a - b| over the logits of `batches`."""
    return max(float(np.abs(a(batch) - b(batch)).max()) for batch in batches)


def check_batches(predictor: Predictor, examples: list[Example]) -> list[Batch]:
    """The examples as one padded batch of mixed lengths, and one at a time (unpadded)."""
    return [*predictor.batches(examples, len(examples)), *predictor.batches(examples, 1)]


def _quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of the weights (activations are quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its "consider pre-processing" advice; the graph is already checked
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def export_model(model_dir: str | Path, out: str | Path, quantize: str | None = None, opset: int = 17,
                 data: str | Path | None = None, task: str | None = None,
                 tolerance: float = TOLERANCE, trust_remote_code: bool = False, force: bool = False) -> dict[str, Any]:
    """Export a codekd model directory to an ONNX directory `out`; returns what `onnx.json` records.

    `data` (a data directory of the model's task) supplies real test examples for the check and, with
    `quantize="int8"`, the test split on which the metrics before and after quantization are computed.
    `task`, when given, must be the model's. `out` appears complete or not at all.
    """
    require_deploy("onnx")
    require_deploy("onnxruntime")
    if quantize not in (None, *QUANTIZE):
        raise ValueError(f"--quantize {shown(quantize)}: expected {' or '.join(QUANTIZE)}")
    check_new_output(out, force, replaceable=output_of(ONNX_META, SPEC_FILE))  # --force: an earlier export only
    model, tokenizer, spec = load_model_dir(model_dir, trust_remote_code)
    t = model_task(spec, task, f"--task {task}: the model at {model_dir} was")
    test = load_split(t, data, "test", whitespace=spec.whitespace) if data is not None else []
    check = test[:CHECK_EXAMPLES] + synthetic_examples(t.pair)
    reference = Predictor(torch_forward(model.eval()), tokenizer, spec)
    trace = pad_batch(encode(tokenizer, synthetic_examples(t.pair), spec), tokenizer.pad_token_id)
    meta: dict[str, Any] = {"opset": opset, "quantized": quantize, "labels": list(t.labels), "inputs": list(trace),
                            "source": str(model_dir), "tolerance": tolerance,
                            "versions": {lib: version(lib) for lib in ("torch", "onnx", "onnxruntime")}}
    batches = check_batches(reference, check)
    with atomic_dir(out, replace=force) as tmp:
        export_onnx(model, trace, tmp / ONNX_FILE, opset)
        meta["max_abs_diff"] = max_logit_diff(reference.forward, onnx_forward(ort_session(tmp / ONNX_FILE)), batches)
        meta["checked_examples"] = len(check)
        if not meta["max_abs_diff"] <= tolerance:
            raise ExportCheckError(f"--model {model_dir}: ONNX Runtime logits differ from PyTorch's by "
                                   f"{meta['max_abs_diff']:.3g} > {tolerance:g} on {len(check)} examples; "
                                   f"nothing written to {out}")
        if quantize == "int8":
            fp32 = tmp / f"fp32-{ONNX_FILE}"
            (tmp / ONNX_FILE).rename(fp32)
            _quantize_int8(fp32, tmp / ONNX_FILE)
            fp32.unlink()
            quantized = Predictor(onnx_forward(ort_session(tmp / ONNX_FILE)), tokenizer, spec)
            meta["int8_max_abs_diff"] = max_logit_diff(reference.forward, quantized.forward, batches)
            if test:
                labels = [ex.label for ex in test]
                meta["metrics"] = {"fp32": t.metrics(labels, reference.probs(test)),
                                   "int8": t.metrics(labels, quantized.probs(test))}
        tokenizer.save_pretrained(tmp)
        spec.save(tmp)
        export_config(model, tmp)
        write_json(tmp / ONNX_META, meta)
        write_export_card(Path(model_dir), tmp, meta)
    return meta


def export_command(
    model: Annotated[Path, typer.Option(help="codekd model directory (teacher or student)")],
    out: Annotated[Path, typer.Option(help="output ONNX directory (must not exist)")],
    quantize: Annotated[str | None, typer.Option(help="int8: dynamic int8 quantization of the weights")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version")] = 17,
    data: Annotated[Path | None, typer.Option(help="data directory: real examples for the check; test "
                                                   "metrics before/after int8")] = None,
    task: Annotated[str | None, typer.Option(help="must match the model's task, when given")] = None,
    trust_remote_code: TrustRemoteCode = False,
    force: Annotated[bool, typer.Option(help="replace an earlier export at --out (atomically, once the new one is "
                                             "complete)")] = False,
) -> None:
    """Export a model to ONNX (checked against PyTorch before anything is written)."""
    meta = export_model(model, out, quantize, opset, data, task, trust_remote_code=trust_remote_code, force=force)
    typer.echo(f"{out}: ONNX opset {opset}{', int8' if quantize else ''}; max |ONNX - PyTorch| logit difference "
               f"{meta['max_abs_diff']:.2g} on {meta['checked_examples']} examples (fp32)")
    for name, metrics in meta.get("metrics", {}).items():
        typer.echo(f"test metrics {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n"))
