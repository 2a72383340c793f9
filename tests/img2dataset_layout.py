"""A realistic img2dataset webdataset output folder, as `img2dataset --output_format webdataset` writes it.

Per shard NNNNN: `NNNNN.tar` holding the successful downloads (key.jpg, key.json, key.txt, in the
sorted member order of webdataset's TarWriter, which img2dataset uses), `NNNNN_stats.json` (written
last, with "successes"), and `NNNNN.parquet` with every row, failed downloads included.
Keys are img2dataset's: shard number (5 digits) + position in the shard (4 digits).
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SIZE = (64, 48)  # img2dataset's resize_mode=keep_ratio output: small, already an RGB JPEG


def jpeg(seed: int, size: tuple[int, int] = SIZE) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)  # img2dataset's default quality
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uname, info.gname = len(payload), 0o444, "bigdata", "bigdata"
    tar.addfile(info, io.BytesIO(payload))


def write_img2dataset(folder: Path, successes: Sequence[int] = (3, 2), failed: int = 1,
                      size: tuple[int, int] = SIZE) -> dict[str, bytes]:
    """Write the shards; returns {key: jpg bytes} of every successful sample."""
    folder.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    for shard, count in enumerate(successes):
        stem, rows = f"{shard:05d}", []
        with tarfile.open(folder / f"{stem}.tar", "w") as tar:
            for position in range(count + failed):
                key, ok = f"{stem}{position:04d}", position < count
                data = jpeg(shard * 1000 + position, size) if ok else None
                meta = {"url": f"https://images.example.com/{key}.jpg", "caption": f"a photo number {key}",
                        "key": key, "status": "success" if ok else "failed_to_download",
                        "error_message": None if ok else "HTTP Error 404: Not Found",
                        "width": size[0] if ok else None, "height": size[1] if ok else None,
                        "original_width": size[0] * 4 if ok else None, "original_height": size[1] * 4 if ok else None,
                        "exif": json.dumps({"Image Make": "Canon", "Image Model": "EOS 5D"}) if ok else None,
                        "sha256": hashlib.sha256(data).hexdigest() if ok else None}
                rows.append(meta)
                if ok:
                    _add(tar, f"{key}.jpg", data)
                    _add(tar, f"{key}.json", json.dumps(meta, indent=4).encode())
                    _add(tar, f"{key}.txt", meta["caption"].encode())
                    images[key] = data
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{stem}.parquet")
        stats = {"count": count + failed, "successes": count, "failed_to_download": failed, "failed_to_resize": 0,
                 "duration": 1.25, "bytes_downloaded": 1000 * count, "start_time": 1764200000.0,
                 "end_time": 1764200001.25, "status_dict": {"success": count, "HTTP Error 404: Not Found": failed}}
        (folder / f"{stem}_stats.json").write_text(json.dumps(stats, indent=4))
    return images
