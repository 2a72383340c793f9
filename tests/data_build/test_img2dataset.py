"""clip_pretrain.data.build on img2dataset's output folder: fitting JPEGs pass through byte for byte, and the
per-sample json of img2dataset (url, sha256, exif, status...) is kept."""
from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from clip_pretrain.data.build import build_shards, main
from tests.data_build.helpers import read_build
from tests.img2dataset_layout import write_img2dataset

FAST = {"workers": 0, "progress": False}


def test_fitting_jpegs_pass_through_and_metadata_is_kept(tmp_path: Path) -> None:
    images = write_img2dataset(tmp_path / "i2d", successes=(3, 2), failed=1)
    stats = build_shards([str(tmp_path / "i2d")], str(tmp_path / "out"), shard_size=4, **FAST)
    assert stats["kept"] == 5 and sum(stats["skipped"].values()) == 0
    samples = read_build(tmp_path / "out")
    assert sorted(samples) == sorted(images)
    for key, sample in samples.items():
        assert sample["jpg"] == images[key]  # not re-encoded: max_side 512 > 64 px, RGB, no EXIF
        meta = json.loads(sample["json"])
        assert meta["url"] == f"https://images.example.com/{key}.jpg" and meta["status"] == "success"
        assert meta["sha256"] and json.loads(meta["exif"])["Image Make"] == "Canon"
        assert meta["captions"] == [f"a photo number {key}"] and (meta["width"], meta["height"]) == (64, 48)
        assert sample["txt"].decode() == f"a photo number {key}"


def test_images_over_max_side_or_with_reencode_are_reencoded(tmp_path: Path) -> None:
    images = write_img2dataset(tmp_path / "i2d", successes=(2,), failed=0)
    build_shards([str(tmp_path / "i2d")], str(tmp_path / "small"), max_side=32, **FAST)
    for key, sample in read_build(tmp_path / "small").items():
        assert sample["jpg"] != images[key] and _size(sample["jpg"]) == (32, 24)  # resized: over max_side
    assert main(["--input", str(tmp_path / "i2d"), "--output", str(tmp_path / "re"), "--reencode",
                 "--workers", "0", "--no-progress"]) == 0
    for key, sample in read_build(tmp_path / "re").items():
        assert sample["jpg"] != images[key] and _size(sample["jpg"]) == (64, 48)


def test_parquet_metadata_is_readable(tmp_path: Path) -> None:
    from clip_pretrain.data.specs import img2dataset_metadata

    write_img2dataset(tmp_path / "i2d", successes=(3, 2), failed=1)
    table = img2dataset_metadata(tmp_path / "i2d")
    assert table.num_rows == 7  # failed downloads are in the parquet, not in the tars
    assert table.column("status").to_pylist().count("success") == 5
    assert {"url", "caption", "sha256", "exif", "error_message"} <= set(table.column_names)


def _size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size
