"""Fixtures shared by every test area."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))

# Keep every test on the CPU and quiet, whatever the machine has.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (real photos); skips the test where it is absent."""
    if not (SHARED_DATA / "coco-mini" / "captions.jsonl").is_file():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set SHARED_DATA to ../shared/data)")
    return SHARED_DATA
