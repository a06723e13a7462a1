"""Self-contained run directories: what plain `transformers` needs to use them as codekd does.

- The tokenizer carries what a tokenizer can express of the preprocessing: whitespace collapse as a
  normaliser (fast tokenizers), `model_max_length` = the trained length, the truncation side.
- `config.json` carries the rest (`codekd_input`, read by the directory's own pipeline) and registers
  that pipeline (`custom_pipelines` → `codekd_pipeline.py` + `codekd_text.py`, copied in), because
  focus truncation, and truncation at all, cannot be made a tokenizer default.
- A BiGRU directory carries its modeling file (`modeling_bigru.py`, `auto_map` in `config.json`), so
  `AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)` loads it without
  codekd; codekd itself registers the class and never runs that copy.
- `README.md` is a model card (`huggingface_hub.ModelCard`) with the task, teacher, method, metrics,
  retention, parameters and data licence, the metrics also as model-index metadata.
- :func:`environment` is the library versions and machine facts recorded with every run and study result.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import codekd.hub
import codekd.models.bigru
from codekd.encoding import InputSpec, input_settings
from codekd.models.adapters import is_gru

HUB_FILES = ("codekd_pipeline.py", "codekd_text.py")
BIGRU_FILE = "modeling_bigru.py"
CARD = "README.md"
PIPELINE = {"text-classification": {"impl": "codekd_pipeline.CodeClassificationPipeline",
                                    "pt": ["AutoModelForSequenceClassification"], "tf": [], "type": "text"}}
WHITESPACE_RUN = r"[\s\x1c-\x1f]+"  # what Python's str.split() splits on (\s plus the four separators)


def environment() -> dict[str, Any]:
    """Library versions and machine facts recorded with every result."""
    libs = ("codekd", "torch", "transformers", "tokenizers", "accelerate", "numpy")
    return {"versions": {lib: version(lib) for lib in libs}, "python": sys.version.split()[0],
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _collapse_normalizer() -> Any:
    from tokenizers import Regex, normalizers

    return normalizers.Sequence([normalizers.Replace(Regex(WHITESPACE_RUN), " "), normalizers.Strip()])


def configure(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: InputSpec) -> None:
    """Put the preprocessing of `spec` into the tokenizer and config (once, before training saves them).

    The collapse normaliser is idempotent on text codekd has already collapsed, so training inputs and
    offsets are unchanged.
    """
    tokenizer.model_max_length = spec.max_length
    tokenizer.truncation_side = "right"  # head truncation keeps the first tokens; focus picks its window first
    if spec.whitespace == "collapse" and tokenizer.is_fast:
        backend = tokenizer.backend_tokenizer
        collapse = _collapse_normalizer()
        if backend.normalizer is None:
            backend.normalizer = collapse
        else:
            from tokenizers import normalizers

            backend.normalizer = normalizers.Sequence([collapse, backend.normalizer])
    model.config.codekd_input = input_settings(tokenizer, spec)
    model.config.custom_pipelines = PIPELINE
    if is_gru(model):
        module = BIGRU_FILE.removesuffix(".py")
        model.config.auto_map = {"AutoConfig": f"{module}.BiGRUConfig",
                                 "AutoModelForSequenceClassification": f"{module}.BiGRUForSequenceClassification"}


def copy_code(model: PreTrainedModel, directory: Path) -> None:
    """Copy the pipeline files (and the BiGRU modeling file) that `config.json` names into `directory`."""
    hub = Path(codekd.hub.__file__).parent
    for name in HUB_FILES:
        shutil.copy2(hub / name, directory / name)
    if is_gru(model):
        shutil.copy2(codekd.models.bigru.__file__, directory / BIGRU_FILE)


def data_licence(data: str | Path) -> str:
    """The licence of a data directory: its `source_licenses.tsv` (as the shipped slice has), a
    LICENSE/LICENCE/COPYING file's first line, or "unknown"."""
    d = Path(data)
    table = d / "source_licenses.tsv"
    if table.is_file():
        with open(table, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        names = sorted({r.get("license_in_snapshot") or "?" for r in rows if r.get("allowed", "yes") == "yes"})
        return f"per source repository ({', '.join(names)}; see source_licenses.tsv of the data)"
    for name in ("LICENSE", "LICENCE", "COPYING", "LICENSE.txt", "LICENSE.md"):
        if (d / name).is_file():
            lines = [line.strip() for line in (d / name).read_text(encoding="utf-8", errors="replace").splitlines()]
            return next((line for line in lines if line), "unknown")
    return "unknown (no licence file in the data directory)"


def model_card(metrics: dict[str, Any], config: dict[str, Any], name: str) -> Any:
    """The run's model card: front matter from `ModelCardData` (model-index from `EvalResult`s), a short body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    task = metrics["task"]
    teachers = config.get("teachers") or []
    teacher = ", ".join(teachers) or config.get("model") or "none"
    results = [EvalResult(task_type="text-classification", dataset_type=task, dataset_name=f"{task} (test split)",
                          dataset_split="test", metric_type=k, metric_name=k, metric_value=round(float(v), 6))
               for k, v in metrics["model"].items() if k != "n"]
    licence = data_licence(config["data"]) if config.get("data") else "unknown"
    data = ModelCardData(model_name=name, library_name="transformers", pipeline_tag="text-classification",
                         tags=["codekd", "code", task, metrics.get("method") or "ft"], eval_results=results,
                         datasets=[str(config.get("data"))] if config.get("data") else None)
    retention = metrics.get("retention")
    retained = "n/a" if retention is None else f"{100 * retention:.1f} %"
    student = config.get("student") or config.get("model")
    student = student.get("name", "custom") if isinstance(student, dict) else student
    window = ", centred on the task's marker" if config.get("truncation") == "focus" else ""
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics["model"].items())
    body = f"""
# {name}

A code classifier for the `{task}` task, trained with [codekd](https://pypi.org/project/codekd/).

- **Method:** `{metrics.get("method")}`
- **Teacher:** {teacher}
- **Model:** {student}
- **Parameters:** {metrics["parameters"]:,} ({metrics["size_mb"]:.2f} MB of weights)
- **Retention** ({metrics["headline"]}, student ÷ teacher): {retained}
- **Training data:** `{config.get("data")}`; licence: {licence}

## Test metrics ({int(metrics["model"].get("n", 0))} examples)

| metric | value |
|---|---|
{rows}

## Use

```python
from transformers import pipeline

clf = pipeline("text-classification", model="DIR", trust_remote_code=True)  # DIR: this directory
clf("def f(x):\\n    return x + 1")
```

The directory's own pipeline (`codekd_pipeline.py`) prepares inputs exactly as codekd did in training
(whitespace, truncation at {config.get("max_length")} tokens{window}).
`codekd predict --model DIR` gives the same predictions.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_card(directory: Path, metrics: dict[str, Any], config: dict[str, Any], name: str) -> None:
    """Write `directory/README.md`, the model card of a run named `name`."""
    model_card(metrics, config, name).save(directory / CARD)


def write_export_card(source: Path, directory: Path, meta: dict[str, Any]) -> None:
    """The model card of an ONNX export: the source's card (if it has one) plus what the export checked."""
    from huggingface_hub import ModelCard, ModelCardData

    if (source / CARD).is_file():
        card = ModelCard.load(source / CARD)
    else:
        data = ModelCardData(library_name="onnx", pipeline_tag="text-classification", tags=["codekd", "onnx"])
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {directory.name}\n")
    tags = list(card.data.tags or [])
    card.data.tags = tags + [t for t in ("onnx", *(["int8"] if meta.get("quantized") else [])) if t not in tags]
    lines = [f"\n## ONNX export\n\n`model.onnx` (opset {meta['opset']}, "
             f"{'dynamic int8 weights' if meta.get('quantized') else 'fp32'}) exported from `{meta['source']}`; "
             f"ONNX Runtime's fp32 logits were within {meta['max_abs_diff']:.2g} of PyTorch's on "
             f"{meta['checked_examples']} examples. `config.json` holds the labels (`id2label`); "
             "`codekd predict --model DIR` runs it."]
    for name, metrics in meta.get("metrics", {}).items():
        lines.append(f"- test metrics, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n"))
    card.text = card.text.rstrip() + "\n" + "\n".join(lines) + "\n"
    card.save(directory / CARD)


def export_config(model: PreTrainedModel, directory: Path) -> None:
    """`config.json` of an ONNX export: the model's (labels, shapes, `codekd_input`), without the pointers to
    PyTorch code that the export does not carry."""
    config = model.config.to_dict()
    for key in ("auto_map", "custom_pipelines"):
        config.pop(key, None)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
