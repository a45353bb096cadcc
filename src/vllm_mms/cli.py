"""The command line behind ./runMe.sh.

One table, COMMANDS at the end of this file, says what each command takes and does; the
argument parser, the usage text (`./runMe.sh help`) and README.md's command list (rewritten by
`./runMe.sh docs`, checked by a test) are all made from it, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

from . import environment, paths
from .config import schema
from .config.resolve import Project, global_settings, resolve
from .engine import fit, serve
from .errors import UserError
from .stack import compose, replicas
from .stack.render import compose_api_bases, render
from .stack.state import Stack

REPLICAS_COMPOSE = "compose.replicas.yml"  # in the state directory: generated, no secrets
MODELS_COMPOSE = "compose.models.yml"      # the engines of the models beside the first


def project() -> Project:
    return Project(paths.project_dir())


def settings_environ(args: argparse.Namespace) -> dict[str, str]:
    """The environment the settings are resolved from: the process's, with --replicas on top
    (the command line beats vars.env, like the environment does)."""
    environ = dict(os.environ)
    if getattr(args, "replicas", None):
        environ["REPLICAS"] = str(args.replicas)
    return environ


# ----------------------------------------------------------------------------- list, help

def cmd_list(args: argparse.Namespace) -> int:
    proj = project()
    print("models:")
    names = schema.available_models(proj.models_dir)
    width = max((len(n) for n in names), default=0)
    for name in names:
        try:
            description = schema.load_model_file(proj.models_dir / f"{name}.yml").description
        except UserError as exc:
            description = f"(invalid: {exc.message})"
        print(f"  {name:<{width}}  {description}")
    print()
    print(usage_text(), end="")
    return 0


# ----------------------------------------------------------------------------- render

def cmd_render(args: argparse.Namespace) -> int:
    proj = project()
    resolved = resolve(proj, args.model, settings_environ(args))
    out = Path(args.out) if args.out else proj.root / paths.GENERATED_CONFIGS
    written = render(proj, resolved, out, api_base=compose_api_bases(resolved.replicas))
    argv = serve.engine_argv(resolved, host="0.0.0.0", port=8000,
                              sharing=replicas.sharing(resolved))
    for path in written.values():
        print(f"wrote {schema.display_path(path)}")
    print("engine argv (exec'd by the container entrypoint):")
    print("  " + json.dumps(argv))
    print("engine environment (names only; values stay secret):")
    print("  " + " ".join(serve.engine_env_names(resolved)))
    return 0


# ----------------------------------------------------------------------------- compose

def cmd_up(args: argparse.Namespace) -> int:
    proj = project()
    environ = settings_environ(args)
    names = args.model or ([environ["MODEL"]] if environ.get("MODEL") else None) \
        or served_models(environ, "MODELS") or [environment.DEFAULT_COMPOSE_MODEL]
    # fail here, in one line, before Docker is involved
    on_demand = model_list(args.on_demand) if args.on_demand else \
        served_models(environ, "ON_DEMAND_MODELS")
    names = [*names, *on_demand]
    models = [resolve(proj, name, environ) for name in names]
    resolved = models[0]
    files = compose.model_files(proj.root, resolved)
    plan: Optional[fit.SetPlan] = None
    if len(models) > 1:
        from .proxy import board
        from .stack import compose_models, render

        compose_models.check_set(models)
        render.check_names(resolved, [(m, "") for m in models[1:]])
        weights = [compose.prepared_weights(m) for m in models]
        by_name = dict(zip(names, weights))
        plan = fit.preflight_set(models, args.force, lambda m: by_name[m.name],
                                 on_demand=len(on_demand))
        board.board_dir().mkdir(parents=True, exist_ok=True)  # bind-mounted: ours, not root's
        override = compose_models.write_compose_override(
            models, plan.shares, [Path(f) for f in files[1::2]], weights,
            paths.state_dir() / MODELS_COMPOSE, on_demand, board.board_dir())
        files += ["-f", str(override)]
    else:
        fit.preflight(resolved, args.force, sharing=replicas.sharing(resolved))
    if resolved.replicas > 1:
        override = replicas.write_compose_override(
            resolved, [Path(f) for f in files[1::2]], paths.state_dir() / REPLICAS_COMPOSE)
        files += ["-f", str(override)]
    # --remove-orphans: the engines of models (or replicas) a previous `up` ran and this one
    # does not (they live in override files this command no longer names)
    cmd = [*compose.compose_command(), *files,
           *(["--profile", "metrics"] if args.metrics else []), "up", "--remove-orphans"]
    if not compose.docker_engine_reachable():
        raise UserError("no Docker engine is reachable ('docker ps' failed): start Docker "
                        "(sudo systemctl start docker), or run without it: ./runMe.sh --local")
    if args.detach:
        cmd.append("-d")
    if args.build:
        cmd.append("--build")
    # MODEL goes into compose's environment explicitly, so `sudo ./runMe.sh NAME` works too.
    env = {**environ, **compose.model_environment(resolved)}
    from .stack import compose_ondemand

    compose_ondemand.stop_supervisor()  # an earlier start's: this start has its own set
    if on_demand:
        assert plan is not None
        compose_ondemand.start_supervisor(compose_ondemand.stack_for(
            names, on_demand, plan, [*compose.compose_command(), *files],
            resolved.settings.LITELLM_PORT), env)
        print(f"on demand (loaded when a request names one, unloaded after "
              f"{resolved.settings.ON_DEMAND_TTL:g}s idle, by a supervisor on this host): "
              f"{', '.join(on_demand)}", flush=True)
    print(f"starting {', '.join(n for n in names if n not in on_demand)} with: "
          f"{' '.join(cmd)}", flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def cmd_down(args: argparse.Namespace) -> int:
    from .stack import local

    stopped_local = local.stop_local(quiet=False)
    if stopped_local:
        return 0
    from .stack import compose_ondemand

    compose_ondemand.stop_supervisor(quiet=False)  # first: it would start what compose stops
    try:
        base = [*compose.compose_command(), "-f", str(project().root / compose.BASE_FILE)]
    except UserError:
        print("nothing is running")
        return 0
    ours = compose.containers(base) if compose.docker_engine_reachable() else []
    if not ours:
        print("nothing is running")  # (a Docker client without an engine runs no stack)
        return 0
    # --remove-orphans: the engine replicas (--replicas) live in an override file. The
    # generated-config volume goes too: it is a tmpfs, nothing on it outlives the stack.
    result = subprocess.run([*base, "down", "--remove-orphans"])
    if result.returncode == 0:
        compose.remove_generated_volume(ours[0].project)
    return result.returncode


def running_compose() -> list[str]:
    """The compose command when a Docker engine answers, else [] (local mode or nothing)."""
    try:
        command = [*compose.compose_command(), "-f", str(project().root / compose.BASE_FILE)]
    except UserError:
        return []
    return command if compose.docker_engine_reachable() else []


def cmd_cluster(args: argparse.Namespace) -> int:
    from .stack import cluster

    name = args.model or environment.get("MODEL") or environment.DEFAULT_COMPOSE_MODEL
    cmd = cluster.up(project(), args.role, name, args.detach, args.build, args.force)
    if not compose.docker_engine_reachable():
        raise UserError("no Docker engine is reachable ('docker ps' failed): start Docker "
                        "(sudo systemctl start docker)")
    print(f"starting the Ray {args.role} for {name} with: {' '.join(cmd)}", flush=True)
    os.execvpe(cmd[0], cmd, {**os.environ, "MODEL": name})
    return 0  # not reached


# ----------------------------------------------------------------------------- local mode

def cmd_local(args: argparse.Namespace) -> int:
    from .stack import local

    environ = settings_environ(args)
    names = args.model or served_models(environ, "MODELS") or [environment.DEFAULT_LOCAL_MODEL]
    on_demand = model_list(args.on_demand) if args.on_demand else \
        served_models(environ, "ON_DEMAND_MODELS")
    return local.start_local(project(), names, detach=args.detach, force=args.force,
                             environ=environ, on_demand=on_demand)


def model_list(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def served_models(environ: dict[str, str], setting: str) -> list[str]:
    """MODELS or ON_DEMAND_MODELS (vars.env or the environment), comma-separated."""
    value = getattr(global_settings(project(), environ), setting)
    return model_list(value) if value else []


def cmd_load(args: argparse.Namespace) -> int:
    from .ops import loads

    return loads.load(args.model)


def cmd_unload(args: argparse.Namespace) -> int:
    from .ops import loads

    return loads.unload(args.model)


def cmd_supervise(args: argparse.Namespace) -> int:
    """Started by `--local -d`, not by users."""
    from .stack import local

    stack = Stack.load()
    return local.supervise(stack, foreground=False) if stack else 1


def cmd_supervise_compose(args: argparse.Namespace) -> int:
    """Started by `./runMe.sh NAME --on-demand a,b`, not by users."""
    from .stack import compose_ondemand

    return compose_ondemand.supervise(project())


def cmd_switch(args: argparse.Namespace) -> int:
    from .stack import switch

    return switch.switch(project(), args.model, force=args.force, compose=running_compose())


# ----------------------------------------------------------------------------- models

def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise UserError(f"{value!r}: expected a whole number above 0", 2)
    return int(value)


def token_count(value: str) -> int:
    parsed = schema.parse_size(value)
    if not isinstance(parsed, int) or parsed <= 0:
        raise UserError(f"{value!r}: expected a token count such as 32768 or 128K", 2)
    return parsed


def fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number <= 1:
        raise UserError(f"{value!r}: expected a fraction above 0, at most 1 (e.g. 0.85)", 2)
    return number


def cmd_fit(args: argparse.Namespace) -> int:
    verdict = fit.check(resolve(project(), args.model), gpu_memory=args.gpu_memory,
                        nodes=args.nodes, max_model_len=args.max_model_len,
                        max_num_seqs=args.max_num_seqs, utilization=args.gpu_memory_utilization)
    print("\n".join(verdict.lines))
    return 0 if verdict.fits else 1


def cmd_pull(args: argparse.Namespace) -> int:
    from .engine import pull

    return pull.pull(project(), args.model)


def cmd_export(args: argparse.Namespace) -> int:
    from .stack import k8s

    image = args.image or k8s.ENGINE_IMAGE
    print(k8s.manifests(resolve(project(), args.model), image), end="")
    return 0


# ----------------------------------------------------------------------------- containers

def cmd_entrypoint(args: argparse.Namespace) -> int:
    from .stack import container

    container.engine_entrypoint(project())
    return 0


def cmd_proxy_entrypoint(args: argparse.Namespace) -> int:
    from .stack import container

    container.proxy_entrypoint(project())
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from .stack import container

    return container.healthcheck()


# ----------------------------------------------------------------------------- operations

def cmd_status(args: argparse.Namespace) -> int:
    from .ops import status

    return status.status(running_compose() if Stack.load() is None else [])


def cmd_ps(args: argparse.Namespace) -> int:
    from .ops import status

    return status.ps(running_compose() if Stack.load() is None else [])


def cmd_logs(args: argparse.Namespace) -> int:
    from .ops import status

    compose_cmd = running_compose() if Stack.load() is None else []
    return status.logs(args.service, args.follow, compose_cmd)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .ops import doctor

    compose_cmd = running_compose() if Stack.load() is None else []
    local_mode = Stack.load() is not None or not compose_cmd
    return doctor.run_doctor(project(), local_mode, compose_cmd)


def cmd_launch(args: argparse.Namespace) -> int:
    from .ops.agents import launch

    return launch(project(), args.client, args.rest, force=args.force, model=args.model)


def cmd_install_clients(args: argparse.Namespace) -> int:
    from .ops.agents import install_clients

    print(install_clients())
    return 0


def on_the_database(args: argparse.Namespace) -> None:
    """With the compose stack running (and no MMS_DATABASE_URL), keys and usage run inside
    the proxy container, which reaches the compose database: this does not return then."""
    from .ops import database

    if database.in_compose():
        database.exec_in_proxy_container(args.command_line)


def cmd_keys_create(args: argparse.Namespace) -> int:
    from .ops import keys

    on_the_database(args)
    return keys.create(args.name, rpm=args.rpm, tpm=args.tpm, max_parallel=args.max_parallel,
                       tokens_per_day=args.tokens_per_day, models=args.models,
                       priority=args.priority)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from .ops import keys

    on_the_database(args)
    return keys.list_keys()


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from .ops import keys

    on_the_database(args)
    return keys.revoke(args.name)


def cmd_usage(args: argparse.Namespace) -> int:
    from .ops import usage_report

    on_the_database(args)
    return usage_report.usage(args.since, args.by)


def key_models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise UserError("--models needs at least one model id", 2)
    return models


# ----------------------------------------------------------------------------- docs, tests

def cmd_schema(args: argparse.Namespace) -> int:
    from .config.docs import model_schema

    print(json.dumps(model_schema(), indent=2))
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from .config.docs import write_configuration_md

    root = project().root
    path = write_configuration_md(root)
    print(f"wrote {schema.display_path(path)}")
    readme = root / "README.md"
    if readme.exists():  # a project directory of models and settings alone has none
        readme.write_text(readme_with_commands(readme.read_text()))
        print(f"wrote {schema.display_path(readme)}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from .dev import testenv

    return testenv.run_tests(list(args.rest))


BENCH_SCRIPT = paths.ROOT / "bench" / "proxy_bench.py"


def cmd_bench(args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, str(BENCH_SCRIPT), *args.rest])
    return 0  # not reached


# ----------------------------------------------------------------------------- the table's parts

@dataclass(frozen=True)
class Arg:
    """One argument of a command: a positional (`names` is its one name) or an option."""
    names: tuple[str, ...]
    shown: str = ""             # its value in the usage: NAME, N, DIR ...
    switch: bool = False        # an option that takes no value
    optional: bool = False      # a positional that may be left out
    many: bool = False          # a positional that may be given several times (or none)
    type: Optional[Callable[[str], Any]] = None
    choices: Optional[tuple[str, ...]] = None
    default: Any = None

    @property
    def is_option(self) -> bool:
        return self.names[0].startswith("-")

    @property
    def dest(self) -> str:
        if not self.is_option:
            return self.names[0]
        return max(self.names, key=len).lstrip("-").replace("-", "_")

    def usage(self) -> str:
        value = self.shown or "|".join(self.choices or ())
        if not self.is_option:
            if self.many:
                return f"[{value} ...]"
            return f"[{value}]" if self.optional else value
        return f"[{self.names[0]}{' ' + value if value and not self.switch else ''}]"


def positional(name: str, shown: str = "NAME", **kwargs: Any) -> Arg:
    return Arg((name,), shown, **kwargs)


def option(*names: str, shown: str = "", **kwargs: Any) -> Arg:
    return Arg(names, shown, **kwargs)


def switch(*names: str) -> Arg:
    return Arg(names, switch=True)


class BadArguments(Exception):
    """The command line does not parse; `text` is what argparse would have printed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.command: Optional[Command] = None  # whose arguments they were


class Parser(argparse.ArgumentParser):
    """argparse, but a refusal is raised, so each command decides how to report it."""

    def error(self, message: str) -> NoReturn:
        raise BadArguments(f"{self.format_usage()}{self.prog}: error: {message}\n")


# How a command reports arguments it cannot take (argparse's text is `parser_says`):
def show_usage(command: "Command", parser_says: str) -> int:
    """argparse's message, then the whole usage."""
    print(parser_says + usage_text(), file=sys.stderr, end="")
    return 2


def usage_line(command: "Command", parser_says: str) -> NoReturn:
    """Only the command's own usage, as the error."""
    raise UserError("usage: " + " | ".join(
        form if n == 0 else form.removeprefix("./runMe.sh ")
        for n, form in enumerate(command.synopses())), 2)


def explained_usage_line(command: "Command", parser_says: str) -> NoReturn:
    """argparse's message (what is wrong), then the command's own usage as the error."""
    print(parser_says, file=sys.stderr, end="")
    usage_line(command, parser_says)


def refuse(message: str) -> Callable[["Command", str], NoReturn]:
    def report(command: "Command", parser_says: str) -> NoReturn:
        raise UserError(message, 2)
    return report


@dataclass(frozen=True)
class Command:
    """One command of ./runMe.sh: what it takes, how the usage shows it, what runs it."""
    name: str
    run: Optional[Callable[[argparse.Namespace], int]] = None
    args: tuple[Arg, ...] = ()
    help: tuple[str, ...] = ()     # what it does, as the usage shows it (lines)
    # The usage lines' shapes, from "{args}" (all), "{options}" and the args' dests; None:
    # "./runMe.sh NAME {args}"; (): the command shows in another command's line.
    usage: Optional[tuple[str, ...]] = None
    hidden: bool = False           # run by containers or the supervisor, not by users
    rest: str = ""                 # what follows untouched: shown in the usage as [rest]
    # "argparse"; "anywhere": the options before `--` wherever they are, the rest untouched
    # (launch); "none": everything untouched (test; bench's own parser reads it).
    parse: str = "argparse"
    on_bad_args: Callable[["Command", str], int] = show_usage
    subcommands: tuple["Command", ...] = ()

    def synopses(self, parent: str = "") -> list[str]:
        """The usage lines, one per shape, unwrapped (a command with subcommands: theirs)."""
        if self.subcommands:
            return [line for sub in self.subcommands for line in sub.synopses(self.name)]
        return [line for line, _ in self._forms(parent)]

    def _forms(self, parent: str) -> list[tuple[str, int]]:
        """(line, where its arguments start) for each shape of the usage."""
        path = f"{parent} {self.name}".strip()
        templates = self.usage if self.usage is not None else (f"./runMe.sh {path} {{args}}",)
        rest = [f"[{self.rest}]"] if self.rest else []
        fields = {"args": " ".join([a.usage() for a in self.args] + rest),
                  "options": " ".join(a.usage() for a in self.args if a.is_option),
                  **{a.dest: a.usage() for a in self.args}}
        return [(" ".join(template.format_map(fields).split()), template.index("{")
                 if "{" in template else len(template)) for template in templates]

    def usage_lines(self, parent: str = "") -> list[str]:
        """The command's block in the usage text: its shapes (wrapped), then what it does."""
        if self.hidden:
            return []
        if self.subcommands:
            return [line for sub in self.subcommands for line in sub.usage_lines(self.name)]
        lines = [wrapped for form, start in self._forms(parent) for wrapped in wrap(form, start)]
        help_lines = list(self.help)
        if lines and help_lines and len(lines[-1]) < HELP_COLUMN:
            lines[-1] = f"{lines[-1]:<{HELP_COLUMN}}{help_lines.pop(0)}"
        return [f"  {line}" for line in lines] + [f"  {'':<{HELP_COLUMN}}{text}"
                                                 for text in help_lines]


USAGE_WIDTH = 92   # usage lines are wrapped to this (plus the indent of 2)
HELP_COLUMN = 36   # where what a command does starts, after the indent


def wrap(line: str, start: int) -> list[str]:
    """`line` cut between arguments (a bracketed group stays whole) to USAGE_WIDTH; the
    continuation lines start under the first argument, at `start`."""
    head, words = line[:start], re.findall(r"\[[^\]]*\]|\S+", line[start:])
    rows: list[list[str]] = [[]]
    for word in words:
        if rows[-1] and len(head) + len(" ".join(rows[-1] + [word])) > USAGE_WIDTH:
            rows.append([])
        rows[-1].append(word)
    return [(head if n == 0 else " " * len(head)) + " ".join(row)
            for n, row in enumerate(rows)]


def usage_text() -> str:
    return "usage:\n" + "".join(f"{line}\n" for command in COMMANDS
                                for line in command.usage_lines())


README_BEGIN = ("<!-- commands: `./runMe.sh help`, written by `./runMe.sh docs` from the "
                "table in src/vllm_mms/cli.py; do not edit -->")
README_END = "<!-- /commands -->"


def readme_with_commands(text: str) -> str:
    """README.md's text with its command list (between the markers) made from the table."""
    if README_BEGIN not in text or README_END not in text:
        raise UserError(f"README.md has lost its command-list markers ({README_BEGIN} ... "
                        f"{README_END})")
    before, rest = text.split(README_BEGIN, 1)
    after = rest.split(README_END, 1)[1]
    return f"{before}{README_BEGIN}\n```\n{usage_text()}```\n{README_END}{after}"


def add_arguments(parser: argparse.ArgumentParser, args: tuple[Arg, ...]) -> None:
    for arg in args:
        if arg.switch:
            parser.add_argument(*arg.names, action="store_true")
        elif arg.is_option:
            parser.add_argument(*arg.names, type=arg.type, choices=arg.choices,
                                default=arg.default)
        else:
            parser.add_argument(arg.names[0],
                                nargs="*" if arg.many else "?" if arg.optional else None,
                                type=arg.type, choices=arg.choices, default=arg.default)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="./runMe.sh", add_help=False)
    sub = parser.add_subparsers(dest="command")
    for command in COMMANDS:
        if command.parse != "argparse":
            continue
        p = sub.add_parser(command.name, add_help=False)
        add_arguments(p, command.args)
        if command.subcommands:
            actions = p.add_subparsers(dest="action", required=True)
            for action in command.subcommands:
                add_arguments(actions.add_parser(action.name, add_help=False), action.args)
    return parser


def parse_anywhere(command: Command, argv: list[str]) -> argparse.Namespace:
    """`launch CLIENT [--force] [--model ID] [--] [CLIENT ARGS]`: the positional first, then
    the command's options wherever they appear before `--`; everything else, in order, is
    `rest` (a client's own flags may follow ours or come before them)."""
    positionals = [a for a in command.args if not a.is_option]
    options = {name: a for a in command.args if a.is_option for name in a.names}
    if len(argv) < len(positionals) or any(v.startswith("-") for v in argv[:len(positionals)]):
        raise BadArguments("")
    values: dict[str, Any] = {a.dest: False if a.switch else a.default for a in command.args}
    values.update((a.dest, v) for a, v in zip(positionals, argv))
    remaining, rest = list(argv[len(positionals):]), []
    while remaining:
        word = remaining.pop(0)
        name, has_value, value = word.partition("=")
        if word == "--":
            rest.extend(remaining)
            break
        if word in options and options[word].switch:
            values[options[word].dest] = True
        elif word in options and remaining:
            values[options[word].dest] = remaining.pop(0)
        elif has_value and name.startswith("--") and name in options and not options[name].switch:
            values[options[name].dest] = value
        else:
            rest.append(word)
    return argparse.Namespace(command=command.name, rest=rest, **values)


def parse(argv: list[str]) -> tuple[Command, argparse.Namespace]:
    command = BY_NAME[argv[0]]
    try:
        if command.parse == "none":
            args = argparse.Namespace(command=command.name, rest=argv[1:])
        elif command.parse == "anywhere":
            args = parse_anywhere(command, argv[1:])
        else:
            args = build_parser().parse_args(argv)
    except BadArguments as refused:
        refused.command = command
        raise
    args.command_line = argv
    if command.subcommands:
        command = next(s for s in command.subcommands if s.name == args.action)
    return command, args


# ----------------------------------------------------------------------------- the table

DETACH = switch("-d", "--detach")
FORCE = switch("--force")
REPLICAS = option("--replicas", shown="N", type=positive_int)

COMMANDS: tuple[Command, ...] = (
    Command("list", cmd_list, usage=("./runMe.sh",), help=("list the models and this help",)),
    Command("help", cmd_list, hidden=True),
    Command("up", cmd_up, args=(positional("model", many=True), DETACH, switch("--build"),
                                switch("--metrics"), FORCE, REPLICAS,
                                option("--on-demand", shown="a,b")),
            usage=("MODEL=NAME ./runMe.sh {options}", "./runMe.sh NAME [NAME ...] {options}"),
            help=(f"start NAME with docker compose (default {environment.DEFAULT_COMPOSE_MODEL});",
                  "several NAMEs (or MODELS=a,b): one engine container each,",
                  "memory shares from fit; --on-demand a,b: loaded when a",
                  "request names one (a supervisor on this host starts",
                  "their containers); --metrics adds Prometheus + Grafana;",
                  "--replicas N runs N engines behind the proxy",
                  "(REPLICA_GPUS: one GPU each)")),
    Command("local", cmd_local, args=(positional("model", many=True), DETACH, FORCE, REPLICAS,
                                      option("--on-demand", shown="a,b")),
            usage=("./runMe.sh --local {args}",),
            help=("start NAME on this machine: CPU, no Docker",
                  f"(default {environment.DEFAULT_LOCAL_MODEL}; ports: LITELLM_PORT, VLLM_PORT);",
                  "several NAMEs (or MODELS=a,b): all at once, one engine",
                  "each, memory shares from fit; --on-demand a,b (or",
                  "ON_DEMAND_MODELS): loaded when a request names one,",
                  "unloaded when idle (ON_DEMAND_TTL)")),
    Command("load", cmd_load, args=(positional("model"),),
            help=("load an on-demand model now (progress shown)",)),
    Command("unload", cmd_unload, args=(positional("model"),),
            help=("unload an on-demand model now",)),
    Command("down", cmd_down, help=("stop what runs (compose and local mode)",)),
    Command("pull", cmd_pull, args=(positional("model"),),
            help=("download NAME's weights into the Hugging Face cache",
                  "(HF_CACHE_DIR), with progress; do it before the first",
                  "start of a big model")),
    Command("fit", cmd_fit, args=(
        positional("model"), option("--gpu-memory", shown="SIZE", type=fit.parse_memory),
        option("--nodes", shown="N", type=positive_int, default=1),
        option("--max-model-len", shown="N", type=token_count),
        option("--max-num-seqs", shown="N", type=positive_int),
        option("--gpu-memory-utilization", shown="F", type=fraction)),
            help=("will NAME fit? weights + KV cache vs memory (also run",
                  "before every start; --force starts anyway)")),
    Command("cluster", cmd_cluster, args=(
        positional("role", shown="", choices=("head", "worker")),
        positional("model", optional=True), DETACH, switch("--build"), FORCE),
            usage=("./runMe.sh cluster head {model} {detach} {build} {force}",
                   "./runMe.sh cluster worker {model} {detach} {build}"),
            help=("one model over several GPU nodes with vLLM on Ray",
                  "(VLLM_HOST_IP, CLUSTER_* in vars.env; MULTINODE.md)")),
    Command("switch", cmd_switch, args=(positional("model"), FORCE),
            help=("load NAME, move the proxy to it, stop the old engine;",
                  "the old one keeps serving if NAME fails")),
    Command("status", cmd_status, on_bad_args=refuse("status takes no arguments"),
            help=("services, health, uptime, engine queue and KV-cache use",)),
    Command("ps", cmd_ps, on_bad_args=refuse("ps takes no arguments"),
            help=("each model: state, engine, memory share, requests",
                  "running and waiting")),
    Command("doctor", cmd_doctor, help=("check everything, one line each, with the fix",)),
    # The service is checked by `logs` itself, which names the valid ones.
    Command("logs", cmd_logs, args=(positional("service", shown="engine|proxy|db", optional=True),
                                    switch("-f", "--follow")), on_bad_args=usage_line),
    Command("render", cmd_render, args=(positional("model"), option("--out", shown="DIR"),
                                        REPLICAS),
            help=("write the generated config, print the engine command",)),
    Command("export", cmd_export, args=(positional("target", shown="", choices=("k8s",)),
                                        positional("model"), option("--image", shown="IMAGE")),
            on_bad_args=usage_line,
            help=("Kubernetes manifests (Deployment + Service) for NAME",)),
    # The client is checked by `launch` itself, which names the valid ones.
    Command("launch", cmd_launch, args=(positional("client", shown="claude|codex|opencode"),
                                        FORCE, option("--model", shown="ID")),
            rest="-- CLIENT ARGS", parse="anywhere",
            on_bad_args=refuse("launch needs a client: claude, codex or opencode"),
            help=("start a coding agent against the running proxy;",
                  "a missing client is installed first (pinned, npm)")),
    Command("install-clients", cmd_install_clients,
            help=("install the pinned agent CLIs (npm) into the cache",)),
    Command("keys", on_bad_args=explained_usage_line, subcommands=(
        Command("create", cmd_keys_create, args=(
            positional("name"), option("--rpm", shown="N", type=int),
            option("--tpm", shown="N", type=int), option("--max-parallel", shown="N", type=int),
            option("--tokens-per-day", shown="N", type=int),
            option("--models", shown="a,b", type=key_models),
            option("--priority", shown="N", type=int))),
        Command("list", cmd_keys_list, usage=()),  # in revoke's line
        Command("revoke", cmd_keys_revoke, args=(positional("name"),),
                usage=("./runMe.sh keys list | keys revoke {name}",)))),
    Command("usage", cmd_usage, on_bad_args=explained_usage_line, args=(
        option("--since", shown="1d", default="1d"),
        option("--by", choices=("key", "model", "day"), default="key"))),
    Command("test", cmd_test, parse="none", rest="PYTEST ARGS",
            help=("run the test suite (installs what it needs)",)),
    # bench/proxy_bench.py parses these itself; a test holds them equal to its parser.
    Command("bench", cmd_bench, parse="none", args=(
        option("--target", choices=("stub", "model", "both")),
        option("--concurrency", shown="1,8,32"), option("--rounds", shown="N"),
        switch("--smoke"), switch("--no-levers"), option("--redis", shown="URL")),
            help=("the proxy's cost: latency and tokens/s direct to the",
                  "engine vs through our proxy vs stock LiteLLM, and each",
                  "lever's effect (docs/benchmarks.md)")),
    Command("schema", cmd_schema, usage=("./runMe.sh schema | docs",),
            help=("print the model-file JSON Schema | regenerate",
                  "CONFIGURATION.md and this list in README.md")),
    Command("docs", cmd_docs, usage=()),
    Command("entrypoint", cmd_entrypoint, hidden=True),
    Command("proxy-entrypoint", cmd_proxy_entrypoint, hidden=True),
    Command("healthcheck", cmd_healthcheck, hidden=True),
    Command("supervise", cmd_supervise, hidden=True),
    Command("supervise-compose", cmd_supervise_compose, hidden=True),
)
BY_NAME = {command.name: command for command in COMMANDS}


# ----------------------------------------------------------------------------- dispatch

def normalise(argv: list[str]) -> list[str]:
    """Map the user-facing shapes onto commands:
    `--local [NAME]` → local; `NAME [-d]` → up NAME; nothing with MODEL set → up."""
    if not argv:
        return ["up"] if environment.get("MODEL") else ["list"]
    if argv[0] == "--local":
        return ["local", *argv[1:]]
    if argv[0] in ("-h", "--help"):
        return ["help"]
    if "--local" in argv:
        rest = [a for a in argv if a != "--local"]
        return ["local", *rest]
    if argv[0] in BY_NAME:
        return argv
    return ["up", *argv]


def main(argv: Optional[list[str]] = None) -> int:
    argv = normalise(list(sys.argv[1:] if argv is None else argv))
    try:
        try:
            command, args = parse(argv)
        except BadArguments as refused:
            assert refused.command is not None
            return refused.command.on_bad_args(refused.command, refused.text)
        assert command.run is not None
        return command.run(args)
    except UserError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user, traceback on request
        if environment.get("MMS_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (MMS_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
