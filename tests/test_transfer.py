"""KD on unlabelled code (`--transfer`): the label term skips unlabelled examples (no NaN on a batch
without labels), the reader, and a run whose training set holds both."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from codekd.data import DataError, get_task
from codekd.data.unlabelled import UNLABELLED, load_unlabelled
from codekd.losses import hard_cross_entropy, kd_loss, soft_cross_entropy
from codekd.models import custom_spec
from codekd.pipeline import distill
from codekd.train import TrainConfig

TINY_ROBERTA = custom_spec("roberta", 400, 16, 2, 2, 32)


def test_label_term_over_labelled_examples_only():
    torch.manual_seed(0)
    zs, zt = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    labels = torch.tensor([1, UNLABELLED, 3, UNLABELLED, 0, 4])
    keep = labels >= 0
    expected = float(F.cross_entropy(zs[keep], labels[keep]))
    assert hard_cross_entropy(zs, labels).detach().item() == pytest.approx(expected)
    mixed = kd_loss(zs, zt, labels, 4.0, alpha=0.5, t_squared=True)
    soft = float(soft_cross_entropy(zs, zt, 4.0)) * 16  # the soft term over all six
    assert float(mixed) == pytest.approx(0.5 * soft + 0.5 * float(F.cross_entropy(zs[keep], labels[keep])))
    none = torch.full((6,), UNLABELLED)
    loss = kd_loss(zs, zt, none, 4.0, alpha=0.5, t_squared=True)  # a batch without a labelled example
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(0.5 * soft)
    loss.backward()
    assert torch.isfinite(zs.grad).all()
    ce = hard_cross_entropy(zs, none)
    assert float(ce) == 0.0 and ce.requires_grad


def test_reader_jsonl_raw_files_and_errors(tmp_path):
    task = get_task("exception")
    (tmp_path / "u.jsonl").write_text('{"function": "def f(): pass"}\n\n{"func": "def g(): pass", "label": 3}\n')
    got = load_unlabelled(task, tmp_path / "u.jsonl")
    assert [e.code for e in got] == ["def f(): pass", "def g(): pass"] and {e.label for e in got} == {UNLABELLED}
    raw = tmp_path / "raw"
    (raw / "pkg").mkdir(parents=True)
    (raw / "pkg" / "a.py").write_text("def a():\n    return 1\n")
    (raw / "b.py").write_text("def b(): pass\n")
    assert [e.code for e in load_unlabelled(task, raw)] == ["def b(): pass\n", "def a():\n    return 1\n"]
    (tmp_path / "bad.jsonl").write_text('{"function": "x"}\n{"code": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'func'"):
        load_unlabelled(task, tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        load_unlabelled(task, tmp_path / "nope")


def test_distill_with_a_transfer_set(small_exception, small_vocab, tiny_teacher, tmp_path):
    unlabelled = tmp_path / "transfer.jsonl"
    recs = [json.loads(x) for x in (small_exception / "test.jsonl").read_text().splitlines()]
    unlabelled.write_text("".join(json.dumps({"function": r["function"]}) + "\n" for r in recs))
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=4, seed=3)
    m = distill("exception", small_exception, TINY_ROBERTA, small_vocab, "kd", tmp_path / "run", cfg,
                teacher=tiny_teacher, max_length=64, hparams={"temperature": 4.0, "alpha": 0.5, "t_squared": True},
                transfer=unlabelled)
    assert math.isfinite(m["history"][0]["train_loss"])
    assert "transfer" in (tmp_path / "run" / "run.yaml").read_text()
    for method in ("ft", "dkd"):
        with pytest.raises(ValueError, match="--transfer"):
            distill("exception", small_exception, TINY_ROBERTA, small_vocab, method, tmp_path / method, cfg,
                    teacher=tiny_teacher, max_length=64, transfer=unlabelled)
        assert not (tmp_path / method).exists()
