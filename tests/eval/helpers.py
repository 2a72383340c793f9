"""Small writers shared by the eval tests (CSV subsets, shards)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image


def cifar_subset_csv(shared_data: Path, out: Path, per_class: int = 20) -> Path:
    """A CSV of path,label with the first `per_class` images of each CIFAR-10 class."""
    root = shared_data / "cifar10-test-2k"
    rows = ["path,label"]
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(class_dir.glob("*.jpg"))[:per_class]:
            rows.append(f"{image},{class_dir.name}")
    out.write_text("\n".join(rows) + "\n")
    return out


def jpeg_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 36), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(folder: Path, samples: list[dict], classnames: list[str]) -> Path:
    """Contract-shaped shards: one val tar of samples {key, colour, cls, captions} + manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "demo-val-000000.tar"
    with tarfile.open(folder / name, "w") as tar:
        for sample in samples:
            files = {"jpg": sample["jpg"] if "jpg" in sample else jpeg_bytes(sample["colour"]),
                     "cls": str(sample["cls"]).encode(),
                     "txt": sample["captions"][0].encode(),
                     "json": json.dumps({"key": sample["key"], "captions": sample["captions"]}).encode()}
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{sample['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    manifest = {"format": 1, "prefix": "demo", "shards": [{"file": name, "split": "val", "count": len(samples)}],
                "totals": {"train": 0, "val": len(samples)}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "classnames.json").write_text(json.dumps(classnames))
    return folder
