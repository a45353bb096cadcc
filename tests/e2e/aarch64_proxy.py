"""Run inside the aarch64 root by test_aarch64.py: render a project's model and start the
LiteLLM proxy with local mode's own code (local.proxy_process), until SIGTERM.

    python -m tests.e2e.aarch64_proxy PROJECT_DIR MODEL API_BASE PORT MASTER_KEY WORK_DIR
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from vllm_mms.config.resolve import Project, resolve
from vllm_mms.stack import local, processes
from vllm_mms.stack.render import render


def main(project_dir: str, model: str, api_base: str, port: str, master_key: str,
         work: str) -> int:
    project = Project(Path(project_dir))
    resolved = resolve(project, model, environ={"LITELLM_MASTER_KEY": master_key})
    generated = Path(work) / "generated"
    render(project, resolved, generated, api_base=api_base)
    proc = local.proxy_process(resolved, generated, "sk-upstream-key", Path(work) / "logs",
                               int(port), {"MMS_STATE_DIR": str(Path(work) / "state")})
    print(f"proxy pid {proc.pid}", flush=True)

    def stop(*_: object) -> None:
        processes.terminate([proc.pid], grace=5)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    return proc.wait()


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
