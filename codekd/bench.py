"""Efficiency of a codekd model directory (teacher or student), measured the same way for every model.

Peers time one forward with `time.time()` and no warm-up; here every figure is defined:
- **inputs** come from the task's test split, encoded by the model's own tokenizer and `codekd.json`:
  batch 1 is the example of median token length; batch 32 is the 32 examples around the median
  length, padded as in training. The token counts are recorded.
- **latency** (batch 1): `warmup` untimed forwards, then `runs` timed ones (≥ 50 by default);
  p50, p95 and mean in ms. On CUDA every timing is bracketed by `torch.cuda.synchronize()`.
- **throughput** (batch 32): examples per second from the median of timed batch-32 forwards.
- **peak memory**: on CPU, the growth of the peak resident set of a fresh process while it loads the
  model and runs one batch-32 forward (the interpreter and libraries are excluded); on CUDA, the
  peak allocated device memory over the same steps.
- **threads**: torch's intra-op thread count during the measurement, recorded.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codekd.data import load_split
from codekd.encoding import encode, pad_batch
from codekd.models import count_parameters
from codekd.models.adapters import run_frozen
from codekd.models.teacher import load_model_dir
from codekd.pipeline import size_mb

BATCH = 32


def inputs_from_data(model_dir: Path, data: str | Path, split: str = "test") -> tuple[list[int], list[list[int]]]:
    """Token ids of the batch-1 input (median length) and of the batch-32 inputs (around the median)."""
    model_dir = Path(model_dir)
    _, tokenizer, spec = load_model_dir(model_dir)
    items = encode(tokenizer, load_split(spec.task, data, split, whitespace="keep"), spec)
    if not items:
        raise ValueError(f"--data {data}: the {split} split is empty; latency needs real inputs")
    order = np.argsort([len(it["input_ids"]) for it in items], kind="stable")
    mid = len(order) // 2
    start = max(0, min(mid - BATCH // 2, len(order) - BATCH))
    return items[order[mid]]["input_ids"], [items[i]["input_ids"] for i in order[start:start + BATCH]]


def _batch(ids: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in pad_batch([{"input_ids": x} for x in ids], pad_id).items()}


def _timed(model: torch.nn.Module, batch: dict[str, torch.Tensor], warmup: int, runs: int) -> list[float]:
    """Milliseconds of `runs` forwards after `warmup` untimed ones."""
    cuda = batch["input_ids"].is_cuda
    for _ in range(warmup):
        run_frozen(model, batch, ("logits",))
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run_frozen(model, batch, ("logits",))
        if cuda:
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return times


def _max_rss_mb() -> float:
    """This process's peak resident set so far, in MB.

    On Linux it is `VmHWM`, which starts afresh with each program; `ru_maxrss` would not do, because a
    child process inherits its parent's high-water mark. Elsewhere `ru_maxrss` (bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e6 if sys.platform == "darwin" else rss * 1024 / 1e6


def _cpu_peak_child(model_dir: str, ids: list[list[int]], threads: int, queue: Any) -> None:
    torch.set_num_threads(threads)
    before = _max_rss_mb()
    model, tokenizer, _ = load_model_dir(model_dir)
    run_frozen(model, _batch(ids, tokenizer.pad_token_id, torch.device("cpu")), ("logits",))
    queue.put(_max_rss_mb() - before)


def peak_memory_mb(model_dir: Path, ids: list[list[int]], device: torch.device, threads: int) -> float:
    """Peak memory (MB, 10^6 bytes) of loading the model and one forward on `ids` (see the module doc)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        model, tokenizer, _ = load_model_dir(model_dir)
        model.to(device)
        run_frozen(model, _batch(ids, tokenizer.pad_token_id, device), ("logits",))
        peak = torch.cuda.max_memory_allocated(device) - base
        del model
        return peak / 1e6
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_cpu_peak_child, args=(str(model_dir), ids, threads, queue))
    child.start()
    peak = queue.get(timeout=600)
    child.join()
    return float(peak)


def measure_efficiency(model_dir: str | Path, data: str | Path, runs: int = 50, warmup: int = 10,
                       device: str = "cpu", threads: int | None = None, memory: bool = True) -> dict[str, Any]:
    """Parameters, size, batch-1 latency percentiles, batch-32 throughput and peak memory of a model directory."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"--runs {runs} / --warmup {warmup}: expected runs ≥ 1 and warmup ≥ 0")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    model_dir, dev = Path(model_dir), torch.device(device)
    one, many = inputs_from_data(model_dir, data)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model, tokenizer, _ = load_model_dir(model_dir)
        model.to(dev)
        latency = _timed(model, _batch([one], tokenizer.pad_token_id, dev), warmup, runs)
        batch_times = _timed(model, _batch(many, tokenizer.pad_token_id, dev), max(1, warmup // 5), max(10, runs // 5))
        used = torch.get_num_threads()
        peak = peak_memory_mb(model_dir, many, dev, used) if memory else None
    finally:
        torch.set_num_threads(before)
    return {"parameters": count_parameters(model), "size_mb": size_mb(model_dir), "device": device,
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "threads": used,
            "input_tokens": len(one), "batch_tokens": max(len(x) for x in many), "warmup": warmup, "runs": runs,
            "latency_ms": {"p50": float(np.percentile(latency, 50)), "p95": float(np.percentile(latency, 95)),
                           "mean": float(np.mean(latency))},
            "throughput": len(many) / (float(np.median(batch_times)) / 1000), "throughput_batch": len(many),
            "peak_memory_mb": peak}
