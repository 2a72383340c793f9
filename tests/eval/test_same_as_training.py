"""Eval and training read data through the same owners: data.specs resolves a spec to the same
shard list for both, and data.decode decodes with the same decompression-bomb limit for the
builder, the training loader and eval."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from clip_pretrain.data.images import ImageOptions, SkipImage, process_image
from clip_pretrain.data.loader import SampleDecoder, SkipSample
from clip_pretrain.data.shards import resolve_spec
from clip_pretrain.eval.datasets import expand_shards, load_retrieval, open_bytes
from clip_pretrain.eval.features import DECODE_ERRORS
from tests.data_loader.loader_helpers import write_shards
from tests.img2dataset_layout import write_img2dataset


def test_pipe_spec_with_braces_is_the_same_shard_list(tmp_path: Path) -> None:
    keys = write_shards(tmp_path, [2, 3])
    spec = f"pipe:cat {tmp_path}/demo-train-{{000000..000001}}.tar"
    training = [shard.url for shard in resolve_spec(spec)]
    assert training == [f"pipe:cat {tmp_path}/demo-train-00000{i}.tar" for i in range(2)]
    assert expand_shards(spec).urls == training  # eval used to pass the pattern to sh unexpanded
    assert [record.key for record in load_retrieval(spec).records] == keys


def test_splits_and_manifest_checks_are_the_same(tmp_path: Path) -> None:
    write_shards(tmp_path, [2, 3])
    write_shards(tmp_path, [4], split="val")
    for split in ("train", "val"):
        training = [shard.url for shard in resolve_spec(str(tmp_path), split)]
        assert expand_shards(str(tmp_path), split).urls == training
        assert expand_shards(f"{tmp_path}::{split}").urls == training
    # A split on a single .tar names nothing: both refuse it (eval used to read the tar, ignoring it).
    tar_with_split = f"{tmp_path}/demo-val-000000.tar::train"
    for resolve in (resolve_spec, lambda spec: expand_shards(spec).urls):
        with pytest.raises(FileNotFoundError, match="matches no shard files"):
            resolve(tar_with_split)
    # A manifest entry outside its folder: both refuse it (eval used to read it).
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][2]["file"] = "../elsewhere.tar"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    for resolve in (lambda spec: resolve_spec(spec, "val"), lambda spec: expand_shards(spec).urls):
        with pytest.raises(ValueError, match=r"lists '../elsewhere.tar', which is not a file in"):
            resolve(str(tmp_path))


def test_img2dataset_folder_evaluates_as_it_trains(tmp_path: Path) -> None:
    images = write_img2dataset(tmp_path / "i2d", successes=(3, 2), failed=1)
    dataset = load_retrieval(str(tmp_path / "i2d"))
    assert expand_shards(str(tmp_path / "i2d")).urls == [s.url for s in resolve_spec(str(tmp_path / "i2d"))]
    records = list(dataset.records)
    assert [r.key for r in records] == sorted(images) and records[0].captions == ["a photo number 000000000"]
    assert records[0].load().size == (64, 48) and dataset.split is None and dataset.split_note == ""


def test_one_bomb_limit_for_builder_loader_and_eval() -> None:
    buffer = io.BytesIO()
    Image.new("1", (9500, 9500)).save(buffer, format="PNG")  # 90.25 Mpx in 11 kB: over the 89.5 Mpx limit
    bomb = buffer.getvalue()
    with pytest.raises(SkipImage) as skipped:
        process_image(bomb, ImageOptions())
    assert skipped.value.reason == "too_large"
    decoder = SampleDecoder(lambda image: image, "jpg", "txt", False, 0, None)
    with pytest.raises(SkipSample, match="decompression bomb") as skipped:  # PIL alone only warns below 2x
        decoder({"__key__": "bomb", "__round__": 0, "jpg": bomb, "txt": b"a caption"}, 0)
    assert skipped.value.reason == "corrupt_image"
    with pytest.raises(DECODE_ERRORS, match="decompression bomb"):
        open_bytes(bomb)()
