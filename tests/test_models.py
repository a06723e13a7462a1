"""Student models (STUDY.md §3): preset sizes, save/load, Auto registration and the BiGRU's padding."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import codekd.models.presets as presets
from codekd.models import (
    PRESETS,
    BiGRUConfig,
    BiGRUForSequenceClassification,
    build_student,
    count_parameters,
    custom_spec,
    get_preset,
    preset_table,
    student_spec,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table_counts() -> dict[str, int]:
    """Exact 2-label parameter count per preset, parsed from `preset_table()`."""
    rows = preset_table().splitlines()[2:]
    return {row.split("|")[1].strip(): int(row.split("|")[-2].strip().replace(",", "")) for row in rows}


def test_preset_sizes_match_names(table_counts: dict[str, int]) -> None:
    assert set(table_counts) == set(PRESETS) and len(PRESETS) == 8
    for name, spec in PRESETS.items():
        nominal = float(name.split("-")[1].rstrip("m")) * 1e6
        assert abs(table_counts[name] / nominal - 1) <= 0.10, name
        assert 12 % spec.num_layers == 0, name


def test_gru_presets_reproduce_the_study(table_counts: dict[str, int]) -> None:
    assert round(table_counts["gru-1.5m"] / 1e6, 2) == 1.50
    assert round(table_counts["gru-7m"] / 1e6, 2) == 7.10
    assert round(table_counts["gru-30m"] / 1e6, 1) == 30.5


def test_docstring_table_is_current() -> None:
    assert preset_table() in presets.__doc__


def test_table_counts_match_real_models() -> None:
    spec = get_preset("gru-1.5m")
    assert count_parameters(build_student(spec, 2)) == 1_501_458
    assert count_parameters(build_student(get_preset("roberta-0.6m"), 2)) == 602_498


def test_vocab_override_and_bad_specs() -> None:
    model = build_student(get_preset("roberta-0.6m"), 3, vocab_size=900)
    assert model.config.vocab_size == 900 and model.config.num_labels == 3
    with pytest.raises(ValueError, match="roberta-124m"):
        get_preset("roberta-5m")
    with pytest.raises(ValueError, match="must divide"):
        custom_spec("roberta", 100, 30, 2, num_heads=4, intermediate_size=64)
    with pytest.raises(ValueError, match="no attention heads"):
        custom_spec("gru", 100, 32, 2, num_heads=4)
    with pytest.raises(ValueError, match="kind"):
        custom_spec("lstm", 100, 32, 2)


def test_attention_dropout_apart_from_dropout() -> None:
    spec = student_spec({"preset": "roberta-1.5m", "attention_dropout": 0}, 1900)
    assert (spec.name, spec.vocab_size, spec.hidden_size, spec.dropout, spec.attention_dropout) == \
        ("roberta-1.5m", 1900, 152, 0.1, 0.0)
    config = build_student(spec, 2).config
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.1, 0.0)
    assert spec.record()["attention_dropout"] == 0.0
    unset = build_student(custom_spec("roberta", 60, 32, 2, 4, 64, dropout=0.2), 2).config
    assert (unset.hidden_dropout_prob, unset.attention_probs_dropout_prob) == (0.2, 0.2)
    # unset, it is left out of a run's records, which then equal those of a codekd without the field
    assert set(get_preset("roberta-1.5m").record()) == {"name", "kind", "vocab_size", "hidden_size", "num_layers",
                                                        "num_heads", "intermediate_size", "dropout"}


@pytest.mark.parametrize("student, message", [
    ({"preset": "roberta-1.5m", "hidden_size": 64}, "takes only dropout and attention_dropout, not hidden_size"),
    ({"preset": "roberta-5m"}, "unknown student preset"),
    ({"preset": "gru-1.5m", "attention_dropout": 0.0}, "gru students have no attention"),
    ({"preset": "roberta-1.5m", "attention_dropout": 1.0}, r"attention_dropout must be in \[0, 1\), got 1.0"),
    ({"preset": "roberta-1.5m", "dropout": True}, r"dropout must be in \[0, 1\), got True"),
    ({"kind": "roberta", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
      "attention_dropout": "x"}, r"attention_dropout must be in \[0, 1\), got 'x'"),
])
def test_bad_student_mappings(student: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        student_spec(student, 100)
    assert str(e.value).startswith("--student ")


@pytest.mark.parametrize(
    "spec", [custom_spec("roberta", 60, 32, 2, 4, 64), custom_spec("gru", 60, 16, 3)], ids=["roberta", "gru"]
)
def test_save_load_round_trip(spec, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_student(spec, 3).eval()
    ids = torch.randint(5, 60, (2, 12))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    # Bit-identical weights; the GRU kernel may still round differently (~1e-10) on the loaded copy,
    # whose tensors are unaligned views of the memory-mapped safetensors file.
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-7)


def test_auto_registration_at_import(tmp_path: Path) -> None:
    model = build_student(custom_spec("gru", 60, 16, 2), 2)
    model.save_pretrained(tmp_path)
    code = (
        "import sys, codekd.models.bigru\n"
        "from transformers import AutoModelForSequenceClassification as A\n"
        "print(type(A.from_pretrained(sys.argv[1])).__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().endswith("BiGRUForSequenceClassification")


def test_gru_padding_does_not_leak() -> None:
    torch.manual_seed(0)
    config = BiGRUConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_labels=4)
    model = BiGRUForSequenceClassification(config).eval()
    lengths = [7, 3, 10, 5]
    seqs = [torch.randint(5, 50, (n,)) for n in lengths]
    batch = torch.full((len(seqs), max(lengths)), config.pad_token_id)
    for i, seq in enumerate(seqs):
        batch[i, : len(seq)] = seq
    out = model(batch, attention_mask=batch.ne(config.pad_token_id), output_hidden_states=True)
    for i, seq in enumerate(seqs):
        alone = model(seq[None]).logits[0]
        torch.testing.assert_close(out.logits[i], alone, rtol=0, atol=1e-5)

    assert len(out.hidden_states) == len(out.final_states) == 3
    for layer in out.hidden_states:
        assert layer.shape == (4, 10, 32)
        for i, n in enumerate(lengths):
            assert layer[i, n:].abs().sum() == 0 and layer[i, n - 1].abs().sum() > 0
    for final in out.final_states:
        assert final.shape == (4, 32)
    # Pooling = forward state at the last real token ‖ backward state at the first token.
    last = out.hidden_states[-1]
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out.final_states[-1][i], torch.cat([last[i, n - 1, :16], last[i, 0, 16:]]))


def test_gru_loss_tuple_output_and_init() -> None:
    torch.manual_seed(0)
    model = build_student(custom_spec("gru", 50, 64, 2), 2)
    ids = torch.randint(5, 50, (3, 8))
    out = model(ids, labels=torch.tensor([0, 1, 1]))
    assert out.loss.ndim == 0 and out.hidden_states is None and out.final_states is None
    loss, logits = model(ids, labels=torch.tensor([0, 1, 1]), return_dict=False)
    assert logits.shape == (3, 2)
    # RoBERTa-style init: normal(0, 0.02) weights, zero biases and pad embedding row, unit LayerNorm.
    assert abs(model.classifier[1].weight.std().item() - 0.02) < 0.002
    assert model.classifier[1].bias.abs().sum() == 0
    assert model.embeddings.word_embeddings.weight[1].abs().sum() == 0
    assert torch.equal(model.embeddings.LayerNorm.weight, torch.ones(64))
