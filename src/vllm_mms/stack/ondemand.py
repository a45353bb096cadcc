"""On-demand models, the supervisor's side: once per round of the supervisor's loop (`tick`),
load what the proxy asked for, unload what is idle past its TTL or was asked to go, and say
each model's state on the load board (proxy/board.py). The proxy holds a request for a model that is
not ready and waits for that state (proxy/hooks.py, hold_until_loaded).

Memory is accounted with fit's numbers, not measured: the stack's budget is what the machine
had free when it started (fit.plan_set), each engine holds its share. A load that does not fit
first stops idle on-demand engines, least recently used first (never a resident one, never one
with requests running or waiting); if it still does not fit, it fails with the numbers.

The Loader decides; an engine backend starts, watches and stops: LocalEngines (processes, local
mode) or compose_ondemand.ContainerEngines (engine containers, compose mode). Both run on the
host, in the supervisor: no container ever starts or stops another.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from .. import bootstrap
from ..config.resolve import Project, resolve
from ..engine import serve
from ..engine.fit import GiB
from ..ops.status import engine_metrics
from ..proxy import board
from .processes import alive, http_ok, process_env, reap, tail, terminate
from .state import OnDemand, Service, Stack

BUSY = ("vllm:num_requests_running", "vllm:num_requests_waiting")


class LocalEngines:
    """Local mode's engines: processes on the host, each on its own port."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def start(self, stack: Stack, wanted: OnDemand) -> Service:
        from . import local

        resolved = resolve(self.project, wanted.model)
        weights = None
        if resolved.model.local_weights:
            from ..engine.prepare_model import weights_dir

            weights = weights_dir(resolved.model.local_weights)
        keys = (process_env(s.pid, "VLLM_API_KEY") for s in stack.services)
        key = next((k for k in keys if k), None) or serve.internal_api_key(resolved)
        count = len(stack.engines) + 1
        proc = local.engine_process(resolved, bootstrap.ensure_env("engine"), weights, key,
                                    Path(stack.log_dir), wanted.port, beside=True,
                                    share=wanted.share, cores=(count, count))
        return Service("engine", 1, proc.pid, wanted.port, model=wanted.model,
                       share=wanted.share)

    def running(self, engine: Service) -> bool:
        return alive(engine.pid)

    def healthy(self, engine: Service) -> bool:
        return http_ok(engine.health_url())

    def metrics(self, engine: Service) -> Optional[dict[str, float]]:
        return engine_metrics(engine.port, BUSY)

    def last_log_line(self, stack: Stack, engine: Service) -> str:
        log = Path(stack.log_dir) / f"{engine.name}.log"
        lines = tail(log, 20).splitlines() if log.exists() else []
        return ([line for line in lines if line.strip()][-1:] or [""])[0]

    def stop(self, engine: Service) -> None:
        if alive(engine.pid):
            terminate([engine.pid], grace=10)
        reap()

    def where(self, engine: Service) -> str:
        return f"engine pid {engine.pid}, port {engine.port}"


class Loader:
    """What the supervisor does for the stack's on-demand models."""

    def __init__(self, project: Project, ttl: float, load_timeout: float,
                 engines: Optional["LocalEngines"] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.project, self.ttl, self.load_timeout = project, ttl, load_timeout
        self.engines = engines or LocalEngines(project)
        self.clock = clock

    def idle(self, engine: Service) -> bool:
        """No request running or waiting on the engine (its own metrics); an engine that does
        not answer counts as busy, so nothing is stopped on a guess."""
        metrics = self.engines.metrics(engine)
        return metrics is not None and all(metrics.get(name, 0.0) == 0 for name in BUSY)

    # -------------------------------------------------------------- the round

    def tick(self, stack: Stack) -> None:
        states = board.states()
        for model in board.take("drop"):
            if stack.on_demand_of(model) and self._engine(stack, model):
                self._unload(stack, states, model, "unloaded (./runMe.sh unload)")
        for model in board.take("want"):
            if stack.on_demand_of(model) and not self._engine(stack, model):
                self._load(stack, states, model)
        for wanted in stack.on_demand:
            engine = self._engine(stack, wanted.model)
            state = states.get(wanted.model)
            if engine is None or state is None:
                continue
            if state.state == "loading":
                self._follow_load(stack, states, wanted.model, engine, state)
            elif state.state == "ready" and not self.engines.running(engine):
                self._fail(stack, states, wanted.model, engine, "its engine exited")
            elif state.state == "ready" and self._expired(wanted.model, state):
                if self.idle(engine):
                    self._unload(stack, states, wanted.model,
                                 f"unloaded after {self.ttl:g}s without requests")
        board.save_states(states)

    def _expired(self, model: str, state: board.ModelState) -> bool:
        used = max(board.last_used(model) or 0.0, state.since)
        return self.clock() - used > self.ttl

    @staticmethod
    def _engine(stack: Stack, model: str) -> Optional[Service]:
        return next((s for s in stack.engines if s.model == model), None)

    # -------------------------------------------------------------- load

    def _load(self, stack: Stack, states: dict[str, board.ModelState], model: str) -> None:
        wanted = stack.on_demand_of(model)
        assert wanted is not None
        short = self._make_room(stack, states, wanted)
        if short:
            states[model] = board.ModelState("failed", self.clock(), short)
            print(f"on-demand: {model} not loaded: {short}", flush=True)
            return
        engine = self.engines.start(stack, wanted)
        stack.services.append(engine)
        stack.save()
        states[model] = board.ModelState("loading", self.clock())
        print(f"on-demand: loading {model} ({self.engines.where(engine)})", flush=True)

    def _make_room(self, stack: Stack, states: dict[str, board.ModelState],
                   wanted: OnDemand) -> str:
        """Stop idle on-demand engines, least recently used first, until `wanted` fits the
        budget; "" when it fits, else why not."""
        def held() -> float:  # what the running engines hold, by their shares
            return sum(engine.share for engine in stack.engines) * stack.share_unit

        candidates = sorted((o for o in stack.on_demand
                             if o.model != wanted.model and self._engine(stack, o.model)),
                            key=lambda o: board.last_used(o.model) or 0.0)
        while held() + wanted.need > stack.budget:
            victim = next((o for o in candidates if self.idle(self._engine(stack, o.model))),
                          None)
            if victim is None:
                return (f"{wanted.model} needs {wanted.need / GiB:.1f} GiB, "
                        f"{max(0.0, stack.budget - held()) / GiB:.1f} GiB of the "
                        f"{stack.budget / GiB:.1f} GiB budget are free and no idle on-demand "
                        f"model is left to unload (resident models are never unloaded)")
            candidates.remove(victim)
            self._unload(stack, states, victim.model, f"unloaded to make room for {wanted.model}")
        return ""

    def _follow_load(self, stack: Stack, states: dict[str, board.ModelState], model: str,
                     engine: Service, state: board.ModelState) -> None:
        if not self.engines.running(engine):
            self._fail(stack, states, model, engine, "its engine exited while loading")
        elif self.engines.healthy(engine):
            states[model] = board.ModelState("ready", self.clock())
            print(f"on-demand: {model} ready after {self.clock() - state.since:.0f}s",
                  flush=True)
        elif self.clock() - state.since > self.load_timeout:
            self._fail(stack, states, model, engine,
                       f"not healthy after {self.load_timeout:g}s (LOAD_TIMEOUT)")

    def _fail(self, stack: Stack, states: dict[str, board.ModelState], model: str,
              engine: Service, why: str) -> None:
        last = self.engines.last_log_line(stack, engine)
        self._stop(stack, engine)
        reason = f"{model} failed to load: {why}" + (f"; its log ends: {last[-300:]}"
                                                     if last else "")
        states[model] = board.ModelState("failed", self.clock(), reason)
        print(f"on-demand: {reason}", flush=True)

    # -------------------------------------------------------------- unload

    def _unload(self, stack: Stack, states: dict[str, board.ModelState], model: str,
                why: str) -> None:
        engine = self._engine(stack, model)
        if engine is None:
            return
        states[model] = board.ModelState("unloading", self.clock(), why)
        board.save_states(states)  # the proxy holds new requests from now on
        self._stop(stack, engine)
        states[model] = board.ModelState("unloaded", self.clock(), why)
        print(f"on-demand: {model} {why}", flush=True)

    def _stop(self, stack: Stack, engine: Service) -> None:
        self.engines.stop(engine)
        stack.services.remove(engine)
        stack.save()

