# Click-Pose Label Studio ML backend. CPU by default:
#   docker build -t clickpose-backend .
# CUDA: docker build --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                    --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t clickpose-backend:cuda .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PORT=9090 WORKERS=1 THREADS=4 LOG_LEVEL=INFO CLICKPOSE_DEVICE=cpu \
    XDG_CACHE_HOME=/tmp/cache

# CUDA bases come without Python; slim images already have it.
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
      && rm -rf /var/lib/apt/lists/*; fi \
 && apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml constraints.txt README.md* ./
# torch first, from the index chosen by the build argument, pinned by constraints.txt.
RUN pip install --upgrade pip && pip install -c constraints.txt --index-url ${TORCH_INDEX} \
      --extra-index-url https://pypi.org/simple torch
COPY clickpose_core ./clickpose_core
COPY backend ./backend
COPY _wsgi.py ./
COPY weights ./weights
RUN pip install -c constraints.txt ".[backend]"

RUN useradd --create-home --uid 10001 clickpose && chown -R clickpose /app
USER clickpose

EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
# --preload: the weights are loaded once, before the workers fork (not on each /setup).
CMD ["sh", "-c", "exec gunicorn --preload --bind 0.0.0.0:${PORT} --workers ${WORKERS} --threads ${THREADS} --timeout 120 --log-level $(echo ${LOG_LEVEL} | tr A-Z a-z) _wsgi:app"]
