# receiver: durable receiver for Huawei Cloud SMS callbacks.
#
#   docker build -t receiver .
#   docker run -p 8080:8080 -v receiver-data:/data \
#       -e RECEIVER_DATABASE_URL=postgresql://user:pass@db:5432/receiver receiver
#
# Without RECEIVER_DATABASE_URL the embedded PostgreSQL starts under /data/pgdata (fine for a
# try-out; for replicas use one external PostgreSQL). The journal lives in /data/journal: put
# /data on a persistent volume of this replica's own (README, "Deployment").

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY receiver ./receiver
RUN pip install --no-cache-dir --disable-pip-version-check --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECEIVER_DATA_DIR=/data \
    RECEIVER_MIGRATIONS_DIR=/opt/receiver/sql \
    RECEIVER_HOST=0.0.0.0 \
    RECEIVER_PORT=8080 \
    RECEIVER_LOG_FORMAT=json
RUN groupadd --system --gid 10001 receiver \
    && useradd --system --uid 10001 --gid receiver --home-dir /data --no-create-home --shell /usr/sbin/nologin receiver \
    && mkdir -p /data \
    && chown receiver:receiver /data \
    && chmod 0750 /data
COPY --from=build /install /usr/local
COPY sql /opt/receiver/sql
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "receiver.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["receiver", "serve", "--host", "0.0.0.0"]
