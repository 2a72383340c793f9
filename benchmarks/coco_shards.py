"""Benchmark shards of real photos: ../shared/data/coco-mini replicated, built by data.build.

239 photos are too few to time a loader or a train step; copies under distinct keys give a set of
any size with real-JPEG decode cost (each copy is re-encoded by the builder at ``max_side``, the
same way a user's own photos would be).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def read_rows(coco: Path) -> list[dict]:
    """coco-mini's captions.jsonl rows: {"image": "images/...jpg", "captions": [...], ...}."""
    if not (coco / "captions.jsonl").is_file():
        raise FileNotFoundError(f"--coco-mini {coco} has no captions.jsonl; point it at ../shared/data/coco-mini")
    return [json.loads(line) for line in (coco / "captions.jsonl").read_text().splitlines() if line.strip()]


def replicated_table(coco: Path, table: Path, replicas: int, rows: list[dict] | None = None) -> int:
    """Write a captions table naming each photo of ``rows`` (default: all of coco-mini) ``replicas``
    times under distinct keys; returns its row count."""
    rows = read_rows(coco) if rows is None else rows
    with open(table, "w") as out:
        for copy in range(replicas):
            for index, row in enumerate(rows):
                image = str((coco / row["image"]).resolve())
                out.write(json.dumps({"image": image, "captions": row["captions"], "key": f"c{copy:03d}i{index:04d}"}) + "\n")
    return replicas * len(rows)


def build_command(coco: Path, table: Path, out: Path, max_side: int, workers: int, shard_size: int = 256) -> list[str]:
    return [sys.executable, "-m", "clip_pretrain.data.build", "--input", str(table), "--output", str(out),
            "--image-root", str(coco.resolve()), "--key-column", "key", "--max-side", str(max_side),
            "--shard-size", str(shard_size), "--val-fraction", "0", "--workers", str(workers), "--no-progress"]


def build_coco_shards(coco: Path, out: Path, max_side: int, replicas: int, workers: int) -> str:
    """Shards of coco-mini x ``replicas`` at ``max_side`` px in ``out``; returns ``out`` as a spec.
    Raises RuntimeError with the builder's last output lines when the build fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table = out.parent / f"{out.name}-table.jsonl"
    replicated_table(coco, table, replicas)
    result = subprocess.run(build_command(coco, table, out, max_side, workers), cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-5:])
        raise RuntimeError(f"clip_pretrain.data.build of coco-mini shards failed:\n{tail}")
    return str(out)
