# syntax=docker/dockerfile:1.7
# Images of idcscan, one stage each: api, worker-cpu, worker-gpu, trainer.
#   docker build --target api -t idcscan-api .
# Every stage runs as the non-root user `idcscan` (uid 10001, named by number so that a
# runtime can tell it is not root without reading /etc/passwd) and keeps its files in /var/lib/idcscan.
# Health checks run `idcscan health SERVICE` in exec form with no spaces in any argument, which
# every engine's API passes through as it is (some split a quoted argument on its spaces).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# --- build: one wheel of idcscan, reused by every stage --------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md ./
COPY idcscan ./idcscan
RUN python -m build --wheel --outdir /wheels

# --- base: the service's Python environment (no torch) ---------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    IDCSCAN_DATA_DIR=/var/lib/idcscan VIRTUAL_ENV=/opt/idcscan PATH=/opt/idcscan/bin:$PATH
RUN python -m venv /opt/idcscan \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin idcscan \
 && install -d -m 0700 -o idcscan -g idcscan /var/lib/idcscan
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/idcscan-*.whl)[s3]"
WORKDIR /var/lib/idcscan

# --- api: Flask behind gunicorn ---------------------------------------------------------------
FROM base AS api
USER 10001:10001
EXPOSE 8000
# Readiness: the API answers and reaches its database and broker.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["idcscan", "health", "api"]
CMD ["idcscan", "api", "--host", "0.0.0.0", "--port", "8000"]

# --- worker-cpu: Celery worker scoring with onnxruntime on the CPU ----------------------------
FROM base AS worker-cpu
USER 10001:10001
# The worker's loop touches a heartbeat file every 10 s; a wedged worker lets it go stale.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["idcscan", "health", "worker"]
CMD ["idcscan", "worker"]

# --- worker-gpu: same worker, onnxruntime-gpu on the CUDA runtime ------------------------------
FROM ${CUDA_IMAGE} AS worker-gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive \
    IDCSCAN_DATA_DIR=/var/lib/idcscan VIRTUAL_ENV=/opt/idcscan PATH=/opt/idcscan/bin:$PATH \
    IDCSCAN_EXECUTION_PROVIDER=cuda
# The CUDA image's tag pins the Ubuntu release; its archive's Python follows it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/idcscan \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin idcscan \
 && install -d -m 0700 -o idcscan -g idcscan /var/lib/idcscan
COPY --from=build /wheels /wheels
# onnxruntime and onnxruntime-gpu ship the same module: install idcscan, then swap the runtime.
RUN pip install --no-cache-dir "$(ls /wheels/idcscan-*.whl)[gpu,s3]" \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir --force-reinstall --no-deps "onnxruntime-gpu>=1.18,<2"
WORKDIR /var/lib/idcscan
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["idcscan", "health", "worker"]
CMD ["idcscan", "worker"]

# --- trainer: torch and torchvision for `idcscan compare` / `train` / `export` -----------------
FROM base AS trainer
RUN pip install --no-cache-dir "$(ls /wheels/idcscan-*.whl)[train]"
USER 10001:10001
CMD ["idcscan", "compare", "--data", "/data/idc", "--out", "/var/lib/idcscan/runs/compare"]
