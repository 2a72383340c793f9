"""Fixtures for the shard-builder tests (helpers live in helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from tests.data_build.helpers import messy_images
from PIL import Image


@pytest.fixture()
def messy_folder(tmp_path: Path) -> Path:
    """A folder source: images + same-stem .txt captions, covering every skip reason."""
    folder = tmp_path / "messy"
    folder.mkdir()
    for name, (suffix, payload) in messy_images().items():
        (folder / f"{name}{suffix}").write_bytes(payload)
        caption = f"a test picture called {name}\nsecond caption for {name}\n"
        if name == "empty_caption":
            caption = "   \n\t\n"
        elif name == "long_caption":
            caption = "word " * 2000  # 10k characters
        (folder / f"{name}.txt").write_text(caption)
    return folder


@pytest.fixture()
def small_images(tmp_path: Path) -> Path:
    """A folder of 6 valid 24x24 PNGs named a.png .. f.png (no captions)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for index, name in enumerate("abcdef"):
        Image.new("RGB", (24, 24), (index * 40, 100, 200 - index * 30)).save(folder / f"{name}.png")
    return folder
