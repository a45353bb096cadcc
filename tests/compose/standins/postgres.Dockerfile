# Stand-in for postgres:16 (Docker Hub is not reachable here): Debian bookworm's PostgreSQL 15
# behind the official image's start-up contract — POSTGRES_USER / POSTGRES_PASSWORD /
# POSTGRES_DB create the role and database on first start, data in /var/lib/postgresql/data,
# password auth from other hosts, pg_isready on PATH (docker-library/postgres's
# docker-entrypoint.sh does the same with initdb + a temporary server).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
