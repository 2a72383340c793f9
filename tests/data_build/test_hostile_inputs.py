"""Builder inputs that reach outside the named folders, lie about their types or collide: each is a
counted skip or a one-line error, and nothing outside the named places is read, written or deleted."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clip_pretrain.data.build import SIDECAR_DIR, build_shards, main
from tests.data_build.helpers import read_build

FAST = {"workers": 0, "progress": False}


def image(path: Path, colour: tuple[int, int, int] = (10, 200, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_image_paths_outside_the_input_folder_are_never_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    image(data / "ok.png")
    secret = image(tmp_path / "secret" / "private.png", (250, 0, 0))
    os.symlink(secret, data / "link.png")
    table = jsonl(data / "captions.jsonl", [
        {"image": "ok.png", "caption": "inside"},
        {"image": "../secret/private.png", "caption": "traversal"},
        {"image": "../../../../../../" + str(secret).lstrip("/"), "caption": "deep traversal"},
        {"image": str(secret), "caption": "absolute"},
        {"image": "link.png", "caption": "symlink out"},
    ])
    stats = build_shards([str(table)], str(tmp_path / "out"), **FAST)
    assert stats["kept"] == 1 and stats["skipped"]["outside_root"] == 4
    assert [json.loads(s["json"])["captions"] for s in read_build(tmp_path / "out").values()] == [["inside"]]
    # Naming the wider root on purpose lets them in.
    stats = build_shards([str(table)], str(tmp_path / "out2"), image_root=str(tmp_path), **FAST)
    assert stats["kept"] == 2 and stats["merged_rows"] == 3  # the four outside rows all name one file


def test_symlink_out_of_an_image_folder_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "folder"
    image(folder / "a.png")
    (folder / "a.txt").write_text("a")
    os.symlink(image(tmp_path / "elsewhere" / "b.png"), folder / "b.png")
    (folder / "b.txt").write_text("b")
    assert main(["--input", str(folder), "--output", str(tmp_path / "out"), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "kept 1 samples" in out and "outside_root=1" in out and "--image-root" in out


def test_undecodable_rows_and_byte_order_marks(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png", (0, 0, 200))
    table = tmp_path / "rows.jsonl"
    table.write_bytes(b"\xef\xbb\xbf" + json.dumps({"image": "a.png", "caption": "first"}).encode() + b"\n"
                      + b'{"image": "b.png", "caption": "caf\xe9 latin-1"}\n'
                      + json.dumps({"image": "b.png", "caption": "utf8"}).encode() + b"\n")
    stats = build_shards([str(table)], str(tmp_path / "out_jsonl"), **FAST)
    assert stats["kept"] == 2 and stats["skipped"]["bad_encoding"] == 1
    sheet = tmp_path / "sheet.csv"  # as Excel writes it: a BOM before the header
    sheet.write_bytes(b"\xef\xbb\xbfimage,caption\r\na.png,first\r\nb.png,caf\xe9\r\n")
    stats = build_shards([str(sheet)], str(tmp_path / "out_csv"), **FAST)
    assert stats["kept"] == 1 and stats["skipped"]["bad_encoding"] == 1


def test_values_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    table = jsonl(tmp_path / "rows.jsonl", [
        {"image": "a.png", "caption": {"text": "a dict"}},
        {"image": 7, "caption": "number as path"},
        {"image": "a.png", "caption": ["fine", 3]},
    ])
    stats = build_shards([str(table)], str(tmp_path / "out"), **FAST)
    assert stats["kept"] == 0 and stats["skipped"]["bad_row"] == 3
    for column, values in {"image": [1, 2], "captions": [1.5, 2.5]}.items():
        columns = {"image": ["a.png", "a.png"], "captions": ["x", "y"], column: values}
        parquet = tmp_path / f"bad_{column}.parquet"
        pq.write_table(pa.table(columns), parquet)
        with pytest.raises(ValueError, match=rf"column '{column}' of .*bad_{column}.parquet has type") as info:
            build_shards([str(parquet)], str(tmp_path / f"out_{column}"), **FAST)
        assert "\n" not in str(info.value)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    assert main(["--input", str(tmp_path / "broken.parquet"), "--output", str(tmp_path / "o"), "--no-progress"]) == 2


def test_two_images_under_one_key_are_a_counted_conflict(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png", (0, 0, 200))
    image(tmp_path / "c.png", (0, 90, 90))
    table = jsonl(tmp_path / "rows.jsonl", [
        {"key": "k1", "image": "a.png", "caption": "one"},
        {"key": "k1", "image": "b.png", "caption": "other picture, same key"},
        {"key": "k2", "image": "c.png", "caption": "fine", "label": "x"},
        {"key": "k2", "image": "c.png", "caption": "fine again", "label": "x"},
    ])
    stats = build_shards([str(table)], str(tmp_path / "out"), key_column="key", **FAST)
    assert stats["kept"] == 1 and stats["skipped"]["key_conflict"] == 1 and sorted(read_build(tmp_path / "out")) == ["k2"]
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "c.txt").write_text("c")
    tar = tmp_path / "dup.tar"
    with tarfile.open(tar, "w") as archive:
        for name, source in (("a.png", "a.png"), ("a.png", "b.png"), ("a.txt", "a.txt"), ("c.png", "c.png"),
                             ("c.txt", "c.txt")):
            archive.add(tmp_path / source, arcname=name)
    stats = build_shards([str(tar)], str(tmp_path / "out_tar"), **FAST)
    assert stats["kept"] == 1 and stats["skipped"]["key_conflict"] == 1


def test_output_holding_foreign_files_or_the_inputs_is_refused_untouched(tmp_path: Path) -> None:
    image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "a.txt").write_text("a")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.tmp").write_text("my notes")
    (foreign / "table.csv").write_text("x")
    before = tree(foreign)
    with pytest.raises(ValueError, match=r"already holds files this builder did not write") as info:
        build_shards([str(tmp_path / "in")], str(foreign), **FAST)
    assert "\n" not in str(info.value) and tree(foreign) == before

    shards = tmp_path / "shards"
    build_shards([str(tmp_path / "in")], str(shards), shard_size=1, **FAST)
    before = tree(shards)
    for source in (str(shards), str(shards / "shard-train-000000.tar"), str(tmp_path / "in")):
        target = shards if source != str(tmp_path / "in") else tmp_path / "in"
        with pytest.raises(ValueError, match=r"holds the build's own input"):
            build_shards([source], str(target), shard_size=5, **FAST)  # in-place re-sharding
    assert tree(shards) == before
    build_shards([str(tmp_path / "in")], str(shards), shard_size=1, **FAST)  # re-running into its own output is fine


def test_two_builds_into_one_output_at_once(tmp_path: Path) -> None:
    image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "a.txt").write_text("a")
    output = tmp_path / "out"
    (output / SIDECAR_DIR).mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1], timeout=0); "
        "lock.acquire(); open(sys.argv[1], 'w').write(str(os.getpid())); print('held', flush=True); time.sleep(600)"),
        str(output / SIDECAR_DIR / "lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"another build \(pid {holder.pid}\) is writing it") as info:
            build_shards([str(tmp_path / "in")], str(output), **FAST)
        assert "\n" not in str(info.value) and not (output / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert build_shards([str(tmp_path / "in")], str(output), **FAST)["kept"] == 1  # a dead holder blocks nothing


def test_shard_manifest_pointing_outside_its_folder_is_refused(tmp_path: Path) -> None:
    image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "a.txt").write_text("a")
    shards = tmp_path / "shards"
    build_shards([str(tmp_path / "in")], str(shards), **FAST)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../elsewhere/other.tar"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest.json lists '../elsewhere/other.tar', which is not a file in"):
        build_shards([str(shards)], str(tmp_path / "out"), **FAST)


def test_oversized_members_and_files_are_skipped_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_pretrain.data import sources

    image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a")
    image(tmp_path / "b.png", (0, 0, 200))
    (tmp_path / "b.txt").write_text("b " * 2**20)  # a 2 MiB caption member
    tar = tmp_path / "big.tar"
    with tarfile.open(tar, "w") as archive:
        for name in ("a.png", "a.txt", "b.png", "b.txt"):
            archive.add(tmp_path / name, arcname=name)
    stats = build_shards([str(tar)], str(tmp_path / "out_tar"), **FAST)
    assert stats["kept"] == 1 and stats["skipped"]["too_large"] == 1

    huge = image(tmp_path / "folder" / "huge.png")
    (tmp_path / "folder" / "huge.txt").write_text("huge")
    real_read = sources.ImageRef.read
    monkeypatch.setattr(sources.ImageRef, "read", lambda ref: (_ for _ in ()).throw(AssertionError("read"))
                        if ref.path == str(huge) else real_read(ref))
    stats = build_shards([str(tmp_path / "folder")], str(tmp_path / "out_big"), max_bytes=huge.stat().st_size - 1, **FAST)
    assert stats["kept"] == 0 and stats["skipped"]["too_large"] == 1


def test_brace_pattern_naming_a_billion_files_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"names more than 1000000 shards"):
        build_shards([str(tmp_path / "x-{000000000..999999999}.tar")], str(tmp_path / "out"), **FAST)
