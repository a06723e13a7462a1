"""Batching: length bucketing is a permutation, reproducible by seed, pads less, and leaves metrics unchanged."""

import random

import numpy as np

import codekd.train as train
from codekd.data import load_split
from codekd.encoding import EncodedData, InputSpec, batch_order, encode_view
from codekd.models import build_student, custom_spec
from codekd.train import predict


def _pad_fraction(batches, lengths):
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


def test_bucketed_batches_are_a_reproducible_permutation_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(1000)]
    for shuffle in (False, True):
        batches = batch_order(lengths, 32, seed=3, epoch=1, shuffle=shuffle, bucket=True)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert all(len(b) == 32 for b in batches[:-1]) or shuffle
        assert batches == batch_order(lengths, 32, seed=3, epoch=1, shuffle=shuffle, bucket=True)
    plain = batch_order(lengths, 32, seed=3, epoch=1, shuffle=True)
    bucketed = batch_order(lengths, 32, seed=3, epoch=1, shuffle=True, bucket=True)
    assert _pad_fraction(bucketed, lengths) < 0.1 < 0.3 < _pad_fraction(plain, lengths)
    assert batch_order(lengths, 32, seed=3, epoch=2, shuffle=True, bucket=True) != bucketed


def test_bucketing_does_not_change_evaluation(small_exception, small_vocab, monkeypatch):
    examples = load_split("exception", small_exception, "test")
    data = EncodedData([e.label for e in examples],
                       {"student": encode_view(small_vocab, examples, InputSpec("exception", 64))})
    model = build_student(custom_spec("roberta", 400, 16, 2, 2, 32), num_labels=20, max_positions=66)
    bucketed = predict(model, data, batch_size=8)
    real = train.loader
    monkeypatch.setattr(train, "loader", lambda d, b, **k: real(d, b, **{**k, "bucket": False}))
    plain = predict(model, data, batch_size=8)
    assert np.allclose(bucketed, plain, atol=1e-5)
    assert (bucketed.argmax(1) == plain.argmax(1)).all()
