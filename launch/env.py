"""Map launcher environments (torchrun, srun, none) to torch.distributed's env:// variables.

Everything here is a pure function of a string mapping, so every launcher layout can be unit-tested
with a dict. `python -m clip_pretrain.launch.env` prints the resolved `DistEnv` as JSON (handy inside `srun`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from typing import Literal

from clip_pretrain.common.cli import prog_name

Launcher = Literal["torchrun", "slurm", "single"]

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
# Ports derived from a SLURM job id fall in [10000, 30000): below the usual ephemeral range
# (32768+ on Linux), so the OS is unlikely to have handed one out to a client socket already.
SLURM_PORT_BASE = 10000
SLURM_PORT_SPAN = 20000
# SLURM's id of the batch step: the batch script itself, which is one process, not a rank.
SLURM_BATCH_STEP_IDS = frozenset({"batch", "4294967294"})


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job: global and per-node ranks plus the rendezvous point."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    launcher: Launcher

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size: must be >= 1, got {self.world_size}; check the launcher's task count")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: {self.rank} is outside [0, {self.world_size}); check the launcher's ranks")
        if self.local_world_size < 1:
            raise ValueError(f"local_world_size: must be >= 1, got {self.local_world_size}; check tasks per node")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(
                f"local_rank: {self.local_rank} is outside [0, {self.local_world_size}); check tasks per node"
            )
        if self.node_rank < 0:
            raise ValueError(f"node_rank: must be >= 0, got {self.node_rank}; check the node index")
        if not self.master_addr:
            raise ValueError("master_addr: is empty; set MASTER_ADDR to the first node's host name")
        if not 1 <= self.master_port <= 65535:
            raise ValueError(f"master_port: {self.master_port} is not a TCP port; set MASTER_PORT in [1, 65535]")
        if self.launcher not in ("torchrun", "slurm", "single"):
            raise ValueError(f"launcher: unknown {self.launcher!r}; expected torchrun, slurm or single")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_dist_env(environ: Mapping[str, str]) -> DistEnv:
    """Resolve ranks from torchrun's variables, else SLURM's (srun, one task per GPU), else one process.

    torchrun's variables win when both are present: torchrun started inside an srun task sees the
    task's SLURM_PROCID too, but the ranks that matter are the ones torchrun assigned.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return _from_torchrun(environ)
    if _in_slurm_step(environ):
        return _from_slurm(environ)
    return DistEnv(
        rank=0,
        world_size=1,
        local_rank=0,
        local_world_size=1,
        node_rank=0,
        master_addr=environ.get("MASTER_ADDR") or DEFAULT_MASTER_ADDR,
        master_port=_port(environ, "MASTER_PORT", DEFAULT_MASTER_PORT),
        launcher="single",
    )


def dist_env_vars(env: DistEnv) -> dict[str, str]:
    """The env:// variables torch.distributed.init_process_group reads, plus torchrun's per-node ones."""
    return {
        "RANK": str(env.rank),
        "WORLD_SIZE": str(env.world_size),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.local_world_size),
        "GROUP_RANK": str(env.node_rank),
        "MASTER_ADDR": env.master_addr,
        "MASTER_PORT": str(env.master_port),
    }


def apply_dist_env(env: DistEnv, environ: MutableMapping[str, str]) -> None:
    """Export `env` into `environ` (usually os.environ) so `init_process_group("env://")` finds it."""
    environ.update(dist_env_vars(env))


def _from_torchrun(environ: Mapping[str, str]) -> DistEnv:
    world_size = _int(environ, "WORLD_SIZE", minimum=1)
    rank = _rank(environ, "RANK", world_size, "WORLD_SIZE")
    # A hand-rolled env:// launch may set only RANK/WORLD_SIZE: then it is one node holding every rank.
    local_world_size = _int(environ, "LOCAL_WORLD_SIZE", minimum=1, default=world_size)
    local_rank = _rank(environ, "LOCAL_RANK", local_world_size, "LOCAL_WORLD_SIZE", default=rank)
    node_var = "GROUP_RANK" if "GROUP_RANK" in environ else "NODE_RANK"
    node_rank = _int(environ, node_var, minimum=0, default=rank // local_world_size)
    return DistEnv(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        node_rank=node_rank,
        master_addr=environ.get("MASTER_ADDR") or DEFAULT_MASTER_ADDR,
        master_port=_port(environ, "MASTER_PORT", DEFAULT_MASTER_PORT),
        launcher="torchrun",
    )


def _in_slurm_step(environ: Mapping[str, str]) -> bool:
    """True inside an srun task. The batch script also has SLURM_PROCID=0 and the job's SLURM_NTASKS,
    but no step id (or the batch step's): treating it as rank 0 would wait for peers forever."""
    step_id = environ.get("SLURM_STEP_ID", environ.get("SLURM_STEPID"))
    return "SLURM_PROCID" in environ and step_id is not None and step_id not in SLURM_BATCH_STEP_IDS


def _from_slurm(environ: Mapping[str, str]) -> DistEnv:
    world_var = "SLURM_NTASKS" if "SLURM_NTASKS" in environ else "SLURM_NPROCS"
    world_size = _int(environ, world_var, minimum=1)
    rank = _rank(environ, "SLURM_PROCID", world_size, world_var)
    node_rank = _int(environ, "SLURM_NODEID", minimum=0, default=0)
    local_world_size = _slurm_tasks_on_node(environ, node_rank, world_size)
    local_rank = _rank(environ, "SLURM_LOCALID", local_world_size, "tasks per node", default=0)
    return DistEnv(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        node_rank=node_rank,
        master_addr=environ.get("MASTER_ADDR") or _slurm_master_addr(environ),
        master_port=_port(environ, "MASTER_PORT", _slurm_default_port(environ)),
        launcher="slurm",
    )


def _slurm_tasks_on_node(environ: Mapping[str, str], node_rank: int, world_size: int) -> int:
    """Tasks on this node: this node's entry of "4(x2),2", else the uniform --ntasks-per-node."""
    # SLURM_STEP_TASKS_PER_NODE describes this srun step; the job-wide values (inherited from
    # sbatch --ntasks-per-node) may differ from it when the step asks for another layout.
    if "SLURM_STEP_TASKS_PER_NODE" in environ:
        return _node_entry(environ, "SLURM_STEP_TASKS_PER_NODE", node_rank)
    if "SLURM_NTASKS_PER_NODE" in environ:
        return _int(environ, "SLURM_NTASKS_PER_NODE", minimum=1)
    if "SLURM_TASKS_PER_NODE" in environ:
        return _node_entry(environ, "SLURM_TASKS_PER_NODE", node_rank)
    return world_size


def _node_entry(environ: Mapping[str, str], name: str, node_rank: int) -> int:
    counts = parse_tasks_per_node(environ[name], name)
    if node_rank >= len(counts):
        raise ValueError(
            f"SLURM_NODEID: node {node_rank} has no entry in {name}={environ[name]!r}; check the node allocation"
        )
    return counts[node_rank]


def _slurm_master_addr(environ: Mapping[str, str]) -> str:
    for name in ("SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_STEP_NODELIST"):
        if environ.get(name):
            return expand_hostlist(environ[name], name)[0]
    return DEFAULT_MASTER_ADDR


def _slurm_default_port(environ: Mapping[str, str]) -> int:
    name = "SLURM_JOB_ID" if "SLURM_JOB_ID" in environ else "SLURM_JOBID"
    if name not in environ:
        return DEFAULT_MASTER_PORT
    return slurm_job_port(_int(environ, name, minimum=0))


def slurm_job_port(job_id: int) -> int:
    """Deterministic rendezvous port for a SLURM job; the sbatch scripts use the same formula."""
    return SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN


_TASKS_ITEM = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def parse_tasks_per_node(value: str, name: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """Expand SLURM's run-length task counts: "4(x2),2" -> [4, 4, 2] (one entry per node)."""
    counts: list[int] = []
    for item in value.split(","):
        match = _TASKS_ITEM.match(item.strip())
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"{name}: cannot parse {value!r}; expected a list like '4(x2),2'")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def expand_hostlist(hostlist: str, name: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Expand SLURM's compressed host list: "gpu[001-003,007],cpu5" -> gpu001, gpu002, gpu003, gpu007, cpu5.

    Several bracket groups in one name expand as a product ("r[1-2]n[1-2]" -> r1n1, r1n2, r2n1, r2n2),
    and zero padding is kept from the range's start ("[08-10]" -> 08, 09, 10).
    """
    hosts: list[str] = []
    for item in _split_top_level(hostlist, name):
        pieces = re.split(r"(\[[^\[\]]*\])", item)
        choices = [_expand_brackets(p[1:-1], hostlist, name) if p.startswith("[") else [p] for p in pieces]
        hosts.extend("".join(parts) for parts in itertools.product(*choices))
    if not hosts:
        raise ValueError(f"{name}: no hosts in {hostlist!r}; expected a list like 'gpu[001-003],cpu5'")
    return hosts


def _split_top_level(hostlist: str, name: str) -> list[str]:
    """Split on commas outside brackets; reject unbalanced brackets."""
    items, depth, current = [], 0, []
    for char in hostlist.strip():
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"{name}: unbalanced brackets in {hostlist!r}; expected a list like 'gpu[001-003]'")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError(f"{name}: unbalanced brackets in {hostlist!r}; expected a list like 'gpu[001-003]'")
    items.append("".join(current))
    if any(not item.strip() for item in items):
        raise ValueError(f"{name}: empty host name in {hostlist!r}; expected a list like 'gpu[001-003],cpu5'")
    return [item.strip() for item in items]


def _expand_brackets(body: str, hostlist: str, name: str) -> list[str]:
    """"001-003,007" -> ["001", "002", "003", "007"], keeping the zero padding of each range start."""
    values: list[str] = []
    for part in body.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if match is None:
            raise ValueError(f"{name}: bad range {part!r} in {hostlist!r}; expected digits like '001-003'")
        start, end = match.group(1), match.group(2) or match.group(1)
        if int(end) < int(start):
            raise ValueError(f"{name}: descending range {part!r} in {hostlist!r}; write it low-high")
        values.extend(str(i).zfill(len(start)) for i in range(int(start), int(end) + 1))
    return values


def _int(environ: Mapping[str, str], name: str, *, minimum: int, default: int | None = None) -> int:
    if name not in environ:
        if default is None:
            raise ValueError(f"{name}: is not set; the launcher must export it")
        return default
    raw = environ[name].strip()
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {environ[name]!r}; fix the launcher environment") from None
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}; fix the launcher environment")
    return value


def _rank(environ: Mapping[str, str], name: str, size: int, size_name: str, default: int | None = None) -> int:
    rank = _int(environ, name, minimum=0, default=default)
    if rank >= size:
        raise ValueError(f"{name}: {rank} is not below {size_name}={size}; ranks run from 0 to size-1")
    return rank


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    port = _int(environ, name, minimum=1, default=default)
    if port > 65535:
        raise ValueError(f"{name}: {port} is not a TCP port; use a value in [1, 65535]")
    return port


def main(argv: list[str] | None = None) -> int:
    """Print this process's resolved DistEnv as one JSON line (errors: `error: ...`, exit 2)."""
    argparse.ArgumentParser(prog=prog_name("clip_pretrain.launch.env"), description=main.__doc__).parse_args(argv)
    try:
        env = resolve_dist_env(os.environ)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(env), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
