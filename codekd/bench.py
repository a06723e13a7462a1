"""Efficiency of a codekd model directory (teacher or student), measured the same way for every model.

Peers time one forward with `time.time()` and no warm-up; here every figure is defined:
- **inputs** come from the task's test split, encoded by the model's own tokenizer and `codekd.json`:
  batch 1 is the example of median token length; batch 32 is the 32 examples around the median
  length, padded as in training. The token counts are recorded.
- **latency** (batch 1): `warmup` untimed forwards, then `runs` timed ones (≥ 50 by default);
  p50, p95 and mean in ms. On CUDA every timing is bracketed by `torch.cuda.synchronize()`.
- **throughput** (batch 32): examples per second from the median of timed batch-32 forwards.
- **peak memory**: on CPU, the growth of the process's peak resident set while it loads the model
  and runs the batch-32 forwards (the interpreter and libraries are excluded); on CUDA, the peak
  allocated device memory over the same steps.
- **threads**: torch's intra-op thread count during the measurement (the caller's by default), recorded.

All of it runs in a fresh (spawned) process, so the figures do not depend on what the calling process
did before: a study measures each model right after training it, with a heap and caches full of that.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codekd.data import load_split
from codekd.encoding import InputSpec, encode, load_tokenizer, pad_batch
from codekd.models import count_parameters
from codekd.models.adapters import run_frozen
from codekd.models.teacher import load_model_dir
from codekd.pipeline import size_mb

BATCH = 32


def inputs_from_data(model_dir: Path, data: str | Path, split: str = "test", trust_remote_code: bool = False
                     ) -> tuple[list[int], list[list[int]]]:
    """Token ids of the batch-1 input (median length) and of the batch-32 inputs (around the median)."""
    model_dir = Path(model_dir)
    tokenizer, spec = load_tokenizer(model_dir, trust_remote_code), InputSpec.load(model_dir)  # no weights needed here
    items = encode(tokenizer, load_split(spec.get_task(), data, split, whitespace="keep"), spec)
    if not items:
        raise ValueError(f"--data {data}: the {split} split is empty; latency needs real inputs")
    order = np.argsort([len(it["input_ids"]) for it in items], kind="stable")
    mid = len(order) // 2
    start = max(0, min(mid - BATCH // 2, len(order) - BATCH))
    return items[order[mid]]["input_ids"], [items[i]["input_ids"] for i in order[start:start + BATCH]]


def _batch(ids: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in pad_batch([{"input_ids": x} for x in ids], pad_id).items()}


def timed(forward: Callable[[], Any], warmup: int, runs: int, cuda: bool = False) -> list[float]:
    """Milliseconds of `runs` calls of `forward` after `warmup` untimed ones; with `cuda`, each timing is
    bracketed by `torch.cuda.synchronize()` (CUDA kernels run asynchronously)."""
    for _ in range(warmup):
        forward()
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        forward()
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


def _measure(model_dir: str, one: list[int], many: list[list[int]], device: str, threads: int, warmup: int,
             runs: int, trust_remote_code: bool = False) -> dict[str, Any]:
    """Load the model, time it, and measure its peak memory, in whichever process calls this."""
    dev = torch.device(device)
    torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev) / 1e6 if dev.type == "cuda" else _max_rss_mb()
    model, tokenizer, _ = load_model_dir(model_dir, trust_remote_code)
    model.to(dev)
    cuda = dev.type == "cuda"
    many_batch, one_batch = (_batch(ids, tokenizer.pad_token_id, dev) for ids in (many, [one]))
    batch_times = timed(lambda: run_frozen(model, many_batch, ("logits",)), max(1, warmup // 5), max(10, runs // 5),
                        cuda)
    peak = (torch.cuda.max_memory_allocated(dev) / 1e6 if dev.type == "cuda" else _max_rss_mb()) - base
    latency = timed(lambda: run_frozen(model, one_batch, ("logits",)), warmup, runs, cuda)
    return {"parameters": count_parameters(model), "threads": torch.get_num_threads(), "latency": latency,
            "batch_times": batch_times, "peak": peak}


def measure_efficiency(model_dir: str | Path, data: str | Path, runs: int = 50, warmup: int = 10,
                       device: str = "cpu", threads: int | None = None, isolate: bool = True,
                       trust_remote_code: bool = False) -> dict[str, Any]:
    """Parameters, size, batch-1 latency percentiles, batch-32 throughput and peak memory of a model directory.

    `isolate` (default) measures in a fresh process; without it the figures are taken in this process and
    peak memory is not reported (it would include whatever this process allocated before).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"--runs {runs} / --warmup {warmup}: expected runs ≥ 1 and warmup ≥ 0")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    model_dir = Path(model_dir)
    one, many = inputs_from_data(model_dir, data, trust_remote_code=trust_remote_code)
    args = (str(model_dir), one, many, device, threads or torch.get_num_threads(), warmup, runs, trust_remote_code)
    if isolate:  # a child's error, or its death, is raised here
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            m = pool.submit(_measure, *args).result()
    else:
        before = torch.get_num_threads()
        try:
            m = {**_measure(*args), "peak": None}
        finally:
            torch.set_num_threads(before)
    latency = m["latency"]
    return {"parameters": m["parameters"], "size_mb": size_mb(model_dir), "device": device,
            "device_name": torch.cuda.get_device_name(0) if device == "cuda" else None, "threads": m["threads"],
            "input_tokens": len(one), "batch_tokens": max(len(x) for x in many), "warmup": warmup, "runs": runs,
            "isolated": isolate,
            "latency_ms": {"p50": float(np.percentile(latency, 50)), "p95": float(np.percentile(latency, 95)),
                           "mean": float(np.mean(latency))},
            "throughput": len(many) / (float(np.median(m["batch_times"])) / 1000), "throughput_batch": len(many),
            "peak_memory_mb": m["peak"]}
