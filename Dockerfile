# syntax=docker/dockerfile:1
# The gateway image: `gateway serve` as a non-root user, with the package and its runtime
# dependencies in a virtualenv built in a separate stage (no build tools in the shipped image).
#
#   docker build -t mlflow-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/gateway.yaml:/etc/gateway/gateway.yaml:ro" \
#     -e MLFLOW_TRACKING_URI=http://mlflow:5000 mlflow-gateway:0.1.0

FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/gateway

WORKDIR /src
# The package metadata reads README.md; nothing else outside gateway/ goes into the image.
COPY pyproject.toml README.md ./
COPY gateway/ gateway/

# Runtime dependencies only (not the `test` extra). The `demo` extra is scikit-learn: MLflow's
# sklearn flavor needs it to load sklearn models, and deploy/compose/seed.py trains with it.
# pip writes the bytecode now, so a read-only root file system costs nothing at start-up.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/gateway/bin/pip install ".[demo]"


FROM python:3.11.14-slim-bookworm

# A fixed numeric UID/GID so that Kubernetes can verify runAsNonRoot and volumes can be chowned.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
        --home-dir /tmp --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/gateway /var/log/gateway /tmp/gateway-metrics \
    && chown gateway:gateway /var/log/gateway /tmp/gateway-metrics

COPY --from=build /opt/gateway /opt/gateway

# HOME: /tmp is the one writable place under a read-only root (an emptyDir in Kubernetes).
# PROMETHEUS_MULTIPROC_DIR: where the workers of `--workers N` share their metric values; it
# must exist before the gateway starts (an emptyDir in Kubernetes); `--workers N` empties it.
ENV PATH=/opt/gateway/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/gateway-metrics

USER 10001:10001
WORKDIR /tmp

EXPOSE 8080

# Liveness only: /ping answers as soon as the port is open. Readiness is GET /health (503 until
# every worker has loaded its models), which orchestrators probe themselves.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"]

# SIGTERM drains in-flight requests for up to 30 s; give the container at least 35 s to stop.
STOPSIGNAL SIGTERM

ENTRYPOINT ["gateway", "serve"]
CMD ["--config", "/etc/gateway/gateway.yaml", "--host", "0.0.0.0", "--port", "8080"]
