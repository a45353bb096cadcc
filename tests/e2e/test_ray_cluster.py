"""Two nodes on Ray, for real on this machine: the exact `ray start` commands of the head and
worker roles (cluster.ray_head_argv / ray_worker_argv) form one cluster, the head's wait
sees both nodes, and Ray places work on each of them.

The engine part cannot run here: vLLM's CPU platform has no Ray device (its
`ray_device_key` is empty, and vllm/v1/executor/ray_utils.py refuses with "current platform
cpu does not support ray"), so `--distributed-executor-backend ray` is checked on GPUs only
(MULTINODE.md). Only our processes are stopped at the end (their own temp dir)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from vllm_mms import bootstrap, environment
from vllm_mms.config.resolve import Project, resolve
from vllm_mms.stack import cluster, processes

from .conftest import copy_project

SPREAD = """
import ray, sys
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
ray.init(address=sys.argv[1], logging_level="ERROR")
group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
ray.get(group.ready(), timeout=60)

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()

nodes = ray.get([where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
    placement_group=group, placement_group_bundle_index=i)).remote() for i in range(2)])
print(len(set(nodes)))
"""


def cluster_python() -> str:
    path = str(environment.get("MMS_CLUSTER_PYTHON") or bootstrap.python_of("cluster"))
    if not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail(f"the cluster environment is missing ({path}); ./runMe.sh test builds it")
        pytest.skip("the cluster environment is not built (./runMe.sh test builds it)")
    return path


def our_ray_processes(temp_dir: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if temp_dir.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_head_and_worker_commands_form_one_cluster(tmp_path):
    python = cluster_python()
    ray = str(Path(python).parent / "ray")
    port = processes.free_port()
    project = copy_project(tmp_path / "project")
    (project / "vars.env").write_text(f"VLLM_HOST_IP=127.0.0.1\nCLUSTER_RAY_PORT={port}\n"
                                      "CLUSTER_HEAD_IP=127.0.0.1\n")
    resolved = resolve(Project(project), "smollm2-135m-cpu", environ={})
    # Ray's socket paths must stay short: a temp dir of our own under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="mms-ray-", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    logs = tmp_path / "logs"
    # The head runs with --block here, so the test owns its processes; the image runs the
    # same command without it and then execs vLLM.
    head = processes.spawn("ray-head", [*cluster.ray_head_argv(resolved, ray), "--temp-dir",
                                    temp_dir, "--block"], env, logs)
    worker = None
    try:
        address = cluster.head_address(resolved, "head")
        assert address == f"127.0.0.1:{port}"
        cluster.wait_for_nodes(python, address, 1, 0, deadline_s=120)
        worker = processes.spawn("ray-worker", cluster.ray_worker_argv(resolved, ray), env, logs)
        waited = cluster.wait_for_nodes(python, address, 2, 0, deadline_s=120)
        print(f"\n[e2e] the Ray worker joined the head in {waited:.1f}s")
        assert cluster.cluster_size(python, address)[0] == 2

        status = subprocess.run([ray, "status", "--address", address], capture_output=True,
                                text=True, timeout=60, env=env)
        active = status.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        assert len([line for line in active.splitlines() if "node_" in line]) == 2, status.stdout

        spread = subprocess.run([python, "-c", SPREAD, address], capture_output=True, text=True,
                                timeout=180, env=env)
        assert spread.stdout.split()[-1:] == ["2"], spread.stdout + spread.stderr
    finally:
        processes.terminate([p.pid for p in (head, worker) if p is not None], grace=10)
        leftovers = our_ray_processes(temp_dir)
        for pid in leftovers:
            processes.signal_group(pid, 9)
        processes.reap()
    print(f"[e2e] stopped; {len(leftovers)} Ray process(es) outlived their group and were killed")
