"""Bad data inside training shards: every kind is either converted and fed, or counted as a skip;
training reaches its sample budget and nothing hangs."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from tests.faults.helpers import check, command, run
from tests.pretrain.runner import read_metrics

pytestmark = pytest.mark.slow


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def good_samples(demo_shards: Path, count: int) -> list[dict]:
    """`count` valid contract samples (jpg, txt, json, cls) from a demo shard."""
    samples: dict[str, dict] = {}
    with tarfile.open(demo_shards / "demo-train-000000.tar") as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    return list(samples.values())[:count]


def sample(key: str, image: bytes | None, caption: str | None) -> dict:
    out = {"__key__": key}
    if image is not None:
        out["jpg"] = image
    if caption is not None:
        out["txt"] = caption.encode()
    return out


def write_tar(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path)) as writer:
        for item in samples:
            writer.write(item)


# key -> expected skip reason (None: decoded/converted and fed to the model)
def bad_shard_samples(rgb: Image.Image) -> tuple[list[dict], dict[str, str | None]]:
    jpeg = encode(rgb, "JPEG")
    gray16 = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # mode I;16
    cases = [
        (sample("corrupt_jpeg", jpeg[:20] + bytes(range(256)) * 8, "a corrupt jpeg"), "corrupt_image"),
        (sample("truncated_jpeg", jpeg[: len(jpeg) // 2], "half a jpeg"), "corrupt_image"),
        (sample("not_an_image", b"<html>this is not an image</html>", "html bytes"), "corrupt_image"),
        (sample("missing_txt", jpeg, None), "incomplete_sample"),
        (sample("empty_caption", jpeg, "   "), "empty_caption"),
        (sample("long_caption", jpeg, "a red square " * 800), None),  # ~10k chars: tokenizer truncates
        (sample("grayscale", encode(rgb.convert("L"), "JPEG"), "gray"), None),
        (sample("cmyk", encode(rgb.convert("CMYK"), "JPEG"), "cmyk"), None),
        (sample("rgba_png", encode(rgb.convert("RGBA"), "PNG"), "rgba png under .jpg"), None),
        (sample("gray16_png", encode(gray16, "PNG"), "16-bit png"), None),
        (sample("palette_png", encode(rgb.convert("P"), "PNG"), "palette png"), None),
    ]
    return [s for s, _ in cases], {s["__key__"]: reason for s, reason in cases}


def test_bad_samples_are_skipped_or_converted_and_training_finishes(tmp_path, demo_shards):
    shards = tmp_path / "shards"
    shards.mkdir()
    good = good_samples(demo_shards, 40)
    rgb = Image.open(io.BytesIO(good[0]["jpg"])).convert("RGB")
    bad, expected = bad_shard_samples(rgb)
    write_tar(shards / "bad-000000.tar", good[:16] + bad)
    # A valid tar cut in half: the samples before the cut are kept, the rest is one skip.
    write_tar(tmp_path / "whole.tar", good[16:32])
    whole = (tmp_path / "whole.tar").read_bytes()
    (shards / "bad-000001.tar").write_bytes(whole[: len(whole) // 2])
    # Not the key.ext layout: a README, extensionless files, a nested dir; plus a few good samples.
    with tarfile.open(shards / "bad-000002.tar", "w") as tar:
        for name, data in [("README", b"hello"), ("images/photo", good[32]["jpg"]), ("notes/", b""),
                           ("LICENSE.txt", b"MIT")] + [(f"{s['__key__']}.{e}", s[e]) for s in good[33:40] for e in ("jpg", "txt")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    result = run(command(0, f"{shards}/bad-{{000000..000002}}.tar", tmp_path / "run", "data.workers=1",
                         "total_samples=96", "checkpoint.every_steps=0"), timeout=240)
    check(result)
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert metrics[-1]["samples_seen"] == 96 and all(np.isfinite(m["loss"]) for m in metrics)
    assert metrics[-1]["skipped_samples"] > 0

    skips = re.findall(r"data: skipped (\w+) in (\S+) key (.+?): ", result.stdout + result.stderr)
    skipped = {key: reason for reason, url, key in skips}
    for key, reason in expected.items():
        assert skipped.get(key) == reason, (key, reason, sorted(set(skips)))
    assert any(reason == "truncated_tar" and url.endswith("bad-000001.tar") for reason, url, _ in skips), skips
    # The layout-less tar: extensionless names are dropped by webdataset's key.ext grouping, LICENSE.txt
    # becomes a caption-only sample (skipped as incomplete), and its well-formed samples are fed.
    layout = {key: reason for reason, url, key in skips if url.endswith("bad-000002.tar")}
    assert layout == {"LICENSE": "incomplete_sample"}, layout
