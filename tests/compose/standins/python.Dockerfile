# Stand-in for python:3.11-slim (Docker Hub is not reachable here): Debian bookworm's
# Python 3.11 with pip, used the way the official image is used by Dockerfile.proxy —
# `pip install` into the system Python (the official image has no EXTERNALLY-MANAGED marker).
# Test-only: CI builds it with the project's own code (src/vllm_mms/dev/standins.py).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/python3 /usr/local/bin/python
# pip here reaches PyPI through the same TLS interception as the host: trust the host's CAs.
COPY host-ca-certificates.crt /etc/ssl/certs/host-ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
CMD ["python3"]
