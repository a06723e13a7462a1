"""Efficiency measurement: warm-up is excluded, percentiles are of the timed runs, the CLI reports it all."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import codekd.bench as bench
from codekd.cli import app


class FakeClock:
    """A clock that only moves when the fake model runs: each call takes the next scripted duration."""

    def __init__(self, durations_ms):
        self.now, self.durations, self.calls = 0.0, list(durations_ms), 0

    def perf_counter(self):
        return self.now

    def forward(self):
        self.now += self.durations[self.calls] / 1000
        self.calls += 1


def test_latency_excludes_warmup_and_reports_percentiles(monkeypatch):
    warmup, timed = [500.0, 400.0, 300.0], [float(x) for x in range(1, 51)]
    clock = FakeClock(warmup + timed)
    monkeypatch.setattr(bench.time, "perf_counter", clock.perf_counter)
    times = bench.timed(clock.forward, warmup=3, runs=50)
    assert clock.calls == 53 and times == pytest.approx(timed)
    assert max(times) < 300  # no warm-up run is among the timed ones
    assert np.percentile(times, 95) == pytest.approx(47.55)


def test_bench_model_cli(tiny_teacher, small_exception, tmp_path):
    out = tmp_path / "eff.json"
    result = CliRunner().invoke(app, ["bench-model", str(tiny_teacher), "--data", str(small_exception), "--task",
                                      "exception", "--runs", "50", "--warmup", "5", "--threads", "1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    e = json.loads(out.read_text())
    assert e["runs"] == 50 and e["threads"] == 1 and e["input_tokens"] > 0 and e["throughput_batch"] == 32
    assert 0 < e["latency_ms"]["p50"] <= e["latency_ms"]["p95"]
    assert e["throughput"] > 0 and e["size_mb"] > 0 and e["parameters"] > 0
    assert e["peak_memory_mb"] > e["size_mb"] / 2  # the weights at least, in a fresh process


def test_bench_model_refuses_another_task(tiny_teacher, small_exception):
    result = CliRunner().invoke(app, ["bench-model", str(tiny_teacher), "--data", str(small_exception),
                                      "--task", "defect"])
    assert result.exit_code != 0
