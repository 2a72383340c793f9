"""Run tracking: wandb settings from config or the WANDB_* environment, TensorBoard as a second
backend (read back from its event file), and resume markers in metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_pretrain.pretrain.config import ConfigError, load_config
from clip_pretrain.pretrain.tracking import Tracker


class FakeRun:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.logged.append((metrics, step))

    def finish(self) -> None:
        pass


@pytest.fixture
def wandb_calls(monkeypatch) -> list[dict]:
    import wandb

    calls: list[dict] = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or FakeRun())
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return calls


def track(run_dir: Path, overrides: list[str], start_step: int = 0, resumed_from: Path | None = None) -> Tracker:
    run_dir.mkdir(exist_ok=True)
    config = load_config(None, [f"run_dir={run_dir}", "data.train=shards", "logging.progress=false", *overrides])
    return Tracker(run_dir, config, True, 10, start_step, resumed_from)


def test_wandb_takes_mode_project_and_entity_from_the_environment(wandb_calls, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team-env")
    track(tmp_path / "run", ["logging.wandb_tags=[a, b]", "logging.wandb_group=sweep1"]).close()
    (kwargs,) = wandb_calls
    assert (kwargs["mode"], kwargs["project"], kwargs["entity"]) == ("online", "from-env", "team-env")
    assert kwargs["tags"] == ["a", "b"] and kwargs["group"] == "sweep1" and kwargs["name"] == "run"


def test_wandb_config_keys_win_when_set(wandb_calls, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team-env")
    track(tmp_path / "run", ["logging.wandb_mode=offline", "logging.wandb_project=mine", "logging.wandb_entity=me"]).close()
    (kwargs,) = wandb_calls
    assert (kwargs["mode"], kwargs["project"], kwargs["entity"]) == ("offline", "mine", "me")


def test_wandb_defaults_without_environment(wandb_calls, tmp_path):
    track(tmp_path / "run", []).close()
    (kwargs,) = wandb_calls
    assert (kwargs["mode"], kwargs["project"], kwargs["entity"], kwargs["tags"]) == ("offline", "clip-pretrain", None, None)


def test_wandb_off_when_disabled_or_not_a_backend(wandb_calls, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    track(tmp_path / "a", []).close()
    monkeypatch.setenv("WANDB_MODE", "online")
    track(tmp_path / "b", ["logging.backends=[jsonl, tensorboard]"]).close()
    assert wandb_calls == []
    assert (tmp_path / "a" / "metrics.jsonl").is_file()  # jsonl is always on


def test_tensorboard_event_file_holds_the_logged_scalars(wandb_calls, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = track(tmp_path / "run", ["logging.backends=[jsonl, tensorboard]"])
    for step in (1, 2, 3):
        tracker.log(step, {"loss": 5.0 - step, "lr": 0.1 * step, "eval/demo/acc1": 0.25, "note": "text is skipped"})
    tracker.log(3, {"loss": 2.0, "eval/demo/acc5": 0.5})  # the final record: last metrics again + final eval
    tracker.close()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "lr", "eval/demo/acc1", "eval/demo/acc5"}
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 4.0), (2, 3.0), (3, 2.0)]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([0.1, 0.2, 0.3])
    assert wandb_calls == []


def read_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_writes_a_marker_line_instead_of_silently_appending(wandb_calls, tmp_path):
    run_dir = tmp_path / "run"
    first = track(run_dir, ["logging.backends=[jsonl]"])
    for step in (1, 2, 3):
        first.log(step, {"loss": 1.0})
    first.close()  # killed after step 3; the checkpoint is at step 2
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    resumed = track(run_dir, ["logging.backends=[jsonl]"], start_step=2, resumed_from=checkpoint)
    resumed.log(3, {"loss": 0.5})
    resumed.close()
    lines = read_lines(run_dir)
    assert [line["step"] for line in lines] == [1, 2, 3, 2, 3]
    marker = lines[3]
    assert marker["event"] == "resume" and marker["checkpoint"] == str(checkpoint) and "loss" not in marker
    restarted = track(run_dir, ["logging.backends=[jsonl]"])  # resume=none over an earlier run's lines
    restarted.close()
    assert read_lines(run_dir)[-1]["event"] == "restart" and read_lines(run_dir)[-1]["step"] == 0


def test_fresh_run_has_no_marker(wandb_calls, tmp_path):
    tracker = track(tmp_path / "run", ["logging.backends=[jsonl]"])
    tracker.log(1, {"loss": 1.0})
    tracker.close()
    assert [sorted(line) for line in read_lines(tmp_path / "run")] == [["loss", "step", "time"]]


def test_unknown_backend_is_one_line():
    with pytest.raises(ConfigError, match=r"^config key logging.backends\[1\]: must be one of 'jsonl', 'wandb', "
                                          r"'tensorboard', got 'mlflow'$"):
        load_config(None, ["data.train=shards", "logging.backends=[jsonl, mlflow]"])
