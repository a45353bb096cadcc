"""`./runMe.sh pull NAME`: the exact download it asks for (the downloader is a stand-in: no hub
here), the token from secrets/, and one-line errors for an unreachable hub, unknown names and
models that have nothing to pull."""

from __future__ import annotations

import pytest

from vllm_mms import cli
from vllm_mms.engine import pull

from .conftest import ROOT, run_cli

AVAILABLE = ("glm47-flash, minilm-l6-cpu, qwen3-next-coder, smollm2-135m-cpu, "
             "smollm2-135m-cpu-fast, step-3.5-flash, step-3.5-flash-hcsw")


@pytest.fixture
def recorded(monkeypatch, project_dir, tmp_path):
    calls: list[dict] = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return f"{kwargs['cache_dir']}/models--x/snapshots/abc"

    monkeypatch.setattr(pull, "_snapshot_download", lambda: fake_download)
    monkeypatch.setenv("MMS_PROJECT_DIR", str(project_dir))
    monkeypatch.setenv("HF_CACHE_DIR", str(tmp_path / "hf"))
    return calls


def test_pull_downloads_the_catalog_repo_into_the_mounted_cache(recorded, capsys, tmp_path):
    assert cli.main(["pull", "qwen3-next-coder"]) == 0
    hub = tmp_path / "hf" / "hub"
    assert recorded == [{"repo_id": "Qwen/Qwen3-Coder-Next-FP8", "cache_dir": str(hub),
                         "token": None}]
    out, err = capsys.readouterr()
    assert (out, err) == (f"pulling Qwen/Qwen3-Coder-Next-FP8 (~78 GB) into {hub}\n"
                          f"done: {hub}/models--x/snapshots/abc\n"
                          f"start it with: ./runMe.sh qwen3-next-coder\n", "")


def test_pull_uses_the_hf_token_secret_without_printing_it(recorded, capsys, project_dir):
    (project_dir / "secrets" / "HF_TOKEN").write_text("hf_canary_pull\n")
    assert cli.main(["pull", "glm47-flash"]) == 0
    assert recorded[0]["repo_id"] == "zai-org/GLM-4.7-Flash"
    assert recorded[0]["token"] == "hf_canary_pull"
    out, err = capsys.readouterr()
    assert out.splitlines()[0].endswith(" with secrets/HF_TOKEN")
    assert "hf_canary_pull" not in out + err


def test_pull_default_cache_is_the_one_compose_mounts(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pull.download_kwargs("a/b", "") == {
        "repo_id": "a/b", "cache_dir": str(tmp_path / ".cache" / "huggingface" / "hub"),
        "token": None}
    assert "${HF_CACHE_DIR:-~/.cache/huggingface}:/root/.cache/huggingface" in \
        (ROOT / "docker-compose.yml").read_text()


def test_unreachable_hub_is_one_line(project_dir, tmp_path):
    result = run_cli("pull", "qwen3-next-coder", project=project_dir,
                     env={"HF_CACHE_DIR": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9",
                          "HF_HUB_DOWNLOAD_TIMEOUT": "5", "HF_HUB_ETAG_TIMEOUT": "5"})
    assert result.code == 1, result.err
    assert result.out == f"pulling Qwen/Qwen3-Coder-Next-FP8 (~78 GB) into {tmp_path / 'hf' / 'hub'}\n"
    lines = result.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    assert lines[0].startswith("error: cannot download Qwen/Qwen3-Coder-Next-FP8 from Hugging "
                               "Face (")
    assert lines[0].endswith("); check the network or HF_ENDPOINT (a mirror); partial files stay "
                             "in the cache and the next pull resumes them")


@pytest.mark.parametrize("kind, text, message", [
    ("GatedRepoError", "401 Client Error", "cannot download a/b: access denied (GatedRepoError): "
     "the model may be gated: accept its licence on huggingface.co and put your token in "
     "secrets/HF_TOKEN"),
    ("RepositoryNotFoundError", "404 Client Error\nmore", "cannot download a/b: no such "
     "repository on the hub (RepositoryNotFoundError)"),
    ("ConnectError", "[Errno 111] Connection refused\ndetails", "cannot download a/b from Hugging "
     "Face (ConnectError: [Errno 111] Connection refused); check the network or HF_ENDPOINT (a "
     "mirror); partial files stay in the cache and the next pull resumes them"),
])
def test_hub_failures_are_described(kind, text, message):
    assert pull.describe_failure("a/b", type(kind, (Exception,), {})(text)) == message


@pytest.mark.parametrize("args, code, err", [
    (["pull", "nope"], 2, f"error: unknown model 'nope'; available: {AVAILABLE}\n"),
    (["pull", "smollm2-135m-cpu"], 2, "error: smollm2-135m-cpu serves a local checkpoint "
     "(./runMe.sh --local prepares it); there is nothing to pull\n"),
])
def test_pull_refuses_what_it_cannot_pull(project_dir, args, code, err):
    result = run_cli(*args, project=project_dir)
    assert (result.code, result.out, result.err) == (code, "", err)


def test_pull_needs_a_name(project_dir):
    result = run_cli("pull", project=project_dir)
    assert result.code == 2 and result.out == ""
    # argparse's error for the missing name, then the help (which lists pull)
    assert result.err.splitlines()[:2] == ["usage: ./runMe.sh pull model",
                                           "./runMe.sh pull: error: the following arguments "
                                           "are required: model"]
    assert result.err.endswith("\n" + cli.usage_text())
    assert "  ./runMe.sh pull NAME                download NAME's weights into the Hugging " \
           "Face cache" in result.err.splitlines()


def test_pull_is_listed_in_usage_and_readme(project_dir):
    assert "pull" in cli.BY_NAME
    line = "  ./runMe.sh pull NAME                download NAME's weights into the Hugging Face cache"
    assert line in run_cli(project=project_dir).out.splitlines()
    assert line in (ROOT / "README.md").read_text().splitlines()
