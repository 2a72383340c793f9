"""End-to-end tests of data.build: sources, skip accounting, splits, re-sharding and resuming."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import clip_pretrain.data.build as build_module
from clip_pretrain.data.build import build_shards, count_tar_samples, main, split_of
from tests.data_build.helpers import MESSY_EXPECTED_KEPT, MESSY_EXPECTED_SKIPS, read_build, read_shard

FAST = {"workers": 0, "progress": False}


def decoded(sample: dict[str, bytes]) -> Image.Image:
    image = Image.open(io.BytesIO(sample["jpg"]))
    image.load()
    return image


def check_manifest_matches_tars(output: Path) -> dict:
    manifest = json.loads((output / "manifest.json").read_text())
    for shard in manifest["shards"]:
        assert count_tar_samples(str(output / shard["file"])) == shard["count"]
        assert len(read_shard(output / shard["file"])) == shard["count"]
    for split, total in manifest["totals"].items():
        assert total == sum(s["count"] for s in manifest["shards"] if s["split"] == split)
    assert not list(output.glob("*.tmp")) and not list((output / ".build").glob("*.tmp"))
    return manifest


def test_messy_folder_counts_every_skip(messy_folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    stats = build_shards([str(messy_folder)], str(output), dedup=True, shard_size=3, max_side=32, **FAST)
    for reason, count in MESSY_EXPECTED_SKIPS.items():
        assert stats["skipped"][reason] == count, reason
    assert sum(stats["skipped"].values()) == sum(MESSY_EXPECTED_SKIPS.values())
    assert stats["truncated_caption"] == 1
    assert json.loads((output / "stats.json").read_text()) == stats

    samples = read_build(output)
    assert sorted(samples) == sorted(MESSY_EXPECTED_KEPT)
    assert stats["kept"] == len(MESSY_EXPECTED_KEPT)
    for key, sample in samples.items():
        image = decoded(sample)
        assert image.format == "JPEG" and image.mode == "RGB" and max(image.size) <= 32
        meta = json.loads(sample["json"])
        assert meta["key"] == key and (meta["width"], meta["height"]) == image.size
        assert sample["txt"].decode() == meta["captions"][0]
        assert "cls" not in sample
    assert json.loads(samples["good"]["json"])["captions"] == ["a test picture called good", "second caption for good"]
    assert len(json.loads(samples["long_caption"]["json"])["captions"][0]) <= 1000
    assert min(decoded(samples["alpha"]).getpixel((2, 12))) > 230  # transparent half -> white, not blue/black
    assert abs(decoded(samples["sixteen"]).getpixel((5, 5))[0] - 128) <= 3
    assert decoded(samples["cmyk"]).getpixel((5, 5))[0] > 200
    check_manifest_matches_tars(output)


@pytest.mark.shared_data
def test_coco_mini_with_val_split(shared_data: Path, tmp_path: Path) -> None:
    source = str(shared_data / "coco-mini" / "captions.jsonl")
    options = {"val_fraction": 0.2, "shard_size": 50, "max_side": 64, "progress": False}
    stats = build_shards([source], str(tmp_path / "a"), workers=2, **options)  # exercises the pool
    assert stats["kept"] == 239 and sum(stats["skipped"].values()) == 0
    manifest = check_manifest_matches_tars(tmp_path / "a")
    assert 0.1 < manifest["totals"]["val"] / 239 < 0.3
    val = read_build(tmp_path / "a", "val")
    assert all(split_of(key, 0.2) == "val" for key in val)
    for sample in list(val.values())[:10]:
        assert len(json.loads(sample["json"])["captions"]) == 5
        assert max(decoded(sample).size) == 64

    build_shards([source], str(tmp_path / "b"), workers=0, **options)
    assert sorted(read_build(tmp_path / "b", "val")) == sorted(val)  # same keys on rebuild
    assert (tmp_path / "a" / "manifest.json").read_text() == (tmp_path / "b" / "manifest.json").read_text()


def _expected_tables() -> dict[str, list[str]]:
    return {"a": ["cat on a mat", "a sleeping cat"], "b": ["a dog"], "c": ["one", "two", "three"]}


def _write_tables(folder: Path) -> dict[str, Path]:
    """The same 3 samples as JSONL, CSV and Parquet, with list captions and repeated rows."""
    rows = [("a.png", ["cat on a mat"], "cat"), ("b.png", "a dog", "dog"), ("a.png", "a sleeping cat", "cat"),
            ("c.png", ["one", "two"], "cat"), ("c.png", ["three", "  "], "cat")]
    jsonl = folder / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"image": i, "caption": c, "label": lab}) + "\n" for i, c, lab in rows))
    csv_path = folder / "t.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "text", "label"])
        for image, caption, label in rows:
            writer.writerow([image, json.dumps(caption) if isinstance(caption, list) else caption, label])
    parquet = folder / "t.parquet"
    as_lists = [c if isinstance(c, list) else [c] for _, c, _ in rows]
    pq.write_table(pa.table({"image": [r[0] for r in rows], "captions": as_lists, "label": [r[2] for r in rows]}), parquet)
    return {"jsonl": jsonl, "csv": csv_path, "parquet": parquet}


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_tables_merge_rows_and_list_captions(kind: str, small_images: Path, tmp_path: Path) -> None:
    table = _write_tables(small_images)[kind]
    columns = {"image_column": "file", "caption_column": "text"} if kind == "csv" else {}
    output = tmp_path / "out"
    stats = build_shards([str(table)], str(output), label_column="label", **columns, **FAST)
    assert stats["kept"] == 3 and stats["merged_rows"] == 2 and stats["empty_caption_dropped"] == 1
    samples = read_build(output)
    captions = {key: json.loads(sample["json"])["captions"] for key, sample in samples.items()}
    assert captions == _expected_tables()
    classnames = json.loads((output / "classnames.json").read_text())
    assert classnames == ["cat", "dog"]
    assert {key: classnames[int(s["cls"])] for key, s in samples.items()} == {"a": "cat", "b": "dog", "c": "cat"}


def test_missing_image_file_is_counted(small_images: Path, tmp_path: Path) -> None:
    table = small_images / "m.jsonl"
    table.write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n"
                     + json.dumps({"image": "gone.png", "caption": "y"}) + "\n" + "{not json\n")
    stats = build_shards([str(table)], str(tmp_path / "out"), **FAST)
    assert stats["kept"] == 1 and stats["skipped"]["missing_file"] == 1 and stats["skipped"]["bad_row"] == 1


def test_reshard_round_trips_keys_and_captions(messy_folder: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    build_shards([str(messy_folder)], str(first), shard_size=2, val_fraction=0.3, **FAST)
    original = {key: json.loads(s["json"])["captions"] for key, s in read_build(first).items()}
    last = max(int(p.stem[-6:]) for p in first.glob("shard-train-*.tar"))
    assert last >= 1
    pattern = str(first / f"shard-train-{{000000..{last:06d}}}.tar")
    for source in (str(first), pattern, str(first / "shard-train-000000.tar")):
        output = tmp_path / "re" / str(abs(hash(source)))
        stats = build_shards([source], str(output), shard_size=5, **FAST)
        resharded = {key: json.loads(s["json"])["captions"] for key, s in read_build(output).items()}
        assert stats["kept"] == len(resharded) and sum(stats["skipped"].values()) == 0
        assert all(original[key] == captions for key, captions in resharded.items())
        if source == str(first):
            assert resharded == original


def test_interrupted_build_resumes(messy_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"shard_size": 2, "val_fraction": 0.25, "dedup": True, **FAST}
    reference = tmp_path / "reference"
    build_shards([str(messy_folder)], str(reference), **options)
    reference_manifest = (reference / "manifest.json").read_text()
    assert len(json.loads(reference_manifest)["shards"]) >= 4

    # 1) crash in the middle: the third shard write raises after its .tmp was half written
    output = tmp_path / "out"
    real_write, calls = build_module._atomic_write_bytes, []

    def crashing_write(path: str, payload: bytes) -> None:
        if path.endswith(".tar"):
            calls.append(path)
            if len(calls) == 3:
                Path(path + ".tmp").write_bytes(payload[: len(payload) // 2])
                raise KeyboardInterrupt("simulated interruption")
        real_write(path, payload)

    monkeypatch.setattr(build_module, "_atomic_write_bytes", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        build_shards([str(messy_folder)], str(output), **options)
    monkeypatch.setattr(build_module, "_atomic_write_bytes", real_write)
    assert list(output.glob("*.tmp")) and not (output / "manifest.json").exists()
    stats = build_shards([str(messy_folder)], str(output), **options)
    assert stats["reused_shards"] == 2
    assert (output / "manifest.json").read_text() == reference_manifest
    check_manifest_matches_tars(output)

    # 2) a finished shard deleted, another truncated, a stale .tmp left behind
    shards = sorted(output.glob("shard-*.tar"))
    shards[1].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[:700])
    (output / "shard-train-000099.tar.tmp").write_bytes(b"partial")
    stats = build_shards([str(messy_folder)], str(output), **options)
    assert stats["reused_shards"] == len(shards) - 2
    assert (output / "manifest.json").read_text() == reference_manifest
    check_manifest_matches_tars(output)
    for shard in shards:
        assert shard.read_bytes() == (reference / shard.name).read_bytes()
    assert json.loads((output / "stats.json").read_text())["skipped"] == json.loads(
        (reference / "stats.json").read_text())["skipped"]


def test_changed_options_rebuild_and_drop_stale_shards(small_images: Path, tmp_path: Path) -> None:
    for name in "abcdef":
        (small_images / f"{name}.txt").write_text(f"image {name}")
    output = tmp_path / "out"
    build_shards([str(small_images)], str(output), shard_size=1, **FAST)
    assert len(list(output.glob("*.tar"))) == 6
    stats = build_shards([str(small_images)], str(output), shard_size=4, **FAST)
    assert stats["reused_shards"] == 0 and sorted(p.name for p in output.glob("*.tar")) == [
        "shard-train-000000.tar", "shard-train-000001.tar"]
    check_manifest_matches_tars(output)


def test_missing_input_and_unknown_column_errors(messy_folder: Path, small_images: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nowhere.jsonl")
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        build_shards([missing], str(tmp_path / "out"), **FAST)
    table = _write_tables(small_images)["jsonl"]
    with pytest.raises(ValueError, match="'no_such_column'") as raised:
        build_shards([str(table)], str(tmp_path / "out"), caption_column="no_such_column", **FAST)
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="^shard_size:"):
        build_shards([str(table)], str(tmp_path / "out"), shard_size=0, **FAST)
    with pytest.raises(ValueError, match="^bogus:"):
        build_shards([str(table)], str(tmp_path / "out"), bogus=1)

    assert main(["--input", missing, "--output", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere.jsonl" in err and err.count("\n") == 1
    assert main(["--input", str(table), "--output", str(tmp_path / "cli"), "--label-column", "species"]) == 2
    err = capsys.readouterr().err
    assert "--label-column" in err and "'species'" in err and err.count("\n") == 1


def test_cli_builds(messy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "cli"
    code = main(["--input", str(messy_folder), "--output", str(output), "--shard-size", "4", "--max-side", "24",
                 "--prefix", "mess", "--workers", "0", "--dedup", "--no-progress", "--input-kind", "folder"])
    assert code == 0
    assert "kept 8 samples" in capsys.readouterr().out
    manifest = check_manifest_matches_tars(output)
    assert manifest["prefix"] == "mess" and all(s["file"].startswith("mess-train-") for s in manifest["shards"])
    shutil.rmtree(output)
