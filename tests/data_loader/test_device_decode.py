"""data.decode=gpu (issue #12, 2): workers ship JPEG bytes + crops, the trainer decodes them. On the
CPU the device path runs with torchvision's CPU decoder, so its crop geometry and pixels can be
checked against the CPU path here: same keys, same skips, same crops, pixels within a few levels."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from clip_pretrain.data.device import split_normalize
from clip_pretrain.data.device_decode import CropPlan, DeviceDecoder
from clip_pretrain.data.loader import DataConfig
from tests.data_loader.loader_helpers import take

SIZE = 32


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth structure (upsampled noise), so a crop shifted by a few pixels shows as a large error."""
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _write(root: Path, kinds: list[str]) -> list[str]:
    """One shard: sample i is a JPEG of a varying size, or the kind named (png, cmyk, grey, truncated)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    keys = []
    with wds.TarWriter(str(root / "x-train-000000.tar")) as writer:
        for i, kind in enumerate(kinds):
            image = _photo(rng, 60 + 7 * (i % 5), 44 + 5 * (i % 3))
            data = {
                "jpg": lambda: _encode(image, "JPEG", quality=95),
                "png": lambda: _encode(image, "PNG"),
                "cmyk": lambda: _encode(image.convert("CMYK"), "JPEG", quality=95),
                "grey": lambda: _encode(image.convert("L"), "JPEG", quality=95),
                "truncated": lambda: _encode(image, "JPEG", quality=95)[:300],
            }[kind]()
            key = f"s{i:04d}"
            writer.write({"__key__": key, "jpg": data, "txt": f"caption {i}", "json": json.dumps({"i": i})})
            keys.append(key)
    return keys


@pytest.fixture
def transform():
    from open_clip.transform import PreprocessCfg, image_transform_v2

    train = image_transform_v2(PreprocessCfg(size=(SIZE, SIZE)), is_train=True)
    return split_normalize(train)[0]  # what the trainer hands the loader: ends in uint8


def _batches(make_loader, spec, transform, decode: str, steps: int) -> tuple[list[dict], dict]:
    from clip_pretrain.data.loader import build_loader

    cfg = DataConfig(train=spec, workers=0, shuffle_buffer=4, fast_decode=False, decode=decode)
    loader = build_loader(cfg, batch_size=4, preprocess=transform, tokenizer=lambda c: torch.zeros(len(c), 3), seed=5)
    batches = take(loader, steps)
    if decode == "gpu":
        decoder = DeviceDecoder(CropPlan.from_transform(transform), torch.device("cpu"))
        batches = [decoder(batch) for batch in batches]
    return batches, loader.skipped


def test_device_decode_matches_the_cpu_path(tmp_path, make_loader, transform):
    kinds = ["jpg"] * 9 + ["png", "cmyk", "grey", "truncated"] + ["jpg"] * 4
    _write(tmp_path, kinds)
    spec = str(tmp_path / "x-train-000000.tar")
    cpu, cpu_skips = _batches(make_loader, spec, transform, "cpu", 4)
    gpu, gpu_skips = _batches(make_loader, spec, transform, "gpu", 4)
    assert cpu_skips == gpu_skips == {"corrupt_image": 1}  # the truncated JPEG, refused by both
    assert [b["keys"] for b in gpu] == [b["keys"] for b in cpu]
    for mine, theirs in zip(gpu, cpu):
        assert mine["images"].dtype == torch.uint8 and mine["images"].shape == theirs["images"].shape
        difference = (mine["images"].float() - theirs["images"].float()).abs().mean(dim=(1, 2, 3))
        assert difference.max() < 1.0, difference  # decoder + resampling kernel only; a shifted crop is ~10


def test_a_different_crop_would_show(tmp_path, make_loader, transform):
    """The tolerance above is meaningful: the same images with other seeds' crops differ far more."""
    _write(tmp_path, ["jpg"] * 8)
    spec = str(tmp_path / "x-train-000000.tar")
    cpu, _ = _batches(make_loader, spec, transform, "cpu", 2)
    gpu, _ = _batches(make_loader, spec, transform, "gpu", 2)
    shifted = [{**batch, "jpegs_crop": batch["jpegs_crop"] + torch.tensor([2, 2, -4, -4])} for batch in
               _batches_raw(spec, transform, 2)]
    decoder = DeviceDecoder(CropPlan.from_transform(transform), torch.device("cpu"))
    moved = [decoder(batch)["images"] for batch in shifted]
    same = torch.stack([(g["images"].float() - c["images"].float()).abs().mean() for g, c in zip(gpu, cpu)])
    other = torch.stack([(m.float() - c["images"].float()).abs().mean() for m, c in zip(moved, cpu)])
    assert same.max() < 1.0 < other.min(), (same, other)


def _batches_raw(spec: str, transform, steps: int) -> list[dict]:
    from clip_pretrain.data.loader import build_loader

    cfg = DataConfig(train=spec, workers=0, shuffle_buffer=4, fast_decode=False, decode="gpu")
    loader = build_loader(cfg, batch_size=4, preprocess=transform, tokenizer=lambda c: torch.zeros(len(c), 3), seed=5)
    return take(loader, steps)


def test_fallback_images_travel_as_pixels(tmp_path, transform):
    _write(tmp_path, ["jpg", "png", "cmyk", "grey"])
    batch = _batches_raw(str(tmp_path / "x-train-000000.tar"), transform, 1)[0]
    by_key = dict(zip(batch["keys"], range(4)))
    assert sorted(batch["jpegs_index"].tolist()) == sorted([by_key["s0000"], by_key["s0003"]])  # RGB and grey JPEG
    assert sorted(batch["images_index"].tolist()) == sorted([by_key["s0001"], by_key["s0002"]])  # PNG, CMYK
    assert batch["images"].shape == (2, 3, SIZE, SIZE) and batch["jpegs_crop"].shape == (2, 4)


def test_unsupported_transform_and_value_are_one_line(tmp_path, transform):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    with pytest.raises(ValueError, match="decode: 'bogus' is unknown"):
        DataConfig(train="x.tar", decode="bogus")
    evaluation = image_transform_v2(PreprocessCfg(size=(SIZE, SIZE)), is_train=False)
    with pytest.raises(ValueError, match="data.decode: 'gpu' supports"):
        CropPlan.from_transform(evaluation)


def test_broken_jpeg_that_passes_the_worker_checks_is_decoded_on_the_cpu_or_counted(transform):
    plan = CropPlan.from_transform(transform)
    decoder = DeviceDecoder(plan, torch.device("cpu"))
    good = _encode(_photo(np.random.default_rng(1), 50, 40), "JPEG")
    broken = good[:200] + b"\0" * 50 + good[-2:]  # header and end marker intact, scan data gone
    batch = {"images": torch.empty(0, 3, SIZE, SIZE, dtype=torch.uint8), "images_index": torch.empty(0, dtype=torch.long),
             "jpegs": [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in (good, broken)],
             "jpegs_index": torch.tensor([0, 1]), "jpegs_crop": torch.tensor([[0, 0, 40, 50], [0, 0, 40, 50]])}
    images = decoder(batch)["images"]
    assert images.shape == (2, 3, SIZE, SIZE) and images[0].float().std() > 0
    assert decoder.failed in (0, 1)  # libjpeg may still decode the damaged file (grey); never a crash
