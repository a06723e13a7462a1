"""Any HF classifier as a teacher (Qwen2, Llama, GPT-2, a LoRA adapter), any HF encoder as a student, and
one-line loading errors. Every model is a tiny random config built here, never downloaded."""

import json
import sys

import pytest
import torch

from codekd.data import get_task
from codekd.encoding import pad_batch
from codekd.models.adapters import run
from codekd.models.teacher import load_classifier
from codekd.pipeline import distill, foreign_inputs
from codekd.train import TrainConfig

TASK = get_task("exception")
EXCEPTION_LABELS = list(TASK.labels)
SHUFFLED = list(reversed(EXCEPTION_LABELS))  # the teachers' own class order: matched to the task's by name
FAMILIES = ("qwen2", "llama", "gpt2")


def _tokenizer(texts, family):
    """A byte-level BPE tokenizer trained on `texts`, saved the way each family's tokenizer behaves."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {"qwen2": ["<|endoftext|>"], "gpt2": ["<|endoftext|>"], "llama": ["<unk>", "<s>", "</s>"]}[family]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if family == "llama":  # Llama prepends <s>, pads on the left and has no pad token of its own
        tk.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])])
        return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                       padding_side="left", model_max_length=128)
    tk.post_processor = processors.ByteLevel(trim_offsets=True)
    pad = {"pad_token": "<|endoftext|>"} if family == "qwen2" else {}  # GPT-2 has none
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", model_max_length=128, **pad)


def _config(family, vocab, tokenizer, labels):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    named = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
             "label2id": {n: i for i, n in enumerate(labels)}}
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=128, **named)
    cls = Qwen2Config if family == "qwen2" else LlamaConfig
    return cls(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, **named)


@pytest.fixture(scope="module")
def tiny_data(small_exception, tmp_path_factory):
    """24 / 8 / 16 functions: enough for one epoch of every pairing."""
    out = tmp_path_factory.mktemp("tiny-exc")
    for name, n in (("train.jsonl", 24), ("dev.jsonl", 8), ("test.jsonl", 16)):
        lines = (small_exception / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (out / name).write_text("".join(lines), encoding="utf-8")
    return out


def _save_classifier(family, data, path, labels=SHUFFLED, seed=0):
    """A "fine-tuned" decoder-only classifier directory (random weights, its labels named)."""
    from transformers import AutoModelForSequenceClassification

    from codekd.data import load_split

    texts = [ex.code for ex in load_split("exception", data, "train")]
    tok = _tokenizer(texts, family)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(_config(family, len(tok), tok, labels))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def decoder_teachers(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {family: _save_classifier(family, tiny_data, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def lora_teacher(tiny_data, decoder_teachers, tmp_path_factory):
    """A LoRA adapter (and its trained head) on a Qwen2 base, saved as peft saves it, with its labels."""
    peft = pytest.importorskip("peft", reason="LoRA teachers need the optional peft extra (pip install 'codekd[peft]')")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = tmp_path_factory.mktemp("base") / "qwen2-base"
    _save_classifier("qwen2", tiny_data, base, labels=[f"LABEL_{i}" for i in range(20)], seed=1)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=20, id2label=dict(enumerate(SHUFFLED)),
                                                               label2id={n: i for i, n in enumerate(SHUFFLED)})
    lora = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name or "score" in name:
                p.normal_(0, 0.5)  # as if trained: lora_B starts at zero, which would make the adapter a no-op
    path = tmp_path_factory.mktemp("lora") / "adapter"
    lora.save_pretrained(path)
    model.config.save_pretrained(path)  # the labels travel with the adapter, as Trainer saves them
    AutoTokenizer.from_pretrained(base).save_pretrained(path)
    merged = lora.merge_and_unload().eval()
    return path, merged


def _batch(tok, texts, side):
    items = [{"input_ids": tok(t, truncation=True, max_length=24)["input_ids"]} for t in texts]
    batch = pad_batch(items, tok.pad_token_id)
    if side == "left":  # the same rows, pads moved to the front
        n = batch["attention_mask"].sum(1)
        width = batch["input_ids"].size(1)
        for key, fill in (("input_ids", tok.pad_token_id), ("attention_mask", 0)):
            batch[key] = torch.stack([torch.cat([torch.full((width - k,), fill), row[:k]])
                                      for row, k in zip(batch[key], n, strict=True)])
    return batch


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_teacher_labels_and_last_token_features_on_both_padding_sides(family, decoder_teachers):
    from transformers import AutoModelForSequenceClassification

    model, tok, spec = load_classifier(decoder_teachers[family], "exception", "--teacher", foreign_inputs("exception"))
    assert spec.max_length == 128 and tok.pad_token is not None
    raw = AutoModelForSequenceClassification.from_pretrained(decoder_teachers[family]).eval()
    texts = ["def f(x):\n    return x",
             "def g(a, b):\n    try:\n        return a[b]\n    except __HOLE__:\n        pass"]
    order = [SHUFFLED.index(name) for name in EXCEPTION_LABELS]
    for i, text in enumerate(texts):  # each alone: no padding at all
        ids = torch.tensor([tok(text, truncation=True, max_length=24)["input_ids"]])
        with torch.no_grad():
            alone = raw(input_ids=ids, output_hidden_states=True)
        for side in ("right", "left"):
            out = run(model, _batch(tok, texts, side), ("logits", "first_token"))
            torch.testing.assert_close(out.logits[i], alone.logits[0, order], atol=1e-5, rtol=1e-4)
            for mine, ref in zip(out.first_token, alone.hidden_states, strict=True):
                torch.testing.assert_close(mine[i], ref[0, -1], atol=1e-5, rtol=1e-4)  # the last real token


def test_lora_adapter_teacher_is_its_merged_model(lora_teacher):
    path, merged = lora_teacher
    model, tok, _ = load_classifier(path, "exception", "--teacher", foreign_inputs("exception"))
    ids = torch.tensor([tok("def f(x):\n    return x")["input_ids"]])
    order = [SHUFFLED.index(name) for name in EXCEPTION_LABELS]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits[0], merged(input_ids=ids).logits[0, order])


TEACHER_STUDENT = [(f, s) for f in (*FAMILIES, "lora") for s in ("roberta-0.6m", "gru-1.5m")]


@pytest.mark.parametrize("family,student", TEACHER_STUDENT, ids=[f"{f}-{s}" for f, s in TEACHER_STUDENT])
def test_hf_classifier_teachers_distil_with_offsets_and_the_cache(family, student, decoder_teachers, request,
                                                                  tiny_data, small_vocab, tmp_path):
    from codekd.pipeline import CacheOptions

    # only the LoRA cases need peft (and skip without it)
    teacher = request.getfixturevalue("lora_teacher")[0] if family == "lora" else decoder_teachers[family]
    hparams = {"parts": [{"method": "pkd", "weight": 1.0}, {"method": "tinybert", "weight": 1.0}]}
    m = distill("exception", tiny_data, student, small_vocab, "combo", tmp_path / "run",
                TrainConfig(epochs=1, lr=1e-3, batch_size=8), teacher=teacher, max_length=32, hparams=hparams,
                align="offsets", cache=CacheOptions(root=tmp_path / "cache"))
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the teacher ran once, into the cache
    assert m["model"]["n"] == 16 and m["teacher"]["n"] == 16 and m["retention"] is not None
    assert torch.isfinite(torch.tensor(m["history"][0]["train_loss"]))


def _cli(monkeypatch, capsys, *args):
    from codekd.cli import main

    monkeypatch.setattr(sys, "argv", ["codekd", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    return exit_.value.code, err


def test_label_mismatch_is_one_line(tiny_data, tmp_path, small_vocab, monkeypatch, capsys):
    wrong = _save_classifier("qwen2", tiny_data, tmp_path / "wrong", labels=[*SHUFFLED[:-1], "MemoryError"])
    code, err = _cli(monkeypatch, capsys, "distill", "--task", "exception", "--data", tiny_data, "--teacher", wrong,
                     "--student", "roberta-0.6m", "--vocab", small_vocab, "--method", "kd", "--out", tmp_path / "o")
    assert code == 2 and len(err.splitlines()) == 1
    assert "do not match task 'exception'" in err and "MemoryError" in err and "ValueError" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_loading_errors_are_one_line(tiny_data, tmp_path, tiny_teacher, tiny_encoder, small_vocab, monkeypatch,
                                     capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    no_head = tmp_path / "no-head"  # a model type without any sequence-classification class
    (no_head).mkdir()
    (no_head / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "a-file").write_text("x")
    missing, hub_id = tmp_path / "missing", "microsoft/unixcoder-base"
    offline = "cannot be downloaded while HF_HUB_OFFLINE"
    cases = {
        ("teacher", "--model", missing): "no such directory",
        ("teacher", "--model", hub_id): offline,
        ("teacher", "--model", "demo-teacher"): "alias works in study files only",
        ("teacher", "--model", no_head): "not a sequence classifier",
        ("teacher", "--model", tmp_path / "broken"): "cannot load it",
        ("teacher", "--model", tmp_path / "a-file"): "not a directory",
        ("evaluate", "--model", missing): "no such directory",
        ("evaluate", "--model", no_head): "not a sequence classifier",
        ("evaluate", "--model", tiny_encoder): "not a sequence classifier (config.json architectures RobertaModel",
        ("predict", "--model", missing): "no such directory",
        ("distill", "--teacher", missing): "no such directory",
        ("distill", "--teacher", hub_id): offline,
        ("distill", "--teacher", tiny_encoder): "no classification head was saved",
        ("distill", "--teacher", no_head): "not a sequence classifier",
        ("distill", "--student", missing): "no such directory",
        ("distill", "--student", hub_id): offline,
        ("cache", "--teacher", missing): "no such directory",
        ("cache", "--teacher", hub_id): offline,
    }
    for (command, option, source), expected in cases.items():
        student = [] if option == "--student" else ["--student", "roberta-0.6m", "--vocab", small_vocab]
        teacher = [] if option == "--teacher" else ["--teacher", tiny_teacher]
        rest = {"teacher": ["--task", "exception", "--data", tiny_data, "--out", tmp_path / "out"],
                "evaluate": ["--task", "exception", "--data", tiny_data], "predict": [],
                "distill": ["--task", "exception", "--data", tiny_data, "--method", "kd", "--out", tmp_path / "out",
                            *student, *teacher],
                "cache": ["--task", "exception", "--data", tiny_data, "--cache-dir", tmp_path / "cache"]}[command]
        code, err = _cli(monkeypatch, capsys, command, option, source, *rest)
        assert code == 2, (command, source, err)
        assert len(err.splitlines()) == 1 and expected in err and str(source) in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert not (tmp_path / "cache").exists()


def test_adapter_without_its_base_model_is_one_line(lora_teacher, tiny_data, tmp_path, monkeypatch, capsys):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_teacher[0], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    code, err = _cli(monkeypatch, capsys, "cache", "--teacher", adapter, "--task", "exception", "--data", tiny_data,
                     "--cache-dir", tmp_path / "cache")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--teacher {adapter}: its base model {tmp_path / 'gone'}: no such directory" in err


def test_a_foreign_classifier_needs_the_task_to_be_evaluated(decoder_teachers, tiny_data, monkeypatch, capsys):
    code, err = _cli(monkeypatch, capsys, "evaluate", "--model", decoder_teachers["gpt2"], "--data", tiny_data)
    assert code == 2 and len(err.splitlines()) == 1 and "not a codekd model directory" in err, err


def test_a_pretrained_encoder_directory_is_a_student(small_exception, tiny_encoder, tiny_teacher, small_vocab,
                                                     tmp_path):
    m = distill("exception", small_exception, str(tiny_encoder), None, "kd", tmp_path / "s",
                TrainConfig(epochs=1, lr=1e-3, batch_size=16), teacher=tiny_teacher, max_length=48)
    assert m["parameters"] > 0 and m["model"]["n"] == 32
    saved = json.loads((tmp_path / "s" / "config.json").read_text())
    assert saved["id2label"]["0"] == EXCEPTION_LABELS[0] and saved["model_type"] == "roberta"
    with pytest.raises(ValueError, match="brings its own tokenizer"):
        distill("exception", small_exception, str(tiny_encoder), small_vocab, "ft", tmp_path / "x", TrainConfig())
    with pytest.raises(ValueError, match="--vocab is needed"):
        distill("exception", small_exception, "roberta-0.6m", None, "ft", tmp_path / "x", TrainConfig())


def test_a_half_precision_checkpoint_loads_and_trains_in_fp32(tiny_encoder, tiny_data, tmp_path):
    """transformers keeps a checkpoint's saved dtype; codekd loads fp32 master weights (fp16 AdamW steps on
    fp16 weights would lose most updates), for a base to fine-tune and for a fine-tuned teacher alike."""
    from transformers import AutoModel, AutoTokenizer

    from codekd.models.teacher import load_model_dir, load_pretrained_encoder
    from codekd.pipeline import train_teacher

    half = tmp_path / "half"
    AutoModel.from_pretrained(tiny_encoder).half().save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(half)
    assert next(AutoModel.from_pretrained(half).parameters()).dtype == torch.float16  # what transformers does
    model, _ = load_pretrained_encoder(half, get_task("exception"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    train_teacher("exception", tiny_data, str(half), tmp_path / "t", TrainConfig(epochs=1, batch_size=8), max_length=32)
    assert {p.dtype for p in load_model_dir(tmp_path / "t")[0].parameters()} == {torch.float32}
