"""Where and in which precision codekd runs: the process's place in a launch, the teacher's device,
autocast and the checks of precision options.

Both the training loop (`codekd.train`) and the teacher cache (`codekd.cache`) need these; they live
below both so that neither imports the other.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator, PartialState

from codekd.data.text import shown

PRECISIONS = ("fp32", "bf16", "fp16")
TEACHER_DEVICES = ("auto", "cpu", "cuda")


def bf16_supported(device: torch.device | None = None) -> bool:
    """bf16 on `device` (default: the GPU if there is one, else the CPU): a GPU that has it, or a CPU whose
    oneDNN has bf16 kernels (AVX-512 BF16 / AMX).

    Without them CPU bf16 is emulated and several times slower than fp32.
    """
    if (device.type if device is not None else "cuda" if torch.cuda.is_available() else "cpu") == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(precision: str, option: str = "--precision") -> str:
    """`precision` if this machine supports it, else a clear error."""
    if precision not in PRECISIONS:
        raise ValueError(f"{option} {shown(precision)}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError(f"{option} fp16 needs a CUDA GPU (it trains with a grad scaler); use fp32 or bf16")
    if precision == "bf16" and not bf16_supported():
        raise ValueError(f"{option} bf16: this {'GPU' if torch.cuda.is_available() else 'CPU'} has no native bf16 "
                         "support (it would be emulated, slower than fp32); use fp32")
    return precision


def teacher_precision(precision: str, device: torch.device | None = None) -> str:
    """The teacher's inference precision on `device`: `auto` is bf16 where supported, else fp32."""
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return check_precision(precision, "--teacher-precision")


def autocast(precision: str, device: torch.device):
    """Autocast for inference (the frozen teacher, evaluation) at `precision`, whatever the student's."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def process_state() -> PartialState:
    """This process's place in the launch: rank, process count, device (plain `python`: one process).

    A multi-process launch on a machine without a GPU runs on the CPUs over gloo; Accelerate alone
    would start each process as a single one there.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=launched and not torch.accelerator.is_available())


def make_accelerator(precision: str) -> Accelerator:
    """An Accelerator for training in `fp32`, `bf16` or `fp16` (fp16 needs CUDA, where a grad scaler is used)."""
    check_precision(precision)
    process_state()  # first: it chooses gloo for a multi-process launch without GPUs
    return Accelerator(mixed_precision="no" if precision == "fp32" else precision)


def teacher_device(option: str, device: torch.device) -> torch.device:
    """Where the frozen teacher runs, for a process whose device is `device` (`auto`: the same one)."""
    if option not in TEACHER_DEVICES:
        raise ValueError(f"--teacher-device {shown(option)}: expected one of {', '.join(TEACHER_DEVICES)}")
    if option == "cuda" and device.type != "cuda":
        raise ValueError("--teacher-device cuda: this process has no CUDA device")
    return torch.device("cpu") if option == "cpu" else device


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A (nested) dict of tensors moved to `device`."""
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}
