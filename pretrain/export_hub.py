"""Prepares a folder for the Hugging Face Hub from a run: open_clip's Hub layout plus a model card.

    python -m clip_pretrain.pretrain.export_hub RUN_DIR HUB_DIR

HUB_DIR gets `open_clip_model.safetensors` (the file `open_clip` fetches for `hf-hub:ORG/NAME`),
`open_clip_config.json` (model_cfg + preprocess_cfg) and `README.md` (the model card: training
config and eval results when the run has them). Nothing is uploaded; do that with
`huggingface-cli upload ORG/NAME HUB_DIR .` once the card reads right. The weights come from
RUN/export when training exported them, else from the newest complete checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clip_pretrain.common.cli import prog_name
from clip_pretrain.common import checkpoint_files as ckpt

HUB_WEIGHTS = "open_clip_model.safetensors"


def export_hub(run_dir: str | Path, hub_dir: str | Path) -> Path:
    """Writes HUB_DIR (see the module docstring); returns it. Loadable as `local-dir:HUB_DIR`."""
    from safetensors.torch import load_file, save_file

    run_dir, hub_dir = Path(run_dir), Path(hub_dir)
    export = run_dir / "export" / "model.safetensors"
    if export.is_file():
        state_dict, model_config = load_file(str(export)), ckpt.read_model_config(run_dir / "export")
    else:  # no export (checkpoint.export=false, or a run still going): consolidate the newest checkpoint
        checkpoint_dir = ckpt.resolve_checkpoint_dir(run_dir)
        state_dict, model_config = ckpt.consolidated_state_dict(checkpoint_dir), ckpt.read_model_config(checkpoint_dir)
    if "logit_bias" in state_dict and model_config["model_cfg"].get("init_logit_bias") is None:
        # A SigLIP export whose config predates init_logit_bias: open_clip would build no bias to load into.
        model_config["model_cfg"]["init_logit_bias"] = float(state_dict["logit_bias"])
    hub_dir.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write(hub_dir / HUB_WEIGHTS, lambda tmp: save_file(state_dict, str(tmp)))
    (hub_dir / ckpt.MODEL_CONFIG).write_text(json.dumps(model_config, indent=2), encoding="utf-8")
    (hub_dir / "README.md").write_text(model_card(run_dir, model_config), encoding="utf-8")
    return hub_dir


def model_card(run_dir: Path, model_config: dict) -> str:
    """The Hub's README.md: metadata header, how to load, training config, eval results."""
    name = model_config.get("model_name", "model")
    config = run_dir / "config.yaml"
    lines = [
        "---", "library_name: open_clip", "pipeline_tag: zero-shot-image-classification",
        "tags: [clip, open_clip, zero-shot-image-classification]", "---", "",
        f"# {run_dir.name} ({name})", "",
        f"Contrastive image-text model (open_clip `{name}` architecture) trained with this project's "
        "`pretrain.train`.", "",
        "```python", "import open_clip", "",
        'model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:ORG/NAME")',
        'tokenizer = open_clip.get_tokenizer("hf-hub:ORG/NAME")', "```", "",
        "## Training config", "",
        "```yaml", config.read_text(encoding="utf-8").rstrip() if config.is_file() else "# config.yaml not found", "```",
        "", "## Evaluation", "", eval_results(run_dir),
    ]
    return "\n".join(lines) + "\n"


def eval_results(run_dir: Path) -> str:
    """RUN/results/results.md (eval.run --out), else the last training-time eval, else a note."""
    table = run_dir / "results" / "results.md"
    if table.is_file():
        return table.read_text(encoding="utf-8").rstrip()
    steps = sorted((run_dir / "eval").glob("step_*.json"))
    if not steps:
        return "No evaluation results in the run directory."
    rows = ["| dataset | task | metrics |", "| --- | --- | --- |"]
    for record in json.loads(steps[-1].read_text(encoding="utf-8")):
        metrics = ", ".join(f"{key}={value:.4g}" for key, value in record["metrics"].items() if isinstance(value, (int, float)))
        rows.append(f"| {record['dataset']} | {record['task']} | {metrics} |")
    return f"At {steps[-1].stem} of training:\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("clip_pretrain.pretrain.export_hub"), description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training run directory (RUN/export or RUN/checkpoints)")
    parser.add_argument("hub_dir", help="folder to write (created; its three files are replaced)")
    args = parser.parse_args(argv)
    try:
        out = export_hub(args.run_dir, args.hub_dir)
    except (ckpt.CheckpointError, OSError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {HUB_WEIGHTS}, {ckpt.MODEL_CONFIG}, README.md; load with "
          f"open_clip.create_model_and_transforms('local-dir:{out}'), upload with "
          f"huggingface-cli upload ORG/NAME {out} .")
    return 0


if __name__ == "__main__":
    sys.exit(main())
