# syntax=docker/dockerfile:1.7
# Ranker image (build context: the repository root):
#   docker build -f deploy/docker/ranker.Dockerfile -t whisperlite/ranker:0.1.0 .
# The trained personalization model is mounted at /models (RANKER_MODEL_DIR), never baked in.
# The same image runs the one-shot bootstrap job (prepare data, train or load, ingest).

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
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu --constraint constraints.txt ".[train]"

# ---- runtime: slim, non-root, health-checked over the gRPC health protocol ------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 whisperlite \
 && useradd --system --uid 10001 --gid whisperlite --create-home --home-dir /home/whisperlite whisperlite \
 && mkdir -p /models /data && chown whisperlite:whisperlite /models /data
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 deploy/bootstrap.sh /usr/local/bin/whisperlite-bootstrap
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RANKER_HOST=0.0.0.0 \
    RANKER_PORT=50050 \
    RANKER_METRICS_PORT=9100 \
    RANKER_MODEL_DIR=/models
USER 10001:10001
WORKDIR /home/whisperlite
EXPOSE 50050 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["sh", "-c", "whisperlite health 127.0.0.1:${RANKER_PORT} --timeout 3 || exit 1"]
ENTRYPOINT ["whisperlite", "serve", "ranker"]
