#!/usr/bin/env bash
# The README's first command: the whole pipeline on the embedded demo data, on this machine's CPU.
#   install -> generate + shard the demo set -> pretrain (2 processes, ZeRO-2, gloo) -> export
#   -> zero-shot + retrieval on the held-out split -> results table (runs/demo/results/)
# Env: NPROC (default 2), RUN_DIR (default runs/demo), extra key=value overrides as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/venv.sh
source launch/venv.sh
ensure_venv

export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
RUN_DIR="${RUN_DIR:-runs/demo}"
SHARDS=demo_out/shards

if [ ! -f "$SHARDS/manifest.json" ]; then
  .venv/bin/python -m clip_pretrain.data.demo --output "$SHARDS"
fi
rm -rf "$RUN_DIR"
PYTHON=.venv/bin/python launch/torchrun.sh "${NPROC:-2}" pretrain/configs/demo.yaml \
  "run_dir=$RUN_DIR" "data.train=$SHARDS" eval.suite=null "$@"
.venv/bin/python -m clip_pretrain.eval.run --checkpoint "$RUN_DIR/export/model.safetensors" \
  --suite eval/suites/demo.yaml --out "$RUN_DIR/results"
