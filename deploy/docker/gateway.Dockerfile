# syntax=docker/dockerfile:1.7
# Gateway image (build context: the repository root):
#   docker build -f deploy/docker/gateway.Dockerfile -t whisperlite/gateway:0.1.0 .
# HTTP/JSON over the ranker and catalog, the judgement page at /, /metrics on the same port.
# Judgements are written to /state/judgements.sqlite (a named volume in docker-compose.yml).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtual environment with the project and its pinned dependencies -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY whisperlite whisperlite
# constraints.txt pins every transitive dependency, torch as its CPU build (2.13.0+cpu), which only
# the PyTorch index serves: PyPI's Linux wheel of the same version is the multi-GB CUDA build.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu --constraint constraints.txt ".[serve]"

# ---- runtime: slim, non-root, health-checked over HTTP (SERVING only when both upstreams are) ----
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 whisperlite \
 && useradd --system --uid 10001 --gid whisperlite --create-home --home-dir /home/whisperlite whisperlite \
 && mkdir -p /state && chown whisperlite:whisperlite /state
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_STATE_DIR=/state
USER 10001:10001
WORKDIR /home/whisperlite
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["sh", "-c", "whisperlite health http://127.0.0.1:${GATEWAY_PORT}/health --timeout 3 || exit 1"]
ENTRYPOINT ["whisperlite", "serve", "gateway"]
