# syntax=docker/dockerfile:1.7
# Query encoder image, two flavours from one file (build context: the repository root):
#   docker build -f deploy/docker/query-encoder.Dockerfile --target cpu  -t whisperlite/query-encoder:0.1.0 .
#   docker build -f deploy/docker/query-encoder.Dockerfile --target cuda -t whisperlite/query-encoder:0.1.0-cuda .
# Weights other than the bundled MiniLM (a pip dependency) are mounted at /weights, never baked in.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtual environment with the project and its pinned dependencies -------------------
FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY whisperlite whisperlite

# constraints.txt pins every transitive dependency, torch as its CPU build (2.13.0+cpu), which only
# the PyTorch index serves: PyPI's Linux wheel of the same version is the multi-GB CUDA build.
FROM build-base AS build-cpu
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu --constraint constraints.txt ".[serve]"

# The CUDA wheel of the same torch version carries the CUDA runtime, cuBLAS and cuDNN as
# nvidia-* wheels, so the image needs only the host's NVIDIA driver (container toolkit).
# TORCH_CUDA picks the wheel flavour (cu126, cu128, cu130...) that the host driver supports.
FROM build-base AS build-cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu130
RUN sed "s/^torch==.*/torch==${TORCH_VERSION}+${TORCH_CUDA}/" constraints.txt > /tmp/constraints-cuda.txt \
 && pip install --extra-index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" --constraint /tmp/constraints-cuda.txt ".[serve]"

# ---- runtime: slim, non-root, health-checked over the gRPC health protocol ------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 whisperlite \
 && useradd --system --uid 10001 --gid whisperlite --create-home --home-dir /home/whisperlite whisperlite \
 && mkdir -p /weights && chown whisperlite:whisperlite /weights
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    QUERY_ENCODER_HOST=0.0.0.0 \
    QUERY_ENCODER_PORT=50051 \
    QUERY_ENCODER_METRICS_PORT=9101
WORKDIR /home/whisperlite
EXPOSE 50051 9101
# Through sh so the probe follows QUERY_ENCODER_PORT; start-period covers loading the model.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["sh", "-c", "whisperlite health 127.0.0.1:${QUERY_ENCODER_PORT} --timeout 3 || exit 1"]
ENTRYPOINT ["whisperlite", "serve", "query-encoder"]

FROM runtime AS cuda
COPY --from=build-cuda /opt/venv /opt/venv
# fp16 on the GPU: device "cuda" makes the encoder load its weights in half precision.
ENV QUERY_ENCODER_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001

# Last stage: what a plain `docker build` without --target produces.
FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
ENV QUERY_ENCODER_DEVICE=cpu
USER 10001:10001
