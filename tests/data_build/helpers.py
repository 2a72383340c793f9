"""Helpers for the shard-builder tests: generated image sources with every failure mode, shard readers."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# What the messy folder must produce (folder source, dedup on, default min_side=16).
MESSY_EXPECTED_SKIPS = {"corrupt_image": 4, "too_small": 1, "too_large": 1, "empty_caption": 1, "duplicate": 1}
MESSY_EXPECTED_KEPT = ("good", "alpha", "grey", "cmyk", "palette", "sixteen", "long_caption", "orient")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds no pixel data (a cheap decompression bomb)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def gradient_rgb(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def messy_images() -> dict[str, tuple[str, bytes]]:
    """name -> (file suffix, bytes): good images in odd modes plus every kind of broken file."""
    good = encode(gradient_rgb(), "JPEG", quality=90)
    rgba = Image.new("RGBA", (32, 24), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 16, 24))  # left half fully transparent -> must become white
    palette = Image.new("P", (24, 24), 0)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 6))
    palette.paste(1, (12, 0, 24, 24))
    palette.info["transparency"] = 0  # index 0 transparent -> white after conversion
    sixteen = Image.fromarray(np.full((20, 20), 32896, dtype=np.uint16))  # mid-grey in 16 bits -> 128
    oriented = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW on display": stored 40x20, shown 20x40
    return {
        "good": (".jpg", good),
        "good_copy": (".jpg", good),  # sorts after "good": the copy is the duplicate
        "alpha": (".png", encode(rgba, "PNG")),
        "grey": (".png", encode(Image.new("L", (30, 30), 77), "PNG")),
        "cmyk": (".jpg", encode(Image.new("CMYK", (30, 30), (0, 255, 255, 0)), "JPEG")),
        "palette": (".png", encode(palette, "PNG")),
        "sixteen": (".png", encode(sixteen, "PNG")),
        "orient": (".jpg", encode(oriented, "JPEG", exif=exif.tobytes())),
        "long_caption": (".jpg", encode(gradient_rgb(seed=1), "JPEG")),
        "empty_caption": (".jpg", encode(gradient_rgb(seed=2), "JPEG")),
        "corrupt": (".jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
        "truncated": (".jpg", encode(gradient_rgb(64, 64, seed=3), "JPEG")[:600]),
        "zero_bytes": (".jpg", b""),
        "not_an_image": (".jpg", b"this is plain text, not a JPEG\n" * 10),
        "bomb": (".png", png_header_only(30000, 30000)),
        "tiny": (".png", encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")),
    }


def read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} for every member of a tar shard."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as archive:
        for member in archive:
            key, _, extension = member.name.partition(".")
            samples.setdefault(key, {})[extension] = archive.extractfile(member).read()
    return samples


def read_build(output: Path, split: str | None = None) -> dict[str, dict[str, bytes]]:
    """All samples of a build (optionally one split), via manifest.json."""
    manifest = json.loads((output / "manifest.json").read_text())
    samples: dict[str, dict[str, bytes]] = {}
    for shard in manifest["shards"]:
        if split is None or shard["split"] == split:
            samples.update(read_shard(output / shard["file"]))
    return samples
