"""benchmarks.learning_bench: open_clip_train checkpoint conversion, the coco hold-out, the summary, ablation
flags (--variant, --trainers, --baseline-json), end to end."""
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


def record(seed: int, trainer: str, value: float, dataset: str = "demo") -> bench.RunRecord:
    return bench.RunRecord(dataset, seed, trainer, {key: value for key, _, _ in bench.METRICS}, 1.0, 1.0, "log")


def test_mlm_accuracy_comes_from_the_last_mlm_interval(tmp_path) -> None:
    lines = [{"event": "start"}, {"step": 10, "loss": 3.0, "mlm": 9.0, "mlm_accuracy": 0.1},
             {"step": 20, "loss": 2.0, "mlm": 7.0, "mlm_accuracy": 0.3}, {"step": 20, "zeroshot_top1": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    assert bench.training_figures(tmp_path) == {"mlm_accuracy": 0.3}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0, "mlm": 0.0, "mlm_accuracy": 0.0}))
    assert bench.training_figures(tmp_path) == {}  # MLM off: nothing to report


def test_mlm_lines_report_each_mlm_trainer_per_dataset() -> None:
    records = [record(0, "ours", 0.2), record(0, "mlm", 0.2), record(1, "mlm", 0.2), record(0, "mlm", 0.2, "coco")]
    for run, accuracy in zip(records[1:], (0.2, 0.4, 0.5)):
        run.training = {"mlm_accuracy": accuracy}
    assert bench.mlm_lines(records) == "- mlm: MLM masked-token accuracy at the end of training (%): demo 30.0 ± 14.1, coco 50.0 ± 0.0\n"
    assert bench.mlm_lines(records[:1]) == ""


def test_summary_means_stds_and_difference() -> None:
    records = [record(0, "ours", 0.2), record(1, "ours", 0.4), record(0, "theirs", 0.1), record(1, "theirs", 0.1)]
    entry = bench.summarize(records)["demo"]["zeroshot_top1"]
    assert entry["ours"]["mean"] == pytest.approx(0.3) and entry["ours"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert entry["theirs"]["std"] == 0.0 and entry["diff"] == pytest.approx(0.2)


def test_parse_variant_and_trainers() -> None:
    variant = bench.parse_variant("cyc_1:loss.mlm_weight=0.1, optim.lr=1e-3")
    assert variant == bench.Variant("cyc_1", ("loss.mlm_weight=0.1", "optim.lr=1e-3"))
    assert bench.parse_variant("a:data.train=x=y").overrides == ("data.train=x=y",)  # value may hold '='
    aug = bench.parse_variant("aug:augment.scale=[0.5, 1.0],augment.color_jitter=[0.4,0.4,0.4,0.1],optim.lr=1")
    assert aug.overrides == ("augment.scale=[0.5, 1.0]", "augment.color_jitter=[0.4,0.4,0.4,0.1]", "optim.lr=1")
    assert bench.parse_trainers("peer,ours") == ["ours", "theirs"]
    assert bench.parse_trainers("none") == [] and bench.parse_trainers("peer") == ["theirs"]


@pytest.mark.parametrize("text, match", [
    ("noname", "expected NAME:key=value"),
    ("bad-name:optim.lr=1", "expected NAME:key=value"),
    (":optim.lr=1", "expected NAME:key=value"),
    ("ours:optim.lr=1", "'ours' is reserved"),
    ("peer:optim.lr=1", "'peer' is reserved"),
    ("a:", "--variant a: '' is not key=value"),
    ("a:optim.lr=1,", "--variant a: '' is not key=value"),
    ("a:optim.lr", "--variant a: 'optim.lr' is not key=value"),
    ("a:=1", "--variant a: '=1' is not key=value"),
])
def test_parse_variant_refuses(text: str, match: str) -> None:
    with pytest.raises(bench.BenchError, match=match):
        bench.parse_variant(text)


@pytest.mark.parametrize("text", ["", "ours,ours", "ours,theirs", "none,ours"])
def test_parse_trainers_refuses(text: str) -> None:
    with pytest.raises(bench.BenchError, match="--trainers"):
        bench.parse_trainers(text)


def test_variant_names_are_unique() -> None:
    with pytest.raises(bench.BenchError, match="name 'a' given twice"):
        bench.parse_variants(["a:optim.lr=1", "b:optim.lr=2", "a:optim.lr=3"])


def test_variant_config_is_loaded_before_training() -> None:
    bench.check_variant_configs([bench.parse_variant("ok:loss.mlm_weight=0.1,augment.scale=[0.5,1]")], 6016)
    variants = [bench.parse_variant("ok:loss.mlm_weight=0.1"), bench.parse_variant("typo:loss.mlm_wieght=0.1")]
    with pytest.raises(bench.BenchError, match=r"^--variant typo: config key loss.mlm_wieght: unknown key"):
        bench.check_variant_configs(variants, 6016)


def test_nothing_to_run_and_baseline_without_trainers_are_refused() -> None:
    with pytest.raises(bench.BenchError, match="nothing to run"):
        bench.make_plan(bench.parse_args(["--trainers", "none"]))
    args = bench.parse_args(["--trainers", "none", "--baseline-json", "x.json", "--variant", "a:optim.lr=1e-3"])
    with pytest.raises(bench.BenchError, match="--baseline-json: --trainers none reuses nothing"):
        bench.make_plan(args)


def test_first_seed_shifts_the_seeds() -> None:
    variant = ["--trainers", "none", "--variant", "a:optim.lr=1e-3"]
    assert bench.make_plan(bench.parse_args(["--seeds", "3", *variant])).seeds == [0, 1, 2]
    assert bench.make_plan(bench.parse_args(["--seeds", "5", "--first-seed", "5", *variant])).seeds == [5, 6, 7, 8, 9]
    with pytest.raises(bench.BenchError, match="--first-seed: must be >= 0, got -1"):
        bench.make_plan(bench.parse_args(["--first-seed", "-1", *variant]))


def write_baseline(tmp_path, samples: dict, seeds: list[int], **settings) -> str:
    runs = [vars(record(seed, trainer, 0.1 * seed, dataset)) for dataset in samples for seed in seeds
            for trainer in ("ours", "theirs")]
    payload = {"seeds": seeds, "settings": {**bench.recipe_settings(samples), **settings}, "runs": runs}
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(payload))
    return str(path)


def test_baseline_records_are_reused(tmp_path) -> None:
    path = write_baseline(tmp_path, {"demo": 6016, "coco": 3008}, [0, 1])
    args = bench.parse_args(["--datasets", "demo", "--seeds", "2", "--baseline-json", path, "--variant", "a:optim.lr=1e-3"])
    plan = bench.make_plan(args)
    assert plan.trainers == [] and [variant.name for variant in plan.variants] == ["a"]  # only the variant trains
    assert {(r.dataset, r.seed, r.trainer) for r in plan.reused} == {("demo", s, t) for s in (0, 1) for t in ("ours", "theirs")}
    plan = bench.make_plan(bench.parse_args(["--datasets", "demo", "--seeds", "2", "--baseline-json", path, "--trainers", "peer"]))
    assert {r.trainer for r in plan.reused} == {"theirs"}


@pytest.mark.parametrize("flags, settings, match", [
    (["--seeds", "3"], {}, r"has seeds \[0, 1\], this run \[0, 1, 2\]"),
    (["--first-seed", "2"], {}, r"has seeds \[0, 1\], this run \[2, 3\]"),
    (["--samples", "640"], {}, "has demo samples 6016, this run 640"),
    ([], {"lr": 1e-3}, "has lr 0.001, this run 0.002"),
    ([], {"model": "clip-small"}, "has model 'clip-small', this run 'clip-tiny'"),
    ([], {"batch_size": 32}, "has batch_size 32, this run 64"),
    (["--datasets", "demo,coco"], {}, "has datasets demo, this run demo,coco"),
])
def test_baseline_with_another_recipe_is_refused(tmp_path, flags, settings, match) -> None:
    path = write_baseline(tmp_path, {"demo": 6016}, [0, 1], **settings)
    args = bench.parse_args(["--datasets", "demo", "--seeds", "2", *flags, "--baseline-json", path])
    with pytest.raises(bench.BenchError, match="^--baseline-json: .*" + match):
        bench.make_plan(args)


def test_baseline_missing_a_run_is_refused(tmp_path) -> None:
    path = write_baseline(tmp_path, {"demo": 6016}, [0, 1])
    payload = json.loads(open(path).read())
    payload["runs"] = [run for run in payload["runs"] if (run["seed"], run["trainer"]) != (1, "theirs")]
    open(path, "w").write(json.dumps(payload))
    with pytest.raises(bench.BenchError, match="has no run for dataset demo seed 1 open_clip_train"):
        bench.load_baseline(path, {"demo": 6016}, [0, 1], ["ours", "theirs"])


def write_tar(path, members: dict[str, bytes], mtime: int) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))


def test_shards_fingerprint_sees_samples_not_tar_headers(tmp_path) -> None:
    samples = {"000.jpg": b"image", "000.txt": b"a red circle"}
    for folder, mtime in (("a", 1), ("b", 2)):
        (tmp_path / folder / "train").mkdir(parents=True)
        write_tar(tmp_path / folder / "train" / "shard-000000.tar", samples, mtime)
    (tmp_path / "c" / "train").mkdir(parents=True)
    write_tar(tmp_path / "c" / "train" / "shard-000000.tar", {**samples, "000.txt": b"a blue circle"}, 1)
    a, b, c = (bench.shards_fingerprint(tmp_path / folder) for folder in "abc")
    assert a == b and a != c


def test_baseline_on_other_shards_is_refused(tmp_path) -> None:
    path = tmp_path / "baseline.json"
    setups = {"demo": bench.DatasetSetup("demo", "x", tmp_path, 6016, shards_sha256="ab" * 32)}
    path.write_text(json.dumps({"settings": {"datasets": {"demo": {"samples": 6016, "shards_sha256": "ab" * 32}}}}))
    bench.check_baseline_shards(str(path), setups)  # the same shards
    path.write_text(json.dumps({"settings": {"datasets": {"demo": {"samples": 6016}}}}))
    bench.check_baseline_shards(str(path), setups)  # written before fingerprints: a warning only
    path.write_text(json.dumps({"settings": {"datasets": {"demo": {"samples": 6016, "shards_sha256": "cd" * 32}}}}))
    with pytest.raises(bench.BenchError, match="ran demo on other shards .sha256 cdcdcdcdcdcd, this run abababababab"):
        bench.check_baseline_shards(str(path), setups)


def test_committed_baseline_is_reusable() -> None:
    path = str(bench.REPO / "benchmarks" / "results" / "learning-2026-11-28-cpu.json")
    records = bench.load_baseline(path, {"demo": 6016, "coco": 3008}, [0, 1, 2], ["ours", "theirs"])
    assert len(records) == 12


def variant_records() -> list[bench.RunRecord]:
    return [record(0, "ours", 0.2), record(1, "ours", 0.4), record(0, "theirs", 0.1), record(1, "theirs", 0.1),
            record(0, "cyc", 0.5), record(1, "cyc", 0.5)]


def test_summary_with_variants() -> None:
    entry = bench.summarize(variant_records())["demo"]["zeroshot_top1"]
    assert list(entry) == ["ours", "theirs", "cyc", "diff"]
    assert entry["cyc"]["mean"] == pytest.approx(0.5) and entry["cyc"]["std"] == 0.0
    assert entry["cyc"]["vs_theirs"] == pytest.approx(0.4) and entry["cyc"]["vs_ours"] == pytest.approx(0.2)
    alone = bench.summarize([r for r in variant_records() if r.trainer == "cyc"])["demo"]["zeroshot_top1"]
    assert set(alone) == {"cyc"} and "vs_ours" not in alone["cyc"]  # no baseline ran: no difference


def test_markdown_with_variants() -> None:
    setups = {"demo": bench.DatasetSetup("demo", "shards", bench.REPO, 6016, ["a note"])}
    info = {"date": "D", "device": "cpu", "cpu_count": 2, "load_average_1m": 1.0, "torch": "T", "open_clip": "O"}
    variants = [bench.Variant("cyc", ("loss.mlm_weight=0.1",))]
    table = bench.markdown(bench.summarize(variant_records()), setups, info, [0, 1], variants, "base.json")
    assert "| dataset | samples/run | metric | ours (pretrain.train) | open_clip_train | ours − theirs (points) |" in table
    assert "| demo | 6016 | zero-shot top-1 | 30.0 ± 14.1 | 10.0 ± 0.0 | +20.0 |" in table
    assert "| variant | dataset | metric | mean ± std | − open_clip_train (points) | − ours (points) |" in table
    assert "| cyc | demo | text->image R@1 | 50.0 ± 0.0 | +40.0 | +20.0 |" in table
    assert "- cyc: ours with `loss.mlm_weight=0.1`" in table and "reused from base.json" in table
    alone = bench.markdown(bench.summarize([r for r in variant_records() if r.trainer == "cyc"]), setups, info,
                           [0, 1], variants)
    assert "ours (pretrain.train)" not in alone and "| cyc | demo | zero-shot top-1 | 50.0 ± 0.0 | n/a | n/a |" in alone
    ours_only = bench.markdown(bench.summarize([r for r in variant_records() if r.trainer != "theirs"]), setups, info,
                               [0, 1], variants)  # --trainers ours: no peer column, no difference column
    assert "| dataset | samples/run | metric | ours (pretrain.train) |\n" in ours_only
    assert "| demo | 6016 | zero-shot top-1 | 30.0 ± 14.1 |\n" in ours_only
    assert "| cyc | demo | zero-shot top-1 | 50.0 ± 0.0 | n/a | +20.0 |" in ours_only


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
