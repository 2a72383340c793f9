"""Checkpoints that lie or point elsewhere, and weights files that are not what they claim: each is
refused in one line naming the file and the fix, and no complete checkpoint is lost or skipped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from clip_pretrain.common.checkpoint_files import COMPLETE, LATEST, SUPERSEDED, CheckpointError, check_weights_file, latest_tag, resolve_checkpoint_dir
from clip_pretrain.pretrain.checkpoint import Checkpointer
from clip_pretrain.pretrain.distributed import DistContext

ONE_PROCESS = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo",
                          launcher="none")


def fake_checkpoint(checkpoints: Path, step: int, payload: str) -> Path:
    directory = checkpoints / f"step_{step:08d}"
    directory.mkdir(parents=True)
    (directory / "weights").write_text(payload)
    (directory / COMPLETE).write_text(json.dumps({"step": step}))
    return directory


class FakeEngine:
    """Writes one file per save, and records what `latest` named while the save was in progress."""

    def __init__(self, payload: str) -> None:
        self.payload, self.latest_during_save = payload, []

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool) -> None:
        self.latest_during_save.append(latest_tag(Path(save_dir)))
        (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)
        (Path(save_dir) / tag / "weights").write_text(self.payload)


@pytest.mark.parametrize("named", ["../../../etc", "/etc", "step_00000099", "step_00000003/../../.."])
def test_latest_naming_a_missing_step_or_a_path_elsewhere_is_refused(named, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    fake_checkpoint(checkpoints, 3, "three")
    (checkpoints / LATEST).write_text(named)
    assert latest_tag(checkpoints) is None
    checkpointer = Checkpointer(tmp_path / "run", keep_last=3, dist=ONE_PROCESS)
    for resolve in (checkpointer.latest, lambda: resolve_checkpoint_dir(tmp_path / "run")):
        with pytest.raises(CheckpointError) as info:
            resolve()  # today: None, so --resume auto silently started from scratch beside step 3
        message = str(info.value)
        assert "\n" not in message and str(checkpoints / LATEST) in message
        assert f"checkpoint.resume={checkpoints / 'step_00000003'}" in message


def test_complete_checkpoint_without_latest_is_resumed(tmp_path):
    """A kill between COMPLETE and the rename of `latest` must not make --resume auto start over."""
    checkpoints = tmp_path / "run" / "checkpoints"
    fake_checkpoint(checkpoints, 3, "three")
    assert Checkpointer(tmp_path / "run", 3, ONE_PROCESS).latest() == checkpoints / "step_00000003"


def test_saving_a_step_that_an_earlier_run_saved_replaces_it_and_keeps_the_old_one(tmp_path):
    """Resumed from step 3 while step 6 (another timeline) is latest: the final save at step 6 must
    write this run's weights (today it returned early and the export came from the old step 6)."""
    checkpoints = tmp_path / "run" / "checkpoints"
    fake_checkpoint(checkpoints, 3, "three")
    fake_checkpoint(checkpoints, 6, "old six")
    (checkpoints / LATEST).write_text("step_00000006")
    checkpointer = Checkpointer(tmp_path / "run", keep_last=3, dist=ONE_PROCESS)
    checkpointer.resumed_tag = "step_00000003"
    engine = FakeEngine("new six")
    target = checkpointer.save(engine, 6, client_state={}, files={})
    assert (target / "weights").read_text() == "new six" and (target / COMPLETE).is_file()
    assert latest_tag(checkpoints) == "step_00000006"
    assert engine.latest_during_save == ["step_00000003"]  # a kill mid-save leaves a complete latest
    [aside] = (checkpoints / SUPERSEDED).iterdir()
    assert (aside / "weights").read_text() == "old six"


def test_saving_the_step_just_resumed_from_changes_nothing(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    fake_checkpoint(checkpoints, 6, "six")
    (checkpoints / LATEST).write_text("step_00000006")
    checkpointer = Checkpointer(tmp_path / "run", keep_last=3, dist=ONE_PROCESS)
    checkpointer.resumed_tag = "step_00000006"
    engine = FakeEngine("never written")
    checkpointer.save(engine, 6, client_state={}, files={})
    assert engine.latest_during_save == [] and (checkpoints / "step_00000006" / "weights").read_text() == "six"


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pwned-by-weights",))


class TensorSubclass(torch.Tensor):
    pass


def _write(kind: str, path: Path) -> Path:
    if kind == "safetensors_bad_header":
        path = path.with_suffix(".safetensors")
        path.write_bytes((10**9).to_bytes(8, "little") + b"{not json")
    elif kind == "safetensors_truncated":
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file({"w": torch.ones(64, 64)}, str(path))
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "pickled_payload":
        torch.save({"w": torch.ones(2), "x": Payload()}, path)
    elif kind == "tensor_subclass":
        torch.save({"w": torch.ones(2).as_subclass(TensorSubclass)}, path)
    elif kind == "not_a_state_dict":
        torch.save({"w": torch.ones(2), "epoch": "3"}, path)
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    return path


@pytest.mark.parametrize("kind", ["safetensors_bad_header", "safetensors_truncated", "pickled_payload",
                                  "tensor_subclass", "not_a_state_dict", "garbage"])
def test_bad_weights_files_are_refused_in_one_line(kind, tmp_path):
    path = _write(kind, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError) as info:
        check_weights_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not Path("/tmp/pwned-by-weights").exists()


def test_plain_state_dicts_are_accepted(tmp_path):
    from safetensors.torch import save_file

    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "wrapped.pt")
    save_file({"w": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    check_weights_file(tmp_path / "wrapped.pt")
    check_weights_file(tmp_path / "w.safetensors")


@pytest.mark.parametrize("change, expected", [
    (lambda cfg: cfg["vision_cfg"].update(width=10**7), r"parameters \(limit"),
    (lambda cfg: cfg["text_cfg"].update(layers=10**6), r"parameters \(limit"),
    (lambda cfg: cfg["vision_cfg"].update(image_size=10**7, patch_size=1), r"parameters \(limit"),
    (lambda cfg: cfg.update(embed_dim=float("inf")), "not a finite number"),
])
def test_model_config_with_absurd_sizes_is_refused(change, expected, tmp_path):
    import open_clip

    import clip_pretrain.pretrain.model  # noqa: F401 - registers clip-tiny
    from clip_pretrain.common.checkpoint_files import MODEL_CONFIG, read_model_config

    model_cfg = json.loads(json.dumps(open_clip.get_model_config("clip-tiny")))
    (tmp_path / MODEL_CONFIG).write_text(json.dumps({"model_name": "clip-tiny", "model_cfg": model_cfg}))
    assert read_model_config(tmp_path)["model_cfg"] == model_cfg
    change(model_cfg)
    (tmp_path / MODEL_CONFIG).write_text(json.dumps({"model_name": "clip-tiny", "model_cfg": model_cfg}))
    with pytest.raises(CheckpointError, match=expected) as info:
        read_model_config(tmp_path)  # today: returned, and eval then tried to allocate the model
    assert "\n" not in str(info.value)
    (tmp_path / MODEL_CONFIG).write_text('{"model_name": "clip-tiny", "model_cfg": {')
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        read_model_config(tmp_path)


def test_corrupt_pretrained_file_is_one_line_before_any_work(tmp_path, capsys):
    from clip_pretrain.pretrain.train import main

    bad = _write("pickled_payload", tmp_path / "weights.pt")
    code = main(["--config", "pretrain/configs/smoke.yaml", f"run_dir={tmp_path / 'run'}", f"model.pretrained={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: model: refusing to load") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("client_state", [{}, {"train_state": {"step": 3}, "ranks": []},
                                          {"train_state": {"step": 3}, "ranks": [{"loader": {}}]}])
def test_checkpoint_without_a_training_state_is_refused_in_one_line(client_state, tmp_path):
    from clip_pretrain.pretrain.state import TrainState
    from clip_pretrain.pretrain.train import restore

    class Loaded:
        dir = tmp_path

        def load(self, engine, checkpoint_dir):
            return client_state

    class Loader:
        def load_state_dict(self, state):
            state["cursor"]  # the real loader reads its fields the same way

    with pytest.raises(CheckpointError, match=r"lacks a usable training state") as info:
        restore(None, Loader(), TrainState(), Loaded(), tmp_path, None, ONE_PROCESS)  # today: a KeyError traceback
    assert "\n" not in str(info.value)



@pytest.mark.parametrize("payload", ["tensor_subclass", "pickled_payload"])
def test_checkpoint_files_with_tensor_subclasses_or_payloads_are_refused(payload, tmp_path):
    """Already refused before issue #17 (weights_only loading); kept as a regression test."""
    from clip_pretrain.common.checkpoint_files import consolidated_state_dict

    step = fake_checkpoint(tmp_path / "run" / "checkpoints", 3, "x")
    module = {"w": torch.ones(2).as_subclass(TensorSubclass)} if payload == "tensor_subclass" else {"x": Payload()}
    torch.save({"module": module}, step / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match=r"refusing to load .*pickled objects that could run code") as info:
        consolidated_state_dict(step)
    assert "\n" not in str(info.value) and not Path("/tmp/pwned-by-weights").exists()
