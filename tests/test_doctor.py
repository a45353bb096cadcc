"""`./runMe.sh doctor`: a deliberately broken configuration, and the exact docker commands
it issues in compose mode (through a stand-in `docker` that plays a healthy stack)."""

from __future__ import annotations

from .conftest import container, docker_stand_in, run_cli

# No `docker` on this PATH: the tests hold whether or not the machine runs a Docker engine.
NO_DOCKER_PATH = "/nonexistent"


def test_broken_secret_fails_every_dependent_check_with_the_fix(project_dir, tmp_path):
    (project_dir / "secrets" / "HF_TOKEN").write_bytes(b"")
    result = run_cli("doctor", project=project_dir,
                     env={"MMS_STATE_DIR": str(tmp_path / "state"), "PATH": NO_DOCKER_PATH,
                          "MMS_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}"})
    assert result.code == 1, result.out + result.err
    lines = result.out.splitlines()
    assert lines[0] == "doctor (local mode)"
    index = lines.index("fail  settings: secrets/HF_TOKEN: the file is empty")
    assert lines[index + 1] == "      fix: fix vars.env or the file in secrets/ named above"
    assert "fail  model glm47-flash: secrets/HF_TOKEN: the file is empty" in lines
    assert lines[-1] == "8 checks failed"  # settings + the seven catalog models
    assert "Traceback" not in result.out + result.err


def test_model_error_names_the_field_and_the_fix(project_dir, tmp_path):
    (project_dir / "models" / "broken.yml").write_text("description: x\ncommand: vllm serve m; ls\n")
    meminfo = tmp_path / "meminfo"  # the memory-fit line reads this, not the busy host's
    meminfo.write_text("MemTotal:       24576000 kB\nMemAvailable:   20480000 kB\n")
    result = run_cli("doctor", project=project_dir,
                     env={"MMS_STATE_DIR": str(tmp_path / "state"), "PATH": NO_DOCKER_PATH,
                          "MMS_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}",
                          "MMS_MEMINFO": str(meminfo)})
    lines = result.out.splitlines()
    index = lines.index("fail  model broken: models/broken.yml: command: ';' is shell syntax; "
                        "the command is run without a shell")
    assert lines[index + 1] == "      fix: edit models/broken.yml (fields: CONFIGURATION.md)"
    assert "ok    model glm47-flash: valid" in lines
    assert lines[-1] == "1 check failed" and result.code == 1


def test_compose_mode_checks_services_config_and_network(project_dir, tmp_path):
    record = tmp_path / "record"
    bin_dir = docker_stand_in(tmp_path, record, [
        container("vllm-node", "vllm-container", "running", "healthy"),
        container("litellm", "litellm-container", "running", "starting"),
        container("litellm_db", "litellm_db", "running", "healthy")])
    result = run_cli("doctor", project=project_dir,
                     env={"PATH": f"{bin_dir}:/nonexistent", "MMS_STATE_DIR": str(tmp_path / "s")})
    lines = result.out.splitlines()
    assert lines[0] == "doctor (compose mode)"
    assert "ok    docker engine: reachable" in lines
    assert "ok    gpu runtime: nvidia runtime registered with Docker" in lines
    assert "ok    service vllm-node: running (healthy)" in lines
    assert "fail  service litellm: running (starting)" in lines
    assert "ok    service litellm_db: running (healthy)" in lines
    assert "ok    generated config: present in the engine container" in lines
    assert "fail  proxy → engine: the proxy container cannot reach vllm-node:8000" in lines
    assert result.code == 1 and lines[-1] == "2 checks failed"
    calls = record.read_text().splitlines()
    assert "ps -a -q --filter label=com.docker.compose.project=project" in calls
    assert "inspect id-vllm-container id-litellm-container id-litellm_db" in calls
    assert ("exec litellm-container python3 -c import urllib.request; urllib.request.urlopen("
            "'http://vllm-node:8000/health', timeout=5)") in calls


def test_compose_mode_with_nothing_running_says_so(project_dir, tmp_path):
    bin_dir = docker_stand_in(tmp_path, tmp_path / "record", [])
    result = run_cli("doctor", project=project_dir,
                     env={"PATH": f"{bin_dir}:/nonexistent", "MMS_STATE_DIR": str(tmp_path / "s")})
    lines = result.out.splitlines()
    assert lines[0] == "doctor (compose mode)"
    index = lines.index("warn  compose stack: nothing is running")
    assert lines[index + 1] == "      fix: start it: MODEL=NAME ./runMe.sh -d"
    assert not any(line.startswith(("fail  service", "fail  generated config")) for line in lines)


def test_a_missing_service_is_reported_missing(project_dir, tmp_path):
    bin_dir = docker_stand_in(tmp_path, tmp_path / "record", [
        container("vllm-node", "vllm-container", "exited", "unhealthy"),
        container("litellm_db", "litellm_db", "running", "healthy")])
    result = run_cli("doctor", project=project_dir,
                     env={"PATH": f"{bin_dir}:/nonexistent", "MMS_STATE_DIR": str(tmp_path / "s")})
    lines = result.out.splitlines()
    assert "fail  service vllm-node: exited" in lines   # its last health is stale: not shown
    assert "fail  service litellm: missing" in lines
    assert "ok    service litellm_db: running (healthy)" in lines


def test_memory_fit_of_the_model_that_starts_next(project_dir, tmp_path):
    env = {"MMS_STATE_DIR": str(tmp_path / "state"), "PATH": NO_DOCKER_PATH,
           "MMS_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}"}
    result = run_cli("doctor", project=project_dir, env={**env, "MODEL": "step-3.5-flash"})
    lines = result.out.splitlines()
    index = next(i for i, line in enumerate(lines) if "memory fit" in line)
    assert lines[index] == (
        "fail  memory fit: step-3.5-flash: does not fit: the command asks for 2 GPUs (tensor x "
        "pipeline parallel), the machine has 1; the weights alone (186.3 GiB) exceed the budget "
        "(99.8 GiB)")
    assert lines[index + 1] == ("      fix: ./runMe.sh fit step-3.5-flash shows the numbers and "
                                "the changes that would fit")
    result = run_cli("doctor", project=project_dir, env={**env, "MODEL": "qwen3-next-coder"})
    assert "ok    memory fit: qwen3-next-coder: fits (" in result.out


def test_shared_limits_redis_is_checked_without_showing_its_url(project_dir, tmp_path):
    from vllm_mms.stack.processes import free_port

    port = free_port()
    (project_dir / "secrets" / "PROXY_REDIS_URL").write_text(
        f"redis://:pw-canary@127.0.0.1:{port}/0\n")
    result = run_cli("doctor", project=project_dir,
                     env={"MMS_STATE_DIR": str(tmp_path / "state"), "PATH": NO_DOCKER_PATH,
                          "MMS_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}"})
    lines = result.out.splitlines()
    index = lines.index(f"warn  shared limits (Redis): 127.0.0.1:{port} unreachable "
                        "(ConnectionError); each proxy counts its own limits until it is back")
    assert lines[index + 1] == ("      fix: start Redis or fix PROXY_REDIS_URL "
                                "(secrets/PROXY_REDIS_URL)")
    assert "pw-canary" not in result.out + result.err


def test_memory_fit_is_told_from_the_verdict_fields(project_dir, monkeypatch):
    """doctor reads fit's verdict (fits, numbers, reasons), not its printed report."""
    from vllm_mms.config.resolve import Project
    from vllm_mms.engine import fit
    from vllm_mms.ops import doctor

    def verdict(fits: bool, reasons: list[str]) -> fit.Verdict:
        gib = fit.GiB
        plan = fit.Plan(8192, 4, 0.9, 2, "bf16", 1)
        estimate = fit.Estimate(plan, budget=10 * gib, weights=4 * gib, overhead=1 * gib,
                                kv_one=0.5 * gib, kv_all=3.5 * gib)
        return fit.Verdict("m", "org/m", fit.Shape("test", 1, 1), plan,
                           fit.Memory("test", 10 * gib, 1, False), estimate, fits, reasons)

    monkeypatch.setenv("MODEL", "glm47-flash")
    monkeypatch.setattr(fit, "check", lambda resolved: verdict(True, []))
    ok = doctor.check_fit(Project(project_dir), local_mode=False)
    monkeypatch.setattr(fit, "check", lambda resolved: verdict(False, ["one", "two"]))
    failed = doctor.check_fit(Project(project_dir), local_mode=False)
    assert (ok.status, ok.detail) == ("ok", "glm47-flash: fits (1.5 GiB to spare)")
    assert (failed.status, failed.detail, failed.fix) == (
        "fail", "glm47-flash: does not fit: one; two",
        "./runMe.sh fit glm47-flash shows the numbers and the changes that would fit")
