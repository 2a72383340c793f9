"""benchmarks.learning_bench: open_clip_train checkpoint conversion, the coco hold-out, the summary, end to end."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

from benchmarks import learning_bench as bench
from clip_pretrain.eval.checkpoints import load_checkpoint, register_project_configs
from tests.pretrain.runner import run_module


def peer_checkpoint(tmp_path, *, ddp: bool) -> tuple:
    """An epoch_1.pt laid out as open_clip_train saves it, with a logit_scale no fresh model has."""
    register_project_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("clip-tiny", pretrained=None, load_weights=False, pretrained_text=False)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    state_dict = {("module." if ddp else "") + key: value for key, value in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "peer", "state_dict": state_dict, "optimizer": optimizer.state_dict()}, path)
    return path, model


@pytest.mark.parametrize("ddp", [True, False])
def test_peer_checkpoint_converts_to_an_export_eval_loads(tmp_path, ddp: bool) -> None:
    path, model = peer_checkpoint(tmp_path, ddp=ddp)
    export = bench.peer_checkpoint_to_export(path, "clip-tiny", tmp_path / "export")
    assert (export / "model.safetensors").is_file()
    assert json.loads((export / "open_clip_config.json").read_text())["model_name"] == "clip-tiny"
    loaded = load_checkpoint(str(export), device="cpu").model  # strict load: every key, every shape
    assert loaded.logit_scale.item() == pytest.approx(2.5)  # trained temperature kept, not re-initialised
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_peer_state_dict_strips_module_prefix_and_keeps_logit_scale() -> None:
    state = bench.peer_state_dict({"state_dict": {"module.logit_scale": torch.tensor(3.0), "module.w": torch.ones(2)}})
    assert set(state) == {"logit_scale", "w"}
    assert state["logit_scale"].shape == () and state["logit_scale"].item() == 3.0


@pytest.mark.parametrize("checkpoint, match", [
    ({"epoch": 1}, "no non-empty 'state_dict'"),
    ({"state_dict": {"module.w": torch.ones(2)}}, "no logit_scale"),
])
def test_peer_state_dict_rejects_bad_checkpoints(checkpoint, match) -> None:
    with pytest.raises(bench.BenchError, match=match):
        bench.peer_state_dict(checkpoint)


def test_coco_holdout_is_fixed_and_disjoint() -> None:
    rows = [{"image": f"images/{index:012d}.jpg", "captions": ["a"]} for index in range(239)]
    train, heldout = bench.coco_split(rows)
    assert len(heldout) == 40 and len(train) == 199
    assert not {row["image"] for row in train} & {row["image"] for row in heldout}
    _, heldout_reversed = bench.coco_split(rows[::-1])
    assert sorted(row["image"] for row in heldout) == sorted(row["image"] for row in heldout_reversed)


def test_summary_means_stds_and_difference() -> None:
    def record(seed: int, trainer: str, value: float) -> bench.RunRecord:
        metrics = {key: value for key, _, _ in bench.METRICS}
        return bench.RunRecord("demo", seed, trainer, metrics, 1.0, 1.0, "log")

    records = [record(0, "ours", 0.2), record(1, "ours", 0.4), record(0, "theirs", 0.1), record(1, "theirs", 0.1)]
    entry = bench.summarize(records)["demo"]["zeroshot_top1"]
    assert entry["ours"]["mean"] == pytest.approx(0.3) and entry["ours"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert entry["theirs"]["std"] == 0.0 and entry["diff"] == pytest.approx(0.2)


@pytest.mark.slow
def test_learning_bench_end_to_end(tmp_path) -> None:
    args = ["-m", "benchmarks.learning_bench", "--datasets", "demo", "--seeds", "1", "--samples", "128",
            "--out", str(tmp_path)]
    result = run_module(args, timeout=400)  # ~1.5 min on 2 shared cores
    (json_path,) = tmp_path.glob("learning-*-cpu.json")
    payload = json.loads(json_path.read_text())
    assert {(run["trainer"], run["seed"]) for run in payload["runs"]} == {("ours", 0), ("theirs", 0)}
    for key, _, _ in bench.METRICS:
        entry = payload["summary"]["demo"][key]
        assert 0.0 <= entry["ours"]["mean"] <= 1.0 and 0.0 <= entry["theirs"]["mean"] <= 1.0
        assert entry["diff"] == pytest.approx(entry["ours"]["mean"] - entry["theirs"]["mean"])
    table = json_path.with_suffix(".md").read_text()
    assert "| demo | 128 | zero-shot top-1 |" in table and "| demo | 128 | text->image R@1 |" in table
    assert "| ours (pretrain.train) | open_clip_train |" in table
    assert "Learning benchmark" in result.stdout
