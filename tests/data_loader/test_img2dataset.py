"""Training reads img2dataset's output folder directly (counts from NNNNN_stats.json), and a data
spec that does not resolve stops `python -m clip_pretrain.pretrain.train` in one line before DeepSpeed starts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import clip_pretrain.pretrain.train as train_module
from clip_pretrain.data.shards import resolve_spec
from tests.data_loader.loader_helpers import take
from tests.img2dataset_layout import write_img2dataset


def test_img2dataset_folder_trains_with_stats_counts(tmp_path: Path, make_loader) -> None:
    images = write_img2dataset(tmp_path / "i2d", successes=(3, 2), failed=1)
    shards = resolve_spec(str(tmp_path / "i2d"))
    assert [(Path(s.url).name, s.count) for s in shards] == [("00000.tar", 3), ("00001.tar", 2)]
    loader = make_loader(str(tmp_path / "i2d"), batch_size=5, multi_caption=False)
    assert loader.samples_per_epoch == 5
    batch = take(loader, 1)[0]
    assert sorted(batch["keys"]) == sorted(images)


def test_img2dataset_folder_problems_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "i2d"
    write_img2dataset(folder, successes=(3, 2))
    with pytest.raises(ValueError, match=r"no splits \(split 'val' asked for\)"):
        resolve_spec(f"{folder}::val")
    stats = folder / "00001_stats.json"
    stats.write_text(json.dumps({**json.loads(stats.read_text()), "successes": 7}))
    with pytest.raises(ValueError, match=r"00001_stats.json says 00001.tar holds 7 samples, the tar holds 2"):
        resolve_spec(str(folder))
    stats.unlink()  # a shard img2dataset did not finish
    with pytest.raises(FileNotFoundError, match=r"00001.tar has no 00001_stats.json beside it .* re-run img2dataset"):
        resolve_spec(str(folder))


def test_train_cli_checks_the_data_spec_before_deepspeed(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "tars").mkdir()
    (tmp_path / "tars" / "readme.txt").write_text("no shards here")

    def no_deepspeed():
        raise AssertionError("init_distributed ran before the data spec was checked")

    monkeypatch.setattr(train_module, "init_distributed", no_deepspeed)
    code = train_module.main(["--config", "pretrain/configs/smoke.yaml", f"data.train={tmp_path / 'tars'}",
                              f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: data.train: "), err
    assert str(tmp_path / "tars") in err and "python -m clip_pretrain.data.build --input" in err
    assert not (tmp_path / "run").exists()
