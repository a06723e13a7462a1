"""Test-wide setup: one CPU thread (small models run faster and deterministically that way) and no
Hugging Face network access; `shared_data` points at the project's shared real datasets when present."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` next to the repository root; tests that need it skip when it is missing."""
    path = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip("../shared/data is absent (a user's fresh clone has no ../shared); CI always has it")
    return path
