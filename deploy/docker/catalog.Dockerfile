# syntax=docker/dockerfile:1.7
# Catalog image (build context: the repository root):
#   docker build -f deploy/docker/catalog.Dockerfile -t whisperlite/catalog:0.1.0 .
# The store is a Milvus server by URI (CATALOG_MILVUS_URI) or an embedded milvus-lite file under
# the /data volume; nothing is baked in.

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

# ---- runtime: slim, non-root, health-checked over the gRPC health protocol ------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 whisperlite \
 && useradd --system --uid 10001 --gid whisperlite --create-home --home-dir /home/whisperlite whisperlite \
 && mkdir -p /data && chown whisperlite:whisperlite /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CATALOG_HOST=0.0.0.0 \
    CATALOG_PORT=50052 \
    CATALOG_METRICS_PORT=9102 \
    CATALOG_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/whisperlite
VOLUME ["/data"]
EXPOSE 50052 9102
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["sh", "-c", "whisperlite health 127.0.0.1:${CATALOG_PORT} --timeout 3 || exit 1"]
ENTRYPOINT ["whisperlite", "serve", "catalog"]
