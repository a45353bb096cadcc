"""`./runMe.sh load NAME` and `unload NAME`: the same wishes the proxy writes on the load
board (proxy/board.py), then the supervisor's answer, with progress."""

from __future__ import annotations

import time
from typing import Callable

from .. import environment
from ..errors import UserError
from ..progress import wait_until
from ..proxy import board
from ..stack.state import Stack


def _on_demand_stack(model: str) -> Stack:
    from ..stack.compose_ondemand import ComposeStack

    stack = Stack.load() or ComposeStack.load()
    if stack is None:
        raise UserError("no stack with on-demand models runs: start one, e.g. "
                        "./runMe.sh --local NAME --on-demand OTHER (or without --local)")
    if stack.on_demand_of(model) is None:
        names = ", ".join(o.model for o in stack.on_demand) or "none"
        raise UserError(f"{model} is not an on-demand model of the running stack (its "
                        f"on-demand models: {names}); resident models load with the stack")
    return stack


def load(model: str) -> int:
    _on_demand_stack(model)
    current = board.states().get(model)
    if current is not None and current.state == "ready":
        print(f"{model} is loaded")
        return 0
    asked = time.time()
    board.want(model)
    wait_until(_reached(model, asked, ("ready", "failed")), environment.start_timeout(),
               f"loading {model}")
    state = board.states().get(model)
    if state is None or state.state != "ready":
        raise UserError(state.error if state is not None and state.error else
                        f"{model} was not loaded within {environment.start_timeout():g}s "
                        f"(MMS_START_TIMEOUT); see ./runMe.sh ps and the engine's log")
    print(f"{model} is loaded")
    return 0


def _reached(model: str, asked: float, states: tuple[str, ...]) -> Callable[[], bool]:
    """Whether the supervisor has put `model` in one of `states` since `asked` (its clock's
    second: a state written in the second asked counts)."""
    def reached() -> bool:
        state = board.states().get(model)
        return state is not None and state.since >= asked - 1 and state.state in states

    return reached


def unload(model: str) -> int:
    stack = _on_demand_stack(model)
    if not any(s.model == model for s in stack.engines):
        print(f"{model} is not loaded")
        return 0
    asked = time.time()
    board.drop(model)
    if not wait_until(_reached(model, asked, ("unloaded",)), 120, f"unloading {model}"):
        raise UserError(f"{model} was not unloaded within 120s: is the supervisor running? "
                        f"(./runMe.sh status)")
    print(f"{model} is unloaded")
    return 0
