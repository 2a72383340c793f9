"""Evaluation during training: the trainer's CLI hands `evaluate_engine` to `pretrain.train.train`,
so pretrain/ never imports eval/ (and eval/ reads the trainer's objects by attribute only).

`engine` is the DeepSpeed engine; `parts` has `preprocess_val` and `tokenizer`; `cfg` is the run's
TrainConfig; `dist` its DistContext (rank, device, is_main).
"""
from __future__ import annotations

from pathlib import Path

from clip_pretrain.eval.encoder import ForwardEncoder
from clip_pretrain.eval.results import dumps
from clip_pretrain.eval.run import run_suite


def evaluate_engine(engine, parts, cfg, dist, step: int) -> dict[str, float]:
    """Runs the eval suite on every rank together: images and prompts are sharded over the ranks,
    each rank runs the same number of forwards (ZeRO-3 gathers weights inside each one), and every
    rank gets the same metrics back. Returns them flat as eval/<task>/<metric>."""
    precision = "bf16" if cfg.precision == "bf16" else "fp32"
    encoder = ForwardEncoder(engine, parts.preprocess_val, parts.tokenizer, device=dist.device, precision=precision)
    notes: list[str] = []
    engine.eval()
    try:
        records = run_suite(
            encoder,
            cfg.eval.suite,
            device=str(dist.device),
            batch_size=cfg.eval.batch_size,
            workers=cfg.data.workers,
            model=cfg.model.name,
            pretrained=f"{cfg.run_dir}@step{step}",
            model_id=f"{cfg.run_dir}@step{step}",
            progress=False,
            notes=notes,
        )
    finally:
        engine.train()
    if dist.is_main:
        for note in notes:
            print(f"eval note: {note}", flush=True)
        out = Path(cfg.run_dir) / "eval" / f"step_{step:08d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(dumps(records))
    return {
        f"eval/{record['dataset']}/{name}": float(value)
        for record in records
        for name, value in record["metrics"].items()
        if isinstance(value, (int, float))
    }
