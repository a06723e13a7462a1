"""ONNX export: the exported graph reproduces PyTorch's logits (RoBERTa and BiGRU students, a BERT-style
teacher with token types) on padded batches of mixed lengths, int8 export reports its metrics, a failed
check writes nothing, and predictions from the ONNX directory match the checkpoint's."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertTokenizerFast

from codekd.data import Example, get_task, load_split
from codekd.encoding import InputSpec
from codekd.models import build_student, custom_spec

pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra (pip install codekd[deploy])")
pytest.importorskip("onnx", reason="onnx is an optional extra (pip install codekd[deploy])")

from codekd import export as export_mod  # noqa: E402  (needs the optional packages checked above)
from codekd.export import ExportCheckError, export_model  # noqa: E402
from codekd.predict import Predictor  # noqa: E402

SPECS = {"roberta": custom_spec("roberta", 400, 16, 2, 2, 32), "gru": custom_spec("gru", 400, 16, 2)}


@pytest.fixture(scope="module", params=list(SPECS))
def student(request, small_vocab, tmp_path_factory):
    """A tiny randomly initialised student saved as a codekd model directory (weights, tokenizer, spec)."""
    tok = AutoTokenizer.from_pretrained(small_vocab)
    torch.manual_seed(0)
    model = build_student(SPECS[request.param], 20, vocab_size=len(tok), max_positions=66)
    path = tmp_path_factory.mktemp(request.param) / "student"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    InputSpec("exception", 64).save(path)
    return path


def _mixed_batch(predictor: Predictor, data) -> dict[str, torch.Tensor]:
    examples = load_split("exception", data, "test")[:6] + [Example("def f(): pass", 0), Example("x = 1", 0)]
    (batch,) = predictor.batches(examples, len(examples))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max() == batch["input_ids"].shape[1]  # padded, mixed lengths
    return batch


def test_onnx_logits_equal_pytorch(student, small_exception, tmp_path):
    meta = export_model(student, tmp_path / "onnx", data=small_exception)
    assert meta["max_abs_diff"] <= 1e-4 and meta["inputs"] == ["input_ids", "attention_mask"]
    files = {p.name for p in (tmp_path / "onnx").iterdir()}
    assert {"model.onnx", "codekd.json", "onnx.json", "tokenizer.json"} <= files
    assert InputSpec.load(tmp_path / "onnx") == InputSpec.load(student)
    assert json.loads((tmp_path / "onnx" / "onnx.json").read_text())["labels"][0] == "ValueError"
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())  # the labels, without PyTorch pointers
    assert [config["id2label"][str(i)] for i in range(20)] == list(get_task("exception").labels)
    assert not {"auto_map", "custom_pipelines"} & set(config)
    assert "README.md" in files and "## ONNX export" in (tmp_path / "onnx" / "README.md").read_text()
    torch_p, onnx_p = Predictor.from_pretrained(student), Predictor.from_pretrained(tmp_path / "onnx")
    batch = _mixed_batch(torch_p, small_exception)  # a different batch size and width than the traced one
    np.testing.assert_allclose(onnx_p.forward(batch), torch_p.forward(batch), atol=1e-4, rtol=0)
    test = load_split("exception", small_exception, "test")
    assert [r["label"] for r in onnx_p.predict(test)] == [r["label"] for r in torch_p.predict(test)]


def test_int8_export_reports_metrics(student, small_exception, tmp_path):
    meta = export_model(student, tmp_path / "int8", quantize="int8", data=small_exception, task="exception")
    assert meta["quantized"] == "int8" and meta["max_abs_diff"] <= 1e-4
    for name in ("fp32", "int8"):
        assert meta["metrics"][name]["n"] == 32 and 0 <= meta["metrics"][name]["accuracy"] <= 1
    assert json.loads((tmp_path / "int8" / "onnx.json").read_text())["metrics"] == meta["metrics"]
    assert not [p for p in (tmp_path / "int8").iterdir() if p.name.startswith("fp32")]
    out = Predictor.from_pretrained(tmp_path / "int8")(["def f():\n    raise __HOLE__"])
    assert len(out[0]["probs"]) == 3


def test_failed_check_writes_nothing(student, tmp_path, monkeypatch):
    real = export_mod.onnx_forward
    monkeypatch.setattr(export_mod, "onnx_forward", lambda session: lambda batch: real(session)(batch) + 1e-3)
    with pytest.raises(ExportCheckError, match="differ from PyTorch's by 0.001.*nothing written"):
        export_model(student, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_refuses_wrong_task_bad_quantize_and_existing_out(student, tmp_path):
    with pytest.raises(ValueError, match="trained for task 'exception'"):
        export_model(student, tmp_path / "a", task="defect")
    with pytest.raises(ValueError, match="--quantize 'int4'"):
        export_model(student, tmp_path / "b", quantize="int4")
    (tmp_path / "c").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(student, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_teacher_with_token_types(tmp_path):
    """A BERT-style teacher (WordPiece tokenizer with token types) exports with a token_type_ids input."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "def", "f", "(", ")", ":", "return", "x", "+", "1",
             "raise", "__", "hole", "pass", "=", "y"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32,
                                                     max_position_embeddings=64, num_labels=2))
    teacher = tmp_path / "teacher"
    model.save_pretrained(teacher)
    tok.save_pretrained(teacher)
    InputSpec("defect", 32).save(teacher)
    meta = export_model(teacher, tmp_path / "onnx")
    assert meta["inputs"] == ["input_ids", "token_type_ids", "attention_mask"] and meta["max_abs_diff"] <= 1e-4
    out = Predictor.from_pretrained(tmp_path / "onnx")(["def f(x): return x + 1", "raise"])
    ref = Predictor.from_pretrained(teacher)(["def f(x): return x + 1", "raise"])
    assert [r["label"] for r in out] == [r["label"] for r in ref]
    assert all(set(r["probs"]) == {"non-defective", "defective"} for r in out)
