#!/usr/bin/env bash
# Launch pretraining with torchrun: N worker processes on this node.
#
#   launch/torchrun.sh [NPROC] CONFIG [key=value ...]
#
# NPROC (argument or env) defaults to the GPUs visible here, or 2 CPU processes when there are none
# (then DS_ACCELERATOR=cpu and the training code picks the gloo backend from the device).
# Single node: torchrun --standalone (c10d rendezvous on a free localhost port).
# Several nodes (launch/slurm/pretrain.sbatch runs this once per node): set NNODES, NODE_RANK,
# MASTER_ADDR and MASTER_PORT; every node then meets at the c10d rendezvous MASTER_ADDR:MASTER_PORT.
#
# Other env: PYTHON (default: the repo's .venv, else python3), TRAIN_MODULE (default clip_pretrain.pretrain.train),
# MAX_RESTARTS (default 0), SHUTDOWN_TIMEOUT (seconds the workers get to save a checkpoint after a
# SIGTERM/SIGUSR1 before torchrun kills them; default 110, inside the sbatch's 120 s warning).
set -euo pipefail

usage() {
  echo "usage: launch/torchrun.sh [NPROC] CONFIG [key=value ...]  (env: NPROC, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, PYTHON)" >&2
  exit 2
}

# GPUs this process may use: CUDA_VISIBLE_DEVICES (set by SLURM and docker --gpus) wins over nvidia-smi.
gpu_count() {
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
    if [[ -z $CUDA_VISIBLE_DEVICES || $CUDA_VISIBLE_DEVICES == "-1" ]]; then
      echo 0
    else
      local -a devices
      IFS=, read -r -a devices <<<"$CUDA_VISIBLE_DEVICES"
      echo "${#devices[@]}"
    fi
  elif command -v nvidia-smi >/dev/null 2>&1; then
    # grep -c prints 0 (and exits 1) when nvidia-smi lists nothing, e.g. a driver without devices.
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

if [[ $# -ge 1 ]] && is_uint "$1"; then
  NPROC=$1
  shift
fi
[[ $# -ge 1 ]] || usage
CONFIG=$1
shift

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Resolve the config against the caller's directory before moving to the repo root.
[[ $CONFIG == /* ]] || CONFIG="$PWD/$CONFIG"
if [[ ! -f $CONFIG ]]; then
  echo "error: config $CONFIG not found; pass a YAML file such as pretrain/configs/NAME.yaml" >&2
  exit 2
fi
cd "$REPO_DIR"

GPUS=$(gpu_count)
if ((GPUS == 0)); then
  # No GPU: DeepSpeed's CPU accelerator; the training code then initialises gloo.
  export DS_ACCELERATOR=cpu
  NPROC=${NPROC:-2}
else
  NPROC=${NPROC:-$GPUS}
fi
NNODES=${NNODES:-1}
for name in NPROC NNODES; do
  if ! is_uint "${!name}" || ((${!name} < 1)); then
    echo "error: $name=${!name} is not a positive integer; set it to the number of processes/nodes" >&2
    exit 2
  fi
done
if [[ -z ${OMP_NUM_THREADS:-} ]]; then
  # Share this node's cores between the workers instead of oversubscribing them.
  threads=$(($(nproc) / NPROC))
  export OMP_NUM_THREADS=$((threads > 0 ? threads : 1))
fi

if ((NNODES > 1)) || [[ -n ${MASTER_ADDR:-} ]]; then
  # c10d rendezvous: node ranks are assigned as nodes join; the agent on MASTER_ADDR hosts the store.
  NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
  RDZV_ARGS=(
    --nnodes="$NNODES"
    --node-rank="$NODE_RANK"
    --rdzv-backend=c10d
    --rdzv-endpoint="${MASTER_ADDR:?set MASTER_ADDR to the first node for a multi-node run}:${MASTER_PORT:-29500}"
    --rdzv-id="${RDZV_ID:-${SLURM_JOB_ID:-clip-pretrain}}"
  )
else
  RDZV_ARGS=(--standalone)
fi

if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $REPO_DIR/.venv/bin/python ]]; then PYTHON=$REPO_DIR/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"

echo "torchrun: nodes=$NNODES nproc_per_node=$NPROC gpus=$GPUS config=$CONFIG ${RDZV_ARGS[*]}" >&2
# SIGUSR1 is added to the handled signals so a SLURM pre-timeout warning reaches the workers (which
# checkpoint and exit 0) instead of killing torchrun with the default action.
exec "$PYTHON" -m torch.distributed.run \
  --nproc-per-node="$NPROC" \
  "${RDZV_ARGS[@]}" \
  --max-restarts="${MAX_RESTARTS:-0}" \
  --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
  --shutdown-timeout="${SHUTDOWN_TIMEOUT:-110}" \
  -m "${TRAIN_MODULE:-clip_pretrain.pretrain.train}" --config "$CONFIG" "$@"
