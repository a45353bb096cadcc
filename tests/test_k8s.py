"""`./runMe.sh export k8s MODEL`: the exact manifests, from the same catalog entry as compose."""

from __future__ import annotations

import yaml

from .conftest import run_cli

QWEN_ARGS = ["Qwen/Qwen3-Coder-Next-FP8", "--tool-call-parser", "qwen3_coder",
             "--enable-auto-tool-choice", "--kv-cache-dtype", "fp8", "--max-model-len", "204800",
             "--max-num-seqs", "4", "--gpu-memory-utilization", "0.80", "--host", "0.0.0.0",
             "--port", "8000", "--served-model-name", "vllm_agent"]
LABELS = {"app.kubernetes.io/name": "vllm-qwen3-next-coder", "app.kubernetes.io/part-of": "vllm-mms",
          "vllm-mms/model": "qwen3-next-coder"}
PROBE = {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10, "failureThreshold": 3}


def secret_ref(name: str, optional: bool) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {
        "name": "vllm-mms-secrets", "key": name, "optional": optional}}}


def test_exact_manifests_for_qwen(project_dir):
    (project_dir / "secrets" / "HF_TOKEN").write_text("hf_canary_k8s\n")
    (project_dir / "vars.env").write_text("NCCL_SOCKET_IFNAME=eth0\n")
    result = run_cli("export", "k8s", "qwen3-next-coder", project=project_dir)
    assert result.code == 0, result.err
    assert "hf_canary_k8s" not in result.out  # secrets by reference only
    assert result.out.startswith("# qwen3-next-coder: Qwen3-Coder-Next (Qwen): 80B MoE")
    deployment, service = yaml.safe_load_all(result.out)
    assert deployment == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "vllm-qwen3-next-coder", "labels": LABELS},
        "spec": {"replicas": 1,
                 "selector": {"matchLabels": {"app.kubernetes.io/name": "vllm-qwen3-next-coder"}},
                 "template": {"metadata": {"labels": LABELS}, "spec": {
                     "containers": [{
                         "name": "vllm", "image": "scitrera/dgx-spark-vllm:0.16.0-t5",
                         "command": ["vllm", "serve"], "args": QWEN_ARGS,
                         "ports": [{"name": "http", "containerPort": 8000}],
                         "env": [{"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
                                 {"name": "HF_HOME", "value": "/root/.cache/huggingface"},
                                 secret_ref("VLLM_API_KEY", False), secret_ref("HF_TOKEN", True),
                                 secret_ref("HUGGING_FACE_HUB_TOKEN", True)],
                         "resources": {"limits": {"nvidia.com/gpu": 1},
                                       "requests": {"nvidia.com/gpu": 1}},
                         "startupProbe": {**PROBE, "failureThreshold": 180},
                         "readinessProbe": PROBE, "livenessProbe": PROBE,
                         "volumeMounts": [{"name": "hf-cache",
                                           "mountPath": "/root/.cache/huggingface"},
                                          {"name": "shm", "mountPath": "/dev/shm"}]}],
                     "volumes": [{"name": "hf-cache",
                                  "persistentVolumeClaim": {"claimName": "hf-cache"}},
                                 {"name": "shm", "emptyDir": {"medium": "Memory"}}]}}}}
    assert service == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "vllm-qwen3-next-coder", "labels": LABELS},
        "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": "vllm-qwen3-next-coder"},
                 "ports": [{"name": "http", "port": 8000, "targetPort": 8000}]}}


def test_gpus_follow_tensor_parallel_and_image_can_be_chosen(project_dir):
    result = run_cli("export", "k8s", "step-3.5-flash", "--image", "vllm/vllm-openai:v0.16.0",
                     project=project_dir)
    deployment, _ = yaml.safe_load_all(result.out)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert container["image"] == "vllm/vllm-openai:v0.16.0"
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == "2"


def test_export_usage_errors(project_dir):
    usage = "error: usage: ./runMe.sh export k8s NAME [--image IMAGE]\n"
    for args in (["export"], ["export", "helm", "x"]):
        result = run_cli(*args, project=project_dir)
        assert (result.code, result.out, result.err) == (2, "", usage), args
    unknown = run_cli("export", "k8s", "nope", project=project_dir)
    assert unknown.code == 2 and unknown.err.startswith("error: unknown model 'nope'")
