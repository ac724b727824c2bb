# receiver: durable receiver for Huawei Cloud SMS callbacks.
#
#   docker build -t receiver .
#   docker run -p 8080:8080 -v receiver-data:/data \
#       -e RECEIVER_DATABASE_URL=postgresql://user:pass@db:5432/receiver receiver
#
# Without RECEIVER_DATABASE_URL the embedded PostgreSQL starts under /data/pgdata (fine for a
# try-out; for replicas use one external PostgreSQL). The journal lives in /data/journal: put
# /data on a persistent volume of this replica's own (docs/operations.md).
#
# Reproducible: the base image is pinned by the digest of its multi-architecture index
# (python:3.11-slim as published in August 2026: Python 3.11.16 on Debian trixie; to move it,
# resolve the tag's current digest, `docker buildx imagetools inspect python:3.11-slim`, and
# replace it in both FROM lines), and every Python package, the build backend included, is the
# version pinned in constraints.txt.

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
WORKDIR /src
# The context is what .dockerignore lets through: pyproject.toml, README.md, LICENSE,
# constraints.txt, receiver/ and sql/ (the migrations, package data of the wheel).
COPY . .
RUN PIP_CONSTRAINT=/src/constraints.txt \
    pip install --no-cache-dir --disable-pip-version-check --prefix=/install .

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECEIVER_DATA_DIR=/data \
    RECEIVER_HOST=0.0.0.0 \
    RECEIVER_PORT=8080 \
    RECEIVER_LOG_FORMAT=json
RUN groupadd --system --gid 10001 receiver \
    && useradd --system --uid 10001 --gid receiver --home-dir /data --no-create-home --shell /usr/sbin/nologin receiver \
    && mkdir -p /data \
    && chown receiver:receiver /data \
    && chmod 0750 /data
COPY --from=build /install /usr/local
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# Liveness, which is what a platform acts on (restarts, replaces): /healthz answers while the
# process takes callbacks, with PostgreSQL or without (it then acknowledges from the journal).
# Not /readyz: it turns 503 during a database outage, and a platform replacing every replica
# then would drop the very callbacks the journal keeps. Alert on /readyz instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "receiver.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["receiver", "serve", "--host", "0.0.0.0"]
