"""Local mode's state: which processes run, on which ports, where they log. Kept in a file in
the state directory, so that `down`, `status`, `doctor`, `switch` or a second terminal find
what `./runMe.sh --local` started; the supervisor follows it as processes are replaced."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import paths

# The stack file's layout; a file of another layout (an older version's) reads as nothing
# running. It is per-run state: nothing to migrate.
STACK_FORMAT = 3


def service_name(role: str, replica: int, model: str = "") -> str:
    """engine, engine-2, ..., proxy; a model served beside the first: engine-NAME,
    engine-NAME-2, ...: the name in status and logs, and the log file's name."""
    base = f"{role}-{model}" if model else role
    return base if replica == 1 else f"{base}-{replica}"


@dataclass
class Service:
    """One supervised process of the stack: an engine replica or the proxy."""
    role: str      # engine | proxy
    replica: int   # 1..N for the engines, 1 for the proxy
    pid: int
    port: int
    model: str = ""  # an engine of a model served beside the stack's first ("": the first)
    share: float = 0.0  # its --gpu-memory-utilization when several models run (0: its own)

    @property
    def name(self) -> str:
        return service_name(self.role, self.replica, self.model)

    def health_url(self) -> str:
        """What says it is up: the proxy's liveliness, an engine's /health."""
        path = "/health/liveliness" if self.role == "proxy" else "/health"
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class OnDemand:
    """A model loaded when a request names it (stack/ondemand.py): where its engine runs when
    it does, and its memory share."""
    model: str
    port: int
    share: float
    need: float  # bytes its engine holds (share x what a share is a fraction of)


@dataclass
class Stack:
    """What runs in local mode, kept in the state directory so that `down`, `status` or a
    second terminal find it."""
    model: str
    services: list[Service]   # in the order status shows them: engine, proxy, engine-2, ...
    log_dir: str
    started: float
    supervisor_pid: int = 0   # detached mode: the process that restarts what dies
    on_demand: list[OnDemand] = field(default_factory=list)
    budget: float = 0.0       # bytes the engines may hold together (fit), for on-demand loads
    share_unit: float = 0.0   # bytes of a whole share (--gpu-memory-utilization 1.0)

    @staticmethod
    def path() -> Path:
        return paths.state_dir() / "stack.json"

    @classmethod
    def load(cls, path: Optional[Path] = None) -> Optional["Stack"]:
        """The stack in the file; None when there is none, or it cannot be read (damaged, or
        written by a version with another layout): both mean nothing of ours runs."""
        try:
            data = json.loads((path or cls.path()).read_text())
            return cls.from_dict(data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Stack":
        if data.get("format") != STACK_FORMAT:
            raise ValueError(f"stack file format {data.get('format')!r}, not {STACK_FORMAT}")
        services = [Service(str(s["role"]), int(s["replica"]), int(s["pid"]), int(s["port"]),
                            str(s.get("model", "")), float(s.get("share", 0.0)))
                    for s in data["services"]]
        roles = [s.role for s in services]
        if roles.count("proxy") != 1 or "engine" not in roles or set(roles) - {"engine", "proxy"}:
            raise ValueError(f"a stack has one proxy and at least one engine, not {roles}")
        on_demand = [OnDemand(str(o["model"]), int(o["port"]), float(o["share"]),
                              float(o["need"])) for o in data.get("on_demand", [])]
        return cls(model=str(data["model"]), services=services, log_dir=str(data["log_dir"]),
                   started=float(data["started"]), supervisor_pid=int(data["supervisor_pid"]),
                   on_demand=on_demand, budget=float(data.get("budget", 0.0)),
                   share_unit=float(data.get("share_unit", 0.0)))

    def save(self, path: Optional[Path] = None) -> None:
        """Write the stack file at once (a reader never sees half of it): a temporary file
        beside it, renamed over it."""
        target = path or self.path()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".stack-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps({"format": STACK_FORMAT, **asdict(self)}) + "\n")
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def remove(cls) -> None:
        cls.path().unlink(missing_ok=True)

    @property
    def engines(self) -> list[Service]:
        return [s for s in self.services if s.role == "engine"]

    def engines_of(self, model: str) -> list[Service]:
        return [s for s in self.engines if self.model_of(s) == model]

    def model_of(self, engine: Service) -> str:
        return engine.model or self.model

    @property
    def models(self) -> list[str]:
        """The catalog models this stack serves: its first, then those beside it (resident
        ones, then on-demand ones, loaded or not)."""
        return list(dict.fromkeys([self.model, *(s.model for s in self.engines if s.model),
                                   *(o.model for o in self.on_demand)]))

    def on_demand_of(self, model: str) -> Optional[OnDemand]:
        return next((o for o in self.on_demand if o.model == model), None)

    @property
    def proxy(self) -> Service:
        return next(s for s in self.services if s.role == "proxy")

    @property
    def proxy_port(self) -> int:
        return self.proxy.port

    @property
    def pids(self) -> list[int]:
        """The proxy first, so it stops taking requests before the engines go."""
        return [self.proxy.pid, *(s.pid for s in self.engines)]
