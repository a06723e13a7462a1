"""A training run's log: `log.csv` always, TensorBoard event files with `--report-to tensorboard`.

Rows carry Hugging Face Trainer's names: `step` (optimizer steps so far), `epoch` (fractional during an
epoch), `loss` (mean training loss since the previous row, every `--logging-steps` steps),
`learning_rate`, and after each epoch `train_loss` (the epoch's mean) and `eval_<metric>` for every
validation metric. TensorBoard gets the same values under HF's tags (`train/loss`, `eval/accuracy`, ...).

The rows written up to a checkpoint are kept in it: a resumed run rewrites `log.csv` from them (the rows
of the killed, unfinished epoch go) and TensorBoard purges the events after the checkpoint's step, so
the log of a resumed run is the log of an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codekd.io import atomic_write_text

LOG_FILE = "log.csv"
TENSORBOARD_DIR = "tensorboard"
REPORT_TO = ("csv", "tensorboard", "none")


def tensorboard_writer_class() -> Any:
    """`torch.utils.tensorboard.SummaryWriter`, or a clear error when the `tensorboard` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def _tag(key: str) -> str:
    return f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"


class TrainLog:
    """Appends rows to `work_dir/log.csv` (and TensorBoard), starting from the `rows` a checkpoint kept."""

    def __init__(self, work_dir: Path, metric_names: Sequence[str], report_to: str, rows: Sequence[dict[str, Any]],
                 write: bool = True) -> None:
        self.columns = ["step", "epoch", "loss", "learning_rate", "train_loss", *(f"eval_{m}" for m in metric_names)]
        self.rows, self.path, self.write_files = list(rows), work_dir / LOG_FILE, write
        self.writer = None
        if not write:
            return
        text = io.StringIO()
        table = csv.DictWriter(text, self.columns, lineterminator="\n")
        table.writeheader()
        table.writerows(self.rows)
        atomic_write_text(self.path, text.getvalue())
        if report_to == "tensorboard":
            last = self.rows[-1]["step"] if self.rows else 0
            self.writer = tensorboard_writer_class()(str(work_dir / TENSORBOARD_DIR), purge_step=last + 1)

    def log(self, row: dict[str, Any]) -> None:
        """Record one row (keys among the columns; missing ones stay empty in the CSV)."""
        self.rows.append(row)
        if not self.write_files:
            return
        with self.path.open("a", encoding="utf-8", newline="") as f:
            csv.DictWriter(f, self.columns, lineterminator="\n").writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self.writer.add_scalar(_tag(key), value, row["step"])
            self.writer.add_scalar("train/epoch", row["epoch"], row["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
