"""`./runMe.sh cluster head|worker [MODEL]`: one model over several GPU nodes (reference: two
DGX Sparks cabled together) with vLLM's own Ray executor. See MULTINODE.md.

Both roles run the engine image with host networking (Ray and NCCL use many ports between
the nodes):
- worker: `ray start --address HEAD:PORT --block` with the engine's environment (NCCL_*,
  GLOO_*, VLLM_HOST_IP, the HF token: vLLM's workers on this node load their share of the
  weights here);
- head: `ray start --head`, wait until every node (and its GPUs) has joined, render the
  proxy configuration like a single-node engine, then exec `vllm serve ... --distributed-
  executor-backend ray` with tensor (or pipeline) parallelism across the nodes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Optional, Sequence

import yaml

from .. import environment, paths
from ..config.resolve import Project, Resolved, resolve
from ..engine import fit, serve
from ..errors import UserError
from ..progress import SYSTEM_CLOCK, Clock, wait_until
from .compose import ENGINE_SERVICE, WORKER_SERVICE

CLUSTER_COMPOSE = "docker-compose.cluster.yml"
HEAD_SERVICE = ENGINE_SERVICE  # the Ray head serves in the engine service
INFINIBAND = environment.variable("MMS_INFINIBAND_DEVICE").default
INFINIBAND_COMPOSE = "compose.infiniband.yml"  # in the state directory, only when it exists
# Defaults for both Ray roles (and vLLM's own Ray driver on the head). A value in the
# container's environment or in vars.env wins over these.
# RAY_memory_monitor_refresh_ms=0 turns Ray's OOM killer off: on unified memory (DGX Spark)
# Ray counts the model weights as system memory and kills the vLLM actors. NVIDIA's
# two-Spark vLLM recipe sets it the same way.
RAY_DEFAULTS = {"RAY_memory_monitor_refresh_ms": "0"}
PARALLEL_FLAGS = ("--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp",
                  "--distributed-executor-backend")
# Alive nodes and their GPUs, as Ray itself reports them.
NODES_SCRIPT = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                "alive = [n for n in ray.nodes() if n['Alive']]; "
                "print(len(alive), sum(n['Resources'].get('GPU', 0) for n in alive))")


def host_ip(resolved: Resolved) -> str:
    ip = resolved.engine_env.get("VLLM_HOST_IP", "")
    if not ip:
        raise UserError("VLLM_HOST_IP is not set: put this node's address on the cluster link "
                        "in vars.env (e.g. VLLM_HOST_IP=192.168.100.1), see MULTINODE.md")
    return ip


def head_address(resolved: Resolved, role: str) -> str:
    settings = resolved.settings
    if role == "head":
        return f"{host_ip(resolved)}:{settings.CLUSTER_RAY_PORT}"
    if not settings.CLUSTER_HEAD_IP:
        raise UserError("CLUSTER_HEAD_IP is not set: put the head node's address on the cluster "
                        "link in vars.env (e.g. CLUSTER_HEAD_IP=192.168.100.1), see MULTINODE.md")
    return f"{settings.CLUSTER_HEAD_IP}:{settings.CLUSTER_RAY_PORT}"


def parallel_sizes(resolved: Resolved) -> tuple[int, int]:
    """(tensor, pipeline) parallel sizes spanning CLUSTER_NODES x CLUSTER_GPUS_PER_NODE."""
    settings = resolved.settings
    nodes, per_node = settings.CLUSTER_NODES, settings.CLUSTER_GPUS_PER_NODE
    if settings.CLUSTER_PARALLEL == "tensor":
        return nodes * per_node, 1
    return per_node, nodes


def cluster_engine_argv(resolved: Resolved, port: int = 8000) -> list[str]:
    """The catalog's engine line, spread over the cluster: its own parallel flags replaced."""
    argv = serve.strip_flags(serve.engine_argv(resolved, host="0.0.0.0", port=port),
                              PARALLEL_FLAGS)
    tensor, pipeline = parallel_sizes(resolved)
    return [*argv, "--distributed-executor-backend", "ray", "--tensor-parallel-size",
            str(tensor), "--pipeline-parallel-size", str(pipeline)]


def ray_head_argv(resolved: Resolved, ray: str = "ray") -> list[str]:
    return [ray, "start", "--head", "--node-ip-address", host_ip(resolved),
            "--port", str(resolved.settings.CLUSTER_RAY_PORT), "--include-dashboard", "false",
            "--disable-usage-stats"]


def ray_worker_argv(resolved: Resolved, ray: str = "ray") -> list[str]:
    return [ray, "start", "--address", head_address(resolved, "worker"),
            "--node-ip-address", host_ip(resolved), "--disable-usage-stats", "--block"]


def cluster_size(python: str, address: str) -> Optional[tuple[int, float]]:
    """(alive nodes, GPUs) of the Ray cluster at `address`, or None when it does not answer."""
    try:
        out = subprocess.run([python, "-c", NODES_SCRIPT, address], capture_output=True,
                             text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    try:
        nodes, gpus = out.stdout.split()[-2:]
        return int(nodes), float(gpus)
    except ValueError:
        return None


def wait_for_nodes(python: str, address: str, nodes: int, gpus: int, deadline_s: float,
                   clock: Clock = SYSTEM_CLOCK) -> float:
    """Until `nodes` nodes with `gpus` GPUs in all have joined; seconds waited."""
    start = clock.monotonic()
    seen: Optional[tuple[int, float]] = None  # the last answer Ray gave

    def joined() -> bool:
        nonlocal seen
        seen = cluster_size(python, address) or seen
        return seen is not None and seen[0] >= nodes and seen[1] >= gpus

    def progress() -> str:
        return (f"[cluster] waiting for {nodes} node(s) with {gpus} GPU(s) at {address}: "
                f"{seen[0] if seen else 0} joined")

    if not wait_until(joined, deadline_s, progress, every=3, clock=clock):
        have = f"{seen[0]} node(s), {seen[1]:g} GPU(s)" if seen else "no answer from Ray"
        raise UserError(f"the Ray cluster at {address} has {have} after {deadline_s:.0f}s; "
                        f"it needs {nodes} node(s) with {gpus} GPU(s): start the worker "
                        f"(./runMe.sh cluster worker) on each other node, check "
                        f"VLLM_HOST_IP / CLUSTER_HEAD_IP and that the nodes reach each "
                        f"other (MULTINODE.md)")
    return clock.monotonic() - start


# ----------------------------------------------------------------------------- entrypoints

def cluster_environment(resolved: Resolved, key: str, base: dict[str, str]) -> dict[str, str]:
    """The engine's environment for a Ray role: RAY_DEFAULTS under the container's own
    environment and vars.env (either wins when it sets the same name)."""
    return serve.engine_environment(resolved, key, {**RAY_DEFAULTS, **base})


def head_entrypoint(resolved: Resolved, key: str) -> None:
    """In the engine container (CLUSTER_ROLE=head), after the configuration was rendered."""
    address = head_address(resolved, "head")
    argv = ray_head_argv(resolved)
    env = cluster_environment(resolved, key, dict(os.environ))
    print(f"[cluster] {json.dumps(argv)}", flush=True)
    started = subprocess.run(argv, env=env)
    if started.returncode != 0:
        raise UserError(f"'ray start --head' failed (exit {started.returncode}); its reason is "
                        f"above. Is port {resolved.settings.CLUSTER_RAY_PORT} free on "
                        f"{host_ip(resolved)} (CLUSTER_RAY_PORT)?")
    tensor, pipeline = parallel_sizes(resolved)
    wait_for_nodes("python3", address, resolved.settings.CLUSTER_NODES, tensor * pipeline,
                   environment.get("MMS_CLUSTER_TIMEOUT"))
    argv = cluster_engine_argv(resolved, environment.get("MMS_ENGINE_PORT"))
    env["RAY_ADDRESS"] = address  # vLLM joins this cluster instead of starting its own
    print(f"[cluster] exec {json.dumps(argv)}", flush=True)
    os.execvpe(argv[0], argv, env)


def worker_entrypoint(resolved: Resolved) -> None:
    """In the ray-worker container (CLUSTER_ROLE=worker): join the head, serve nothing."""
    env = cluster_environment(resolved, "", dict(os.environ))
    env.pop("VLLM_API_KEY", None)  # the worker answers no HTTP; the head holds the key
    argv = ray_worker_argv(resolved)
    print(f"[cluster] exec {json.dumps(argv)}", flush=True)
    os.execvpe(argv[0], argv, env)


# ----------------------------------------------------------------------------- command line

def infiniband_override(role: str, target: Path, device: str = INFINIBAND) -> Optional[Path]:
    """RDMA devices for the role's container, as an override file written only when `device`
    exists on this node: a compose `devices:` entry for a missing path fails the start, and
    most machines have none. None (and no file) otherwise."""
    if not os.path.exists(device):
        target.unlink(missing_ok=True)
        return None
    service = HEAD_SERVICE if role == "head" else WORKER_SERVICE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# Written by ./runMe.sh cluster: this node has " + device + ".\n"
                      + yaml.safe_dump({"services": {service: {"devices": [
                          f"{device}:{device}"]}}}, sort_keys=False))
    return target


def compose_argv(compose: list[str], root: str, role: str, detach: bool, build: bool,
                 extra_files: Sequence[Path] = ()) -> list[str]:
    # Cluster models are GPU models: the GPU file, then the cluster's own.
    files = ["-f", f"{root}/docker-compose.yml", "-f", f"{root}/docker-compose.gpu.yml",
             "-f", f"{root}/{CLUSTER_COMPOSE}"]
    for extra in extra_files:
        files += ["-f", str(extra)]
    if role == "head":
        return [*compose, *files, "up", *(["-d"] if detach else []),
                *(["--build"] if build else [])]
    return [*compose, *files, "--profile", "cluster-worker", "up", *(["-d"] if detach else []),
            *(["--build"] if build else []), "--no-deps", WORKER_SERVICE]


def up(project: Project, role: str, name: str, detach: bool, build: bool, force: bool,
       compose: Optional[list[str]] = None, infiniband: Optional[str] = None) -> list[str]:
    """Check what each role needs, then the compose command to run (the caller execs it).
    `compose`: the compose command, found after the checks when not given (so a missing
    setting is reported before a missing Docker).
    `infiniband`: the RDMA device directory to pass through when present (tests point
    MMS_INFINIBAND_DEVICE elsewhere)."""
    infiniband = infiniband or environment.get("MMS_INFINIBAND_DEVICE")
    resolved = resolve(project, name)
    host_ip(resolved)
    if role == "head":
        tensor, pipeline = parallel_sizes(resolved)
        fit.preflight(resolved, force, nodes=resolved.settings.CLUSTER_NODES,
                      parallel=tensor * pipeline)
    else:
        head_address(resolved, "worker")
    override = infiniband_override(role, paths.state_dir() / INFINIBAND_COMPOSE, infiniband)
    if override is not None:
        print(f"[cluster] {infiniband} found: passed to the container ({override})", flush=True)
    if compose is None:
        from .compose import compose_command

        compose = compose_command()
    return compose_argv(compose, str(project.root), role, detach, build,
                        [override] if override else [])
