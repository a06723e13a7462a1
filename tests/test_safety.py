"""Issue 15, execution and outputs: planted checkpoints and model directories cannot run code, study names
cannot escape the study directory, outputs are never overwritten without --force, disk errors and
concurrent runs give one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

GRU_CLI = "{kind: gru, hidden_size: 16, num_layers: 2}"


def codekd_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `codekd ARGS` in this process as the console script does; its exit status and stderr."""
    from codekd.cli import main

    monkeypatch.setattr(sys, "argv", ["codekd", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code or 0, capsys.readouterr().err


class _Payload:
    """Unpickling this creates `marker`: what a planted file could do with `torch.load(weights_only=False)`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_checkpoint_is_refused_without_running_it(small_exception, small_vocab, tmp_path, monkeypatch,
                                                          capsys):
    marker = tmp_path / "pwned"
    partial = tmp_path / "run.partial"
    partial.mkdir()
    torch.save({"epoch": 1, "student": _Payload(marker)}, partial / "checkpoint.pt")
    rc, err = codekd_main(monkeypatch, capsys, "distill", "--task", "exception", "--data", small_exception,
                          "--student", GRU_CLI, "--vocab", small_vocab, "--method", "ft", "--out", tmp_path / "run",
                          "--epochs", "1", "--max-length", "64", "--resume")
    assert not marker.exists()
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "checkpoint.pt: refused" in err and "posix.system" in err
    assert not (tmp_path / "run").exists()


def test_checkpoint_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    import numpy as np

    from codekd.train import _rng_state, _save_checkpoint, _set_rng_state, load_checkpoint

    random.random(), np.random.normal(), torch.rand(1)  # noqa: B018 (a cached numpy gaussian is state too)
    _save_checkpoint(tmp_path / "c.pt", {"rng": [_rng_state()]})
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    _set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0])
    again = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])
