# syntax=docker/dockerfile:1
# The relay (default) or the worker (`outbox worker`) from the plain wheel, no extras, as a non-root user.
#   docker build -t pg-outbox-relay .
#   docker run --rm -e OUTBOX_DATABASE_URL=... -e OUTBOX_REDIS_URL=... pg-outbox-relay

# ---- build: the wheel, from the repository --------------------------------------------------------------
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir "build==1.2.2.post1"
COPY . .
RUN python -m build --wheel --outdir /dist

# ---- runtime: a venv holding the wheel and its dependencies, nothing else ---------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/outbox/venv/bin:$PATH \
    OUTBOX_METRICS_PORT=9108
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin outbox
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    python -m venv /opt/outbox/venv \
    && /opt/outbox/venv/bin/pip install --no-cache-dir /dist/*.whl
# Numeric, so that runtimes can check it is not root (Kubernetes runAsNonRoot).
USER 10001:10001
EXPOSE 9108
# Healthy while the main loop reports alive on the metrics endpoint (outbox_daemon_alive_timestamp_seconds):
# a wedged relay or worker turns unhealthy even though its process and metrics thread still run.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "outbox.daemon", "--health"]
CMD ["outbox", "relay"]
