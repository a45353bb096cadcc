"""`./runMe.sh fit`: the exact report and verdict for the catalog, config.json read from a
Hugging Face cache when present, the check before a start, and bad arguments. GPU detection
is pinned (conftest: no GPU) for the reports; nvidia-smi itself is read by stand-ins."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vllm_mms import cli
from vllm_mms.engine import fit

from .conftest import ROOT, Result, run_cli


@pytest.fixture
def fit_cli(monkeypatch, capsys):
    """The CLI in this process, where the conftest's GPU pin holds (run_cli's subprocess
    would ask this machine's nvidia-smi)."""
    def run(*args: str, project: Path, env: dict[str, str] | None = None) -> Result:
        monkeypatch.setenv("MMS_PROJECT_DIR", str(project))
        monkeypatch.chdir(project)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run

QWEN_ON_128 = """\
fit qwen3-next-coder (Qwen/Qwen3-Coder-Next-FP8)
  memory     128.0 GiB per GPU (given), unified with the CPU
  budget      102.4 GiB  gpu-memory-utilization 0.8 x 1 GPU(s), 10 GiB kept for the OS
  at start    102.4 GiB  must be free: gpu-memory-utilization 0.8 x 128.00 GiB total (vLLM's start-up check)
  available   107.3 GiB  (assumed: 20.69 GiB in use by the OS, as on a headless DGX Spark)
  free check: ok (4.9 GiB to spare)
  weights      72.6 GiB  (catalog weights_gb)
  overhead      4.9 GiB  (activations, CUDA graphs, context: a margin, not a measurement)
  KV cache      9.5 GiB  4 sequences x 204800 tokens, 12.2 KiB/token (fp8)
                2.4 GiB  one sequence at full context (the minimum to start)
  total        87.1 GiB
  architecture: catalog, from https://huggingface.co/Qwen/Qwen3-Coder-Next (model card) and its config.json
verdict: fits (15.3 GiB to spare)
"""


def test_qwen3_next_coder_fp8_at_200k_fits_one_spark(project_dir, fit_cli):
    result = fit_cli("fit", "qwen3-next-coder", "--gpu-memory", "128GiB", "--max-model-len",
                     "200K", project=project_dir)
    assert (result.code, result.out, result.err) == (0, QWEN_ON_128, "")


def test_step_flash_does_not_fit_one_spark(project_dir, fit_cli):
    result = fit_cli("fit", "step-3.5-flash", "--gpu-memory", "128GiB", project=project_dir)
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[6] == "  weights     186.3 GiB  (catalog weights_gb)"
    assert lines[-2:] == [
        "verdict: does not fit: the command asks for 2 GPUs (tensor x pipeline parallel), the "
        "machine has 1; the weights alone (186.3 GiB) exceed the budget (105.0 GiB)",
        "  fits with one of these changes: 2 GPUs: on DGX Sparks, 2 nodes over Ray "
        "(check with --nodes 2)"]


def test_step_flash_fits_two_sparks(project_dir, fit_cli):
    result = fit_cli("fit", "step-3.5-flash", "--gpu-memory", "128G", "--nodes", "2",
                     project=project_dir)
    assert result.code == 0, result.out
    assert "  budget      209.9 GiB  gpu-memory-utilization 0.82 x 2 GPU(s), 10 GiB kept for " \
           "the OS" in result.out.splitlines()
    assert result.out.splitlines()[-1] == (
        "verdict: fits; the KV cache holds 7 of 8 sequences at full context (vLLM queues the "
        "rest; shorter prompts share the space)")


def test_fits_with_changes_names_each_change(project_dir, fit_cli):
    result = fit_cli("fit", "glm47-flash", "--gpu-memory", "128GiB",
                     "--gpu-memory-utilization", "0.5", project=project_dir)
    assert result.code == 1
    assert result.out.splitlines()[-2:] == [
        "verdict: does not fit: weights + overhead + one full sequence need 69.77 GiB, the "
        "budget is 64.00 GiB",
        "  fits with one of these changes: --max-model-len 18432 (or less); "
        "--gpu-memory-utilization 0.55"]


def test_fewer_full_length_sequences_than_asked_still_starts(project_dir, fit_cli):
    result = fit_cli("fit", "glm47-flash", "--gpu-memory", "128GiB", project=project_dir)
    assert result.code == 0
    assert result.out.splitlines()[-1] == (
        "verdict: fits; the KV cache holds 5 of 8 sequences at full context (vLLM queues the "
        "rest; shorter prompts share the space)")


def test_the_cpu_model_fits_here_from_its_own_config_json(project_dir, tmp_path):
    meminfo = tmp_path / "meminfo"  # the free-memory check reads this, not the busy host's
    meminfo.write_text("MemTotal:       24576000 kB\nMemAvailable:   20480000 kB\n")
    result = run_cli("fit", "smollm2-135m-cpu", project=project_dir,
                     env={"MMS_MEMINFO": str(meminfo)})
    assert result.code == 0, result.out
    lines = result.out.splitlines()
    assert lines[0] == "fit smollm2-135m-cpu (HuggingFaceTB/SmolLM2-135M-Instruct)"
    assert lines[1].startswith("  memory     CPU: ")
    # 30 layers x 3 KV heads x 64 x 2 (K and V) x 2 bytes = 22.5 KiB per token
    assert lines[5] == ("  KV cache      1.4 GiB  8 sequences x 8192 tokens, 22.5 KiB/token "
                        "(bfloat16)")
    assert lines[-1].startswith("verdict: fits (")


def test_the_cpu_engine_needs_its_weights_and_runtime_inside_its_share():
    """vLLM's CPU worker gives the KV cache its share of the node minus what the process
    already holds, and refuses to start when nothing is left (as two CPU replicas at 0.05
    each did): a 1 GiB share cannot hold the runtime, the weights and one sequence."""
    from vllm_mms.engine import fit

    per_node = fit.cpu_node_memory(fit.meminfo()["MemTotal"])
    share = f"{1.0 * fit.GiB / per_node:.4f}"
    result = run_cli("fit", "smollm2-135m-cpu", "--gpu-memory-utilization", share)
    assert result.code == 1, result.out
    assert result.out.splitlines()[-1].startswith(
        "verdict: does not fit: weights + overhead + one full sequence need 1.")


def test_config_json_in_the_hf_cache_wins_over_the_catalog(project_dir, tmp_path, fit_cli):
    snapshot = (tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-Coder-Next-FP8" / "snapshots"
                / "0123abc")
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({
        "model_type": "qwen3_next", "num_hidden_layers": 48, "full_attention_interval": 4,
        "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
        "hidden_size": 2048, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
        "linear_value_head_dim": 128}))
    (snapshot / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 80_000_000_000}, "weight_map": {}}))
    result = fit_cli("fit", "qwen3-next-coder", "--gpu-memory", "128GiB", project=project_dir,
                     env={"HF_HOME": str(tmp_path / "hf")})
    assert result.code == 0, result.out
    lines = result.out.splitlines()
    assert lines[6] == "  weights      74.5 GiB  (on disk)"
    assert lines[8] == ("  KV cache      9.5 GiB  4 sequences x 204800 tokens, 12.2 KiB/token "
                        "(fp8)")
    assert lines[11] == f"  architecture: {snapshot / 'config.json'}"


@pytest.mark.parametrize("config, expected", [
    # plain GQA: 2 x kv heads x head dim per layer
    ({"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
      "hidden_size": 576}, (30, 384, 0, 0, 0.0)),
    # MLA (GLM-4.7-Flash, DeepSeek): one latent of kv_lora_rank + rope dims per token
    ({"num_hidden_layers": 47, "num_attention_heads": 20, "hidden_size": 2048,
      "kv_lora_rank": 512, "qk_rope_head_dim": 64}, (47, 576, 0, 0, 0.0)),
    # sliding-window layers (Step-3.5: num_attention_groups are its KV heads)
    ({"num_hidden_layers": 4, "num_attention_heads": 64, "num_attention_groups": 8,
      "head_dim": 128, "hidden_size": 4096, "sliding_window": 512,
      "layer_types": ["full_attention", "sliding_attention", "sliding_attention",
                      "sliding_attention"]}, (1, 2048, 3, 512, 0.0)),
    # hybrid linear attention: a fixed state per sequence in 3 of 4 layers
    ({"num_hidden_layers": 8, "full_attention_interval": 4, "num_attention_heads": 16,
      "num_key_value_heads": 2, "head_dim": 256, "hidden_size": 2048,
      "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128},
     (2, 1024, 0, 0, 6 * 32 * 128 * 128 * 2 * 1.05)),
])
def test_shapes_from_config_json(config, expected):
    shape = fit.shape_from_config_json(config, "test")
    assert (shape.attention_layers, shape.kv_values_per_layer, shape.sliding_window_layers,
            shape.sliding_window, shape.state_bytes_per_sequence) == expected


@pytest.mark.parametrize("text, expected", [
    ("128", 128 * 2**30), ("128G", 128 * 2**30), ("128GiB", 128 * 2**30), ("120GB", 120e9),
    ("96gib", 96 * 2**30), ("512M", 512 * 2**20), ("1.5T", 1.5 * 2**40),
])
def test_memory_sizes(text, expected):
    assert fit.parse_memory(text) == expected


@pytest.mark.parametrize("args, message", [
    (["--gpu-memory", "lots"],
     "error: --gpu-memory 'lots': give a size such as 128GiB, 128G or 120GB\n"),
    (["--gpu-memory", "0GiB"], "error: --gpu-memory '0GiB': must be more than 0\n"),
    (["--nodes", "0"], "error: '0': expected a whole number above 0\n"),
    (["--max-model-len", "long"], "error: 'long': expected a token count such as 32768 or 128K\n"),
    (["--gpu-memory-utilization", "1.5"],
     "error: '1.5': expected a fraction above 0, at most 1 (e.g. 0.85)\n"),
])
def test_bad_fit_arguments(project_dir, args, message):
    result = run_cli("fit", "glm47-flash", *args, project=project_dir)
    assert (result.code, result.out, result.err) == (2, "", message)


def test_a_start_that_does_not_fit_is_refused_before_docker(project_dir, tmp_path, fit_cli):
    report = fit_cli("fit", "step-3.5-flash", project=project_dir).out
    record = tmp_path / "docker-calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # It records, and fails: were the start to go on, it would stop at "not installed" (in
    # this process, a docker that answered would be exec'd in place of the tests).
    (bin_dir / "docker").write_text(f"#!/bin/sh\necho \"$*\" >> {record}\nexit 1\n")
    (bin_dir / "docker").chmod(0o755)
    result = fit_cli("step-3.5-flash", project=project_dir, env={"PATH": str(bin_dir)})
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        f"error: step-3.5-flash does not fit this machine:\n{report}start anyway with --force; "
        "try other settings with ./runMe.sh fit step-3.5-flash [--max-model-len N] "
        "[--max-num-seqs N] [--gpu-memory SIZE]\n")
    assert not record.exists()  # docker was never called


def test_force_starts_anyway(project_dir, tmp_path, fit_cli):
    report = fit_cli("fit", "step-3.5-flash", project=project_dir).out
    assert report.splitlines()[-2].startswith("verdict: does not fit: ")
    empty = tmp_path / "bin"
    empty.mkdir()
    result = fit_cli("step-3.5-flash", "--force", project=project_dir, env={"PATH": str(empty)})
    # The report is still shown, then the normal start path runs and here finds no Docker.
    assert (result.code, result.out, result.err) == (
        1, f"{report}--force: starting anyway\n",
        "error: docker compose is not installed; install Docker with the compose plugin, or run "
        "without Docker: ./runMe.sh --local\n")


def test_every_catalog_model_has_architecture_numbers():
    from vllm_mms.config.schema import available_models, load_model_file

    names = available_models(ROOT / "models")
    assert names == ["glm47-flash", "minilm-l6-cpu", "qwen3-next-coder", "smollm2-135m-cpu",
                     "smollm2-135m-cpu-fast", "step-3.5-flash", "step-3.5-flash-hcsw"]
    for name in names:
        model = load_model_file(ROOT / "models" / f"{name}.yml")
        assert model.architecture is not None, name
        assert model.architecture.source.startswith("https://huggingface.co/"), name


# ----------------------------------------------------------------------------- GPU detection

H100_ROW = "NVIDIA H100 80GB HBM3, 81559"   # nvidia-smi's csv,noheader,nounits: MiB


def stand_in_nvidia_smi(bin_dir: Path, stdout: str, code: int = 0) -> Path:
    """An nvidia-smi that records its arguments and prints `stdout`; returns the record."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    record = bin_dir / "nvidia-smi.args"
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!{sys.executable}\nimport json, sys\n"
                   f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                   f"sys.stdout.write({stdout!r})\nsys.exit({code})\n")
    smi.chmod(0o755)
    return record


def test_a_gpu_on_this_machine_does_not_change_a_pinned_report(project_dir, tmp_path,
                                                               monkeypatch, fit_cli):
    from vllm_mms.config.resolve import Project, resolve

    stand_in_nvidia_smi(tmp_path / "bin", H100_ROW + "\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    # The stand-in is found and would matter: an H100 is not unified memory...
    assert fit.nvidia_smi_gpus() == fit.Memory(
        "1 x NVIDIA H100 80GB HBM3, 79.6 GiB each (detected)", 81559 * 1024**2, 1, False)
    resolved = resolve(Project(project_dir), "qwen3-next-coder")
    on_the_h100 = fit.check(resolved, gpu_memory=128 * fit.GiB, gpus=fit.nvidia_smi_gpus)
    assert on_the_h100.lines[1:3] == [
        "  memory     128.0 GiB per GPU (given)",
        "  budget      102.4 GiB  gpu-memory-utilization 0.8 x 1 GPU(s)"]
    # ...but the pinned seam is what fit asks: the report stays the unified-memory one.
    result = fit_cli("fit", "qwen3-next-coder", "--gpu-memory", "128GiB", "--max-model-len",
                     "200K", project=project_dir)
    assert (result.code, result.out, result.err) == (0, QWEN_ON_128, "")


@pytest.mark.parametrize("stdout, code, expected", [
    (f"{H100_ROW}\n{H100_ROW}\n", 0,
     fit.Memory("2 x NVIDIA H100 80GB HBM3, 79.6 GiB each (detected)", 81559 * 1024**2, 2, False)),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 9, None),
    # a row, then a GPU it cannot read: the exit code says the view is incomplete
    (f"{H100_ROW}\nUnable to determine the device handle for GPU 0000:02:00.0: Unknown Error\n",
     15, None),
    ("", 0, None),
], ids=["two-h100", "driver-not-loaded", "a-gpu-lost", "no-rows"])
def test_nvidia_smi_output_is_read(tmp_path, monkeypatch, stdout, code, expected):
    record = stand_in_nvidia_smi(tmp_path / "bin", stdout, code)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert fit.nvidia_smi_gpus() == expected
    assert json.loads(record.read_text()) == ["--query-gpu=name,memory.total",
                                              "--format=csv,noheader,nounits"]


def test_nvidia_smi_on_a_gb10_reads_unified_memory_from_meminfo(tmp_path, monkeypatch):
    stand_in_nvidia_smi(tmp_path / "bin", "NVIDIA GB10, [N/A]\n")
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       127601213 kB\nMemAvailable:   105906176 kB\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("MMS_MEMINFO", str(info))
    assert fit.nvidia_smi_gpus() == fit.Memory(
        "NVIDIA GB10: 121.69 GiB unified with the CPU (detected)", 127601213 * 1024, 1, True,
        available=101.0 * fit.GiB, available_source=f"MemAvailable in {info}")


def test_no_nvidia_smi_is_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert fit.nvidia_smi_gpus() is None


# ----------------------------------------------------------------------------- unified memory

GB10_SMI = "#!/bin/sh\necho 'NVIDIA GB10, [N/A]'\n"   # nvidia-smi on a Spark: no memory column


def spark(tmp_path, available_kib: int, total_kib: int = 127601213):
    """A stand-in nvidia-smi that reports a GB10, and a /proc/meminfo of a Spark."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "nvidia-smi").write_text(GB10_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    info = tmp_path / "meminfo"
    info.write_text(f"MemTotal:       {total_kib} kB\nMemFree:         2000000 kB\n"
                    f"MemAvailable:   {available_kib} kB\n")
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "MMS_MEMINFO": str(info)}


def test_meminfo_reads_the_given_file(tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       127601213 kB\nMemAvailable:   105906176 kB\nbroken\n")
    assert fit.meminfo(info) == {"MemTotal": 127601213 * 1024, "MemAvailable": 101 * fit.GiB}


def test_free_memory_check_on_a_spark_fails_above_available_over_total(project_dir, tmp_path,
                                                                          monkeypatch):
    """vLLM 0.16 refuses to start when MemAvailable < utilization x MemTotal: 95 GiB free
    cannot hold 0.83 x 121.69 GiB; the fix is the utilization, not the model."""
    # The CLI runs in this process: detection goes back to nvidia-smi, the stand-in on PATH.
    monkeypatch.setattr(fit, "detect_gpus", fit.nvidia_smi_gpus)
    result = run_cli("fit", "qwen3-next-coder", "--gpu-memory-utilization", "0.83",
                     project=project_dir, env=spark(tmp_path, 95 * 1024 * 1024))
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[1:6] == [
        "  memory     NVIDIA GB10: 121.69 GiB unified with the CPU (detected)",
        "  budget      101.0 GiB  gpu-memory-utilization 0.83 x 1 GPU(s), 10 GiB kept for the OS",
        "  at start    101.0 GiB  must be free: gpu-memory-utilization 0.83 x 121.69 GiB total "
        "(vLLM's start-up check)",
        f"  available    95.0 GiB  (MemAvailable in {tmp_path / 'meminfo'})",
        "  free check: fails: lower --gpu-memory-utilization to 0.76 or less (available/total "
        "- 0.02)"]
    assert lines[-2:] == [
        "verdict: does not fit: vLLM refuses to start: free memory 95.00 GiB < "
        "gpu-memory-utilization 0.83 x 121.69 GiB = 101.00 GiB",
        "  fits with one of these changes: --gpu-memory-utilization 0.76 (at most "
        "available/total - 0.02)"]
    ok = run_cli("fit", "qwen3-next-coder", "--gpu-memory-utilization", "0.76",
                 project=project_dir, env=spark(tmp_path / "again", 95 * 1024 * 1024))
    assert ok.code == 0, ok.out
    assert "  free check: ok (2.5 GiB to spare)" in ok.out.splitlines()


def test_free_check_fails_and_nothing_below_the_line_fits(project_dir, fit_cli):
    result = fit_cli("fit", "step-3.5-flash", "--nodes", "2", "--gpu-memory-utilization", "0.9",
                     project=project_dir)
    assert result.code == 1
    assert result.out.splitlines()[-1] == (
        "verdict: does not fit: vLLM refuses to start: free memory 101.00 GiB < "
        "gpu-memory-utilization 0.9 x 121.69 GiB = 109.52 GiB; at --gpu-memory-utilization 0.80 "
        "weights + overhead + one full sequence need 199.25 GiB, the budget is 194.70 GiB")


def test_no_gpu_detected_assumes_one_dgx_spark(project_dir, fit_cli):
    result = fit_cli("fit", "qwen3-next-coder", project=project_dir)
    assert result.code == 0, result.out
    lines = result.out.splitlines()
    assert lines[1:6] == [
        "  memory     DGX Spark (GB10), 121.69 GiB unified, assumed: no GPU detected",
        "  budget       97.4 GiB  gpu-memory-utilization 0.8 x 1 GPU(s), 10 GiB kept for the OS",
        "  at start     97.4 GiB  must be free: gpu-memory-utilization 0.8 x 121.69 GiB total "
        "(vLLM's start-up check)",
        "  available   101.0 GiB  (assumed: a headless DGX Spark has ~101 GiB available)",
        "  free check: ok (3.6 GiB to spare)"]
    assert lines[-1] == "verdict: fits (10.3 GiB to spare)"


def test_every_catalog_model_passes_the_free_check_and_fits_on_sparks(project_dir):
    """On the assumed Spark(s): one node, or one per GPU over Ray for tensor parallel."""
    from vllm_mms.config import schema
    from vllm_mms.config.resolve import Project, resolve
    from vllm_mms.engine import serve

    checked = []
    for name in schema.available_models(ROOT / "models"):
        resolved = resolve(Project(project_dir), name)
        if resolved.model.local_weights:
            continue  # the CPU model: local mode only
        gpus = serve.gpu_count(resolved.argv)
        verdict = fit.check(resolved, nodes=gpus, parallel=gpus if gpus > 1 else None)
        assert verdict.fits, "\n".join(verdict.lines)
        free = [line for line in verdict.lines if line.startswith("  free check:")]
        assert free and free[0].startswith("  free check: ok ("), (name, free)
        checked.append(name)
    assert checked == ["glm47-flash", "qwen3-next-coder", "step-3.5-flash", "step-3.5-flash-hcsw"]


def test_too_little_free_memory_for_any_utilization_says_so(project_dir, fit_cli):
    # 16 GiB of unified memory with a Spark's 20.69 GiB in use: nothing is free.
    result = fit_cli("fit", "qwen3-next-coder", "--gpu-memory", "16GiB", project=project_dir)
    assert result.code == 1
    assert ("  free check: fails: too little memory is free for any --gpu-memory-utilization; "
            "stop what uses it (free -g)") in result.out.splitlines()
    assert "-0." not in result.out and "Traceback" not in result.out + result.err


def test_the_cpu_share_is_of_numa_node_0_as_vllm_takes_it(tmp_path, monkeypatch):
    """vLLM's CPU worker multiplies --gpu-memory-utilization by node 0's MemTotal, which on
    this kind of machine is 15.0 of 23.5 GiB (an engine sized on the machine's total got
    0.03 GiB of KV cache and refused to start)."""
    node = tmp_path / "meminfo"
    node.write_text("Node 0 MemTotal:       15689940 kB\nNode 0 MemFree:        12228296 kB\n")
    monkeypatch.setenv("MMS_NODE_MEMINFO", str(node))
    assert fit.cpu_node_memory(24684092 * 1024) == 15689940 * 1024
    monkeypatch.setenv("MMS_NODE_MEMINFO", str(tmp_path / "absent"))
    assert fit.cpu_node_memory(24 * fit.GiB) == 24 * fit.GiB / fit.numa_nodes()
