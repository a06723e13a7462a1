"""The teacher-output cache: keys that change exactly when the outputs would, atomic builds, exact outputs."""

import os
import shutil
import socket
import subprocess
from dataclasses import replace

import pytest
import torch

from codekd.cache import OWNER, TeacherCache, build_cache, cache_key
from codekd.data import load_split
from codekd.encoding import EncodedData, encode, encode_view, load_tokenizer
from codekd.models.adapters import prepare, run_frozen
from codekd.models.teacher import load_model_dir
from codekd.pipeline import make_vocab
from codekd.train import loader, logits_of

NEEDS = ("logits", "hidden_states", "first_token", "attentions", "values")
# fp16 storage rounds each value to nearest: |cached - live| <= 2^-11·|live| (4.9e-4, relative) for normal
# numbers, plus at most 3e-8 for subnormal ones. Measured on the tiny teacher: hidden states up to 3.9 in
# magnitude differ by at most 9.8e-4, attention weights (up to 0.017) by at most 7.6e-6; fp32 is exact.
FP16_TOL = {"atol": 3e-8, "rtol": 2**-11}


@pytest.fixture(scope="module")
def teacher_data(tiny_teacher, small_exception):
    """The tiny teacher (eager attention) and its encodings of the small training split as view "teacher0"."""
    model, tok, spec = load_model_dir(tiny_teacher)
    examples = load_split("exception", small_exception, "train", spec.whitespace)
    data = EncodedData([ex.label for ex in examples], {"teacher0": encode_view(tok, examples, spec)})
    return prepare(model, ["attentions"]), data


def test_cache_key_changes_with_what_the_outputs_depend_on(tiny_teacher, small_exception, tmp_path):
    model, tok, spec = load_model_dir(tiny_teacher)
    examples = load_split("exception", small_exception, "train", spec.whitespace)

    def key(items=None, teacher=tiny_teacher, needs=("logits", "hidden_states")):
        return cache_key(teacher, "exception", "train", items or encode(tok, examples, spec), needs, "fp16")

    base = key()
    # the same inputs again: re-read, re-encoded, needs in another order, teacher copied elsewhere
    again = load_split("exception", small_exception, "train", spec.whitespace)
    assert key(encode(tok, again, spec)) == base
    assert key(needs=("hidden_states", "first_token", "logits")) == base
    shutil.copytree(tiny_teacher, tmp_path / "copy")
    assert key(teacher=tmp_path / "copy") == base

    edited = [replace(examples[0], code=examples[1].code), *examples[1:]]
    assert key(encode(tok, edited, spec)) != base
    shorter = encode(tok, examples, replace(spec, max_length=spec.max_length // 2))
    assert shorter != encode(tok, examples, spec)
    assert key(shorter) != base
    other_tok = load_tokenizer(make_vocab("exception", small_exception, 300, tmp_path / "vocab", max_length=64))
    assert key(encode(other_tok, examples, spec)) != base
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    model.save_pretrained(tmp_path / "copy")
    shutil.copy(tiny_teacher / "config.json", tmp_path / "copy")  # only the weights differ
    assert key(teacher=tmp_path / "copy") != base
    assert key(needs=("logits",)) != base


def test_interrupted_build_leaves_nothing_and_a_later_one_succeeds(teacher_data, tmp_path, monkeypatch):
    model, data = teacher_data
    path = tmp_path / "cache"
    forward, calls = model.forward, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_cache(model, data, "teacher0", ["logits", "hidden_states"], path, batch_size=16)
    assert len(calls) == 3
    assert TeacherCache.open(path) is None
    assert not path.exists()
    assert not list(tmp_path.glob(".cache.*"))

    # what builds killed outright leave: the next build removes a dead owner's, keeps a running one's
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, pid in (("dead", dead.pid), ("live", os.getpid())):
        (tmp_path / f".cache.{name}.tmp").mkdir()
        (tmp_path / f".cache.{name}.tmp" / OWNER).write_text(f"{socket.gethostname()} {pid}\n")
    monkeypatch.undo()
    cache = build_cache(model, data, "teacher0", ["hidden_states", "logits"], path, batch_size=16)
    assert cache is not None and cache.covers(["logits", "hidden_states", "first_token"])
    assert not cache.covers(["attentions"])
    assert sorted(p.name for p in tmp_path.glob(".cache.*")) == [".cache.live.tmp"]
    assert TeacherCache.open(path).manifest["examples"] == len(data)

    monkeypatch.setattr(model, "forward", interrupted)  # a complete cache is returned without running the teacher
    calls.clear()
    assert build_cache(model, data, "teacher0", ["logits", "hidden_states"], path).path == path
    assert not calls


def test_over_budget_writes_nothing_logits_fit(teacher_data, tmp_path):
    model, data = teacher_data
    assert build_cache(model, data, "teacher0", ["logits", "attentions"], tmp_path / "c", budget_bytes=10**5) is None
    assert not list(tmp_path.iterdir())
    cache = build_cache(model, data, "teacher0", ["logits"], tmp_path / "c", budget_bytes=10**5)  # fits
    torch.testing.assert_close(cache.outputs(torch.arange(len(data))).logits, logits_of(model, data, "teacher0"))


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_cached_outputs_equal_the_live_teacher(teacher_data, tmp_path, dtype):
    """On shuffled batches of another size than the build's, at every real token (pads are zeros)."""
    model, data = teacher_data
    cache = build_cache(model, data, "teacher0", NEEDS, tmp_path / "c", dtype=dtype, batch_size=16)
    tol = {"atol": 1e-5, "rtol": 0.0} if dtype == "fp32" else FP16_TOL
    for batch in loader(data, 12, seed=3, shuffle=True, bucket=False, view="teacher0"):
        live = run_frozen(model, batch["teacher0"], NEEDS)
        got = cache.outputs(batch["index"], "cpu")
        mask = batch["teacher0"]["attention_mask"]
        assert torch.equal(got.mask, mask)
        torch.testing.assert_close(got.logits, live.logits, atol=1e-5, rtol=0.0)
        assert len(got.first_token) == len(got.hidden_states) == len(live.hidden_states)
        for g, t in zip(got.first_token, live.first_token, strict=True):
            torch.testing.assert_close(g, t, **tol)
        for g, t in zip(got.hidden_states, live.hidden_states, strict=True):
            assert g.dtype == torch.float32 and g.shape == t.shape
            torch.testing.assert_close(g, t * mask[..., None], **tol)
        pairs = mask[:, None, :, None] * mask[:, None, None, :]
        assert len(got.attentions) == len(live.attentions)
        for g, t in zip(got.attentions, live.attentions, strict=True):
            assert g.shape == t.shape
            torch.testing.assert_close(g, t * pairs, **tol)
        assert got.values.shape == live.values.shape and got.values.dtype == torch.float32
        torch.testing.assert_close(got.values, live.values * mask[:, None, :, None], **tol)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_ckd_relations_cached_once_give_the_live_teachers_loss(teacher_data, tiny_teacher, tmp_path, dtype):
    """CKD's cache holds the teacher's relations (and logits), not its states, and its loss from them equals the
    loss from a live teacher's states on shuffled batches of another size than the build's."""
    from codekd.methods import get_method
    from codekd.models.adapters import ModelShape, Outputs, shape_of

    model, data = teacher_data
    method = get_method("ckd")(ModelShape("transformer", 2, 8, 8), shape_of(model), window=3)
    targets = method.teacher_targets()
    cache = build_cache(model, data, "teacher0", method.teacher_needs, tmp_path / "c", dtype=dtype, batch_size=16,
                        targets=targets)
    assert cache.needs == ("logits",) and cache.manifest["targets"]["name"] == "ckd_relations"
    assert sorted(p.name for p in cache.path.glob("*.npy")) == ["lengths.npy", "logits.npy", "targets.npy"]
    generator = torch.Generator().manual_seed(0)
    for batch in loader(data, 12, seed=3, shuffle=True, bucket=False, view="teacher0"):
        live = run_frozen(model, batch["teacher0"], method.teacher_needs)
        got = cache.outputs(batch["index"], "cpu")
        mask = batch["teacher0"]["attention_mask"]
        n = mask.shape[1] - 1  # a student one token shorter: positions are cut to the common ones
        states = tuple(torch.randn(mask.shape[0], n, 8, generator=generator) for _ in range(3))
        student = Outputs(torch.randn(live.logits.shape, generator=generator), mask[:, :n], states)
        labels = torch.zeros(mask.shape[0], dtype=torch.long)
        want = method(student, live, labels)["relations"]
        torch.testing.assert_close(method(student, got, labels)["relations"], want,
                                   rtol=1e-5 if dtype == "fp32" else 2e-3, atol=0)
    other = get_method("ckd")(ModelShape("transformer", 2, 8, 8), shape_of(model), window=4).teacher_targets()
    keys = {cache_key(tiny_teacher, "exception", "train", data.views["teacher0"][0], method.teacher_needs, dtype,
                      "fp32", t) for t in (None, targets, other)}
    assert len(keys) == 3  # the states, these relations, another window's


def test_a_cache_keeps_only_the_layers_a_method_reads(teacher_data, tmp_path):
    """MiniLM reads one layer's attention maps, TinyBERT its matched layers' states: the cache stores those only
    (negative indices count from the end), gives None for the others, and the kept ones equal the live teacher's."""
    model, data = teacher_data
    layers = {"attentions": [-1], "hidden_states": [0, 2]}
    full = build_cache(model, data, "teacher0", NEEDS, tmp_path / "full", dtype="fp32", batch_size=16)
    cache = build_cache(model, data, "teacher0", NEEDS, tmp_path / "c", dtype="fp32", batch_size=16, layers=layers)
    n_layers = len(full.outputs(torch.arange(2)).attentions)
    assert cache.manifest["layers"] == {"attentions": {"kept": [n_layers - 1], "of": n_layers},
                                        "hidden_states": {"kept": [0, 2], "of": n_layers + 1}}
    assert cache.manifest["bytes"] < full.manifest["bytes"] / 2
    for batch in loader(data, 12, seed=3, shuffle=True, bucket=False, view="teacher0"):
        want, got = full.outputs(batch["index"]), cache.outputs(batch["index"])
        assert len(got.attentions) == n_layers and len(got.hidden_states) == n_layers + 1
        assert [i for i, a in enumerate(got.attentions) if a is not None] == [n_layers - 1]
        assert [i for i, h in enumerate(got.hidden_states) if h is not None] == [0, 2]
        assert torch.equal(got.attentions[-1], want.attentions[-1])
        assert all(torch.equal(got.hidden_states[i], want.hidden_states[i]) for i in (0, 2))
        assert all(torch.equal(g, w) for g, w in zip(got.first_token, want.first_token, strict=True))
        assert torch.equal(got.values, want.values)
