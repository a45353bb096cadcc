"""The load board: how the proxy and the supervisor agree on on-demand models, through files
in one directory (the state directory's `loads/`; MMS_LOAD_BOARD elsewhere). No socket and no
Docker API between them: the proxy only writes wishes and reads states, the supervisor on the
host is the one process that starts and stops engines.

- `want-NAME`: the proxy (or `./runMe.sh load NAME`) asks for NAME to be loaded;
- `drop-NAME`: `./runMe.sh unload NAME` asks for it to be stopped;
- `used-NAME`: its modification time is NAME's last use (the proxy touches it per request);
- `states.json`: the supervisor's word on each on-demand model: loading, ready, unloading,
  unloaded or failed (with the reason), and since when.
Each file is written whole (a temporary file renamed over it): a reader never sees half.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .. import environment, paths

STATES = ("unloaded", "loading", "ready", "unloading", "failed")


@dataclass
class ModelState:
    state: str            # one of STATES
    since: float          # when it entered that state (time.time())
    error: str = ""       # failed: why (the engine's last log line, a deadline, memory)


def board_dir() -> Path:
    return environment.get("MMS_LOAD_BOARD") or paths.state_dir() / "loads"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        # readable by the other side (compose mode: the proxy container runs as root, the
        # host supervisor and `ps` as the user); nothing secret is on the board
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def reset() -> None:
    """A new stack: no wish, use or state of an earlier one."""
    directory = board_dir()
    if directory.is_dir():
        for entry in directory.iterdir():
            if entry.is_file():
                entry.unlink(missing_ok=True)


def _touch(name: str) -> None:
    _write(board_dir() / name, f"{time.time()}\n")


def want(model: str) -> None:
    _touch(f"want-{model}")


def drop(model: str) -> None:
    _touch(f"drop-{model}")


def mark_used(model: str) -> None:
    _touch(f"used-{model}")


def last_used(model: str) -> Optional[float]:
    try:
        return (board_dir() / f"used-{model}").stat().st_mtime
    except OSError:
        return None


def take(kind: str) -> list[str]:
    """The models with a pending `kind` (want, drop) wish, which are removed: each is acted
    on once."""
    found = []
    try:
        entries = list(board_dir().iterdir())
    except OSError:
        return []
    for entry in sorted(entries):
        if entry.name.startswith(f"{kind}-"):
            entry.unlink(missing_ok=True)
            found.append(entry.name[len(kind) + 1:])
    return found


def states() -> dict[str, ModelState]:
    try:
        data = json.loads((board_dir() / "states.json").read_text())
        return {name: ModelState(**value) for name, value in data.items()}
    except (OSError, ValueError, TypeError):
        return {}


def save_states(current: dict[str, ModelState]) -> None:
    _write(board_dir() / "states.json",
           json.dumps({name: asdict(s) for name, s in sorted(current.items())}) + "\n")
