"""Every checkpoint kind loads to the same weights; bad checkpoints give one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_pretrain.eval.checkpoints import load_checkpoint
from clip_pretrain.eval.encoder import Encoder

KINDS = ["pt_with_config", "safetensors_with_config", "export_dir", "flat_config_safetensors", "model_name_and_file"]


def reference_features(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(0, 49407, (2, 32))
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


def loaded_features(loaded: Encoder) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(0, 49407, (2, 32))
    return loaded.encode_image(images), loaded.encode_text(tokens)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_the_same_weights(kind: str, checkpoints: dict, tiny_model: torch.nn.Module) -> None:
    checkpoint, model_name = checkpoints[kind]
    loaded = load_checkpoint(checkpoint, model_name=model_name)
    assert isinstance(loaded, Encoder)
    for got, want in zip(loaded_features(loaded), reference_features(tiny_model)):
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))
    assert loaded.tokenizer(["a photo"]).shape == (1, 32)


def test_bf16_autocast_gives_close_fp32_features(checkpoints: dict) -> None:
    checkpoint, _ = checkpoints["export_dir"]
    fp32, bf16 = (loaded_features(load_checkpoint(checkpoint, precision=p)) for p in ("fp32", "bf16"))
    assert bf16[0].dtype == torch.float32
    torch.testing.assert_close(bf16[0], fp32[0], atol=0.05, rtol=0.05)


def test_mismatched_config_names_first_bad_tensor(checkpoints: dict, tmp_path: Path) -> None:
    checkpoint, _ = checkpoints["model_name_and_file"]
    import open_clip

    wrong = dict(open_clip.get_model_config("eval-tiny-vit"), embed_dim=16)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(wrong))
    (tmp_path / "weights.pt").write_bytes(Path(checkpoint).read_bytes())
    with pytest.raises(ValueError, match=r"does not match config .*: shape mismatch for 'text_projection': "
                                         r"weights \(64, 32\), config expects \(64, 16\)$"):
        load_checkpoint(str(tmp_path / "weights.pt"))
    state_dict = torch.load(checkpoint, weights_only=True)
    del state_dict["text_projection"]
    torch.save(state_dict, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match=r"missing key 'text_projection'"):
        load_checkpoint(str(tmp_path / "cut.pt"), model_name="eval-tiny-vit")
    state_dict = torch.load(checkpoint, weights_only=True)
    state_dict["extra.weight"] = torch.zeros(1)
    torch.save(state_dict, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected key 'extra.weight'"):
        load_checkpoint(str(tmp_path / "extra.pt"), model_name="eval-tiny-vit")


def test_unknown_kinds_and_missing_paths_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    for path, error in [(tmp_path / "notes.txt", ValueError), (tmp_path, ValueError),
                        (tmp_path / "absent.pt", FileNotFoundError)]:
        with pytest.raises(error) as info:
            load_checkpoint(str(path))
        assert "\n" not in str(info.value)
        assert "run directory" in str(info.value)
    torch.save({"a": torch.zeros(1)}, tmp_path / "lonely.pt")
    with pytest.raises(ValueError, match="no open_clip_config.json beside it; pass --model"):
        load_checkpoint(str(tmp_path / "lonely.pt"))
    with pytest.raises(ValueError, match="not a registered open_clip config"):
        load_checkpoint(str(tmp_path / "lonely.pt"), model_name="no-such-model")
    with pytest.raises(ValueError, match="precision"):
        load_checkpoint(str(tmp_path / "lonely.pt"), precision="fp8")


def test_run_dir_dispatches_to_checkpoint_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   tiny_model: torch.nn.Module) -> None:
    """The loader's side of the contract, with the checkpoint-files reader replaced by a stand-in."""
    import open_clip

    from clip_pretrain.common import checkpoint_files

    calls = []
    monkeypatch.setattr(checkpoint_files, "consolidated_state_dict",
                        lambda path: calls.append(path) or tiny_model.state_dict())
    monkeypatch.setattr(checkpoint_files, "read_model_config",
                        lambda path: {"model_name": "tiny", "model_cfg": open_clip.get_model_config("eval-tiny-vit")})
    (tmp_path / "checkpoints").mkdir()
    loaded = load_checkpoint(str(tmp_path))
    assert calls == [tmp_path]
    for got, want in zip(loaded_features(loaded), reference_features(tiny_model)):
        torch.testing.assert_close(got, want)


def test_real_run_dir_and_tag_dir(run_dir: Path, tiny_model: torch.nn.Module) -> None:
    for path in (run_dir, run_dir / "checkpoints" / "step_00000001"):
        loaded = load_checkpoint(str(path))
        for got, want in zip(loaded_features(loaded), reference_features(tiny_model)):
            torch.testing.assert_close(got, want)


def test_incomplete_run_dir_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("{}\n")
    with pytest.raises(ValueError) as info:
        load_checkpoint(str(tmp_path))
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
    json.dumps(str(info.value))
