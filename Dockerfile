# The engine image: vLLM plus this project's entrypoint, which renders the configuration and
# then exec's vLLM (PID 1, receives SIGTERM). DGX Spark (aarch64) by default; x86 GPU users
# pass e.g. --build-arg BASE_IMAGE=vllm/vllm-openai:v0.16.0
ARG BASE_IMAGE=scitrera/dgx-spark-vllm:0.16.0-t5
FROM ${BASE_IMAGE}

# Debian package versions differ per base image tag; the base image pins the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git build-essential curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The entrypoint needs pydantic, jinja2, pyyaml and python-dotenv, which the vLLM image
# already carries at versions vLLM was tested with: install the package without touching them.
COPY pyproject.toml README.md ./
COPY src ./src
COPY litellm_config.template.yaml ./
COPY scripts ./scripts
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python3 -c "import vllm_mms.stack.container"

ENV MMS_PROJECT_DIR=/app MMS_GENERATED_DIR=/app/generated_configs
EXPOSE 8000
ENTRYPOINT ["/app/scripts/entrypoint.sh"]
