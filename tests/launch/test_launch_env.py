"""clip_pretrain.launch.env: launcher environments -> DistEnv, with simulated torchrun / srun environments."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clip_pretrain.launch.env import (
    DistEnv,
    apply_dist_env,
    expand_hostlist,
    parse_tasks_per_node,
    resolve_dist_env,
    slurm_job_port,
)

REPO = Path(__file__).resolve().parents[2]


def srun_task(procid: int, localid: int, nodeid: int, **extra: str) -> dict[str, str]:
    """The variables srun gives one task of a 3-node, 4+4+2-task job (job id 123456)."""
    env = {
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_NODEID": str(nodeid),
        "SLURM_NTASKS": "10",
        "SLURM_TASKS_PER_NODE": "4(x2),2",
        "SLURM_JOB_NODELIST": "gpu[001-002],gpu010",
    }
    env.update(extra)
    return env


def test_nothing_set_is_a_single_process() -> None:
    env = resolve_dist_env({})
    assert env == DistEnv(0, 1, 0, 1, 0, "127.0.0.1", 29500, "single")
    assert not env.is_distributed


def test_single_process_keeps_a_given_port() -> None:
    assert resolve_dist_env({"MASTER_PORT": "4242"}).master_port == 4242


def test_torchrun_variables() -> None:
    environ = {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29400",
    }
    assert resolve_dist_env(environ) == DistEnv(5, 8, 1, 4, 1, "node0", 29400, "torchrun")


def test_hand_rolled_env_init_is_one_node() -> None:
    env = resolve_dist_env({"RANK": "2", "WORLD_SIZE": "3"})
    assert (env.local_rank, env.local_world_size, env.node_rank) == (2, 3, 0)


def test_multi_node_multi_task_srun() -> None:
    # Global rank 9 is the second task on the third node, which holds only 2 tasks.
    env = resolve_dist_env(srun_task(procid=9, localid=1, nodeid=2))
    assert env == DistEnv(9, 10, 1, 2, 2, "gpu001", slurm_job_port(123456), "slurm")
    assert env.master_port == 10000 + 123456 % 20000


def test_srun_first_node_uses_its_own_task_count() -> None:
    env = resolve_dist_env(srun_task(procid=3, localid=3, nodeid=0))
    assert (env.local_rank, env.local_world_size, env.node_rank) == (3, 4, 0)


def test_srun_uniform_ntasks_per_node() -> None:
    environ = srun_task(procid=5, localid=1, nodeid=1, SLURM_NTASKS="8", SLURM_NTASKS_PER_NODE="4")
    del environ["SLURM_TASKS_PER_NODE"]
    assert resolve_dist_env(environ).local_world_size == 4


def test_step_layout_beats_job_layout() -> None:
    environ = srun_task(2, 2, 0, SLURM_NTASKS_PER_NODE="1", SLURM_STEP_TASKS_PER_NODE="4(x2),2")
    assert resolve_dist_env(environ).local_world_size == 4


def test_srun_single_task() -> None:
    environ = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
               "SLURM_NTASKS": "1", "SLURM_TASKS_PER_NODE": "1", "SLURM_NODELIST": "cpu5"}
    assert resolve_dist_env(environ) == DistEnv(0, 1, 0, 1, 0, "cpu5", 10077, "slurm")


@pytest.mark.parametrize("step", [{}, {"SLURM_STEP_ID": "4294967294"}, {"SLURM_STEPID": "batch"}])
def test_batch_script_is_not_a_rank(step: dict[str, str]) -> None:
    # sbatch's script has SLURM_PROCID=0 and the job's task count (seen on SLURM 22.05) but no
    # step id of its own: it must not wait for peers.
    environ = srun_task(0, 0, 0)
    del environ["SLURM_STEP_ID"]
    assert resolve_dist_env({**environ, **step}).launcher == "single"


def test_explicit_master_addr_and_port_win_under_slurm() -> None:
    env = resolve_dist_env(srun_task(0, 0, 0, MASTER_ADDR="10.0.0.7", MASTER_PORT="31000"))
    assert (env.master_addr, env.master_port) == ("10.0.0.7", 31000)


def test_torchrun_inside_srun_wins() -> None:
    # One srun task per node runs torchrun; its workers see both sets of variables.
    environ = srun_task(procid=1, localid=0, nodeid=1)
    environ.update({"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4",
                    "GROUP_RANK": "1", "MASTER_ADDR": "gpu001", "MASTER_PORT": "23456"})
    assert resolve_dist_env(environ) == DistEnv(6, 8, 2, 4, 1, "gpu001", 23456, "torchrun")


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"RANK": "4", "WORLD_SIZE": "4"}, "RANK"),
        ({"RANK": "x", "WORLD_SIZE": "4"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, "MASTER_PORT"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "80a"}, "MASTER_PORT"),
        (srun_task(10, 0, 2), "SLURM_PROCID"),
        (srun_task(0, 0, 0, SLURM_NTASKS="four"), "SLURM_NTASKS"),
        (srun_task(9, 2, 2), "SLURM_LOCALID"),
        (srun_task(9, 0, 3), "SLURM_NODEID"),
        (srun_task(0, 0, 0, SLURM_TASKS_PER_NODE="4(2)"), "SLURM_TASKS_PER_NODE"),
        (srun_task(0, 0, 0, SLURM_JOB_NODELIST="gpu[001-"), "SLURM_JOB_NODELIST"),
        (srun_task(0, 0, 0, SLURM_JOB_ID="abc"), "SLURM_JOB_ID"),
    ],
)
def test_inconsistent_values_raise_one_line_naming_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ValueError) as err:
        resolve_dist_env(environ)
    message = str(err.value)
    assert message.startswith(f"{variable}:") and "\n" not in message


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node1", ["node1"]),
        ("gpu[001-003,007],cpu5", ["gpu001", "gpu002", "gpu003", "gpu007", "cpu5"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("a[08-10]", ["a08", "a09", "a10"]),
        ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
        ("x[1],y-2.cluster,z[3-4]", ["x1", "y-2.cluster", "z3", "z4"]),
        (" gpu[1-2] ", ["gpu1", "gpu2"]),
    ],
)
def test_expand_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["", "gpu[1-", "gpu]1[", "a,,b", "gpu[3-1]", "gpu[a-b]", "gpu[[1]]"])
def test_bad_hostlists_raise(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^SLURM_NODELIST: "):
        expand_hostlist(bad, "SLURM_NODELIST")


def test_parse_tasks_per_node() -> None:
    assert parse_tasks_per_node("4(x2),2") == [4, 4, 2]
    assert parse_tasks_per_node("1") == [1]
    with pytest.raises(ValueError, match="^SLURM_TASKS_PER_NODE:"):
        parse_tasks_per_node("0")


def test_apply_dist_env_exports_env_init_variables() -> None:
    environ = {"PATH": "/bin"}
    apply_dist_env(resolve_dist_env(srun_task(procid=5, localid=1, nodeid=1)), environ)
    assert environ == {
        "PATH": "/bin", "RANK": "5", "WORLD_SIZE": "10", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1", "MASTER_ADDR": "gpu001", "MASTER_PORT": str(slurm_job_port(123456)),
    }
    # Round trip: the exported variables resolve to the same ranks, now as a torchrun-style env.
    again = resolve_dist_env(environ)
    assert (again.rank, again.world_size, again.local_rank, again.node_rank) == (5, 10, 1, 1)


def test_dataclass_rejects_impossible_ranks() -> None:
    with pytest.raises(ValueError, match="^rank:"):
        DistEnv(2, 2, 0, 1, 0, "h", 1, "single")


def test_cli_prints_json_and_reports_errors() -> None:
    base = {"PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "clip_pretrain.launch.env"], cwd=REPO, env={**base, **srun_task(1, 1, 0)},
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rank"] == 1
    bad = subprocess.run([sys.executable, "-m", "clip_pretrain.launch.env"], cwd=REPO, env={**base, "RANK": "1", "WORLD_SIZE": "1"},
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: RANK:")
