"""Several models at once in compose mode (`./runMe.sh A B`, or MODELS=a,b): one engine
container per model, all behind the one proxy.

The first model is the `vllm-node` service, as with one model; it renders the configuration
for all of them (MMS_ALSO_SERVED names the others). Each other model is a `vllm-node-NAME`
service written into an override file: a copy of the engine service with its own MODEL,
container name and checkpoint; it waits for the engine key the first one writes. Every engine
gets the memory share fit.plan_set gave it (MMS_MEMORY_SHARE → --gpu-memory-utilization), and
the proxy waits until all of them are healthy.

On-demand models (the last ones of the set) get engine services that `up` does not start:
the host supervisor of compose_ondemand.py starts and stops them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ..config.resolve import Resolved
from ..errors import UserError
from .compose import ENGINE_CONTAINER, ENGINE_SERVICE, PROXY_SERVICE, is_cpu_model, model_service
from .compose_ondemand import BOARD_IN_CONTAINER, ON_DEMAND_PROFILE
from .replicas import merged_engine_service

# Where docker-compose.cpu.yml mounts a CPU model's checkpoint in the engine container.
WEIGHTS_MOUNT = "/app/weights"


def check_set(models: Sequence[Resolved]) -> None:
    """What compose mode cannot run as one set, refused in one line before Docker is asked."""
    kinds = {is_cpu_model(m) for m in models}
    if len(kinds) > 1:
        cpu = [m.name for m in models if is_cpu_model(m)]
        gpu = [m.name for m in models if not is_cpu_model(m)]
        raise UserError(f"several models in compose mode share one engine image, and these mix "
                        f"CPU models ({', '.join(cpu)}) with GPU models ({', '.join(gpu)}): "
                        f"run one kind at a time")
    replicated = [m.name for m in models if m.replicas > 1]
    if replicated:
        raise UserError(f"--replicas runs copies of one model; with several models each runs "
                        f"one engine ({', '.join(replicated)} asks for {models[0].replicas}): "
                        f"drop --replicas, or run one model")


def compose_override(models: Sequence[Resolved], shares: Sequence[float],
                     base_service: dict[str, Any], weights: Sequence[Optional[Path]],
                     on_demand: Sequence[str] = (),
                     board: Optional[Path] = None) -> dict[str, Any]:
    """The compose file that adds models 2..N (with their shares and checkpoints) to the
    engine service of model 1 (`base_service`: as compose merges it from the base and device
    files). The models in `on_demand` (the last ones) get services of the `on-demand`
    profile, started and stopped by the host supervisor (compose_ondemand.py); the proxy then
    reads the load board from `board`, a host directory."""
    first_env = {"MMS_ALSO_SERVED": ",".join(m.name for m in models[1:]),
                 "MMS_MEMORY_SHARE": f"{shares[0]:g}"}
    if on_demand:
        first_env["MMS_ON_DEMAND"] = ",".join(on_demand)
    services: dict[str, Any] = {ENGINE_SERVICE: {"environment": first_env}}
    healthy: dict[str, Any] = {}
    for model, share, checkpoint in zip(models[1:], shares[1:], weights[1:]):
        service = copy.deepcopy(base_service)
        service.pop("build", None)  # the image is built once, for the first engine
        service["container_name"] = f"{ENGINE_CONTAINER}-{model.name}"
        service["environment"] = {**base_service.get("environment", {}), "MODEL": model.name,
                                  "MMS_BESIDE": "1", "MMS_MEMORY_SHARE": f"{share:g}"}
        if checkpoint is not None:  # its own checkpoint where the CPU file mounts the first's
            service["volumes"] = [v for v in service.get("volumes", [])
                                  if not _mounts_at(v, WEIGHTS_MOUNT)]
            service["volumes"].append(f"{checkpoint}:{WEIGHTS_MOUNT}:ro")
        service["depends_on"] = {ENGINE_SERVICE: {"condition": "service_started"}}
        if model.name in on_demand:  # not started by `up`; an engine that exits stays down
            service["profiles"] = [ON_DEMAND_PROFILE]
            service["restart"] = "no"
        else:
            healthy[model_service(model.name)] = {"condition": "service_healthy"}
        services[model_service(model.name)] = service
    proxy: dict[str, Any] = {"depends_on": healthy} if healthy else {}
    if on_demand and board is not None:
        proxy["environment"] = {"MMS_LOAD_BOARD": BOARD_IN_CONTAINER}
        proxy["volumes"] = [f"{board}:{BOARD_IN_CONTAINER}"]
    services[PROXY_SERVICE] = proxy
    return {"services": services}


def _mounts_at(volume: Any, target: str) -> bool:
    """A compose volume entry (short `source:target[:mode]` or long form) mounted at `target`.
    The source may be a ${VAR:?message} holding colons of its own: read from the right."""
    if isinstance(volume, dict):
        return volume.get("target") == target
    parts = str(volume).rsplit(":", 2)
    return target in parts[1:]


def write_compose_override(models: Sequence[Resolved], shares: Sequence[float],
                           files: list[Path], weights: Sequence[Optional[Path]],
                           out: Path, on_demand: Sequence[str] = (),
                           board: Optional[Path] = None) -> Path:
    base = merged_engine_service(files)
    override = compose_override(models, shares, base, weights, on_demand, board)
    text = ("# Generated by ./runMe.sh with several models; do not edit. The engines of "
            f"{', '.join(m.name for m in models[1:])} beside {models[0].name}.\n"
            + yaml.safe_dump(override, sort_keys=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
