"""`./runMe.sh pull NAME`: the model's weights into the Hugging Face cache, with progress,
before the first start.

Runs on the host, in the tools environment, with `huggingface_hub.snapshot_download` (the
library is in requirements/dev.txt, so it is always there): no image has to be built or
pulled first, the download resumes after an interruption, and it shows one progress bar per
file. It writes to the same cache the engine container mounts (`HF_CACHE_DIR`, default
~/.cache/huggingface, mounted as /root/.cache/huggingface with HF_HOME there), so the engine
finds the files and downloads nothing. The token comes from secrets/HF_TOKEN (gated models).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from ..config.resolve import Project, resolve
from ..errors import UserError
from ..stack.compose import ENGINE_SERVICE

Downloader = Callable[..., str]


def hf_home() -> Path:
    """The host directory the compose files mount as the engine's HF_HOME."""
    return Path(os.environ.get("HF_CACHE_DIR") or Path.home() / ".cache" / "huggingface")


def download_kwargs(repo_id: str, token: Optional[str]) -> dict[str, Any]:
    """The exact arguments given to snapshot_download."""
    return {"repo_id": repo_id, "cache_dir": str(hf_home() / "hub"), "token": token or None}


def _snapshot_download() -> Downloader:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # the tools environment always has it; a bare interpreter may not
        raise UserError("huggingface_hub is not installed in this Python: run through "
                        "./runMe.sh, or download inside the engine image: docker compose run "
                        f"--rm --entrypoint hf {ENGINE_SERVICE} download REPO_ID") from None
    return snapshot_download


def pull(project: Project, name: str, download: Optional[Downloader] = None) -> int:
    resolved = resolve(project, name)
    if resolved.model.local_weights:
        raise UserError(f"{name} serves a local checkpoint (./runMe.sh --local prepares it); "
                        f"there is nothing to pull", 2)
    repo_id = resolved.hf_model
    if repo_id.count("/") != 1 or Path(repo_id).expanduser().is_dir():
        raise UserError(f"{name}: {repo_id!r} is not a Hugging Face repository id "
                        f"(owner/name); nothing to pull", 2)
    token = resolved.secrets.get("HF_TOKEN") or resolved.secrets.get("HUGGING_FACE_HUB_TOKEN")
    kwargs = download_kwargs(repo_id, token)
    size = f" (~{resolved.model.weights_gb:g} GB)" if resolved.model.weights_gb else ""
    print(f"pulling {repo_id}{size} into {kwargs['cache_dir']}"
          + (" with secrets/HF_TOKEN" if token else ""), flush=True)
    download = download or _snapshot_download()
    try:
        path = download(**kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the hub's errors are many; one line each
        raise UserError(describe_failure(repo_id, exc)) from None
    print(f"done: {path}\nstart it with: ./runMe.sh {name}", flush=True)
    return 0


def describe_failure(repo_id: str, exc: BaseException) -> str:
    kind = type(exc).__name__
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    if kind in ("GatedRepoError",) or "401" in first or "403" in first:
        return (f"cannot download {repo_id}: access denied ({kind}): the model may be gated: "
                f"accept its licence on huggingface.co and put your token in secrets/HF_TOKEN")
    if kind in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return f"cannot download {repo_id}: no such repository on the hub ({kind})"
    return (f"cannot download {repo_id} from Hugging Face ({kind}: {first}); check the "
            f"network or HF_ENDPOINT (a mirror); partial files stay in the cache and the next "
            f"pull resumes them")
