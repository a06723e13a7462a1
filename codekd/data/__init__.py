"""Datasets of the three tasks: task definitions and metrics, readers for the public formats, and a
small licence-clean exception-classification slice shipped inside the package for the demo."""

from pathlib import Path

from codekd.data.readers import SPLITS, DataError, Example, load_split, load_splits, normalize_code
from codekd.data.tasks import TASKS, Task, get_task

__all__ = [
    "SPLITS",
    "TASKS",
    "DataError",
    "Example",
    "Task",
    "demo_data_dir",
    "get_task",
    "load_split",
    "load_splits",
    "normalize_code",
]


def demo_data_dir() -> Path:
    """The shipped demo slice (exception task, CuBERT layout), so the demo runs without any download."""
    return Path(__file__).parent / "demo" / "exception"
