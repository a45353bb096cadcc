"""The command table in cli.py: the parser, the usage text and README.md's list come from it,
and what it documents matches what parses (bench's flags: its own script's parser)."""

from __future__ import annotations

import importlib.util
import os
import re
import sys

import pytest
import yaml

from vllm_mms import cli
from vllm_mms.stack import local

from .conftest import ROOT, run_cli, run_runme


def documented_options() -> set[str]:
    return set(re.findall(r"\[(-{1,2}[a-z][a-z-]*)", cli.usage_text()))


def table_options() -> set[str]:
    """The first name of every option a user-facing command takes (as the usage shows it)."""
    commands = [c for command in cli.COMMANDS if not command.hidden
                for c in (command.subcommands or (command,))]
    return {arg.names[0] for command in commands for arg in command.args if arg.is_option}


def test_every_option_in_the_table_is_in_the_usage_and_nothing_else():
    assert documented_options() == table_options()
    assert "--tokens-per-day" in documented_options()


def test_the_options_parse_as_documented():
    command, args = cli.parse(["keys", "create", "ci", "--tokens-per-day", "5000", "--rpm", "3",
                               "--models", "a, b"])
    assert (command.name, args.name, args.tokens_per_day, args.rpm, args.tpm, args.models) == (
        "create", "ci", 5000, 3, None, ["a", "b"])
    command, args = cli.parse(["fit", "glm47-flash", "--nodes", "2"])
    assert (command.name, args.model, args.nodes, args.gpu_memory) == ("fit", "glm47-flash", 2, None)
    command, args = cli.parse(["usage"])
    assert (args.since, args.by) == ("1d", "key")


def load_bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("proxy_bench", ROOT / "bench" / "proxy_bench.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "proxy_bench", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_bench_documents_exactly_the_flags_of_its_script(monkeypatch):
    """bench's arguments go to bench/proxy_bench.py untouched: its parser is the truth."""
    script = {action.option_strings[0]: (action.choices and tuple(action.choices), action.nargs)
              for action in load_bench(monkeypatch).build_parser()._actions if action.option_strings
              and action.option_strings[0] != "-h"}
    documented = {arg.names[0]: (arg.choices, 0 if arg.switch else None)
                  for arg in cli.BY_NAME["bench"].args}
    assert documented == script
    lines = cli.usage_text().splitlines()
    start = lines.index("  ./runMe.sh bench [--target stub|model|both] [--concurrency 1,8,32] "
                        "[--rounds N] [--smoke]")
    assert lines[start + 1] == "                   [--no-levers] [--redis URL]"


def test_usage_lines_are_wrapped_under_the_first_argument():
    lines = cli.usage_text().splitlines()
    start = lines.index("  ./runMe.sh keys create NAME [--rpm N] [--tpm N] [--max-parallel N] "
                        "[--tokens-per-day N]")
    assert lines[start + 1] == "                         [--models a,b] [--priority N]"
    shapes = [line for line in lines if line.lstrip().startswith(("./runMe.sh", "MODEL=", "["))]
    assert max(len(line) for line in shapes) <= 2 + cli.USAGE_WIDTH


@pytest.mark.parametrize("argv, client, force, model, rest", [
    (["codex", "exec", "--force", "hi"], "codex", True, None, ["exec", "hi"]),
    (["claude", "-p", "--model", "m", "x", "--", "--force", "--model", "y"], "claude", False,
     "m", ["-p", "x", "--force", "--model", "y"]),
    (["opencode", "--model=m2", "run", "--force=1", "--model"], "opencode", False, "m2",
     ["run", "--force=1", "--model"]),  # not ours: a value-less --model, --force with a value
])
def test_launch_takes_its_options_anywhere_before_the_double_dash(argv, client, force, model,
                                                                  rest):
    command, args = cli.parse(["launch", *argv])
    assert (args.client, args.force, args.model, args.rest) == (client, force, model, rest)


@pytest.mark.parametrize("argv, err", [
    (["launch"], "error: launch needs a client: claude, codex or opencode\n"),
    (["launch", "--force", "claude"], "error: launch needs a client: claude, codex or opencode\n"),
    (["status", "now"], "error: status takes no arguments\n"),
    (["logs", "engine", "proxy"], "error: usage: ./runMe.sh logs [engine|proxy|db] [-f]\n"),
    (["export", "k8s"], "error: usage: ./runMe.sh export k8s NAME [--image IMAGE]\n"),
    (["keys", "create", "x", "--rpm", "0"], "error: --rpm must be a positive number\n"),
])
def test_bad_arguments_of_some_commands_are_one_line(argv, err, project_dir):
    result = run_cli(*argv, project=project_dir)
    assert (result.code, result.out, result.err) == (2, "", err)


@pytest.mark.parametrize("argv, argparse_says, usage", [
    (["usage", "--by", "week"], "./runMe.sh usage: error: argument --by: invalid choice: 'week'",
     "usage: ./runMe.sh usage [--since 1d] [--by key|model|day]"),
    (["keys", "create"],
     "./runMe.sh keys create: error: the following arguments are required: name",
     "usage: ./runMe.sh keys create NAME [--rpm N] [--tpm N] [--max-parallel N] "
     "[--tokens-per-day N] [--models a,b] [--priority N] | keys list | keys revoke NAME"),
])
def test_bad_arguments_of_keys_and_usage_say_what_is_wrong_then_the_usage(
        argv, argparse_says, usage, project_dir):
    result = run_cli(*argv, project=project_dir)
    assert (result.code, result.out) == (2, "")
    lines = result.err.splitlines()
    assert lines[0].startswith(f"usage: ./runMe.sh {' '.join(argv[:2 if argv[0] == 'keys' else 1])} ")
    assert lines[-2].startswith(argparse_says) and lines[-1] == f"error: {usage}"


def test_a_parse_error_of_most_commands_shows_what_is_wrong_and_the_whole_usage(project_dir):
    result = run_cli("render", project=project_dir)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("usage: ./runMe.sh render ")
    assert result.err.endswith("\n./runMe.sh render: error: the following arguments are "
                               "required: model\n" + cli.usage_text())


# ----------------------------------------------------------------------------- --replicas

def test_replicas_reach_the_render_as_an_argument_not_through_the_environment(
        project_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMS_PROJECT_DIR", str(project_dir))
    assert cli.main(["render", "glm47-flash", "--out", str(tmp_path), "--replicas", "2"]) == 0
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert sorted({m["litellm_params"]["api_base"] for m in config["model_list"]}) == [
        "http://vllm-node-2:8000/v1", "http://vllm-node:8000/v1"]
    assert "REPLICAS" not in os.environ  # nothing left behind for what runs next


def test_replicas_reach_local_mode_as_an_argument(project_dir, monkeypatch):
    seen = {}

    def start_local(project, name, detach, force=False, environ=None, on_demand=()):
        seen.update(name=name, detach=detach, force=force, replicas=environ.get("REPLICAS"),
                    process=os.environ.get("REPLICAS"))
        return 0

    monkeypatch.setattr(local, "start_local", start_local)
    monkeypatch.setenv("MMS_PROJECT_DIR", str(project_dir))
    assert cli.main(["--local", "-d", "--replicas", "3"]) == 0
    assert seen == {"name": ["smollm2-135m-cpu"], "detach": True, "force": False,
                    "replicas": "3", "process": None}


def test_a_restarted_replica_is_resolved_with_the_stack_s_replica_count(project_dir, tmp_path,
                                                                       monkeypatch):
    """The supervisor restarts engine-2 of a stack started with --replicas 2: nothing in its
    environment says 2, the stack file does."""
    from vllm_mms import bootstrap
    from vllm_mms.config.resolve import Project
    from vllm_mms.stack.state import Service, Stack

    seen = {}

    class Started:
        pid = 4242

    def engine_process(resolved, engine_python, weights, key, logs, port, replica=1,
                       beside=False, share=0.0, cores=None):
        seen.update(replicas=resolved.replicas, port=port, replica=replica, beside=beside,
                    share=share, cores=cores)
        return Started()

    monkeypatch.setattr(local, "engine_process", engine_process)
    monkeypatch.setattr(local, "signal_group", lambda pid, sig: None)
    monkeypatch.setattr(bootstrap, "ensure_env", lambda name: tmp_path / "python")
    Stack.path().parent.mkdir(parents=True)
    stack = Stack(model="smollm2-135m-cpu", log_dir=str(tmp_path), started=0, services=[
        Service("engine", 1, 999999, 8001), Service("proxy", 1, 999998, 4001),
        Service("engine", 2, 999997, 8002)])
    local.restart(stack, stack.services[2], Project(project_dir))
    assert seen == {"replicas": 2, "port": 8002, "replica": 2, "beside": False, "share": 0.0,
                    "cores": (2, 2)}
    assert [(s.name, s.pid, s.port) for s in Stack.load().services] == [
        ("engine", 999999, 8001), ("proxy", 999998, 4001), ("engine-2", 4242, 8002)]


# ----------------------------------------------------------------------------- ./runMe.sh itself

def test_runme_without_arguments_lists_the_models_and_the_usage(project_dir):
    """The real chain: shell → bootstrap (the cached tools environment) → CLI."""
    result = run_runme(project=project_dir)
    assert (result.code, result.err) == (0, "")
    assert result.out == run_cli(project=project_dir).out
    assert result.out.endswith(cli.usage_text())


def test_runme_exits_2_on_an_unknown_model(project_dir):
    result = run_runme("render", "nope", project=project_dir)
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith("error: unknown model 'nope'; available: glm47-flash, ")


def test_runme_execs_compose_with_the_model_in_its_environment(project_dir, tmp_path):
    """A real exec (not the tests' stand-in for it): what compose is run with."""
    record = tmp_path / "record"
    docker = tmp_path / "docker"
    docker.write_text(f"#!/bin/sh\ncase \"$1 $2\" in \"compose version\"|\"ps -q\") exit 0;; esac\n"
                      f"echo \"$MODEL|$*\" > {record}\n")
    docker.chmod(0o755)
    result = run_runme("qwen3-next-coder", "-d", project=project_dir,
                       env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert result.code == 0, result.err
    files = f"-f {project_dir / 'docker-compose.yml'} -f {project_dir / 'docker-compose.gpu.yml'}"
    assert record.read_text() == f"qwen3-next-coder|compose {files} up --remove-orphans -d\n"
