"""Helpers for the loader tests: tiny shards in the contract's format, written with TarWriter."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import webdataset as wds
from PIL import Image

from clip_pretrain.data.loader import StreamingLoader


def jpeg_bytes(rng: np.random.Generator, size: int = 48) -> bytes:
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def write_shards(root: Path, counts: Sequence[int], prefix: str = "demo", split: str = "train",
                 corrupt_keys: Sequence[str] = (), manifest: bool = True, seed: int = 0) -> list[str]:
    """Write ``len(counts)`` shards DIR/{prefix}-{split}-NNNNNN.tar; returns all keys in write order."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys, entries = [], []
    for index, count in enumerate(counts):
        name = f"{prefix}-{split}-{index:06d}.tar"
        with wds.TarWriter(str(root / name)) as writer:
            for i in range(count):
                key = f"{prefix}{split[0]}{index:03d}_{i:04d}"
                captions = [f"a photo {key} number {j}" for j in range(3)]
                image = b"not a jpeg at all" if key in corrupt_keys else jpeg_bytes(rng)
                meta = {"key": key, "captions": captions, "width": 48, "height": 48}
                writer.write({"__key__": key, "jpg": image, "txt": captions[0], "json": json.dumps(meta)})
                keys.append(key)
        entries.append({"file": name, "split": split, "count": count})
    if manifest:
        path = root / "manifest.json"
        old = json.loads(path.read_text()) if path.is_file() else {"format": 1, "prefix": prefix, "shards": []}
        old["shards"] += entries
        old["totals"] = {s: sum(e["count"] for e in old["shards"] if e["split"] == s) for s in ("train", "val")}
        path.write_text(json.dumps(old))
    return keys


def take(loader: StreamingLoader, steps: int) -> list[dict]:
    """The next ``steps`` batches of ``loader`` (a fresh iterator continues where the last stopped)."""
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == steps:
            break
    return batches
