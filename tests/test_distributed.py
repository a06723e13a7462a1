"""Scaling out: the same commands under `accelerate launch` with 2 CPU processes (gloo) give the results of one
process: training (global batch, gradient accumulation, method projections synchronised), exact evaluation,
and the sharded teacher cache, which a killed process leaves incomplete.

Tolerance of the 1- vs 2-process comparisons (students without dropout, so that no random draw differs):
DDP averages the two processes' gradients of their half-batch means, where one process takes the mean of
the whole batch at once. Same numbers, other float32 summation order: ~1e-7 relative per step, compounded
by Adam over the steps. Measured: train losses agree within 3.5e-8 relative and weights within 2.6e-7;
the bounds below are about 30x and 40x that. With TinyBERT's projection left out of the DDP wrapper (its
gradients not averaged), the first epoch's loss is 2e-5 off (measured), far outside them.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codekd.cache import MANIFEST, TeacherCache
from codekd.device import teacher_device
from codekd.models import custom_spec
from codekd.pipeline import CacheOptions, cache_teacher, distill, read_metrics
from codekd.train import micro_batches
from codekd.train_config import TrainConfig, micro_batch_size

STUDENT = {"kind": "roberta", "hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32,
           "dropout": 0.0}
LOSS_RTOL, WEIGHT_ATOL = 1e-6, 1e-5


def _launch(*args: str, cache: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch` of `python -m codekd ARGS` (or of a script) on `processes` CPU processes over gloo."""
    with socket.socket() as s:  # a free rendezvous port: other test runs may launch at the same time
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = list(args) if args[0].endswith(".py") else ["-m", "codekd", *args]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), *target]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CODEKD_CACHE": str(cache),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def odd_exception(tmp_path_factory) -> Path:
    """Splits that do not divide evenly: 90 training functions (the last batch of 16 holds 10); in batches of 64,
    the 75 test functions are 64 on one process and 11 on the other, the 30 validation ones leave one idle."""
    from codekd.data import demo_data_dir

    dst = tmp_path_factory.mktemp("odd")
    for name, n in {"train.jsonl": 90, "dev.jsonl": 30, "test.jsonl": 75}.items():
        lines = (demo_data_dir() / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (dst / name).write_text("".join(lines), encoding="utf-8")
    return dst


def _compare_runs(one: dict, two: Path, one_dir: Path) -> None:
    """A 2-process run directory against the 1-process run's metrics and weights."""
    got = read_metrics(two)
    assert got["model"]["n"] == got["teacher"]["n"] == 75  # every test example once
    assert [h["valid"]["n"] for h in got["history"]] == [30, 30]
    assert got["model"] == one["model"] and got["teacher"] == one["teacher"]
    assert [h["valid"] for h in got["history"]] == [h["valid"] for h in one["history"]]
    for a, b in zip(got["history"], one["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=LOSS_RTOL)
    w1, w2 = load_file(one_dir / "model.safetensors"), load_file(two / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= WEIGHT_ATOL


@pytest.mark.parametrize("method,grad_accum,options", [
    ("kd", 1, ["--temperature", "4", "--alpha", "0.5", "--t-squared", "true"]),
    ("tinybert", 2, []),  # the projection is the method's: its gradients must be averaged too
], ids=["kd", "tinybert-accum2"])
def test_two_processes_train_like_one(odd_exception, small_vocab, tiny_teacher, tmp_path, method, grad_accum, options):
    """Global batch 16: 1 process × 16 against 2 processes × 8 (kd) or 2 processes × 2 accumulation steps × 4."""
    hparams = {k.strip("-").replace("-", "_"): v for k, v in zip(options[::2], options[1::2], strict=True)}
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=16, seed=7)
    one = distill("exception", odd_exception, custom_spec(vocab_size=400, **STUDENT), small_vocab, method,
                  tmp_path / "one", cfg, teacher=tiny_teacher, max_length=64, hparams=hparams,
                  cache=CacheOptions(root=tmp_path / "cache1"))
    res = _launch("distill", "--task", "exception", "--data", str(odd_exception), "--vocab", str(small_vocab),
                  "--teacher", str(tiny_teacher), "--student", json.dumps(STUDENT), "--method", method, "--epochs", "2",
                  "--lr", "1e-2", "--batch-size", "16", "--grad-accum", str(grad_accum), "--seed", "7",
                  "--max-length", "64", "--out", str(tmp_path / "two"), *options, cache=tmp_path / "cache2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"global batch 16 = 2 process(es) × {grad_accum} accumulation step(s) × {8 // grad_accum}" in res.stderr
    assert res.stdout.count("retention") == 1  # results print once, from the main process
    _compare_runs(one, tmp_path / "two", tmp_path / "one")
    assert not (tmp_path / "two.partial").exists()


def test_two_process_cache_equals_one_process_cache(odd_exception, tiny_teacher, tmp_path):
    """Same key, same bytes in every array (same batches, each run once by one of the processes)."""
    needs = ("logits", "hidden_states")  # what tinybert needs: logits, first-token vectors and token states
    one = cache_teacher(tiny_teacher, "exception", odd_exception, needs=needs,
                        options=CacheOptions(root=tmp_path / "one"), precision="fp32")
    res = _launch("cache", "--teacher", str(tiny_teacher), "--task", "exception", "--data", str(odd_exception),
                  "--method", "tinybert", "--precision", "fp32", "--cache-dir", str(tmp_path / "two"),
                  cache=tmp_path / "unused")
    assert res.returncode == 0, res.stderr[-3000:]
    two = TeacherCache.open(tmp_path / "two" / one.path.name)
    assert two is not None and [p.name for p in (tmp_path / "two").iterdir()] == [one.path.name]
    files = sorted(p.name for p in one.path.glob("*.npy"))
    assert files == ["first_token.npy", "hidden_states.npy", "lengths.npy", "logits.npy"]
    for name in files:
        assert (one.path / name).read_bytes() == (two.path / name).read_bytes(), name
    for m in (one.manifest, two.manifest):
        m.pop("build_seconds")
    assert one.manifest == two.manifest


def test_a_process_killed_mid_build_leaves_no_complete_cache(odd_exception, tiny_teacher, tmp_path):
    script = tmp_path / "die.py"
    script.write_text("import os, sys\nimport codekd.cache\nfrom codekd.cli import main\n"
                      "if os.environ['RANK'] == '1':  # dies when it would hand its first rows to the main process\n"
                      "    codekd.cache.gather_object = lambda rows: os._exit(3)\n"
                      "sys.argv[0] = 'codekd'\nmain()\n")
    root = tmp_path / "cache"
    root.mkdir()
    res = _launch(str(script), "cache", "--teacher", str(tiny_teacher), "--task", "exception", "--data",
                  str(odd_exception), "--precision", "fp32", "--cache-dir", str(root), cache=root)
    assert res.returncode != 0
    assert not [p for p in root.iterdir() if (p / MANIFEST).exists()]  # at most a temporary, without manifest
    assert not [p for p in root.iterdir() if not p.name.startswith(".")]
    built = cache_teacher(tiny_teacher, "exception", odd_exception, options=CacheOptions(root=root), precision="fp32")
    assert built is not None and built.manifest["examples"] == 90
    assert [p.name for p in root.iterdir()] == [built.path.name]  # the dead build's temporary is cleaned up


@pytest.mark.parametrize("n,batch,processes,accum", [(90, 16, 2, 1), (90, 16, 2, 2), (5, 8, 4, 2), (33, 12, 3, 1)])
def test_micro_batches_cover_each_example_once_with_weights_of_the_global_mean(n, batch, processes, accum):
    batches = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    plans = [micro_batches(batches, processes, rank, accum) for rank in range(processes)]
    assert all(len(plan) == len(batches) * accum for plan in plans)  # every process takes part in every step
    for step, global_batch in enumerate(batches):
        parts = [plan[step * accum + k] for plan in plans for k in range(accum)]
        real = sorted(i for ids, w in parts if w > 0 for i in ids)
        assert real == global_batch
        assert all(len(ids) == 1 for ids, w in parts if w == 0)  # stand-ins: one example at weight 0
        # the gradient, weight × micro-batch mean averaged over processes, gives each example 1/|global batch|
        for ids, w in parts:
            if w > 0:
                assert w / len(ids) / processes == pytest.approx(1 / len(global_batch))


def test_batch_and_teacher_device_options_are_checked():
    assert micro_batch_size(TrainConfig(batch_size=32, grad_accum=2), 8) == 2
    with pytest.raises(ValueError, match="global batch: it must be a multiple of processes × --grad-accum = 3 × 2"):
        micro_batch_size(TrainConfig(batch_size=32, grad_accum=2), 3)
    with pytest.raises(ValueError, match="--grad-accum 0"):
        micro_batch_size(TrainConfig(grad_accum=0), 1)
    cpu = torch.device("cpu")
    assert teacher_device("auto", cpu) == cpu and teacher_device("cpu", torch.device("cuda", 1)) == cpu
    assert teacher_device("auto", torch.device("cuda", 1)) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="no CUDA device"):
        teacher_device("cuda", cpu)
    with pytest.raises(ValueError, match="expected one of auto, cpu, cuda"):
        teacher_device("tpu", cpu)
