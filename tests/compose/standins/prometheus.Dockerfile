# Stand-in for prom/prometheus (Docker Hub is not reachable here): Debian bookworm's Prometheus
# 2.42 started the way the official image starts it — the binary as entrypoint, the config at
# /etc/prometheus/prometheus.yml, data in /prometheus, running as nobody (prometheus/
# prometheus's Dockerfile does the same).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
