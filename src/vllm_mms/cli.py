"""The command line behind ./runMe.sh."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import environment, paths
from .config import schema
from .config.resolve import Project, resolve
from .engine import fit, serve
from .errors import UserError
from .stack import compose, replicas
from .stack.render import compose_api_bases, render

REPLICAS_COMPOSE = "compose.replicas.yml"  # in the state directory: generated, no secrets
COMMANDS = ("render", "up", "down", "entrypoint", "proxy-entrypoint", "healthcheck",
            "schema", "docs", "test", "bench", "launch", "install-clients", "keys", "usage",
            "status", "logs", "doctor", "fit", "switch", "supervise", "export", "cluster", "help",
            "list", "pull")

USAGE = """\
usage:
  ./runMe.sh                          list the models and this help
  MODEL=NAME ./runMe.sh [-d] [--build] [--metrics] [--force] [--replicas N]
  ./runMe.sh NAME [-d] [--build] [--metrics] [--force] [--replicas N]
                                      start NAME with docker compose (default glm47-flash);
                                      --metrics adds Prometheus + Grafana; --replicas N runs
                                      N engines behind the proxy (REPLICA_GPUS: one GPU each)
  ./runMe.sh --local [NAME] [-d] [--force] [--replicas N]
                                      start NAME on this machine: CPU, no Docker
                                      (default smollm2-135m-cpu; ports: LITELLM_PORT, VLLM_PORT)
  ./runMe.sh down                     stop what runs (compose and local mode)
  ./runMe.sh pull NAME                download NAME's weights into the Hugging Face cache
                                      (HF_CACHE_DIR), with progress; do it before the first
                                      start of a big model
  ./runMe.sh fit NAME [--gpu-memory SIZE] [--nodes N] [--max-model-len N] [--max-num-seqs N]
                 [--gpu-memory-utilization F]
                                      will NAME fit? weights + KV cache vs memory (also run
                                      before every start; --force starts anyway)
  ./runMe.sh cluster head [NAME] [-d] [--build] [--force]
  ./runMe.sh cluster worker [NAME] [-d] [--build]
                                      one model over several GPU nodes with vLLM on Ray
                                      (VLLM_HOST_IP, CLUSTER_* in vars.env; MULTINODE.md)
  ./runMe.sh switch NAME [--force]    load NAME, move the proxy to it, stop the old engine;
                                      the old one keeps serving if NAME fails
  ./runMe.sh status                   services, health, uptime, engine queue and KV-cache use
  ./runMe.sh doctor                   check everything, one line each, with the fix
  ./runMe.sh logs [engine|proxy|db] [-f]
  ./runMe.sh render NAME [--out DIR] [--replicas N]
                                      write the generated config, print the engine command
  ./runMe.sh export k8s NAME [--image IMAGE]
                                      Kubernetes manifests (Deployment + Service) for NAME
  ./runMe.sh launch claude|codex|opencode [--force] [--model ID] [-- CLIENT ARGS]
                                      start a coding agent against the running proxy
  ./runMe.sh install-clients          install the pinned agent CLIs (npm) into the cache
  ./runMe.sh keys create NAME [--rpm N] [--tpm N] [--max-parallel N] [--models a,b]
  ./runMe.sh keys list | keys revoke NAME
  ./runMe.sh usage [--since 1d] [--by key|model|day]
  ./runMe.sh test [PYTEST ARGS]       run the test suite (installs what it needs)
  ./runMe.sh bench [--rounds N]       tokens/s direct to the engine vs through the proxy
  ./runMe.sh schema | docs            print the model-file JSON Schema | regenerate CONFIGURATION.md
"""


def project() -> Project:
    return Project(paths.project_dir())


def print_models(proj: Project) -> None:
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
    print(USAGE, end="")


# ----------------------------------------------------------------------------- render

def cmd_render(args: argparse.Namespace) -> int:
    proj = project()
    resolved = resolve(proj, args.model)
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
    name = args.model or environment.get("MODEL") or environment.DEFAULT_COMPOSE_MODEL
    resolved = resolve(proj, name)  # fail here, in one line, before Docker is involved
    fit.preflight(resolved, args.force, sharing=replicas.sharing(resolved))
    files = compose.model_files(proj.root, resolved)
    if resolved.replicas > 1:
        override = replicas.write_compose_override(
            resolved, [Path(f) for f in files[1::2]], paths.state_dir() / REPLICAS_COMPOSE)
        files += ["-f", str(override)]
    cmd = [*compose.compose_command(), *files,
           *(["--profile", "metrics"] if args.metrics else []), "up"]
    if not compose.docker_engine_reachable():
        raise UserError("no Docker engine is reachable ('docker ps' failed): start Docker "
                        "(sudo systemctl start docker), or run without it: ./runMe.sh --local")
    if args.detach:
        cmd.append("-d")
    if args.build:
        cmd.append("--build")
    # MODEL goes into compose's environment explicitly, so `sudo ./runMe.sh NAME` works too.
    env = {**os.environ, **compose.model_environment(resolved)}
    print(f"starting {name} with: {' '.join(cmd)}", flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def cmd_down(args: argparse.Namespace) -> int:
    from .stack import local

    stopped_local = local.stop_local(quiet=False)
    if stopped_local:
        return 0
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


# ----------------------------------------------------------------------------- docs, tests

def cmd_schema(args: argparse.Namespace) -> int:
    from .config.docs import model_schema

    print(json.dumps(model_schema(), indent=2))
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from .config.docs import write_configuration_md

    path = write_configuration_md(project().root)
    print(f"wrote {schema.display_path(path)}")
    return 0


def cmd_test(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .dev import testenv

    return testenv.run_tests(list(extra))


def cmd_local(args: argparse.Namespace) -> int:
    from .stack import local

    return local.start_local(project(), args.model or environment.DEFAULT_LOCAL_MODEL,
                             detach=args.detach, force=args.force)


def running_compose() -> list[str]:
    """The compose command when a Docker engine answers, else [] (local mode or nothing)."""
    try:
        command = [*compose.compose_command(), "-f", str(project().root / compose.BASE_FILE)]
    except UserError:
        return []
    return command if compose.docker_engine_reachable() else []


def cmd_ops(argv: list[str]) -> int:
    from .ops import status

    if argv[0] == "status":
        if len(argv) > 1:
            raise UserError("status takes no arguments", 2)
        return status.status(running_compose() if status.Stack.load() is None else [])
    rest = argv[1:]
    follow = "-f" in rest or "--follow" in rest
    names = [a for a in rest if a not in ("-f", "--follow")]
    if len(names) > 1 or any(n.startswith("-") for n in names):
        raise UserError("usage: ./runMe.sh logs [engine|proxy|db] [-f]", 2)
    compose_cmd = running_compose() if status.Stack.load() is None else []
    return status.logs(names[0] if names else None, follow, compose_cmd)


def cmd_launch(argv: list[str]) -> int:
    """`launch CLIENT [--force] [--model ID] [--] [CLIENT ARGS]`: our two flags are taken
    wherever they appear before `--`; everything else goes to the client."""
    from .ops.agents import launch

    if not argv or argv[0].startswith("-"):
        raise UserError("launch needs a client: claude, codex or opencode", 2)
    client, rest = argv[0], argv[1:]
    force, model, client_args = False, None, []
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            client_args.extend(rest)
            break
        if arg == "--force":
            force = True
        elif arg == "--model" and rest:
            model = rest.pop(0)
        elif arg.startswith("--model="):
            model = arg.split("=", 1)[1]
        else:
            client_args.append(arg)
    return launch(project(), client, client_args, force=force, model=model)


# ----------------------------------------------------------------------------- dispatch

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


def cmd_switch(args: argparse.Namespace) -> int:
    from .stack import switch

    return switch.switch(project(), args.model, force=args.force, compose=running_compose())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="./runMe.sh", add_help=False)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("render", add_help=False)
    p.add_argument("model")
    p.add_argument("--out")
    p.add_argument("--replicas", type=positive_int)
    p = sub.add_parser("up", add_help=False)
    p.add_argument("model", nargs="?")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--build", action="store_true")
    p.add_argument("--metrics", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--replicas", type=positive_int)
    p = sub.add_parser("local", add_help=False)
    p.add_argument("model", nargs="?")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--replicas", type=positive_int)
    p = sub.add_parser("fit", add_help=False)
    p.add_argument("model")
    p.add_argument("--gpu-memory", type=fit.parse_memory)
    p.add_argument("--nodes", type=positive_int, default=1)
    p.add_argument("--max-model-len", type=token_count)
    p.add_argument("--max-num-seqs", type=positive_int)
    p.add_argument("--gpu-memory-utilization", type=fraction)
    p = sub.add_parser("cluster", add_help=False)
    p.add_argument("role", choices=["head", "worker"])
    p.add_argument("model", nargs="?")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--build", action="store_true")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("pull", add_help=False)
    p.add_argument("model")
    p = sub.add_parser("switch", add_help=False)
    p.add_argument("model")
    p.add_argument("--force", action="store_true")
    for name in ("down", "entrypoint", "proxy-entrypoint", "healthcheck", "schema", "docs",
                 "help", "list"):
        sub.add_parser(name, add_help=False)
    return parser


def normalise(argv: list[str]) -> list[str]:
    """Map the user-facing shapes onto sub-commands:
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
    if argv[0] in COMMANDS:
        return argv
    return ["up", *argv]


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = normalise(argv)
    try:
        if argv[0] == "test":
            return cmd_test(argparse.Namespace(), argv[1:])
        if argv[0] == "doctor":
            from .ops import doctor
            from .stack.state import Stack

            compose_cmd = running_compose() if Stack.load() is None else []
            local_mode = Stack.load() is not None or not compose_cmd
            return doctor.run_doctor(project(), local_mode, compose_cmd)
        if argv[0] in ("status", "logs"):
            return cmd_ops(argv)
        if argv[0] in ("keys", "usage"):
            from .ops import keys

            return keys.main(argv)
        if argv[0] == "launch":
            return cmd_launch(argv[1:])
        if argv[0] == "install-clients":
            from .ops.agents import install_clients

            print(install_clients())
            return 0
        if argv[0] == "export":
            from .stack import k8s

            name, image = k8s.parse_args(argv[1:])
            print(k8s.manifests(resolve(project(), name), image), end="")
            return 0
        if argv[0] == "supervise":  # started by `--local -d`, not by users
            from .stack import local

            stack = local.Stack.load()
            return local.supervise(stack, foreground=False) if stack else 1
        if argv[0] == "bench":
            script = str(paths.ROOT / "bench" / "proxy_bench.py")
            os.execv(sys.executable, [sys.executable, script, *argv[1:]])
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            print(USAGE, file=sys.stderr, end="")
            return 2
        handlers = {
            "render": cmd_render, "up": cmd_up, "down": cmd_down, "local": cmd_local,
            "entrypoint": cmd_entrypoint, "proxy-entrypoint": cmd_proxy_entrypoint,
            "healthcheck": cmd_healthcheck, "schema": cmd_schema, "docs": cmd_docs,
            "fit": cmd_fit, "switch": cmd_switch, "cluster": cmd_cluster, "pull": cmd_pull,
        }
        if getattr(args, "replicas", None):  # the command line beats vars.env, like the environment
            os.environ["REPLICAS"] = str(args.replicas)
        if args.command in ("list", "help"):
            print_models(project())
            return 0
        return handlers[args.command](args)
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
