# syntax=docker/dockerfile:1.7
# Images of idcscan, one stage each: api, worker-cpu, worker-gpu, trainer.
#   docker build --target api -t idcscan-api .
# Every stage runs as the non-root user `idcscan` (uid 10001) and keeps its files in /var/lib/idcscan.

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
RUN pip install --no-cache-dir "/wheels/$(cd /wheels && ls idcscan-*.whl)[s3]"
WORKDIR /var/lib/idcscan

# --- api: Flask behind gunicorn ---------------------------------------------------------------
FROM base AS api
USER idcscan
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["idcscan", "api", "--host", "0.0.0.0", "--port", "8000"]

# --- worker-cpu: Celery worker scoring with onnxruntime on the CPU ----------------------------
FROM base AS worker-cpu
USER idcscan
CMD ["idcscan", "worker"]

# --- worker-gpu: same worker, onnxruntime-gpu on the CUDA runtime ------------------------------
FROM ${CUDA_IMAGE} AS worker-gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive \
    IDCSCAN_DATA_DIR=/var/lib/idcscan VIRTUAL_ENV=/opt/idcscan PATH=/opt/idcscan/bin:$PATH \
    IDCSCAN_EXECUTION_PROVIDER=cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/idcscan \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin idcscan \
 && install -d -m 0700 -o idcscan -g idcscan /var/lib/idcscan
COPY --from=build /wheels /wheels
# onnxruntime and onnxruntime-gpu ship the same module: install idcscan, then swap the runtime.
RUN pip install --no-cache-dir "/wheels/$(cd /wheels && ls idcscan-*.whl)[gpu,s3]" \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir --force-reinstall --no-deps "onnxruntime-gpu>=1.18,<2"
WORKDIR /var/lib/idcscan
USER idcscan
CMD ["idcscan", "worker"]

# --- trainer: torch and torchvision for `idcscan compare` / `train` / `export` -----------------
FROM base AS trainer
RUN pip install --no-cache-dir "/wheels/$(cd /wheels && ls idcscan-*.whl)[train]"
USER idcscan
CMD ["idcscan", "compare", "--data", "/data/idc", "--out", "/var/lib/idcscan/runs/compare"]
