"""Time one training step of a student: transformers' sdpa with attention dropout (the unfused path), codekd's
attention (`codekd.models.attention`) with the same dropout, and sdpa without attention dropout (fused).

Each round times every variant once, interleaved, so the VM's drift touches all alike; the best of the rounds
after the first (a warm-up) is printed. Inputs: random token ids, batch × tokens, the first quarter of the batch
padded over its last 8 % of positions.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace

import torch

from codekd.models import build_student, get_preset
from codekd.models.adapters import prepare

VARIANTS = {"sdpa, attention dropout 0.1": (0.1, False), "codekd, attention dropout 0.1": (0.1, True),
            "sdpa, attention dropout 0": (0.0, False)}


def step_seconds(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                 optimizer: torch.optim.Optimizer) -> float:
    started = time.perf_counter()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="roberta-1.5m")
    ap.add_argument("--lengths", default="128,256,512")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    spec = get_preset(args.student)
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.student}, batch {args.batch_size}, "
          f"AdamW; best of {args.rounds - 1} interleaved rounds after a warm-up\n")
    print("| tokens | " + " | ".join(f"{v} s" for v in VARIANTS) + " | sdpa ÷ codekd |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for length in map(int, args.lengths.split(",")):
        torch.manual_seed(0)
        ids = torch.randint(5, spec.vocab_size, (args.batch_size, length))
        mask = torch.ones_like(ids)
        mask[: args.batch_size // 4, length - length // 12:] = 0
        labels = torch.randint(0, 20, (args.batch_size,))
        runs = {}
        for name, (dropout, ours) in VARIANTS.items():
            model = build_student(replace(spec, attention_dropout=dropout), 20)
            if ours:
                prepare(model, ())
            runs[name] = (model.train(), torch.optim.AdamW(model.parameters(), lr=1e-4))
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, (model, optimizer) in runs.items():
                times[name].append(step_seconds(model, ids, mask, labels, optimizer))
        best = {name: min(t[1:]) for name, t in times.items()}
        cells = " | ".join(f"{best[name]:.2f}" for name in VARIANTS)
        ratio = best["sdpa, attention dropout 0.1"] / best["codekd, attention dropout 0.1"]
        print(f"| {length} | {cells} | {ratio:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
